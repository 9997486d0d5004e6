//! Turning deliveries into handler calls and applying each job's result: `Ok` acks,
//! a retryable error records when the next attempt is due, a fatal error or the last
//! attempt dead-letters.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::ack::Ack;
use super::clock;
use super::partitions::{self, Guard};
use super::runners::Runners;
use super::throttle::Throttle;
use super::{Delivery, Shared};
use crate::error::{Disposition, JobError};
use crate::job::now_ms;
use crate::registry::DEFAULT_MAX_WAIT_MS;
use crate::retry::Backoff;
use crate::store::dlq::{self, DeadLetterEntry};
use crate::store::lease;
use crate::wire::{self, Undecodable};

/// What only the executor and its calls use: how many calls may run, the running calls,
/// and when a failed job runs again.
pub(crate) struct Calls {
    pub concurrency: Arc<Semaphore>,
    /// How many calls may run at once (the permits of `concurrency`).
    pub limit: usize,
    /// The tasks that run calls.
    pub running: TaskTracker,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// Gathers deliveries into calls and starts them while the concurrency limit allows;
/// returns when the consumer shuts down. Deliveries still queued then stay pending in
/// Redis and are delivered again.
pub(crate) async fn run(
    shared: Arc<Shared>,
    calls: Arc<Calls>,
    mut deliveries: mpsc::Receiver<Delivery>,
    mut throttle: Throttle,
) {
    let batch_size = shared.def.batch_size();
    let mut runners = Runners::new(shared.clone(), calls.clone());
    let max_wait = Duration::from_millis(shared.def.max_wait_ms.unwrap_or(DEFAULT_MAX_WAIT_MS));
    loop {
        let permit = tokio::select! {
            permit = calls.concurrency.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            () = shared.shutdown.cancelled() => return,
        };
        let first = match throttle.ready() {
            Some(delivery) => delivery,
            None => {
                let wake = throttle.next_wake();
                tokio::select! {
                    delivery = deliveries.recv(), if throttle.has_room() => match delivery {
                        Some(d) => d,
                        None => return,
                    },
                    () = sleep_until_some(wake) => continue,
                    () = shared.shutdown.cancelled() => return,
                }
            }
        };
        // Paused: what was read ahead waits (pending in Redis) until resumed.
        if !shared.unpaused().await {
            return;
        }
        shared
            .activity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut batch = vec![first];
        if batch_size > 1 {
            let deadline = Instant::now() + max_wait;
            while batch.len() < batch_size {
                if let Some(delivery) = throttle.ready() {
                    batch.push(delivery);
                    continue;
                }
                tokio::select! {
                    delivery = deliveries.recv(), if throttle.has_room() => match delivery {
                        Some(d) => batch.push(d),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shared.shutdown.cancelled() => break,
                }
            }
        }
        let batch = throttle.admit(&shared, batch).await;
        if batch.is_empty() {
            continue;
        }
        runners.start(batch, permit);
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One handler call and the outcome of each of its jobs. What only a failing job needs is
/// boxed, which keeps a runner's task small.
pub(super) async fn call(
    shared: Arc<Shared>,
    calls: Arc<Calls>,
    batch: Vec<Delivery>,
    permit: OwnedSemaphorePermit,
) {
    let (runnable, rejected) = sort_out(&shared, &calls, batch);
    if !rejected.is_empty() {
        Box::pin(dead_letter_all(&shared, rejected)).await;
    }
    if runnable.is_empty() {
        return;
    }
    let mut partitions: Vec<partitions::Tenure> = runnable.iter().map(|d| d.tenure).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let guard = match shared.held.begin(&partitions) {
        Ok(guard) => guard,
        Err(lapsed) => {
            for tenure in lapsed {
                shared.lease_lost(tenure, LAPSED);
            }
            return;
        }
    };
    let jobs = runnable
        .iter()
        .map(|d| d.job.clone().expect("only decodable deliveries run"))
        .collect::<Vec<_>>();
    // A line per job is for debugging; at `info`, a line per batch call.
    for job in &jobs {
        tracing::debug!(
            partition = job.meta.partition,
            "Consumer {} processing job {} (attempt {})",
            shared.consumer,
            job.meta.id,
            job.meta.attempt
        );
    }
    let count = jobs.len();
    if count > 1 {
        tracing::info!(
            "Consumer {} processing a batch of {count} jobs from partitions {:?}",
            shared.consumer,
            partitions.iter().map(|t| t.partition).collect::<Vec<_>>()
        );
    }
    let span = match jobs.as_slice() {
        [job] => tracing::info_span!(
            "job", topic = %shared.topic, partition = job.meta.partition,
            job_id = %job.meta.id, attempt = job.meta.attempt
        ),
        _ => tracing::info_span!("batch", topic = %shared.topic, jobs = count),
    };
    // The enqueuing spans' traces: one job's is continued (linked, if it was delayed);
    // a batch links to each.
    for job in &jobs {
        if let Some(carried) = &job.meta.trace {
            let mut carried = carried.clone();
            carried.link |= count > 1;
            crate::trace::continue_in(&span, &carried);
        }
    }
    let handler = shared.def.call;
    let timeout = shared.def.timeout();
    let started = Instant::now();
    let deadline = started + timeout;
    let results = match while_owned(
        &shared,
        &partitions,
        guard,
        deadline,
        // The handler is called inside: decoding the payloads may panic too.
        AssertUnwindSafe(async move { handler(jobs).await }.instrument(span)).catch_unwind(),
    )
    .await
    {
        Ran::Lost => {
            tracing::warn!(
                partitions = ?partitions,
                "Consumer {} lost a partition while running {count} job(s); abandoning them to the new owner",
                shared.consumer
            );
            for delivery in &runnable {
                shared
                    .held
                    .abandoned(delivery.tenure, delivery.entry_id.to_string());
            }
            drop(permit);
            shared.held.end(&partitions);
            // A batch stopped for another partition's sake (its hand-over) also held jobs
            // of partitions that stay here, pending under this consumer, where no claim
            // looks: taking those partitions anew runs them again.
            for &tenure in &partitions {
                if shared.held.is_active(tenure) {
                    shared.lease_lost(
                        tenure,
                        "a call with jobs of it was cancelled for another partition's hand-over",
                    );
                }
            }
            return;
        }
        Ran::TimedOut => {
            let error = format!("timed out after {} ms", timeout.as_millis());
            tracing::warn!(
                handler = shared.def.name,
                "a call of {count} job(s) {error}; it was cancelled"
            );
            (0..count)
                .map(|_| Err(JobError::retry(error.clone())))
                .collect()
        }
        Ran::Done(Ok(results)) => {
            shared
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            results
        }
        Ran::Done(Err(panic)) => {
            let message = panic_message(&panic);
            tracing::error!(handler = shared.def.name, "handler panicked: {message}");
            (0..count)
                .map(|_| Err(JobError::retry(format!("handler panicked: {message}"))))
                .collect()
        }
    };
    drop(permit);
    let failures = settle(&shared, runnable, results);
    if !failures.is_empty() {
        Box::pin(failed_all(&shared, &calls, failures)).await;
    }
    shared.held.end(&partitions);
}

/// Splits a batch into the deliveries to run and those to dead-letter; acknowledges or
/// leaves the rest.
fn sort_out(
    shared: &Shared,
    calls: &Calls,
    mut batch: Vec<Delivery>,
) -> (Vec<Delivery>, Vec<(Delivery, String)>) {
    let mut rejected = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        match verdict(shared, calls, &batch[i]) {
            Verdict::Run => i += 1,
            Verdict::Leave => drop(batch.remove(i)),
            Verdict::Ack => ack(shared, batch.remove(i)),
            Verdict::DeadLetter(reason) => rejected.push((batch.remove(i), reason)),
        }
    }
    (batch, rejected)
}

async fn dead_letter_all(shared: &Shared, rejected: Vec<(Delivery, String)>) {
    for (delivery, reason) in rejected {
        dead_letter(shared, &delivery, &reason).await;
    }
}

/// Acknowledges the jobs that succeeded; answers those that failed.
fn settle(
    shared: &Shared,
    ran: Vec<Delivery>,
    results: Vec<Result<(), JobError>>,
) -> Vec<(Delivery, JobError)> {
    let mut failures = Vec::new();
    for (delivery, result) in ran.into_iter().zip(results) {
        match result {
            Ok(()) => {
                shared.metrics.processed.inc();
                ack(shared, delivery);
            }
            Err(error) => failures.push((delivery, error)),
        }
    }
    failures
}

async fn failed_all(shared: &Arc<Shared>, calls: &Calls, failures: Vec<(Delivery, JobError)>) {
    for (delivery, error) in failures {
        failed(shared, calls, delivery, error).await;
    }
}

/// What becomes of a delivery before its call.
enum Verdict {
    Run,
    /// Not ours to run (now): left pending.
    Leave,
    /// Acknowledged unrun.
    Ack,
    DeadLetter(String),
}

fn verdict(shared: &Shared, calls: &Calls, delivery: &Delivery) -> Verdict {
    if !shared.held.is_current(delivery.tenure) {
        // The partition moved (or is moving) elsewhere, or was taken anew: its owner's
        // claim delivers the entry again.
        tracing::debug!(partition = delivery.tenure.partition, entry = %delivery.entry_id, "partition not ours; leaving the job to its owner");
        return Verdict::Leave;
    }
    match &delivery.job {
        Err(Undecodable::Newer(format)) => {
            // Never dead-lettered only because a newer producer wrote it: it stays
            // pending until a worker that knows its format takes the partition.
            tracing::error!(
                partition = delivery.tenure.partition, entry = %delivery.entry_id,
                "entry {} of topic {} has format {format}, written by a newer redisaq; this \
                 worker reads formats up to {}: upgrade it. The entry stays pending, untouched",
                delivery.entry_id, shared.topic, wire::FORMAT
            );
            Verdict::Leave
        }
        Err(Undecodable::Malformed(reason)) => Verdict::DeadLetter(reason.clone()),
        Ok(_)
            if delivery
                .for_group
                .as_deref()
                .is_some_and(|group| group != shared.group) =>
        {
            // A replay for another group: this one ran the job already.
            Verdict::Ack
        }
        Ok(_) if delivery.attempt > calls.max_attempts => Verdict::DeadLetter(format!(
            "gave up after {} deliveries: the worker stopped (crashed or was killed) \
             while running the last ones",
            delivery.attempt - 1
        )),
        Ok(_) => Verdict::Run,
    }
}

/// How a call guarded by [`while_owned`] ended.
enum Ran<T> {
    Done(T),
    /// Its deadline passed; it was dropped.
    TimedOut,
    /// A lease was lost, or may have run out; it was dropped.
    Lost,
}

/// Runs `work` while this consumer surely holds every partition it touches and until
/// `deadline`, and stops it (drops it) as soon as a lease is lost or may have run out,
/// e.g. after the process was paused for longer than the lease TTL.
///
/// The clock is read before every poll of `work`: after a pause, timers fire in no
/// particular order, so waiting for a lease timer could let the handler run first.
async fn while_owned<F: Future>(
    shared: &Shared,
    partitions: &[partitions::Tenure],
    guard: Guard,
    deadline: Instant,
    work: F,
) -> Ran<F::Output> {
    let mut lost = std::pin::pin!(any_cancelled(&guard.lost));
    let mut work = std::pin::pin!(work);
    let mut until = guard.valid_until;
    // Wakes this call at the deadline or when the lease may run out, so an idle handler
    // is stopped too. Set only once the work waits: most calls finish at their first poll.
    let mut alarm = std::pin::pin!(None::<tokio::time::Sleep>);
    let mut alarm_for = None;
    std::future::poll_fn(|cx| loop {
        if lost.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ran::Lost);
        }
        while clock::now() >= until {
            match shared.held.valid_until(partitions) {
                Some(renewed) if renewed > clock::now() => until = renewed,
                _ => {
                    // Taken anew, the partition's leftovers (these jobs) are claimed again.
                    for &tenure in partitions {
                        shared.lease_lost(tenure, LAPSED);
                    }
                    return Poll::Ready(Ran::Lost);
                }
            }
        }
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Ran::Done(output));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Ran::TimedOut);
        }
        if alarm_for != Some(until) {
            let at = clock::timer_instant(until).min(deadline);
            match alarm.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(at),
                None => alarm.set(Some(tokio::time::sleep_until(at))),
            }
            alarm_for = Some(until);
        }
        match alarm.as_mut().as_pin_mut().map(|sleep| sleep.poll(cx)) {
            // Due already: look again at once.
            Some(Poll::Ready(())) => alarm_for = None,
            _ => return Poll::Pending,
        }
    })
    .await
}

