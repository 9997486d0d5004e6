use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "a", partitions = 0, retries = -1, concurrency = 0, maxlen = 0)]
async fn below_minimum(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(
    topic = "b",
    partitions = "4",
    retries = 3u32,
    concurrency = 4_294_967_296,
    maxlen = 1.5
)]
async fn wrong_literals(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
