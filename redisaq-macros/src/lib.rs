//! The `#[job]` attribute of [redisaq](https://docs.rs/redisaq). Use it through
//! `redisaq::job`; the generated code refers to `::redisaq`, so this crate is not useful
//! on its own.
//!
//! # Usage
//!
//! ```ignore
//! use redisaq::{job, Job, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! pub struct Email { pub to: String, pub subject: String }
//!
//! #[job(topic = "send_email", group = "email_group", partitions = 4, retries = 3)]
//! async fn send_email(job: Job<Email>) -> Result<(), JobError> {
//!     Ok(())
//! }
//!
//! #[job(topic = "digest", batch = 10, max_wait_ms = 200)]
//! async fn digest(jobs: Vec<Job<Email>>) -> Vec<Result<(), JobError>> {
//!     jobs.iter().map(|_| Ok(())).collect()
//! }
//!
//! // Producer side: a module named after the function.
//! let id = send_email::enqueue(Email { to: "a@example.com".into(), subject: "hi".into() }).await?;
//! let id = send_email::enqueue_with(email, redisaq::EnqueueOptions::new().key("user-42")).await?;
//! let ids = digest::enqueue_batch(emails).await?;
//! assert_eq!(send_email::TOPIC, "send_email");
//! assert_eq!(digest::GROUP, "digest");
//!
//! // Worker side: runs every registered handler.
//! redisaq::run().await?;
//! ```
//!
//! # Options
//!
//! `#[job(name = value, ...)]`, comma separated:
//!
//! | option        | value                          | default                   |
//! |---------------|--------------------------------|---------------------------|
//! | `topic`       | string, required               |                           |
//! | `group`       | string                         | the function's name       |
//! | `partitions`  | integer ≥ 1                    | runtime default (4)       |
//! | `retries`     | integer ≥ 0                    | runtime default (3)       |
//! | `batch`       | integer ≥ 1                    | one job per call          |
//! | `max_wait_ms` | integer ≥ 0, with `batch` only | runtime default (100)     |
//! | `concurrency` | integer ≥ 1                    | runtime default           |
//! | `maxlen`      | integer ≥ 1                    | runtime default (100 000) |
//!
//! `topic` and `group` must not be empty and must not contain `{`, `}` or whitespace,
//! because Redis keys and hash tags are built from them. `partitions` only applies when
//! the topic does not exist yet; `maxlen` is the number of processed entries kept per
//! partition stream.
//!
//! # The function
//!
//! An `async fn` without generics or `self`, taking exactly one parameter:
//!
//! * `Job<T>` and returning `Result<(), JobError>`, or
//! * with `batch = N`, `Vec<Job<T>>` (up to `N` jobs) and returning one
//!   `Result<(), JobError>` per job, in order.
//!
//! `T` must implement `serde::Serialize` and `serde::Deserialize`. The function itself is
//! left as written and can still be called directly, e.g. from unit tests.
//!
//! The function must be an item of a module, not of a function body: the generated
//! module reaches the payload type through `super::`, which does not see items declared
//! inside a block.
//!
//! # Generated items
//!
//! Next to the function, with its visibility, a module of the same name containing
//! `TOPIC`, `GROUP`, `Payload` (= `T`), `enqueue(payload)`, `enqueue_with(payload,
//! options)` and `enqueue_batch(payloads)`. The handler is registered with the runtime,
//! so `redisaq::run()` finds it without further setup.
//!
//! All mistakes in the attribute and the signature are reported together, each at the
//! tokens to change.

mod internals;
mod output;

use proc_macro::TokenStream;

/// Turns an `async fn` into a redisaq job handler and generates its enqueue functions.
///
/// ```ignore
/// #[job(topic = "send_email", group = "email_group", partitions = 4, retries = 3)]
/// async fn send_email(job: Job<Email>) -> Result<(), JobError> { Ok(()) }
/// ```
///
/// Options: `topic` (required), `group`, `partitions`, `retries`, `batch`,
/// `max_wait_ms` (with `batch`), `concurrency`, `maxlen`. See the crate documentation.
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match internals::parse(args.into(), item.clone()) {
        Ok(def) => output::expand(&def, item),
        Err(error) => output::with_errors(item, error),
    }
    .into()
}
