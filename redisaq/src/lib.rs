//! # redisaq
//!
//! Typed, partitioned job queues on Redis Streams. Annotate an async function with
//! [`#[job]`](macro@job), enqueue with the generated module, run the handlers with
//! [`run`]:
//!
//! ```no_run
//! use redisaq::{job, Job, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! pub struct Email { pub to: String, pub subject: String }
//!
//! #[job(topic = "send_email", group = "email_group", partitions = 4, retries = 3)]
//! async fn send_email(job: Job<Email>) -> Result<(), JobError> {
//!     println!("sending {} to {}", job.payload().subject, job.payload().to);
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), redisaq::Error> {
//! // In the producer:
//! let id = send_email::enqueue(Email { to: "a@example.com".into(), subject: "hi".into() }).await?;
//! // In the worker binary (stops on SIGINT / SIGTERM):
//! redisaq::run().await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! Jobs are acknowledged only after their handler returned `Ok` (or after they were
//! written to the dead-letter queue), so a crashed worker loses nothing: what it held is
//! delivered again. See the README for the key layout and how to inspect it with
//! `redis-cli`.
#![warn(missing_docs)]

pub mod admin;
mod config;
mod consumer;
mod cron;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod error;
mod handler;
mod job;
pub mod keys;
mod metrics;
mod producer;
mod rate;
mod registry;
mod retry;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod trace;
mod wire;
mod worker;

pub use cron::Tick;
pub use error::{BoxError, Error, JobError};
pub use job::{Job, JobId};
pub use producer::set_partitions;
pub use producer::{set_redis_url, EnqueueOptions};
pub use redisaq_macros::job;
pub use worker::{run, Worker};

/// Items the `#[job]` macro's generated code calls. Not a public API: it changes without
/// notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::cron::{assert_tick, IsTick};
    pub use crate::handler::{assert_payload, call_batch, call_single, JobPayload};
    pub use crate::job::RawJob;
    pub use crate::producer::{enqueue, enqueue_batch, enqueue_batch_with};
    pub use crate::registry::{HandlerDef, HandlerFn, TopicSpec};
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use {crate::registry::HANDLERS, linkme};

    /// Registers a [`HandlerDef`] so that `run()` finds it.
    #[cfg(not(feature = "linkme"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __redisaq_submit_handler {
        ($def:expr) => {
            $crate::__private::inventory::submit! { $def }
        };
    }

    /// Registers a [`HandlerDef`] so that `run()` finds it (in a linkme distributed
    /// slice: the definition is a `static`).
    #[cfg(feature = "linkme")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __redisaq_submit_handler {
        ($def:expr) => {
            const _: () = {
                #[$crate::__private::linkme::distributed_slice($crate::__private::HANDLERS)]
                #[linkme(crate = $crate::__private::linkme)]
                static HANDLER: $crate::__private::HandlerDef = $def;
            };
        };
    }
    pub use crate::__redisaq_submit_handler as submit_handler;
}
