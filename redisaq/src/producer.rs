//! Enqueueing: JSON payloads into the right partition stream, one `XADD` per job and one
//! pipelined round trip per batch.

use crate::store::conn::Conn;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::Error;
use crate::handler::JobPayload;
use crate::job::{now_ms, JobId};
use crate::keys;
use crate::registry::TopicSpec;
use crate::store;
use crate::store::stream::{self, NewJob};
use crate::store::topic;
use crate::wire::JobFields;

/// How long a producer trusts its cached partition count; a raised count reaches
/// producers within this time.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(2);

/// Options of one enqueue.
///
/// ```
/// let options = redisaq::EnqueueOptions::new().key("user-42");
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    key: Option<String>,
    timeout: Option<Duration>,
    wait_replicas: Option<u32>,
}

impl EnqueueOptions {
    /// No options: the job goes to the next partition round-robin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jobs with the same key go to the same partition and so are processed in the order
    /// they were enqueued (given per-partition ordering, see the README).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long this enqueue may take, connecting included, before it fails with
    /// [`Error::Enqueue`] (default `REDISAQ_ENQUEUE_TIMEOUT_MS`, else 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Enqueue returns only once `replicas` replicas of the partition's Redis have the
    /// job (`WAIT`), so a failover right after cannot lose it; if they do not confirm
    /// it within the enqueue deadline, enqueue fails with [`Error::Enqueue`] and the job
    /// among the `unknown` ones (the master has it; a failover now may lose it).
    ///
    /// `WAIT` holds the producer's connection until the replicas answer: other enqueues
    /// of this process wait behind it.
    pub fn wait_replicas(mut self, replicas: u32) -> Self {
        self.wait_replicas = Some(replicas).filter(|&n| n > 0);
        self
    }
}

/// Default enqueue deadline.
const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadline of an enqueue: the option, else `REDISAQ_ENQUEUE_TIMEOUT_MS`, else 5 s.
fn deadline(options: Option<Duration>) -> Result<Duration, Error> {
    if let Some(timeout) = options {
        return Ok(timeout);
    }
    Ok(Config::enqueue_timeout()?.unwrap_or(DEFAULT_ENQUEUE_TIMEOUT))
}

/// Runs one enqueue within its deadline. `jobs` are the ids it adds: if it fails, the
/// error says which of them Redis stored, which it surely did not, and which are unknown
/// because the reply was lost (they may be stored).
async fn within_deadline(
    timeout: Duration,
    ids: &[JobId],
    sending: &AtomicBool,
    work: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Error> {
    let failure = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failure)) => failure,
        Err(_) if sending.load(Ordering::Relaxed) => Failure::TimedOut,
        Err(_) => Failure::NotSent(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no connection to Redis within the enqueue deadline",
        )))),
    };
    Err(failure.into_error(ids, timeout))
}

/// How an enqueue failed.
enum Failure {
    /// Before anything was sent: nothing was stored.
    NotSent(Error),
    /// While the jobs were on their way or being answered: any may be stored.
    Sent(Error),
    /// Each job's own answer: `None` stored, `Some(reason)` refused.
    PerJob(Vec<Option<redis::RedisError>>),
    /// The deadline passed while the jobs were on their way: any may be stored.
    TimedOut,
    /// Stored on the master, but fewer replicas than asked confirmed them in time.
    Unconfirmed { wanted: u32, confirmed: u64 },
}

impl Failure {
    fn into_error(self, ids: &[JobId], timeout: Duration) -> Error {
        let all = || ids.to_vec();
        match self {
            Failure::NotSent(e) => Error::enqueue(Vec::new(), all(), Vec::new(), explain(&e)),
            Failure::Sent(e) => Error::enqueue(Vec::new(), Vec::new(), all(), explain(&e)),
            Failure::TimedOut => Error::enqueue(
                Vec::new(),
                Vec::new(),
                all(),
                format!(
                    "no answer within {} ms (REDISAQ_ENQUEUE_TIMEOUT_MS or \
                     EnqueueOptions::timeout): Redis is unreachable or too slow",
                    timeout.as_millis()
                ),
            ),
            Failure::Unconfirmed { wanted, confirmed } => Error::enqueue(
                Vec::new(),
                Vec::new(),
                all(),
                format!(
                    "the job reached the master, but only {confirmed} of the {wanted} \
                     replica(s) asked for (EnqueueOptions::wait_replicas) confirmed it within \
                     the enqueue deadline; a failover now may lose it. Check the replicas \
                     (INFO replication) or ask for fewer"
                ),
            ),
            Failure::PerJob(results) => {
                let (mut stored, mut refused, mut reason) = (Vec::new(), Vec::new(), None);
                for (id, result) in ids.iter().zip(results) {
                    match result {
                        None => stored.push(id.clone()),
                        Some(e) => {
                            reason.get_or_insert_with(|| explain(&Error::Redis(e)));
                            refused.push(id.clone());
                        }
                    }
                }
                Error::enqueue(stored, refused, Vec::new(), reason.unwrap_or_default())
            }
        }
    }
}

