use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "a")]
async fn two(job: Job<Email>, retries: u32) -> Result<(), JobError> {
    let _ = (job, retries);
    Ok(())
}

#[job(topic = "b")]
async fn none() -> Result<(), JobError> {
    Ok(())
}

struct Mailer;

impl Mailer {
    #[job(topic = "c")]
    async fn method(&self) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