/// Completes once one of `tokens` is cancelled. A call touches one partition but for
/// batches, and that one needs no allocation.
async fn any_cancelled(tokens: &[Arc<tokio_util::sync::CancellationToken>]) {
    match tokens {
        [token] => token.cancelled().await,
        tokens => {
            futures_util::future::select_all(tokens.iter().map(|t| Box::pin(t.cancelled()))).await;
        }
    }
}

/// Why a holding is given up when its lease was not renewed in time.
const LAPSED: &str = "its lease may have run out unrenewed (was the process paused, or Redis \
                      out of reach?)";

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// A job whose call failed: retried later, or dead-lettered.
async fn failed(shared: &Arc<Shared>, calls: &Calls, delivery: Delivery, error: JobError) {
    shared.metrics.failed.inc();
    let job_id = delivery
        .job
        .as_ref()
        .map(|j| j.meta.id.to_string())
        .unwrap_or_default();
    if error.disposition() == Disposition::Fatal || delivery.attempt >= calls.max_attempts {
        tracing::warn!(
            topic = %shared.topic, job_id, attempt = delivery.attempt, error = %error,
            "job failed for good; moving it to the dead-letter queue"
        );
        return dead_letter(shared, &delivery, &error.to_string()).await;
    }
    shared.metrics.retried.inc();
    let delay = calls.backoff.delay(delivery.attempt + 1);
    tracing::warn!(
        topic = %shared.topic, job_id, attempt = delivery.attempt, error = %error,
        retry_in_ms = delay.as_millis() as u64,
        "job failed; retrying"
    );
    super::retries::defer(shared, &delivery, delay).await;
}

