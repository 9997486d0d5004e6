use redisaq::{job, Job, JobError};

#[job(topic = "reports", cron = "0 0 3 * * *")]
async fn nightly(_job: Job<String>) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
