//! Reading `#[job(...)]` and the function under it into a [`JobDef`], as serde_derive's
//! `internals` do: [`attr`] reads the options, [`check`] the function's signature, and
//! [`ctxt`] collects every mistake with its own span instead of stopping at the first,
//! so a single compile shows everything that needs fixing. Nothing here generates code.

mod attr;
mod check;
mod ctxt;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::{Ident, ReturnType, Type, Visibility};

pub(crate) use attr::Options;
use attr::{parse_option, split_at_commas, Opt, Seen};
use check::{check_signature, payload_type, single_parameter, FnHeader};
pub(crate) use ctxt::first_span;
use ctxt::Errors;

/// A validated `#[job]` function: what the code generator needs, nothing more.
pub(crate) struct JobDef {
    /// The function's visibility, reused for the generated module.
    pub(crate) vis: Visibility,
    /// The function's name, also the generated module's name.
    pub(crate) name: Ident,
    /// Whether the function takes one job or a batch.
    pub(crate) kind: Kind,
    /// `T` of `Job<T>`.
    pub(crate) payload: Type,
    /// The return type's first token (the name if there is none), where rustc's
    /// complaint about a wrong return type should point.
    pub(crate) output_span: Span,
    /// The attribute's options, checked.
    pub(crate) options: Options,
}

/// How the runtime calls the function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `fn(Job<T>) -> Result<(), JobError>`
    Single,
    /// `fn(Vec<Job<T>>) -> Vec<Result<(), JobError>>`
    Batch,
}

/// Parses and checks the attribute arguments and the item. On error the caller still
/// emits the item unchanged, so the error carries every problem found.
pub(crate) fn parse(args: TokenStream, item: TokenStream) -> Result<JobDef, syn::Error> {
    let mut errors = Errors::default();
    let mut seen = Seen::default();
    let mut options = Options::default();
    for segment in split_at_commas(args, &mut errors) {
        parse_option(segment, &mut options, &mut seen, &mut errors);
    }
    if !seen.has(Opt::Topic) {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `topic`: write `#[job(topic = \"my_topic\")]`",
        ));
    }
    if let (Some(max_wait), false) = (&seen.max_wait_ms, seen.has(Opt::Batch)) {
        errors.push(syn::Error::new_spanned(
            max_wait,
            "`max_wait_ms` is how long a batch waits to fill, so it needs `batch = N`: \
             add `batch = 10` (and take `Vec<Job<T>>`) or remove `max_wait_ms`",
        ));
    }

    if let (Some(tz), false) = (&seen.tz, seen.has(Opt::Cron)) {
        errors.push(syn::Error::new_spanned(
            tz,
            "`tz` is the time zone of a cron schedule, so it needs `cron = \"...\"`: add \
             e.g. `cron = \"0 0 3 * * *\"` (and take `Job<redisaq::Tick>`) or remove `tz`",
        ));
    }

    let function = match syn::parse2::<FnHeader>(item) {
        Ok(function) => function,
        Err(error) => {
            errors.at(
                error.span(),
                "`#[job]` goes on an `async fn` taking `Job<T>`: \
                 `async fn send_email(job: Job<Email>) -> Result<(), JobError>`",
            );
            return Err(errors.into_error());
        }
    };
    let sig = &function.sig;
    check_signature(sig, &mut errors);

    // Decided by whether `batch` is written at all, even with a bad value, so that the
    // parameter is checked against what the user meant.
    let kind = if seen.has(Opt::Batch) {
        Kind::Batch
    } else {
        Kind::Single
    };
    let payload = match single_parameter(sig, kind, &mut errors) {
        Some((pat, ty)) => payload_type(pat, ty, kind, options.batch, &mut errors),
        None => None,
    };

    errors.finish()?;
    if options.group.is_none() {
        options.group = Some(sig.ident.unraw().to_string());
    }
    Ok(JobDef {
        vis: function.vis,
        name: sig.ident.clone(),
        kind,
        payload: payload.expect("a payload type when there are no errors"),
        output_span: match &sig.output {
            ReturnType::Default => sig.ident.span(),
            ReturnType::Type(_, ty) => first_span(ty),
        },
        options,
    })
}
