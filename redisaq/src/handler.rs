//! Adapters from the user's typed functions to the runtime's untyped [`HandlerFn`]:
//! payload decoding happens here, so a payload that does not fit the handler's type
//! becomes a fatal error of that one job instead of a stopped worker.
//!
//! [`HandlerFn`]: crate::registry::HandlerFn

use std::future::Future;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::JobError;
use crate::job::{Job, RawJob};

/// Types that can be a job's payload: JSON-serializable both ways, sendable across tasks.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a job payload",
    label = "this type must implement `serde::Serialize` and `serde::Deserialize`",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to the payload type"
)]
pub trait JobPayload: Serialize + DeserializeOwned + Send + 'static {}

impl<T> JobPayload for T where T: Serialize + DeserializeOwned + Send + 'static {}

/// Compile-time check the macro emits for the payload type.
pub const fn assert_payload<T: JobPayload>() {}

fn decode_error<T>(error: serde_json::Error) -> JobError {
    JobError::fatal(format!(
        "payload does not decode as `{}`: {error}",
        std::any::type_name::<T>()
    ))
}

/// Runs a one-job handler on the single job it is given.
pub fn call_single<T, F, Fut>(
    mut jobs: Vec<RawJob>,
    handler: F,
) -> BoxFuture<'static, Vec<Result<(), JobError>>>
where
    T: JobPayload,
    F: FnOnce(Job<T>) -> Fut,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    debug_assert_eq!(jobs.len(), 1, "a single-job handler gets one job per call");
    let Some(raw) = jobs.pop() else {
        return futures_util::future::ready(Vec::new()).boxed();
    };
    match raw.decode::<T>() {
        Ok(job) => handler(job).map(|result| vec![result]).boxed(),
        Err(error) => futures_util::future::ready(vec![Err(decode_error::<T>(error))]).boxed(),
    }
}

/// Runs a batch handler on the jobs whose payload decodes; the others fail fatally in
/// their place, so results stay in delivery order.
pub fn call_batch<T, F, Fut>(
    jobs: Vec<RawJob>,
    handler: F,
) -> BoxFuture<'static, Vec<Result<(), JobError>>>
where
    T: JobPayload,
    F: FnOnce(Vec<Job<T>>) -> Fut,
    Fut: Future<Output = Vec<Result<(), JobError>>> + Send + 'static,
{
    let mut decoded = Vec::with_capacity(jobs.len());
    let mut slots: Vec<Option<JobError>> = Vec::with_capacity(jobs.len());
    for raw in &jobs {
        match raw.decode::<T>() {
            Ok(job) => {
                decoded.push(job);
                slots.push(None);
            }
            Err(error) => slots.push(Some(decode_error::<T>(error))),
        }
    }
    if decoded.is_empty() {
        let results = slots
            .into_iter()
            .map(|slot| Err(slot.expect("undecoded")))
            .collect();
        return futures_util::future::ready(results).boxed();
    }
    let handed = decoded.len();
    handler(decoded)
        .map(move |results| {
            let mismatch = (results.len() != handed).then(|| {
                let message = format!(
                    "batch handler returned {} results for {handed} jobs; it must return one \
                     result per job, in order. Retrying the whole batch",
                    results.len()
                );
                tracing::error!("{message}");
                message
            });
            let mut results = results.into_iter();
            slots
                .into_iter()
                .map(|slot| match (slot, &mismatch) {
                    (Some(error), _) => Err(error),
                    (None, Some(message)) => Err(JobError::retry(message.clone())),
                    (None, None) => results.next().expect("one result per decoded job"),
                })
                .collect()
        })
        .boxed()
}
