//! What a handler receives: [`Job`], and the [`JobId`] that names a job from enqueue to
//! the dead-letter queue.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The id of a job: returned by `enqueue`, carried by [`Job::id`], stored in the stream
/// entry's `id` field and shown by the tools and the dead-letter queue.
///
/// Ids are UUIDv7 strings, so they sort by creation time (to the millisecond).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

impl JobId {
    pub(crate) fn generate() -> Self {
        use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
        use uuid::{Timestamp, Uuid};
        thread_local! {
            static COUNTER: ContextV7 = const { ContextV7::new() };
        }
        // A counter per thread: `Uuid::now_v7` shares one behind a mutex, which the
        // threads of a busy producer contend for. Ids of one thread still sort in
        // creation order; between threads, by millisecond.
        static CONTEXT: ThreadLocalContext<ContextV7> = ThreadLocalContext::new(&COUNTER);
        // Formatted on the stack: one allocation per id, the `Arc`'s.
        let mut text = Uuid::encode_buffer();
        JobId(
            Uuid::new_v7(Timestamp::now(&CONTEXT))
                .hyphenated()
                .encode_lower(&mut text)
                .into(),
        )
    }

    pub(crate) fn from_stored(id: &str) -> Self {
        JobId(id.into())
    }

    /// The id as stored in Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serialized as its string form.
impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|id| JobId(id.into()))
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for JobId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

/// A job id as the tools take it (e.g. to cancel a delayed job).
impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        JobId(id.into())
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        JobId(id.into())
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One delivery of a job to a handler, with its typed payload.
#[derive(Debug, Clone)]
pub struct Job<T> {
    payload: T,
    meta: JobMeta,
}

/// Everything about a delivery except the payload.
#[derive(Debug, Clone)]
pub(crate) struct JobMeta {
    pub(crate) id: JobId,
    /// The epoch of the partition's lease this delivery runs under.
    pub(crate) fencing_token: u64,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) attempt: u32,
    pub(crate) enqueued_at_ms: u64,
    /// The enqueuing span's trace context, for the handler's span.
    pub(crate) trace: Option<crate::trace::Carried>,
}

impl<T> Job<T> {
    pub(crate) fn with_meta(payload: T, meta: JobMeta) -> Self {
        Job { payload, meta }
    }

    /// A first delivery of `payload` on partition 0 of `topic`, with a fresh id: for
    /// calling a handler directly, e.g. in a unit test.
    ///
    /// ```
    /// use redisaq::{Job, JobError};
    ///
    /// async fn greet(job: Job<String>) -> Result<(), JobError> {
    ///     assert_eq!(job.attempt(), 1);
    ///     println!("hello {}", job.payload());
    ///     Ok(())
    /// }
    /// # futures_executor_stub::block_on(async {
    /// greet(Job::new("greetings", "world".to_string())).await.unwrap();
    /// # });
    /// # mod futures_executor_stub {
    /// #     pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #         tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// #     }
    /// # }
    /// ```
    pub fn new(topic: &str, payload: T) -> Self {
        Job::with_meta(
            payload,
            JobMeta {
                id: JobId::generate(),
                fencing_token: 0,
                topic: topic.into(),
                partition: 0,
                attempt: 1,
                enqueued_at_ms: now_ms(),
                trace: None,
            },
        )
    }

    /// The payload passed to `enqueue`.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// Takes the payload out of the job.
    pub fn into_payload(self) -> T {
        self.payload
    }

    /// The id that `enqueue` returned for this job.
    pub fn id(&self) -> &JobId {
        &self.meta.id
    }

    /// The topic the job was enqueued to.
    pub fn topic(&self) -> &str {
        &self.meta.topic
    }

    /// The partition the job is stored in.
    pub fn partition(&self) -> u32 {
        self.meta.partition
    }

    /// Which attempt this is: 1 on first delivery, 2 on the first retry, and so on. A
    /// delivery cut short by a crash counts as an attempt.
    pub fn attempt(&self) -> u32 {
        self.meta.attempt
    }

    /// The epoch of the partition's lease this delivery runs under. It grows with every
    /// change of the partition's owner (and whenever an owner takes it anew), so a side
    /// effect of your own can be fenced with it: store the highest token seen with the
    /// effect, and refuse a write carrying a lower one: it comes from a worker that lost
    /// the partition meanwhile (paused, cut off) while another already runs its jobs.
    /// `0` for a job made with [`Job::new`].
    pub fn fencing_token(&self) -> u64 {
        self.meta.fencing_token
    }

    /// When the job was enqueued.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.meta.enqueued_at_ms)
    }
}

/// A delivered job before its payload is decoded into the handler's type.
#[derive(Debug, Clone)]
pub struct RawJob {
    pub(crate) meta: JobMeta,
    pub(crate) payload: Arc<str>,
}

impl RawJob {
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Job<T>, serde_json::Error> {
        let payload = serde_json::from_str(&self.payload)?;
        Ok(Job::with_meta(payload, self.meta.clone()))
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
