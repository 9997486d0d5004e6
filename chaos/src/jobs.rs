//! What the worker processes run: two groups on one topic, each recording its side
//! effects in the sink, fenced by the job's token.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// The topic of the run.
pub const TOPIC: &str = "chaos";

/// A job of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    pub n: u64,
}

/// Accepts an effect (`ARGV[3]`, a job id, counted in `KEYS[2]`) only if its token
/// (`ARGV[2]`) is not older than the newest seen for its partition and group
/// (`ARGV[1]`, in `KEYS[1]`); a refused one is recorded in `KEYS[3]` as
/// `<worker> <unix ms> <what>` (the worker in `ARGV[4]`), for the report to tell the
/// fencing at work after a pause of that worker from two owners at once.
const FENCED_EFFECT: &str = r"
local newest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local token = tonumber(ARGV[2])
if token < newest then
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('RPUSH', KEYS[3], ARGV[4] .. ' ' .. ms .. ' ' .. ARGV[1] .. ' job ' .. ARGV[3]
    .. ' token ' .. ARGV[2] .. ' < ' .. newest)
  return 0
end
if token > newest then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1
";

/// Sink keys.
pub mod sink {
    pub const NEWEST: &str = "chaos:newest-token";
    pub const REFUSED: &str = "chaos:refused";
    pub fn effects(group: &str) -> String {
        format!("chaos:effects:{group}")
    }
}

async fn sink() -> Result<ConnectionManager, JobError> {
    static CONN: OnceCell<ConnectionManager> = OnceCell::const_new();
    CONN.get_or_try_init(|| async {
        let url = std::env::var("CHAOS_SINK_URL").map_err(JobError::fatal)?;
        let client = redis::Client::open(url).map_err(JobError::fatal)?;
        ConnectionManager::new(client)
            .await
            .map_err(JobError::retry)
    })
    .await
    .cloned()
}

/// This worker process's name in the run (`w1`, `w2`, …).
fn worker_name() -> &'static str {
    static NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var("REDISAQ_CONSUMER_NAME").unwrap_or_else(|_| "unnamed".into())
    });
    &NAME
}

async fn effect(group: &str, job: &Job<Work>) -> Result<(), JobError> {
    // Some jobs fail their first attempt, so retries wait and move with their partition.
    if job.attempt() == 1 && job.payload().n.is_multiple_of(53) {
        return Err(JobError::retry("a first attempt that fails"));
    }
    tokio::time::sleep(Duration::from_millis(job.payload().n % 7)).await;
    let accepted: i64 = redis::Script::new(FENCED_EFFECT)
        .key(sink::NEWEST)
        .key(sink::effects(group))
        .key(sink::REFUSED)
        .arg(format!("{group}:{}", job.partition()))
        .arg(job.fencing_token())
        .arg(job.id().as_str())
        .arg(worker_name())
        .invoke_async(&mut sink().await?)
        .await?;
    if accepted == 0 {
        return Err(JobError::retry("the sink refused a stale fencing token"));
    }
    Ok(())
}

#[job(
    topic = "chaos",
    group = "chaos_single",
    partitions = 2,
    retries = 20,
    concurrency = 8,
    timeout_ms = 30_000
)]
async fn single(job: Job<Work>) -> Result<(), JobError> {
    effect(single::GROUP, &job).await
}

#[job(
    topic = "chaos",
    group = "chaos_batch",
    partitions = 2,
    retries = 20,
    batch = 8,
    max_wait_ms = 20,
    timeout_ms = 30_000
)]
async fn batched(jobs: Vec<Job<Work>>) -> Vec<Result<(), JobError>> {
    let mut results = Vec::with_capacity(jobs.len());
    for job in &jobs {
        results.push(effect(batched::GROUP, job).await);
    }
    results
}

/// The groups of the run.
pub const GROUPS: [&str; 2] = [single::GROUP, batched::GROUP];

/// Enqueues a batch of jobs.
pub async fn enqueue(
    numbers: impl Iterator<Item = u64>,
) -> Result<Vec<redisaq::JobId>, redisaq::Error> {
    single::enqueue_batch(numbers.map(|n| Work { n })).await
}

/// A worker process: both handlers until SIGTERM.
pub async fn work() -> Result<(), redisaq::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    redisaq::Worker::new()
        .heartbeat_interval(Duration::from_millis(250))
        .heartbeat_ttl(Duration::from_millis(1000))
        .retry_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(5))
        .run()
        .await
}
