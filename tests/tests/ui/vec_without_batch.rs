use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "digest")]
async fn digest(jobs: Vec<Job<Email>>) -> Vec<Result<(), JobError>> {
    jobs.iter().map(|_| Ok(())).collect()
}

fn main() {}
