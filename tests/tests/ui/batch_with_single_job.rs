use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "digest", batch = 10)]
async fn digest(job: Job<Email>) -> Vec<Result<(), JobError>> {
    let _ = job;
    Vec::new()
}

#[job(topic = "digest_payloads", batch = 10)]
async fn digest_payloads(emails: Vec<Email>) -> Vec<Result<(), JobError>> {
    emails.iter().map(|_| Ok(())).collect()
}

fn main() {}
