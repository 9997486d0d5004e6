//! Collecting diagnostics: every problem with its own span, and the helpers that render
//! tokens and types for messages.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::Type;

/// Errors collected so far, combined into one `syn::Error` that expands to one
/// `compile_error!` per problem.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Underlines all of `tokens`, not just the first one.
    pub(crate) fn over(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// All errors, when at least one was recorded.
    pub(crate) fn into_error(self) -> syn::Error {
        self.0.expect("an error was recorded")
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

pub(crate) fn first_span(tokens: &impl ToTokens) -> Span {
    tokens
        .to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |token| token.span())
}

/// Renders a type as a person would write it (`Vec<Job<Email>>`, not the spaced-out
/// `Vec < Job < Email > >` of `TokenStream`'s `Display`), for suggestions in messages.
pub(crate) fn type_to_string(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    let mut word_before = false;
    for token in tokens {
        let is_word = matches!(token, TokenTree::Ident(_) | TokenTree::Literal(_));
        if is_word && word_before {
            out.push(' ');
        }
        word_before = is_word;
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::Brace => ("{ ", " }"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(group.stream(), out);
                out.push_str(close);
            }
            TokenTree::Punct(punct) => {
                out.push(punct.as_char());
                if punct.as_char() == ',' || (punct.as_char() == ';') {
                    out.push(' ');
                }
                // `&'a T`: the lifetime's quote is glued to its name, but the name is a word.
                if punct.as_char() == '\'' {
                    word_before = false;
                }
            }
            other => out.push_str(&other.to_string()),
        }
    }
}
