//! A worker process for the multi-process tests. Its handlers record every call in Redis
//! so the test can check what was processed after killing, pausing and restarting
//! workers: `redisaq-test:starts:{topic}` (hash: job id -> number of calls started),
//! `redisaq-test:calls:{topic}` (hash: job id -> number of calls finished) and
//! `redisaq-test:intervals:{topic}` (list of "partition consumer start_us end_us").
//!
//! Environment: `REDIS_URL`, the `REDISAQ_*` settings, `TEST_JOB_MS` (how long each job
//! takes, default 0) and `TEST_TOPICS` (comma-separated topics to run, default all).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// The payload of the test jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    /// A sequence number.
    pub n: u64,
}

async fn recorder() -> ConnectionManager {
    static CONN: OnceCell<ConnectionManager> = OnceCell::const_new();
    CONN.get_or_init(|| async {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL");
        let client = redis::Client::open(url).expect("REDIS_URL");
        // Records must survive the Redis stalls the tests inject.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)));
        ConnectionManager::new_with_config(client, config)
            .await
            .expect("connect")
    })
    .await
    .clone()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

async fn record(job: &Job<Work>) -> Result<(), JobError> {
    let started = now_us();
    let mut conn = recorder().await;
    let mut start = redis::pipe();
    start
        .cmd("HINCRBY")
        .arg(format!("redisaq-test:starts:{}", job.topic()))
        .arg(job.id().as_str())
        .arg(1);
    save(&mut conn, &start).await?;
    let pause = std::env::var("TEST_JOB_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    let ended = now_us();
    let consumer = CONSUMER.get().map(String::as_str).unwrap_or("?");
    let mut end = redis::pipe();
    end.atomic()
        .cmd("HINCRBY")
        .arg(format!("redisaq-test:calls:{}", job.topic()))
        .arg(job.id().as_str())
        .arg(1)
        .cmd("RPUSH")
        .arg(format!("redisaq-test:intervals:{}", job.topic()))
        .arg(format!("{} {consumer} {started} {ended}", job.partition()));
    save(&mut conn, &end).await?;
    Ok(())
}

/// Writes a record, trying again through dropped connections: a record that failed
/// would fail the job and make the test see a retry the fault did not cause. (A write
/// whose reply was lost may count twice; the tests inject no such fault on this
/// connection.)
async fn save(conn: &mut ConnectionManager, record: &redis::Pipeline) -> Result<(), JobError> {
    let mut last = None;
    for _ in 0..100 {
        match record.exec_async(conn).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(JobError::retry(last.expect("tried")))
}

/// This process's consumer name prefix, unique per test worker.
static CONSUMER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Jobs of the coordination tests.
#[job(
    topic = "coord",
    group = "coord_group",
    partitions = 8,
    concurrency = 4
)]
pub async fn coord(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the rebalance-on-join test.
#[job(topic = "join", group = "join_group", partitions = 6, concurrency = 4)]
pub async fn join(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the graceful-shutdown test.
#[job(
    topic = "graceful",
    group = "graceful_group",
    partitions = 2,
    concurrency = 8
)]
pub async fn graceful(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the partition-raising test.
#[job(topic = "grow", group = "grow_group", partitions = 2, concurrency = 4)]
pub async fn grow(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the crash tests.
#[job(
    topic = "crash",
    group = "crash_group",
    partitions = 4,
    concurrency = 8
)]
pub async fn crash(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

#[tokio::main]
async fn main() -> Result<(), redisaq::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    CONSUMER
        .set(std::env::var("REDISAQ_CONSUMER_NAME").unwrap_or_else(|_| "worker".into()))
        .unwrap();
    let mut worker = redisaq::Worker::new();
    if let Ok(topics) = std::env::var("TEST_TOPICS") {
        worker = worker.topics(topics.split(','));
    }
    worker.run().await
}
