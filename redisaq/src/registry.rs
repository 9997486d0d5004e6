//! The handlers that `#[job]` registers, and how the runtime finds them.
//!
//! Registration goes through [`submit_handler!`](crate::__private::submit_handler) so the
//! mechanism (`inventory`, or with the cargo feature `linkme` a linkme distributed slice)
//! can change without touching generated code.

use std::collections::HashMap;

use futures_util::future::BoxFuture;

use crate::error::{Error, JobError};
use crate::job::RawJob;

/// The glue between the runtime and one `#[job]` function: it takes the delivered jobs
/// (one, or a batch) and returns one result per job, in order.
pub type HandlerFn = fn(Vec<RawJob>) -> BoxFuture<'static, Vec<Result<(), JobError>>>;

/// Stream-level settings of a topic, as declared by `#[job]`. `None` means the default.
#[derive(Debug)]
pub struct TopicSpec {
    /// The topic name.
    pub topic: &'static str,
    /// Partition count used when the topic does not exist yet.
    pub partitions: Option<u32>,
    /// Retention of processed entries per partition stream.
    pub maxlen: Option<u64>,
    /// How long an id given at enqueue is remembered, in seconds.
    pub dedupe_window_s: Option<u64>,
}

/// One registered `#[job]` function. `None` fields take the runtime's defaults.
#[derive(Debug)]
pub struct HandlerDef {
    /// The topic's stream settings.
    pub spec: &'static TopicSpec,
    /// The consumer group.
    pub group: &'static str,
    /// `module_path!()::fn_name`, for messages.
    pub name: &'static str,
    /// Retries after the first attempt before the job is dead-lettered.
    pub retries: Option<u32>,
    /// `Some(n)` for a batch handler taking up to `n` jobs.
    pub batch: Option<u32>,
    /// How long a batch waits to fill after its first job arrived.
    pub max_wait_ms: Option<u64>,
    /// How many calls of this handler run at once.
    pub concurrency: Option<u32>,
    /// How long one call may run before it is cancelled.
    pub timeout_ms: Option<u64>,
    /// Dead letters kept per partition; the oldest go first.
    pub dlq_maxlen: Option<u64>,
    /// A cron schedule: the workers enqueue one [`crate::Tick`] per fire time.
    pub cron: Option<&'static str>,
    /// The time zone of `cron` (default UTC).
    pub tz: Option<&'static str>,
    /// At most this many of the group's jobs start per period (`"100/s"`).
    pub rate: Option<&'static str>,
    /// At most this many jobs of one key start per period (`"5/s"`).
    pub key_rate: Option<&'static str>,
    /// Calls the function.
    pub call: HandlerFn,
}

inventory::collect!(HandlerDef);

/// The handlers registered through linkme (cargo feature `linkme`).
#[cfg(feature = "linkme")]
#[linkme::distributed_slice]
pub static HANDLERS: [HandlerDef];

/// Default partition count of a new topic.
pub const DEFAULT_PARTITIONS: u32 = 4;
/// Default number of retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default number of processed entries kept per partition stream.
pub const DEFAULT_MAXLEN: u64 = 100_000;
/// Default max wait of a batch handler.
pub const DEFAULT_MAX_WAIT_MS: u64 = 100;
/// Default number of dead letters kept per partition; the oldest go first.
pub const DEFAULT_DLQ_MAXLEN: u64 = 10_000;
/// Default dedupe window of ids given at enqueue: 24 hours.
pub const DEFAULT_DEDUPE_WINDOW_S: u64 = 24 * 60 * 60;
/// Default time one call may run before it is cancelled: 30 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 30 * 60 * 1000;

impl HandlerDef {
    /// The handler's retries, default applied.
    pub(crate) fn retries(&self) -> u32 {
        self.retries.unwrap_or(DEFAULT_RETRIES)
    }

    /// How many jobs one call takes.
    pub(crate) fn batch_size(&self) -> usize {
        self.batch.unwrap_or(1).max(1) as usize
    }

    /// How long one call may run, default applied.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    /// Dead letters kept per partition, default applied.
    pub(crate) fn dlq_maxlen(&self) -> u64 {
        self.dlq_maxlen.unwrap_or(DEFAULT_DLQ_MAXLEN)
    }

    pub(crate) fn default_concurrency(&self) -> usize {
        match self.batch {
            // A batch already amortises the round trips; two let one batch fill while
            // the other runs.
            Some(_) => 2,
            None => 32,
        }
    }
}

impl TopicSpec {
    pub(crate) fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(DEFAULT_PARTITIONS)
    }

    pub(crate) fn maxlen(&self) -> u64 {
        self.maxlen.unwrap_or(DEFAULT_MAXLEN)
    }

    /// How long an id given at enqueue is remembered, default applied.
    pub(crate) fn dedupe_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dedupe_window_s.unwrap_or(DEFAULT_DEDUPE_WINDOW_S))
    }
}

/// Which registered handlers a worker runs: all, or those of some topics or groups.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    pub topics: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
}

/// Every registered handler, unchecked.
pub(crate) fn all() -> Vec<&'static HandlerDef> {
    let registered = inventory::iter::<HandlerDef>.into_iter();
    #[cfg(feature = "linkme")]
    let registered = registered.chain(HANDLERS.iter());
    registered.collect()
}

/// Every registered handler, checked (one per (topic, group)), narrowed to `selection`;
/// at least one must remain.
pub(crate) fn handlers(selection: &Selection) -> Result<Vec<&'static HandlerDef>, Error> {
    let all = all();
    let mut seen: HashMap<(&str, &str), &HandlerDef> = HashMap::new();
    for def in &all {
        if let Some(first) = seen.insert((def.spec.topic, def.group), def) {
            return Err(Error::DuplicateHandler {
                topic: def.spec.topic.to_string(),
                group: def.group.to_string(),
                first: first.name.to_string(),
                second: def.name.to_string(),
            });
        }
    }
    if all.is_empty() {
        return Err(Error::NoHandlers);
    }
    let mut selected = all.clone();
    if let Some(topics) = &selection.topics {
        check_known(
            "Worker::topics",
            "topic",
            topics,
            all.iter().map(|d| d.spec.topic),
        )?;
        selected.retain(|def| topics.iter().any(|t| t == def.spec.topic));
    }
    if let Some(groups) = &selection.groups {
        check_known(
            "Worker::groups",
            "group",
            groups,
            all.iter().map(|d| d.group),
        )?;
        selected.retain(|def| groups.iter().any(|g| g == def.group));
    }
    if selected.is_empty() {
        return Err(Error::config(format!(
            "no #[job] handler matches both Worker::topics and Worker::groups; registered \
             handlers: {}",
            all.iter()
                .map(|d| format!("{} (topic `{}`, group `{}`)", d.name, d.spec.topic, d.group))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(selected)
}

fn check_known<'a>(
    setting: &str,
    what: &str,
    wanted: &[String],
    registered: impl Iterator<Item = &'a str>,
) -> Result<(), Error> {
    let mut registered: Vec<&str> = registered.collect();
    registered.sort_unstable();
    registered.dedup();
    match wanted.iter().find(|w| !registered.contains(&w.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(Error::config(format!(
            "{setting} names `{unknown}`, but no #[job] handler has that {what}; registered: {}",
            registered.join(", ")
        ))),
    }
}