/// What went wrong, in words that say what to do.
fn explain(error: &Error) -> String {
    match error {
        Error::Redis(e) if e.code() == Some("OOM") => format!(
            "Redis is out of memory ({e}): the workers trim processed jobs and enqueue works \
             again once they have; if it lasts, raise Redis' maxmemory, lower the topics' \
             maxlen, or add workers"
        ),
        Error::Redis(e) if store::conn::is_transient(e) => {
            format!("Redis cannot be reached ({e}); check REDIS_URL and that Redis is up")
        }
        other => other.to_string(),
    }
}

struct TopicState {
    partitions: u32,
    checked_at: Instant,
    next: AtomicU64,
}

/// The process-wide producer: where enqueue connects to and what it knows of topics.
struct Producer {
    url: RwLock<Option<String>>,
    /// Connections belong to the runtime that made them (their driver task runs there),
    /// so each runtime gets its own.
    connections: tokio::sync::Mutex<HashMap<tokio::runtime::Id, Conn>>,
    topics: Mutex<HashMap<&'static str, Arc<TopicState>>>,
}

fn producer() -> &'static Producer {
    static PRODUCER: std::sync::OnceLock<Producer> = std::sync::OnceLock::new();
    PRODUCER.get_or_init(|| Producer {
        url: RwLock::new(None),
        connections: tokio::sync::Mutex::new(HashMap::new()),
        topics: Mutex::new(HashMap::new()),
    })
}

/// Sets the Redis URL that the generated `enqueue` functions use, instead of `REDIS_URL`
/// (default `redis://127.0.0.1:6379`). Checked at once; takes effect for the next
/// enqueue.
///
/// ```
/// redisaq::set_redis_url("redis://127.0.0.1:6380/0").unwrap();
/// assert!(redisaq::set_redis_url("not a url").is_err());
/// # redisaq::set_redis_url("redis://127.0.0.1:6379").unwrap();
/// ```
pub fn set_redis_url(url: &str) -> Result<(), Error> {
    store::conn::client(url)?;
    let state = producer();
    *state.url.write().expect("producer url lock") = Some(url.to_string());
    if let Ok(mut connections) = state.connections.try_lock() {
        connections.clear();
    }
    state.topics.lock().expect("producer topics lock").clear();
    Ok(())
}

/// The producer's connection for the current runtime.
pub(crate) async fn connection() -> Result<Conn, Error> {
    let state = producer();
    let runtime = tokio::runtime::Handle::current().id();
    let mut connections = state.connections.lock().await;
    if let Some(conn) = connections.get(&runtime) {
        return Ok(conn.clone());
    }
    let url = state
        .url
        .read()
        .expect("producer url lock")
        .clone()
        .unwrap_or_else(Config::producer_url);
    let target = store::conn::client(&url)?;
    // One reconnect attempt per command: an unreachable Redis fails the enqueue at once
    // instead of holding it for a series of retries.
    let conn = target.connect(Duration::from_secs(5), 1).await?;
    connections.insert(runtime, conn.clone());
    Ok(conn)
}

/// Drops what the producer cached about a topic (its partition count changed).
pub(crate) fn forget_topic(topic: &str) {
    producer()
        .topics
        .lock()
        .expect("producer topics lock")
        .remove(topic);
}

async fn topic_state(conn: &mut Conn, spec: &'static TopicSpec) -> Result<Arc<TopicState>, Error> {
    let cached = producer()
        .topics
        .lock()
        .expect("producer topics lock")
        .get(spec.topic)
        .cloned();
    if let Some(state) = cached
        .as_ref()
        .filter(|s| s.checked_at.elapsed() < PARTITIONS_REFRESH)
    {
        return Ok(state.clone());
    }
    let info = topic::ensure(conn, spec).await?;
    let next = cached.map_or_else(rand::random::<u16>, |s| {
        s.next.load(Ordering::Relaxed) as u16
    });
    let state = Arc::new(TopicState {
        partitions: info.partitions,
        checked_at: Instant::now(),
        next: AtomicU64::new(next as u64),
    });
    producer()
        .topics
        .lock()
        .expect("producer topics lock")
        .insert(spec.topic, state.clone());
    Ok(state)
}

/// FNV-1a: stable across processes, platforms and releases, which `std`'s hasher is not.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn route(state: &TopicState, key: Option<&str>) -> u32 {
    let slot = match key {
        Some(key) => key_hash(key),
        None => state.next.fetch_add(1, Ordering::Relaxed),
    };
    (slot % state.partitions as u64) as u32
}

