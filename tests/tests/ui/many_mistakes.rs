use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(
    topic = 1,
    partitions = 0,
    colour = "red",
    retries = 3,
    retries = 4,
    max_wait_ms = 5
)]
fn send_email(job: Vec<Job<Email>>, extra: u8) -> Result<(), JobError> {
    let _ = (job, extra);
    Ok(())
}

fn main() {}
