use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job]
async fn no_arguments(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(group = "email_group", retries = 3)]
async fn no_topic(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
