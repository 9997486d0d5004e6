//! Failures and the dead-letter queue: enqueues four welcome e-mails to `welcome`, runs
//! a worker for two seconds, and leaves two dead letters to look at with the `redisaq`
//! tool (`redisaq dlq list welcome`): one fatal error at once, one retryable error after
//! its retry. Runs against `REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::time::Duration;

use redisaq::{job, Job, JobError};
use serde::{Deserialize, Serialize};

/// A welcome e-mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
}

/// Fails for good on an unknown mailbox, and retryably on a slow one.
#[job(topic = "welcome", group = "mailer", partitions = 2, retries = 1)]
pub async fn welcome(job: Job<Email>) -> Result<(), JobError> {
    let to = &job.payload().to;
    if to.starts_with("invalid") {
        return Err(JobError::fatal(format!("mailbox {to} does not exist")));
    }
    if to.starts_with("slow") {
        return Err(JobError::retry("smtp timeout after 30 s"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), redisaq::Error> {
    let recipients = [
        "ann@example.com",
        "invalid@example.com",
        "bob@example.com",
        "slow@example.com",
    ];
    welcome::enqueue_batch(recipients.map(|to| Email {
        to: to.into(),
        subject: "Welcome".into(),
    }))
    .await?;
    redisaq::Worker::new()
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(100))
        .run_until(tokio::time::sleep(Duration::from_secs(2)))
        .await
}
