use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job("send_email")]
async fn positional(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic: "send_email", retries = 3,, partitions = 4)]
async fn colon_and_empty_option(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "send_email" group = "email_group")]
async fn missing_comma(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
