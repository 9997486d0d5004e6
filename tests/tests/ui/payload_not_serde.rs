use redisaq::{job, Job, JobError};

pub struct Email {
    pub to: String,
}

#[job(topic = "send_email")]
async fn send_email(job: Job<Email>) -> Result<(), JobError> {
    let _ = job.payload().to.len();
    Ok(())
}

fn main() {}
