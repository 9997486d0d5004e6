use redisaq::{job, Job, JobError};

#[job(topic = "emails", rate = "100 per second", key_rate = "0/s")]
async fn limited(_job: Job<String>) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
