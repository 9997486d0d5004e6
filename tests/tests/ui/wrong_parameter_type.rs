use redisaq::{job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "a")]
async fn payload_only(email: Email) -> Result<(), JobError> {
    let _ = email;
    Ok(())
}

#[job(topic = "b")]
async fn string(job: String) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "c")]
async fn vec_of_payloads(emails: Vec<Email>) -> Result<(), JobError> {
    let _ = emails;
    Ok(())
}

fn main() {}
