//! Testing without Redis (cargo feature `testing`): while a [`Capture`] lives, the
//! `enqueue*` functions of its test store jobs in memory instead of sending them to
//! Redis. Look at what was enqueued with [`Capture::enqueued`], and run the registered
//! handlers on it with [`Capture::drain`]: each group of a topic gets every job, failed
//! jobs are retried at once (no backoff) up to the handler's `retries`, jobs the handlers
//! enqueue are drained too, and each job's outcome is reported.
//!
//! A capture belongs to the async runtime of the test that made it (each `#[tokio::test]`
//! has its own), so tests capturing at the same time do not see each other's jobs.
//!
//! ```
//! use redisaq::{job, testing, Job, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Email { to: String }
//!
//! #[job(topic = "welcome", retries = 1)]
//! async fn welcome(job: Job<Email>) -> Result<(), JobError> {
//!     if job.payload().to.is_empty() {
//!         return Err(JobError::fatal("no address"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let capture = testing::capture();
//! welcome::enqueue(Email { to: "a@example.com".into() }).await.unwrap();
//! welcome::enqueue(Email { to: "".into() }).await.unwrap();
//! assert_eq!(capture.enqueued::<Email>("welcome").len(), 2);
//!
//! let outcomes = capture.drain().await;
//! assert_eq!(outcomes.iter().filter(|o| o.succeeded()).count(), 1);
//! let failed = outcomes.iter().find(|o| !o.succeeded()).unwrap();
//! assert_eq!(failed.attempts, 1); // fatal: no retry
//! assert_eq!(failed.error.as_deref(), Some("no address"));
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Disposition;
use crate::job::{now_ms, JobId, JobMeta, RawJob};
use crate::registry::{HandlerDef, TopicSpec};

/// A job as captured.
#[derive(Debug, Clone)]
struct Captured {
    id: JobId,
    topic: &'static str,
    payload: String,
    enqueued_at_ms: u64,
}

#[derive(Default)]
struct Jobs {
    /// Every job enqueued, in order.
    all: Vec<Captured>,
    /// Not yet drained.
    queue: VecDeque<Captured>,
}

type Captures = HashMap<tokio::runtime::Id, Arc<Mutex<Jobs>>>;

fn captures() -> &'static Mutex<Captures> {
    static CAPTURES: std::sync::OnceLock<Mutex<Captures>> = std::sync::OnceLock::new();
    CAPTURES.get_or_init(Mutex::default)
}

/// How many captures live: while none, an enqueue looks no further.
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts capturing the enqueues of the current test (its async runtime) until the guard
/// is dropped.
///
/// # Panics
///
/// Outside an async runtime, or if this runtime captures already.
pub fn capture() -> Capture {
    let runtime = tokio::runtime::Handle::try_current()
        .expect("testing::capture() needs the test's async runtime (#[tokio::test])")
        .id();
    let jobs = Arc::new(Mutex::new(Jobs::default()));
    let previous = lock(captures()).insert(runtime, jobs.clone());
    assert!(
        previous.is_none(),
        "this test captures already: keep one Capture per test"
    );
    ACTIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Capture { runtime, jobs }
}

/// Stores a job if the current runtime captures; gives it back otherwise.
pub(crate) fn store(spec: &'static TopicSpec, id: &JobId, payload: String) -> Option<String> {
    if ACTIVE.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        return Some(payload);
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Some(payload);
    };
    let jobs = lock(captures()).get(&handle.id()).cloned();
    let Some(jobs) = jobs else {
        return Some(payload);
    };
    let job = Captured {
        id: id.clone(),
        topic: spec.topic,
        payload,
        enqueued_at_ms: now_ms(),
    };
    let mut jobs = lock(&jobs);
    jobs.all.push(job.clone());
    jobs.queue.push_back(job);
    None
}

/// The jobs a test enqueued; see the [module docs](self).
#[must_use = "capturing stops when the Capture is dropped"]
pub struct Capture {
    runtime: tokio::runtime::Id,
    jobs: Arc<Mutex<Jobs>>,
}

/// What became of one job in one group when drained.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// The job's id (what `enqueue` returned).
    pub id: JobId,
    /// Its topic.
    pub topic: String,
    /// The group whose handler ran it.
    pub group: String,
    /// Calls it took.
    pub attempts: u32,
    /// The last error's text, if it never succeeded: it would be dead-lettered.
    pub error: Option<String>,
}

impl Outcome {
    /// Whether the handler succeeded in the end.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

impl Capture {
    /// The payloads enqueued to `topic` so far (drained or not), in order. Payloads of
    /// another type are left out.
    pub fn enqueued<T: serde::de::DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        lock(&self.jobs)
            .all
            .iter()
            .filter(|job| job.topic == topic)
            .filter_map(|job| serde_json::from_str(&job.payload).ok())
            .collect()
    }

    /// The ids enqueued to `topic` so far, in order.
    pub fn ids(&self, topic: &str) -> Vec<JobId> {
        lock(&self.jobs)
            .all
            .iter()
            .filter(|job| job.topic == topic)
            .map(|job| job.id.clone())
            .collect()
    }

    /// Runs every registered handler of each captured job's topic on it (each group gets
    /// every job), retrying failed jobs at once up to the handler's `retries`, until no
    /// job is left, those the handlers enqueue included. One outcome per job and group,
    /// in the order they ran.
    pub async fn drain(&self) -> Vec<Outcome> {
        let handlers: Vec<&'static HandlerDef> = crate::registry::all();
        let mut outcomes = Vec::new();
        loop {
            let Some(job) = lock(&self.jobs).queue.pop_front() else {
                return outcomes;
            };
            for def in handlers.iter().filter(|def| def.spec.topic == job.topic) {
                outcomes.push(run(def, &job).await);
            }
        }
    }
}

/// Runs one job through one handler, with its retries and timeout.
async fn run(def: &'static HandlerDef, job: &Captured) -> Outcome {
    let max_attempts = def.retries().saturating_add(1);
    let mut attempt = 0;
    let error = loop {
        attempt += 1;
        let raw = RawJob {
            meta: JobMeta {
                id: job.id.clone(),
                fencing_token: 0,
                topic: job.topic.into(),
                partition: 0,
                attempt,
                enqueued_at_ms: job.enqueued_at_ms,
                trace: None,
            },
            payload: job.payload.as_str().into(),
        };
        let result = match tokio::time::timeout(def.timeout(), (def.call)(vec![raw])).await {
            Ok(mut results) => results.pop().unwrap_or(Ok(())),
            Err(_) => Err(crate::JobError::retry(format!(
                "timed out after {} ms",
                def.timeout().as_millis()
            ))),
        };
        match result {
            Ok(()) => break None,
            Err(e) if e.disposition() == Disposition::Fatal || attempt >= max_attempts => {
                break Some(e.to_string())
            }
            Err(_) => {}
        }
    };
    Outcome {
        id: job.id.clone(),
        topic: job.topic.to_string(),
        group: def.group.to_string(),
        attempts: attempt,
        error,
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        lock(captures()).remove(&self.runtime);
        ACTIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
