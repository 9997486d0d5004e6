//! A worker process for the multi-process tests. Its handlers record every call in Redis
//! (`redisaq-test:calls:{topic}` hash: job id -> number of calls) so the test can check
//! what was processed after killing and restarting workers.
//!
//! Environment: `REDIS_URL`, the `REDISAQ_*` settings, and `TEST_JOB_MS` (how long each
//! job takes, default 0).

use std::time::Duration;

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
        ConnectionManager::new(client).await.expect("connect")
    })
    .await
    .clone()
}

async fn record(job: &Job<Work>) -> Result<(), JobError> {
    let pause = std::env::var("TEST_JOB_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    let mut conn = recorder().await;
    redis::cmd("HINCRBY")
        .arg(format!("redisaq-test:calls:{}", job.topic()))
        .arg(job.id().as_str())
        .arg(1)
        .exec_async(&mut conn)
        .await?;
    Ok(())
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
        .init();
    redisaq::run().await
}