fn ack(shared: &Shared, delivery: Delivery) {
    let _ = shared.acks.send(Ack::Entry {
        tenure: delivery.tenure,
        id: delivery.entry_id,
    });
}

/// Writes the dead letter and acknowledges the job in one fenced step. If that keeps
/// failing, the partition is taken anew, which runs the job again (nothing is lost).
async fn dead_letter(shared: &Shared, delivery: &Delivery, error: &str) {
    let (job_id, payload) = match &delivery.job {
        Ok(job) => (job.meta.id.clone(), job.payload.to_string()),
        Err(_) => (
            crate::job::JobId::from_stored(&delivery.entry_id),
            delivery.raw_fields.clone().unwrap_or_default(),
        ),
    };
    let letter = DeadLetterEntry {
        dead_letter_id: String::new(), // given by Redis
        id: job_id.clone(),
        topic: shared.topic.to_string(),
        group: shared.group.to_string(),
        partition: delivery.tenure.partition,
        key: delivery.key.clone(),
        attempts: delivery.attempt,
        error: error.to_string(),
        payload,
        entry_id: delivery.entry_id.clone(),
        failed_at_ms: now_ms(),
    };
    let holding = shared.holding(delivery.tenure);
    for delay in crate::retry::quick().take(8) {
        match dlq::write(
            &mut shared.conn.clone(),
            &holding,
            &letter,
            shared.def.dlq_maxlen(),
        )
        .await
        {
            Ok(()) => {
                shared.metrics.dead_lettered.inc();
                tracing::warn!(topic = %shared.topic, job_id = %job_id, error, "Job {job_id} moved to the dead-letter queue");
                return;
            }
            Err(crate::Error::Redis(e)) if lease::is_fenced(&e) => {
                shared.lease_lost(
                    delivery.tenure,
                    "its dead letter was refused (the lease is not ours)",
                );
                return;
            }
            Err(e) => {
                tracing::warn!(job_id = %job_id, error = %e, "writing the dead letter failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    shared.lease_lost(
        delivery.tenure,
        &format!("the dead letter of job {job_id} could not be written; the job runs again"),
    );
}
