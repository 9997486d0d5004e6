//! The options of `#[job(...)]`: each `name = value` parsed and checked on its own, so
//! one mistake does not hide the next.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::Lit;

use super::ctxt::Errors;

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
    /// How long ids given at enqueue are remembered, in seconds.
    pub(crate) dedupe_window_s: Option<u64>,
    /// A cron schedule: one job per fire time, enqueued by the workers.
    pub(crate) cron: Option<String>,
    /// The time zone of `cron`.
    pub(crate) tz: Option<String>,
    /// The group's job starts per period (`"100/s"`).
    pub(crate) rate: Option<String>,
    /// Job starts per period of one key.
    pub(crate) key_rate: Option<String>,
    /// Where the generated code finds redisaq, when not at `::redisaq` (re-exported).
    pub(crate) krate: Option<syn::Path>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opt {
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
    DedupeWindowS,
    Cron,
    Tz,
    Rate,
    KeyRate,
    Crate,
}

impl Opt {
    const ALL: [Opt; 16] = [
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
        Opt::DedupeWindowS,
        Opt::Cron,
        Opt::Tz,
        Opt::Rate,
        Opt::KeyRate,
        Opt::Crate,
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
            Opt::DedupeWindowS => "dedupe_window_s",
            Opt::Cron => "cron",
            Opt::Tz => "tz",
            Opt::Rate => "rate",
            Opt::KeyRate => "key_rate",
            Opt::Crate => "crate",
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
            Opt::DedupeWindowS => "dedupe_window_s = 86_400",
            Opt::Cron => "cron = \"0 0 3 * * *\"",
            Opt::Tz => "tz = \"Europe/Berlin\"",
            Opt::Rate => "rate = \"100/s\"",
            Opt::KeyRate => "key_rate = \"5/s\"",
            Opt::Crate => "crate = \"::my_app::redisaq\"",
        }
    }

    /// Smallest and largest accepted value of an integer option; `None` for strings.
    fn int_range(self) -> Option<(u128, u128)> {
        let u32_max = u128::from(u32::MAX);
        let u64_max = u128::from(u64::MAX);
        match self {
            Opt::Topic
            | Opt::Group
            | Opt::Cron
            | Opt::Tz
            | Opt::Rate
            | Opt::KeyRate
            | Opt::Crate => None,
            Opt::Retries => Some((0, u32_max)),
            Opt::MaxWaitMs => Some((0, u64_max)),
            Opt::Partitions | Opt::Batch | Opt::Concurrency => Some((1, u32_max)),
            Opt::Maxlen | Opt::TimeoutMs | Opt::DlqMaxlen | Opt::DedupeWindowS => {
                Some((1, u64_max))
            }
        }
    }
}

/// Where each option was first written, to report repeats at both places.
#[derive(Default)]
pub(crate) struct Seen {
    first: [Option<Span>; Opt::ALL.len()],
    /// The whole `max_wait_ms = ...`, which is an error without `batch`.
    pub(crate) max_wait_ms: Option<TokenStream>,
    /// The whole `tz = ...`, which is an error without `cron`.
    pub(crate) tz: Option<TokenStream>,
}

impl Seen {
    pub(crate) fn has(&self, opt: Opt) -> bool {
        self.first[opt as usize].is_some()
    }
}

/// Splits the arguments at top-level commas; groups are single token trees, so commas
/// inside brackets stay put. A trailing comma is fine, an empty option is not.
pub(crate) fn split_at_commas(args: TokenStream, errors: &mut Errors) -> Vec<Vec<TokenTree>> {
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
pub(crate) fn parse_option(
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
    } else if opt == Opt::Tz {
        seen.tz = Some(whole);
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
        Opt::DedupeWindowS => options.dedupe_window_s = int_value(opt, &value, errors),
        Opt::Cron => options.cron = cron_value(&value, errors),
        Opt::Tz => options.tz = tz_value(&value, errors),
        Opt::Rate => options.rate = rate_value(opt, &value, errors),
        Opt::KeyRate => options.key_rate = rate_value(opt, &value, errors),
        Opt::Crate => options.krate = path_value(&value, errors),
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

/// The path of `crate = "..."`: where the generated code finds redisaq.
fn path_value(value: &Value, errors: &mut Errors) -> Option<syn::Path> {
    let Lit::Str(text) = &value.lit else {
        errors.over(
            &value.tokens,
            "`crate` is a path in a string: `crate = \"::my_app::redisaq\"`",
        );
        return None;
    };
    match text.parse::<syn::Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            errors.over(
                &value.tokens,
                format!(
                    "`crate` must be the path redisaq is reachable at, e.g. \
                     `crate = \"::my_app::redisaq\"`, not {:?}",
                    text.value()
                ),
            );
            None
        }
    }
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

/// A cron expression as the runtime reads it: 5 fields (minute first) or 6 (seconds
/// first), checked here so a mistake is a compile error at the literal.
fn cron_value(value: &Value, errors: &mut Errors) -> Option<String> {
    let Lit::Str(lit) = &value.lit else {
        return None;
    };
    let text = lit.value();
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build();
    match parser.parse(&text) {
        Ok(_) => Some(text),
        Err(e) => {
            errors.over(
                &value.tokens,
                format!(
                    "`cron = {text:?}` is not a cron expression ({e}): write 5 fields (minute \
                     hour day-of-month month day-of-week) or 6 (seconds first), e.g. \
                     `cron = \"0 0 3 * * *\"` for 03:00:00 every day"
                ),
            );
            None
        }
    }
}

/// A time zone of the IANA database, checked here so a typo is a compile error.
fn tz_value(value: &Value, errors: &mut Errors) -> Option<String> {
    let Lit::Str(lit) = &value.lit else {
        return None;
    };
    let text = lit.value();
    match text.parse::<chrono_tz::Tz>() {
        Ok(_) => Some(text),
        Err(_) => {
            errors.over(
                &value.tokens,
                format!(
                    "`tz = {text:?}` is not a time zone of the IANA database: write e.g. \
                     `tz = \"Europe/Berlin\"` or `tz = \"UTC\"`"
                ),
            );
            None
        }
    }
}

/// A rate: `N/s`, `N/m` or `N/h` with N at least 1, as the runtime reads it.
fn rate_value(opt: Opt, value: &Value, errors: &mut Errors) -> Option<String> {
    let Lit::Str(lit) = &value.lit else {
        return None;
    };
    let text = lit.value();
    let valid = text.split_once('/').is_some_and(|(limit, unit)| {
        limit.trim().parse::<u32>().is_ok_and(|n| n > 0) && matches!(unit.trim(), "s" | "m" | "h")
    });
    if valid {
        return Some(text);
    }
    errors.over(
        &value.tokens,
        format!(
            "`{} = {text:?}` is not a rate: write how many jobs may start per second, minute \
             or hour, e.g. `{}`, `{} = \"30/m\"` or `{} = \"1000/h\"`",
            opt.name(),
            opt.example(),
            opt.name(),
            opt.name()
        ),
    );
    None
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
            Opt::DedupeWindowS => "`dedupe_window_s` must be at least 1: it is how many \
                                   seconds an id given at enqueue is remembered"
                .to_string(),
            _ => format!("`{name}` must be at least {min}"),
        };
        errors.over(tokens, message);
        return None;
    }
    T::try_from(value).ok()
}
