//! Enqueueing: JSON payloads into the right partition stream, one `XADD` per job and one
//! pipelined round trip per batch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::config::Config;
use crate::error::Error;
use crate::handler::JobPayload;
use crate::job::{now_ms, JobId};
use crate::registry::TopicSpec;
use crate::{keys, redis_conn, topic, wire};

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
    connections: tokio::sync::Mutex<HashMap<tokio::runtime::Id, ConnectionManager>>,
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
    redis_conn::client(url)?;
    let state = producer();
    *state.url.write().expect("producer url lock") = Some(url.to_string());
    if let Ok(mut connections) = state.connections.try_lock() {
        connections.clear();
    }
    state.topics.lock().expect("producer topics lock").clear();
    Ok(())
}

/// The producer's connection for the current runtime.
pub(crate) async fn connection() -> Result<ConnectionManager, Error> {
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
    let client = redis_conn::client(&url)?;
    let conn = redis_conn::manager(&client, Duration::from_secs(5))?;
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

async fn topic_state(
    conn: &mut ConnectionManager,
    spec: &'static TopicSpec,
) -> Result<Arc<TopicState>, Error> {
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
        let mut conn = connection().await?;
        let state = topic_state(&mut conn, spec).await?;
        let id = JobId::generate();
        let key = options.key.as_deref();
        let stream = keys::partition(spec.topic, route(&state, key));
        let mut pipe = redis::pipe();
        wire::add_job(&mut pipe, &stream, &id, &json, now_ms(), key);
        pipe.exec_async(&mut conn).await?;
        Ok(id)
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
        let mut conn = connection().await?;
        let state = topic_state(&mut conn, spec).await?;
        let streams: Vec<String> = (0..state.partitions)
            .map(|p| keys::partition(spec.topic, p))
            .collect();
        let enqueued_at = now_ms();
        let mut pipe = redis::pipe();
        let ids: Vec<JobId> = jsons
            .iter()
            .map(|json| {
                let id = JobId::generate();
                let stream = &streams[route(&state, None) as usize];
                wire::add_job(&mut pipe, stream, &id, json, enqueued_at, None);
                id
            })
            .collect();
        pipe.exec_async(&mut conn).await?;
        Ok(ids)
    }
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
