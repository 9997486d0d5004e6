//! The function under `#[job]`: an `async fn` with one `Job<T>` (or `Vec<Job<T>>` for a
//! batch) parameter, and what to write instead when it is not.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::{Attribute, FnArg, GenericArgument, Pat, PathArguments, Signature, Type, Visibility};

use super::ctxt::{type_to_string, Errors};
use super::Kind;

/// What the glue needs from the item. Attributes and body are skipped as raw tokens and
/// never looked at: the item is re-emitted from the original tokens, and a body syn
/// cannot parse must not hide rustc's own diagnostics.
pub(crate) struct FnHeader {
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
}

impl syn::parse::Parse for FnHeader {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        input.parse::<TokenStream>()?;
        Ok(FnHeader { vis, sig })
    }
}

pub(crate) fn check_signature(sig: &Signature, errors: &mut Errors) {
    let name = sig.ident.unraw();
    if let Some(constness) = &sig.constness {
        errors.at(constness.span, "`#[job]` functions can't be `const`");
    }
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token.span,
            format!("`#[job]` functions must be async: write `async fn {name}(...)`"),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(
            unsafety.span,
            "`#[job]` functions can't be `unsafe`: the runtime calls them with any payload",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.over(
            abi,
            "`#[job]` functions can't have an ABI: remove the `extern`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let mut generics = sig.generics.to_token_stream();
        sig.generics.where_clause.to_tokens(&mut generics);
        errors.over(
            generics,
            "`#[job]` functions can't be generic: the runtime needs one concrete payload type, \
             e.g. `Job<Email>`",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.over(variadic, "`#[job]` functions can't be variadic");
    }
}

/// The one parameter's pattern and type, or `None` after reporting why there isn't one.
pub(crate) fn single_parameter<'a>(
    sig: &'a Signature,
    kind: Kind,
    errors: &mut Errors,
) -> Option<(&'a Pat, &'a Type)> {
    let expected = match kind {
        Kind::Single => "`job: Job<T>`",
        Kind::Batch => "`jobs: Vec<Job<T>>`",
    };
    let mut inputs = sig.inputs.iter();
    let first = match inputs.next() {
        Some(first) => first,
        None => {
            errors.at(
                sig.paren_token.span.join(),
                format!("`#[job]` functions take one parameter, the job: {expected}"),
            );
            return None;
        }
    };
    let extra: Punctuated<&FnArg, syn::Token![,]> = inputs.collect();
    if !extra.is_empty() {
        errors.over(
            extra,
            format!("`#[job]` functions take exactly one parameter, {expected}: remove the others"),
        );
    }
    match first {
        FnArg::Receiver(receiver) => {
            errors.over(
                receiver,
                format!(
                    "`#[job]` functions can't take `self`: write a free function taking {expected}"
                ),
            );
            None
        }
        FnArg::Typed(typed) => Some((&typed.pat, &typed.ty)),
    }
}

/// `T` of the parameter's `Job<T>` (`Vec<Job<T>>` for a batch), or a message saying
/// what to write instead.
pub(crate) fn payload_type(
    pat: &Pat,
    ty: &Type,
    kind: Kind,
    batch: Option<u32>,
    errors: &mut Errors,
) -> Option<Type> {
    let param = match pat {
        Pat::Ident(ident) if ident.subpat.is_none() => ident.ident.unraw().to_string(),
        _ => match kind {
            Kind::Single => "job".to_string(),
            Kind::Batch => "jobs".to_string(),
        },
    };
    let job = generic_argument(ty, "Job");
    let vec = generic_argument(ty, "Vec");
    let vec_job = vec.and_then(|inner| generic_argument(inner, "Job"));
    let payload = match (kind, job, vec_job) {
        (Kind::Single, Some(payload), _) | (Kind::Batch, _, Some(payload)) => payload,
        (Kind::Single, _, Some(payload)) => {
            errors.over(
                ty,
                format!(
                    "`Vec<Job<T>>` is for batch handlers: add `batch = N` to #[job(...)] \
                     or take `job: Job<{}>`",
                    type_to_string(payload)
                ),
            );
            return None;
        }
        (Kind::Single, None, None) => {
            let mut message = format!(
                "a `#[job]` function takes `Job<T>`, where `T` is the payload type: \
                 write `{param}: Job<{}>`",
                type_to_string(ty)
            );
            if let Some(item) = vec {
                message += &format!(
                    ", or add `batch = N` to #[job(...)] and take `jobs: Vec<Job<{}>>`",
                    type_to_string(item)
                );
            }
            errors.over(ty, message);
            return None;
        }
        (Kind::Batch, _, None) => {
            let payload = job.or(vec).unwrap_or(ty);
            let handler = match batch {
                Some(size) => format!("a batch handler (`batch = {size}`)"),
                None => "a batch handler".to_string(),
            };
            let param = match job {
                Some(_) => "jobs".to_string(),
                None => param,
            };
            errors.over(
                ty,
                format!(
                    "{handler} takes `Vec<Job<T>>`: write `{param}: Vec<Job<{}>>`",
                    type_to_string(payload)
                ),
            );
            return None;
        }
    };
    match strip_groups(payload) {
        Type::ImplTrait(_) => {
            errors.over(
                payload,
                "the payload type must be a concrete type, e.g. `Job<Email>`: \
                 `#[job]` functions can't be generic",
            );
            None
        }
        Type::Infer(_) => {
            errors.over(payload, "write the payload type out, e.g. `Job<Email>`");
            None
        }
        _ => Some(payload.clone()),
    }
}

/// `X` of `Name<X>` (also `path::to::Name<X>`): matching on the last segment is all a
/// macro can do before name resolution, and it accepts `redisaq::Job<T>` and `Job<T>`
/// alike.
fn generic_argument<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = strip_groups(ty) else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match (args.args.len(), args.args.first()) {
        (1, Some(GenericArgument::Type(inner))) => Some(inner),
        _ => None,
    }
}

/// Types coming through `macro_rules!` arrive wrapped in invisible groups.
fn strip_groups(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => strip_groups(&group.elem),
        Type::Paren(paren) => strip_groups(&paren.elem),
        other => other,
    }
}
