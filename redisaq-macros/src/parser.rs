//! Reading `#[job(...)]` and the function under it into a [`JobDef`].
//!
//! Every mistake is collected with its own span instead of stopping at the first one, so
//! a single compile shows everything that needs fixing. Nothing here generates code.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Lit, Pat, PathArguments, ReturnType, Signature, Type,
    Visibility,
};

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

/// The options of `#[job(...)]`; `None` leaves the choice to the runtime.
#[derive(Default)]
pub(crate) struct Options {
    /// Required; `None` only while parsing.
    pub(crate) topic: Option<String>,
    /// Defaults to the function's name.
    pub(crate) group: Option<String>,
    /// Partition count of a topic created by this handler's runtime.
    pub(crate) partitions: Option<u32>,
    /// Retries after the first attempt.
    pub(crate) retries: Option<u32>,
    /// `Some` exactly for batch handlers.
    pub(crate) batch: Option<u32>,
    /// Only with `batch`.
    pub(crate) max_wait_ms: Option<u64>,
    /// Calls of the handler running at once.
    pub(crate) concurrency: Option<u32>,
    /// Processed entries kept per partition stream.
    pub(crate) maxlen: Option<u64>,
    /// How long one call may run before it is cancelled.
    pub(crate) timeout_ms: Option<u64>,
    /// Dead letters kept per partition.
    pub(crate) dlq_maxlen: Option<u64>,
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

/// Errors collected so far, combined into one `syn::Error` that expands to one
/// `compile_error!` per problem.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Underlines all of `tokens`, not just the first one.
    fn over(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// All errors, when at least one was recorded.
    fn into_error(self) -> syn::Error {
        self.0.expect("an error was recorded")
    }

    fn finish(self) -> Result<(), syn::Error> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Opt {
    Topic,
    Group,
    Partitions,
    Retries,
    Batch,
    MaxWaitMs,
    Concurrency,
    Maxlen,
    TimeoutMs,
    DlqMaxlen,
}

impl Opt {
    const ALL: [Opt; 10] = [
        Opt::Topic,
        Opt::Group,
        Opt::Partitions,
        Opt::Retries,
        Opt::Batch,
        Opt::MaxWaitMs,
        Opt::Concurrency,
        Opt::Maxlen,
        Opt::TimeoutMs,
        Opt::DlqMaxlen,
    ];

    fn name(self) -> &'static str {
        match self {
            Opt::Topic => "topic",
            Opt::Group => "group",
            Opt::Partitions => "partitions",
            Opt::Retries => "retries",
            Opt::Batch => "batch",
            Opt::MaxWaitMs => "max_wait_ms",
            Opt::Concurrency => "concurrency",
            Opt::Maxlen => "maxlen",
            Opt::TimeoutMs => "timeout_ms",
            Opt::DlqMaxlen => "dlq_maxlen",
        }
    }

    /// A correct use, quoted in messages so the fix can be copied.
    fn example(self) -> &'static str {
        match self {
            Opt::Topic => "topic = \"send_email\"",
            Opt::Group => "group = \"email_group\"",
            Opt::Partitions => "partitions = 4",
            Opt::Retries => "retries = 3",
            Opt::Batch => "batch = 10",
            Opt::MaxWaitMs => "max_wait_ms = 200",
            Opt::Concurrency => "concurrency = 8",
            Opt::Maxlen => "maxlen = 100_000",
            Opt::TimeoutMs => "timeout_ms = 30_000",
            Opt::DlqMaxlen => "dlq_maxlen = 10_000",
        }
    }

    /// Smallest and largest accepted value of an integer option; `None` for strings.
    fn int_range(self) -> Option<(u128, u128)> {
        let u32_max = u128::from(u32::MAX);
        let u64_max = u128::from(u64::MAX);
        match self {
            Opt::Topic | Opt::Group => None,
            Opt::Retries => Some((0, u32_max)),
            Opt::MaxWaitMs => Some((0, u64_max)),
            Opt::Partitions | Opt::Batch | Opt::Concurrency => Some((1, u32_max)),
            Opt::Maxlen | Opt::TimeoutMs | Opt::DlqMaxlen => Some((1, u64_max)),
        }
    }
}

/// Where each option was first written, to report repeats at both places.
#[derive(Default)]
struct Seen {
    first: [Option<Span>; Opt::ALL.len()],
    /// The whole `max_wait_ms = ...`, which is an error without `batch`.
    max_wait_ms: Option<TokenStream>,
}

impl Seen {
    fn has(&self, opt: Opt) -> bool {
        self.first[opt as usize].is_some()
    }
}

