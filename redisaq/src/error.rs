//! The two error types: [`Error`] for the library's own operations and [`JobError`] for
//! what a handler reports about one job.

use std::fmt;

/// A boxed error as handlers produce it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong when enqueuing jobs, starting a worker or talking to Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis answered with an error, or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A payload could not be turned into JSON.
    #[error("could not serialize the job payload to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A configuration value is invalid; the message says which one and what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `run()` found nothing to run.
    #[error(
        "no job handlers to run: annotate an async fn with #[redisaq::job(topic = \"...\")] in \
         this binary (and make sure its module is compiled in)"
    )]
    NoHandlers,
    /// Two `#[job]` functions consume the same topic in the same group.
    #[error(
        "two handlers consume topic `{topic}` in group `{group}`: `{first}` and `{second}`; \
         give one of them another `group = \"...\"` (each group gets every job) or remove it"
    )]
    DuplicateHandler {
        /// The topic both handlers consume.
        topic: String,
        /// The group both handlers declare.
        group: String,
        /// The first handler's path.
        first: String,
        /// The second handler's path.
        second: String,
    },
    /// A topic is stored in a layout newer than this version knows: it is left untouched.
    #[error(
        "topic `{topic}` is stored in layout {found} of redisaq's data in Redis, newer than \
         this version knows (up to {known}): upgrade redisaq in this program; it leaves the \
         topic untouched"
    )]
    Layout {
        /// The topic.
        topic: String,
        /// The layout found in Redis.
        found: u32,
        /// The newest layout this version knows.
        known: u32,
    },
    /// No such topic in Redis.
    #[error("there is no topic `{0}`; `redisaq topics` lists the topics")]
    UnknownTopic(String),
    /// The topic has no such consumer group.
    #[error("topic `{topic}` has no group `{group}`; `redisaq groups {topic}` lists them")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group asked for.
        group: String,
    },
    /// A dead-letter id that several partitions' dead-letter streams hold.
    #[error(
        "`{id}` is the dead-letter id of {count} dead letters (each partition keeps its own \
         dead-letter stream, and their entry ids can repeat): give the job id instead \
         (`redisaq dlq list` shows it)"
    )]
    AmbiguousId {
        /// The id given.
        id: String,
        /// How many dead letters have it.
        count: usize,
    },
    /// An operation on a topic's partitions was refused.
    #[error("{0}")]
    Partitions(String),
    /// An enqueue failed or ran out of time; the lists say what became of each job.
    #[error(
        "enqueue failed: {reason} ({} stored, {} not stored, {} unknown: the reply was lost, \
         they may be stored)",
        stored.len(), not_stored.len(), unknown.len()
    )]
    Enqueue {
        /// Jobs Redis stored.
        stored: Vec<crate::JobId>,
        /// Jobs surely not stored: not sent, or refused by Redis.
        not_stored: Vec<crate::JobId>,
        /// Jobs whose fate is unknown (sent, but the answer was lost or came too late).
        unknown: Vec<crate::JobId>,
        /// What went wrong and what to do.
        reason: String,
    },
    /// Jobs were still running when the shutdown deadline passed; they stay pending in
    /// Redis and are delivered again.
    #[error("{0} job(s) were still running at the shutdown deadline; they will be redelivered")]
    ShutdownTimeout(usize),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub(crate) fn enqueue(
        stored: Vec<crate::JobId>,
        not_stored: Vec<crate::JobId>,
        unknown: Vec<crate::JobId>,
        reason: String,
    ) -> Self {
        Error::Enqueue {
            stored,
            not_stored,
            unknown,
            reason,
        }
    }

    /// Whether trying again later may succeed (see [`crate::store::conn::is_transient`]).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Redis(e) if crate::store::conn::is_transient(e))
    }
}

/// Whether a failed job may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Retry,
    Fatal,
}

/// The failure of one job, as returned by a handler.
///
/// `?` turns any `std::error::Error + Send + Sync + 'static` into a retryable `JobError`;
/// [`JobError::fatal`] sends the job straight to the dead-letter queue. The error's text is
/// what the dead-letter entry shows.
///
/// ```
/// use redisaq::JobError;
///
/// fn parse(input: &str) -> Result<u32, JobError> {
///     if input.is_empty() {
///         return Err(JobError::fatal("empty input can never succeed"));
///     }
///     Ok(input.parse::<u32>()?) // a ParseIntError becomes a retryable JobError
/// }
/// assert!(parse("").unwrap_err().is_fatal());
/// assert!(!parse("x").unwrap_err().is_fatal());
/// ```
pub struct JobError {
    disposition: Disposition,
    source: BoxError,
}

impl JobError {
    /// A failure worth retrying (the default for `?`): the job runs again after a backoff,
    /// until the handler's `retries` are used up.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        JobError {
            disposition: Disposition::Retry,
            source: error.into(),
        }
    }

    /// A failure that retrying cannot fix: the job goes to the dead-letter queue at once.
    pub fn fatal(error: impl Into<BoxError>) -> Self {
        JobError {
            disposition: Disposition::Fatal,
            source: error.into(),
        }
    }

    /// True when the job will not be retried.
    pub fn is_fatal(&self) -> bool {
        self.disposition == Disposition::Fatal
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        JobError::retry(error)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("fatal", &self.is_fatal())
            .field("error", &self.source)
            .finish()
    }
}
