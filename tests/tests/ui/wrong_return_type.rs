use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "a")]
async fn unit(job: Job<Email>) {
    let _ = job;
}

#[job(topic = "unit_explicit")]
async fn unit_explicit(job: Job<Email>) -> () {
    let _ = job;
}

#[job(topic = "b")]
async fn string_error(job: Job<Email>) -> Result<(), String> {
    let _ = job;
    Ok(())
}

#[job(topic = "c", batch = 10)]
async fn batch_single_result(jobs: Vec<Job<Email>>) -> Result<(), JobError> {
    let _ = jobs;
    Ok(())
}

fn main() {}