/// Splits the arguments at top-level commas; groups are single token trees, so commas
/// inside brackets stay put. A trailing comma is fine, an empty option is not.
fn split_at_commas(args: TokenStream, errors: &mut Errors) -> Vec<Vec<TokenTree>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for token in args {
        match token {
            TokenTree::Punct(comma) if comma.as_char() == ',' => {
                if current.is_empty() {
                    errors.at(comma.span(), "expected an option before this `,`");
                } else {
                    segments.push(std::mem::take(&mut current));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// Parses one `name = value`. Returning early only abandons this option, which is what
/// lets the remaining ones still be checked.
fn parse_option(
    segment: Vec<TokenTree>,
    options: &mut Options,
    seen: &mut Seen,
    errors: &mut Errors,
) {
    let whole: TokenStream = segment.iter().cloned().collect();
    let mut tokens = segment.into_iter();
    let name = match tokens.next() {
        Some(TokenTree::Ident(name)) => name,
        // `#[job("send_email")]`: clearly meant as the topic, so say how to name it
        // and don't also report the topic as missing.
        Some(TokenTree::Literal(lit))
            if lit.to_string().starts_with('"') && whole.clone().into_iter().count() == 1 =>
        {
            if !seen.has(Opt::Topic) {
                seen.first[Opt::Topic as usize] = Some(lit.span());
            }
            errors.at(
                lit.span(),
                format!("options are named: write `topic = {lit}`"),
            );
            return;
        }
        _ => {
            errors.over(
                whole,
                "expected `name = value`, e.g. `#[job(topic = \"send_email\", partitions = 4)]`",
            );
            return;
        }
    };
    let key = name.unraw().to_string();
    let Some(opt) = Opt::ALL.into_iter().find(|opt| opt.name() == key) else {
        let expected: Vec<String> = Opt::ALL
            .iter()
            .map(|opt| format!("`{}`", opt.name()))
            .collect();
        errors.at(
            name.span(),
            format!(
                "unknown option `{key}`, expected one of: {}",
                expected.join(", ")
            ),
        );
        return;
    };
    if let Some(first) = seen.first[opt as usize] {
        errors.at(
            name.span(),
            format!("`{key}` is set twice: remove one of them"),
        );
        errors.at(first, format!("`{key}` first set here"));
        return;
    }
    // Recorded before the value is checked, so a bad value is not also reported as a
    // missing option.
    seen.first[opt as usize] = Some(name.span());
    if opt == Opt::MaxWaitMs {
        seen.max_wait_ms = Some(whole);
    }

    let eq = match tokens.next() {
        Some(TokenTree::Punct(eq)) if eq.as_char() == '=' => eq,
        Some(other) => {
            errors.at(
                other.span(),
                format!("expected `=` after `{key}`: `{}`", opt.example()),
            );
            return;
        }
        None => {
            errors.at(
                name.span(),
                format!("`{key}` needs a value: `{}`", opt.example()),
            );
            return;
        }
    };
    let value: TokenStream = tokens.collect();
    if value.is_empty() {
        errors.at(
            eq.span(),
            format!("`{key}` needs a value: `{}`", opt.example()),
        );
        return;
    }
    let Some(lit) = parse_literal(opt, value.clone(), errors) else {
        return;
    };
    // Errors below underline `value` rather than `lit`: a negative number is two tokens,
    // and the literal syn makes of them only carries the span of the `-`.
    let value = Value { lit, tokens: value };
    match opt {
        Opt::Topic => options.topic = string_value(opt, &value, errors),
        Opt::Group => options.group = string_value(opt, &value, errors),
        Opt::Partitions => options.partitions = int_value(opt, &value, errors),
        Opt::Retries => options.retries = int_value(opt, &value, errors),
        Opt::Batch => options.batch = int_value(opt, &value, errors),
        Opt::MaxWaitMs => options.max_wait_ms = int_value(opt, &value, errors),
        Opt::Concurrency => options.concurrency = int_value(opt, &value, errors),
        Opt::Maxlen => options.maxlen = int_value(opt, &value, errors),
        Opt::TimeoutMs => options.timeout_ms = int_value(opt, &value, errors),
        Opt::DlqMaxlen => options.dlq_maxlen = int_value(opt, &value, errors),
    }
}

/// An option's value: the literal, and the tokens it was written as.
struct Value {
    lit: Lit,
    tokens: TokenStream,
}

/// The value as one literal of the option's kind; anything else is reported with the
/// form to write instead.
fn parse_literal(opt: Opt, value: TokenStream, errors: &mut Errors) -> Option<Lit> {
    let kind_error = match opt.int_range() {
        None => format!(
            "`{}` must be a string literal: `{}`",
            opt.name(),
            opt.example()
        ),
        Some(_) => format!(
            "`{}` must be an integer literal: `{}`",
            opt.name(),
            opt.example()
        ),
    };
    let parser = |input: ParseStream| {
        let lit = input.parse::<Lit>().ok();
        let rest: TokenStream = input.parse()?;
        Ok((lit, rest))
    };
    let (lit, rest) = match parser.parse2(value.clone()) {
        Ok(parsed) => parsed,
        Err(_) => (None, TokenStream::new()),
    };
    let lit = match lit {
        Some(lit) => lit,
        None => {
            errors.over(value, kind_error);
            return None;
        }
    };
    if !rest.is_empty() {
        errors.over(
            rest,
            format!(
                "unexpected tokens after the value of `{}`; options are separated by `,`",
                opt.name()
            ),
        );
        return None;
    }
    let kind_matches = match opt.int_range() {
        None => matches!(lit, Lit::Str(_)),
        Some(_) => matches!(lit, Lit::Int(_)),
    };
    if !kind_matches {
        errors.over(&value, kind_error);
        return None;
    }
    if !lit.suffix().is_empty() {
        errors.over(
            &value,
            format!(
                "`{}` takes a literal without a type suffix: `{}`",
                opt.name(),
                opt.example()
            ),
        );
        return None;
    }
    Some(lit)
}

/// Topic and group names end up inside Redis keys and `{hash tags}`, so braces and
/// whitespace would change which key or cluster slot they denote.
fn string_value(opt: Opt, value: &Value, errors: &mut Errors) -> Option<String> {
    let Lit::Str(lit) = &value.lit else {
        return None;
    };
    let tokens = &value.tokens;
    let text = lit.value();
    let name = opt.name();
    if text.is_empty() {
        errors.over(
            tokens,
            format!("`{name}` must not be empty: `{}`", opt.example()),
        );
        return None;
    }
    if text.contains(['{', '}']) {
        errors.over(
            tokens,
            format!("`{name}` must not contain `{{` or `}}`: Redis hash tags are built from it"),
        );
        return None;
    }
    if text.contains(char::is_whitespace) {
        errors.over(
            tokens,
            format!("`{name}` must not contain whitespace: Redis keys are built from it"),
        );
        return None;
    }
    Some(text)
}

fn int_value<T: TryFrom<u128>>(opt: Opt, value: &Value, errors: &mut Errors) -> Option<T> {
    let Lit::Int(lit) = &value.lit else {
        return None;
    };
    let tokens = &value.tokens;
    let (min, max) = opt.int_range()?;
    let name = opt.name();
    if lit.base10_digits().starts_with('-') {
        errors.over(
            tokens,
            format!("`{name}` must not be negative: `{}`", opt.example()),
        );
        return None;
    }
    let value = match lit.base10_parse::<u128>() {
        Ok(value) if value <= max => value,
        _ => {
            errors.over(tokens, format!("`{name}` is too large: at most {max}"));
            return None;
        }
    };
    if value < min {
        let message = match opt {
            Opt::Batch => {
                "`batch` must be at least 1: use `batch = 1` for batches of one job \
                           taking `Vec<Job<T>>`, or remove it for a one-job handler taking `Job<T>`"
                    .to_string()
            }
            Opt::Concurrency => "`concurrency` must be at least 1: it is how many calls of the \
                                 handler run at once"
                .to_string(),
            Opt::Partitions => "`partitions` must be at least 1: `partitions = 4`".to_string(),
            Opt::TimeoutMs => "`timeout_ms` must be at least 1: it is how long one call may \
                               run before it is cancelled"
                .to_string(),
            Opt::Maxlen => "`maxlen` must be at least 1: it is how many processed entries each \
                            partition stream keeps"
                .to_string(),
            Opt::DlqMaxlen => "`dlq_maxlen` must be at least 1: it is how many dead letters \
                               each partition keeps"
                .to_string(),
            _ => format!("`{name}` must be at least {min}"),
        };
        errors.over(tokens, message);
        return None;
    }
    T::try_from(value).ok()
}

/// What the glue needs from the item. Attributes and body are skipped as raw tokens and
/// never looked at: the item is re-emitted from the original tokens, and a body syn
/// cannot parse must not hide rustc's own diagnostics.
struct FnHeader {
    vis: Visibility,
    sig: Signature,
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

fn check_signature(sig: &Signature, errors: &mut Errors) {
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
fn single_parameter<'a>(
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
fn payload_type(
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
