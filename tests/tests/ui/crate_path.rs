use redisaq::{job, Job, JobError};

#[job(topic = "renamed", crate = "not a path")]
async fn renamed(job: Job<u64>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "renamed_again", crate = 3)]
async fn renamed_again(job: Job<u64>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
