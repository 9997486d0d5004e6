//! Every supported shape of `#[job]` compiles without warnings, and the generated module
//! is usable.
#![deny(warnings, missing_docs)]

use redisaq::{job, EnqueueOptions, Job, JobError, JobId};
use serde::{Deserialize, Serialize};

/// A public payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping(u32);

// Private fn with a private payload: the usual worker binary.
#[job(topic = "ping", retries = 0, concurrency = 1)]
async fn ping(job: Job<Ping>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

/// Public, every single-job option, a trailing comma.
#[job(
    topic = "send_email",
    group = "email_group",
    partitions = 4,
    retries = 3,
    concurrency = 16,
    maxlen = 100_000
)]
pub async fn send_email(job: Job<Email>) -> Result<(), JobError> {
    let _ = job;
    Ok(())
}

/// A batch handler, with the runtime's path to `Job`.
#[job(
    topic = "digest",
    group = "digest_group",
    batch = 10,
    max_wait_ms = 200
)]
pub(crate) async fn digest(jobs: Vec<redisaq::Job<Email>>) -> Vec<Result<(), JobError>> {
    jobs.iter().map(|_| Ok(())).collect()
}

mod nested {
    // The payload is only imported here, not in the generated module.
    use super::Email as Letter;
    use redisaq::{job, Job, JobError};

    #[job(topic = "letters", batch = 1)]
    pub(crate) async fn letters(letters: Vec<Job<Letter>>) -> Vec<Result<(), JobError>> {
        letters
            .into_iter()
            .map(|_| Err(JobError::retry("later")))
            .collect()
    }

    // A raw identifier as the name; the default group is `match`.
    #[job(topic = "matches")]
    pub async fn r#match(job: Job<Vec<String>>) -> Result<(), JobError> {
        let _ = job;
        Ok(())
    }
}

fn email() -> Email {
    Email {
        to: "a@example.com".into(),
        subject: "hi".into(),
    }
}

// Builds the futures only: there is no Redis here.
#[allow(dead_code)]
async fn enqueue_everything() -> Result<(), redisaq::Error> {
    let _id: JobId = send_email::enqueue(email()).await?;
    let _id: JobId =
        send_email::enqueue_with(email(), EnqueueOptions::new().key("user-42")).await?;
    let _ids: Vec<JobId> = digest::enqueue_batch(vec![email(), email()]).await?;
    let _ids: Vec<JobId> = digest::enqueue_batch(std::iter::once(email())).await?;
    let _id = ping::enqueue(Ping(1)).await?;
    let _id = nested::letters::enqueue(email()).await?;
    let _id = nested::r#match::enqueue(vec!["x".to_string()]).await?;
    let _payload: send_email::Payload = email();
    Ok(())
}

fn is_send<T: Send>(_: &T) {}

fn callable<T, F, Fut>(_: F)
where
    F: Fn(Job<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), JobError>> + Send,
{
}

const _: () = {
    assert!(matches!(send_email::TOPIC.as_bytes(), b"send_email"));
    assert!(matches!(send_email::GROUP.as_bytes(), b"email_group"));
    assert!(matches!(ping::GROUP.as_bytes(), b"ping"));
    assert!(matches!(digest::TOPIC.as_bytes(), b"digest"));
    assert!(matches!(nested::r#match::GROUP.as_bytes(), b"match"));
};

fn main() {
    // The functions stay callable as written.
    callable(send_email);
    callable(ping);
    callable(nested::r#match);
    let _batch = digest;
    is_send(&send_email::enqueue(email()));
    let _ = enqueue_everything;
}
