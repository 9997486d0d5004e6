use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[job(topic = "a")]
async fn generic<T>(job: Job<T>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "b")]
async unsafe fn not_safe(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "c")]
const fn constant(job: Job<Email>) -> Result<(), JobError> {
    core::mem::forget(job);
    Ok(())
}

#[job(topic = "d")]
async extern "C" fn external(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

#[job(topic = "e")]
async fn impl_payload(job: Job<impl serde::Serialize>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

fn main() {}
