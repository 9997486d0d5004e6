use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "")]
async fn empty(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "send email", group = "{email}")]
async fn spaces_and_braces(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