/// Enqueues one job (what `my_job::enqueue` and `my_job::enqueue_with` call).
pub fn enqueue<T: JobPayload>(
    spec: &'static TopicSpec,
    payload: T,
    options: EnqueueOptions,
) -> impl Future<Output = Result<JobId, Error>> + Send + 'static {
    let json = serde_json::to_string(&payload);
    async move {
        let json = json?;
        let timeout = deadline(options.timeout)?;
        let id = JobId::generate();
        let ids = [id.clone()];
        let sending = AtomicBool::new(false);
        within_deadline(timeout, &ids, &sending, async {
            let (mut conn, state) = prepare(spec).await.map_err(Failure::NotSent)?;
            let key = options.key.as_deref();
            let stream = keys::partition(spec.topic, route(&state, key));
            let job = NewJob {
                stream: &stream,
                fields: JobFields {
                    id: id.as_str(),
                    payload: &json,
                    enqueued_at_ms: now_ms(),
                    key,
                    for_group: None,
                },
            };
            // Leave the WAIT a little of the deadline to answer in.
            let wait = options.wait_replicas.map(|n| (n, timeout.mul_f64(0.8)));
            send(&mut conn, &[job], wait, &sending).await
        })
        .await?;
        Ok(id)
    }
}

/// The connection and what is known of the topic.
async fn prepare(spec: &'static TopicSpec) -> Result<(Conn, Arc<TopicState>), Error> {
    let mut conn = connection().await?;
    let state = topic_state(&mut conn, spec).await?;
    Ok((conn, state))
}

/// Sends the jobs, one answer per job; with `wait = (n, timeout)`, waits for `n`
/// replicas to have them.
async fn send(
    conn: &mut Conn,
    jobs: &[NewJob<'_>],
    wait: Option<(u32, Duration)>,
    sending: &AtomicBool,
) -> Result<(), Failure> {
    sending.store(true, Ordering::Relaxed);
    let added = stream::add(conn, jobs, wait).await.map_err(|e| {
        if e.is_connection_refusal() {
            Failure::NotSent(e.into())
        } else {
            Failure::Sent(e.into())
        }
    })?;
    if added.refusals.iter().any(Option::is_some) {
        return Err(Failure::PerJob(added.refusals));
    }
    match (wait, added.replicas) {
        (Some((wanted, _)), Some(confirmed)) if confirmed < wanted as u64 => {
            Err(Failure::Unconfirmed { wanted, confirmed })
        }
        _ => Ok(()),
    }
}

/// Enqueues many jobs in one pipelined round trip (what `my_job::enqueue_batch` calls).
pub fn enqueue_batch<T: JobPayload, I: IntoIterator<Item = T>>(
    spec: &'static TopicSpec,
    payloads: I,
) -> impl Future<Output = Result<Vec<JobId>, Error>> + Send + 'static {
    let jsons: Result<Vec<String>, serde_json::Error> = payloads
        .into_iter()
        .map(|p| serde_json::to_string(&p))
        .collect();
    async move {
        let jsons = jsons?;
        if jsons.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = deadline(None)?;
        let ids: Vec<JobId> = jsons.iter().map(|_| JobId::generate()).collect();
        let sending = AtomicBool::new(false);
        within_deadline(timeout, &ids, &sending, async {
            let (mut conn, state) = prepare(spec).await.map_err(Failure::NotSent)?;
            let streams: Vec<String> = (0..state.partitions)
                .map(|p| keys::partition(spec.topic, p))
                .collect();
            let enqueued_at_ms = now_ms();
            let jobs: Vec<NewJob> = ids
                .iter()
                .zip(&jsons)
                .map(|(id, json)| NewJob {
                    stream: &streams[route(&state, None) as usize],
                    fields: JobFields {
                        id: id.as_str(),
                        payload: json,
                        enqueued_at_ms,
                        key: None,
                        for_group: None,
                    },
                })
                .collect();
            send(&mut conn, &jobs, None, &sending).await
        })
        .await?;
        Ok(ids)
    }
}

/// Raises a topic's partition count to `partitions` and returns the previous count (0
/// for a topic that did not exist). Producers pick up the new partitions within a few
/// seconds; workers rebalance onto them. Lowering is refused: jobs in the removed
/// partitions would be stranded.
///
/// Uses the same Redis as `enqueue` (see [`set_redis_url`]).
pub async fn set_partitions(topic: &str, partitions: u32) -> Result<u32, Error> {
    let mut conn = connection().await?;
    let previous = crate::store::topic::raise(&mut conn, topic, partitions).await?;
    forget_topic(topic);
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_stably_and_round_robin_spreads() {
        let state = TopicState {
            partitions: 4,
            checked_at: Instant::now(),
            next: AtomicU64::new(0),
        };
        assert_eq!(
            route(&state, Some("user-42")),
            route(&state, Some("user-42"))
        );
        assert_eq!(key_hash("a"), 0xaf63dc4c8601ec8c);
        let spread: std::collections::HashSet<u32> = (0..4).map(|_| route(&state, None)).collect();
        assert_eq!(spread.len(), 4);
    }
}
