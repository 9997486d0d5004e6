use proc_macro::TokenStream;
/// job
#[proc_macro_attribute]
pub fn job(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
