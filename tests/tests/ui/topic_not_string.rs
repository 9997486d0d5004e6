use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = send_email)]
async fn ident_topic(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = 5, group = 'g')]
async fn number_topic(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic)]
async fn no_value(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
