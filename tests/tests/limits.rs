//! The concurrency limit: at most `concurrency` calls of a handler run at once per worker;
//! the defaults are 32 for one-job handlers and 2 for batch handlers; `Worker::concurrency`
//! and `REDISAQ_CONCURRENCY` override it, and an invalid `REDISAQ_CONCURRENCY` stops the
//! worker at start with a message naming the variable.
//!
//! Every handler here counts its running calls with an atomic gauge and then waits for a
//! token the test hands out one at a time, so the calls pile up at the limit while more
//! jobs wait in the worker; the test checks the highest count ever seen.

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, pending, redis, setup, worker_command, worker_with_heartbeats, Background,
    KillOnDrop, Work,
};
use tokio::sync::Semaphore;

/// Calls of one handler: how many run now and at most, how many finished, and the gate
/// each call waits at.
struct Gauge {
    running_calls: AtomicUsize,
    running_jobs: AtomicUsize,
    max_calls: AtomicUsize,
    calls_done: AtomicUsize,
    jobs_done: AtomicUsize,
    gate: Semaphore,
}

/// Takes a running call off the gauge however the call ends.
struct Running<'a>(&'a Gauge, usize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running_calls.fetch_sub(1, Ordering::SeqCst);
        self.0.running_jobs.fetch_sub(self.1, Ordering::SeqCst);
    }
}

impl Gauge {
    const fn new() -> Self {
        Gauge {
            running_calls: AtomicUsize::new(0),
            running_jobs: AtomicUsize::new(0),
            max_calls: AtomicUsize::new(0),
            calls_done: AtomicUsize::new(0),
            jobs_done: AtomicUsize::new(0),
            gate: Semaphore::const_new(0),
        }
    }

    /// One handler call of `jobs` jobs: counted while it waits for its token.
    async fn call(&self, jobs: usize) -> Result<(), JobError> {
        self.running_jobs.fetch_add(jobs, Ordering::SeqCst);
        let now = self.running_calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_calls.fetch_max(now, Ordering::SeqCst);
        let running = Running(self, jobs);
        let token = tokio::time::timeout(Duration::from_secs(120), self.gate.acquire()).await;
        drop(running);
        match token {
            Ok(Ok(permit)) => permit.forget(),
            _ => return Err(JobError::fatal("the test never released this call")),
        }
        self.jobs_done.fetch_add(jobs, Ordering::SeqCst);
        self.calls_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

static EXPLICIT: Gauge = Gauge::new();
static DEFAULT_SINGLE: Gauge = Gauge::new();
static DEFAULT_BATCH: Gauge = Gauge::new();
static OVERRIDDEN: Gauge = Gauge::new();

#[job(
    topic = "limits_explicit",
    group = "limits_explicit_group",
    partitions = 2,
    concurrency = 3,
    retries = 0
)]
async fn explicit(_job: Job<Work>) -> Result<(), JobError> {
    EXPLICIT.call(1).await
}

#[job(
    topic = "limits_default",
    group = "limits_default_group",
    partitions = 4,
    retries = 0
)]
async fn default_single(_job: Job<Work>) -> Result<(), JobError> {
    DEFAULT_SINGLE.call(1).await
}

#[job(
    topic = "limits_batch",
    group = "limits_batch_group",
    partitions = 2,
    batch = 4,
    max_wait_ms = 20,
    retries = 0
)]
async fn default_batch(jobs: Vec<Job<Work>>) -> Vec<Result<(), JobError>> {
    let outcome = DEFAULT_BATCH.call(jobs.len()).await;
    jobs.iter()
        .map(|_| match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(JobError::fatal(e.to_string())),
        })
        .collect()
}

#[job(
    topic = "limits_override",
    group = "limits_override_group",
    partitions = 2,
    concurrency = 2,
    retries = 0
)]
async fn overridden(_job: Job<Work>) -> Result<(), JobError> {
    OVERRIDDEN.call(1).await
}

// Producer-side declaration of the test worker's `REDISAQ_CONCURRENCY` topic (same topic
// and partitions).
#[job(topic = "limits_env", group = "limits_env_group", partitions = 2)]
async fn limits_env(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

/// A worker with every setting these tests rely on given explicitly (long heartbeats:
/// nothing here depends on expiry).
fn worker(topic: &str) -> redisaq::Worker {
    setup();
    worker_with_heartbeats(Duration::from_secs(1), Duration::from_secs(10))
        .consumer_name(format!("{topic}-worker"))
        .topics([topic])
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(10))
}

/// What a run of [`measure`] saw.
struct Measured {
    max_calls: usize,
    jobs_done: usize,
}

/// A handler under test: its gauge, topic, group and partition count.
struct Subject {
    gauge: &'static Gauge,
    topic: &'static str,
    group: &'static str,
    partitions: u32,
}

/// Enqueues `jobs` jobs, runs `worker` until its calls pile up at the gate with more jobs
/// fetched than are running, then releases the calls one at a time until every job is
/// done, and stops the worker.
async fn measure(
    subject: Subject,
    worker: redisaq::Worker,
    enqueue: impl std::future::Future<Output = Result<Vec<redisaq::JobId>, redisaq::Error>>,
    jobs: usize,
    limit: usize,
) -> Measured {
    let Subject {
        gauge,
        topic,
        group,
        partitions,
    } = subject;
    assert_eq!(enqueue.await.unwrap().len(), jobs);
    let worker = Background::start(worker);
    let mut conn = redis().connection();
    // At the limit with more jobs fetched than running (or past the limit: the check of
    // the maximum says so).
    let piled_up = eventually(Duration::from_secs(60), || {
        let running = Gauge::get(&gauge.running_calls);
        running > limit
            || running == limit
                && pending(&mut conn, topic, group, partitions)
                    > Gauge::get(&gauge.running_jobs) as u64
    })
    .await;
    // Hand out tokens (even when the calls did not pile up, so the worker can stop).
    let mut released = 0;
    while Gauge::get(&gauge.jobs_done) < jobs && released < jobs {
        gauge.gate.add_permits(1);
        released += 1;
        let finished = eventually(Duration::from_secs(30), || {
            Gauge::get(&gauge.calls_done) >= released
        })
        .await;
        if !finished {
            break;
        }
    }
    gauge.gate.add_permits(10_000);
    let outcome = worker.stop().await;
    assert!(outcome.is_ok(), "the worker ran: {outcome:?}");
    assert!(
        piled_up,
        "the calls never piled up at the limit {limit} with more jobs fetched: at most {} ran at once, {} pending",
        Gauge::get(&gauge.max_calls),
        pending(&mut conn, topic, group, partitions)
    );
    assert_eq!(
        pending(&mut conn, topic, group, partitions),
        0,
        "every job was acknowledged"
    );
    Measured {
        max_calls: Gauge::get(&gauge.max_calls),
        jobs_done: Gauge::get(&gauge.jobs_done),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_never_runs_more_calls_than_its_concurrency() {
    let _ = worker(explicit::TOPIC);
    let measured = measure(
        Subject {
            gauge: &EXPLICIT,
            topic: explicit::TOPIC,
            group: explicit::GROUP,
            partitions: 2,
        },
        worker(explicit::TOPIC),
        explicit::enqueue_batch((0..12).map(|n| Work { n })),
        12,
        3,
    )
    .await;
    assert_eq!(measured.jobs_done, 12);
    assert_eq!(
        measured.max_calls, 3,
        "`concurrency = 3`: three calls at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_handlers_run_32_calls_at_once_by_default() {
    assert!(
        std::env::var_os("REDISAQ_CONCURRENCY").is_none(),
        "this test needs REDISAQ_CONCURRENCY unset"
    );
    let _ = worker(default_single::TOPIC);
    let measured = measure(
        Subject {
            gauge: &DEFAULT_SINGLE,
            topic: default_single::TOPIC,
            group: default_single::GROUP,
            partitions: 4,
        },
        worker(default_single::TOPIC),
        default_single::enqueue_batch((0..80).map(|n| Work { n })),
        80,
        32,
    )
    .await;
    assert_eq!(measured.jobs_done, 80);
    assert_eq!(measured.max_calls, 32, "the default concurrency is 32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_handlers_run_2_calls_at_once_by_default() {
    assert!(
        std::env::var_os("REDISAQ_CONCURRENCY").is_none(),
        "this test needs REDISAQ_CONCURRENCY unset"
    );
    let _ = worker(default_batch::TOPIC);
    let measured = measure(
        Subject {
            gauge: &DEFAULT_BATCH,
            topic: default_batch::TOPIC,
            group: default_batch::GROUP,
            partitions: 2,
        },
        worker(default_batch::TOPIC),
        default_batch::enqueue_batch((0..40).map(|n| Work { n })),
        40,
        2,
    )
    .await;
    assert_eq!(measured.jobs_done, 40);
    assert_eq!(
        measured.max_calls, 2,
        "the default concurrency of a batch handler is 2 calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_concurrency_overrides_the_handlers_setting() {
    let _ = worker(overridden::TOPIC);
    let measured = measure(
        Subject {
            gauge: &OVERRIDDEN,
            topic: overridden::TOPIC,
            group: overridden::GROUP,
            partitions: 2,
        },
        worker(overridden::TOPIC).concurrency(5),
        overridden::enqueue_batch((0..15).map(|n| Work { n })),
        15,
        5,
    )
    .await;
    assert_eq!(measured.jobs_done, 15);
    assert_eq!(
        measured.max_calls, 5,
        "Worker::concurrency(5) beats `concurrency = 2`"
    );
}

fn counter(conn: &mut redis::Connection, name: &str) -> u64 {
    redis::cmd("GET")
        .arg(format!("redisaq-test:{name}:limits_env"))
        .query::<Option<u64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisaq_concurrency_overrides_the_handlers_setting() {
    setup();
    let mut conn = redis().connection();
    const JOBS: u64 = 15;
    limits_env::enqueue_batch((0..JOBS).map(|n| Work { n }))
        .await
        .unwrap();
    let mut child = KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), "env", "limits_env", 0)
            .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "1000")
            .env("REDISAQ_HEARTBEAT_TTL_MS", "10000")
            .env("REDISAQ_CONCURRENCY", "5")
            .stdout(Stdio::null()),
    );
    let piled_up = eventually(Duration::from_secs(60), || {
        let running = counter(&mut conn, "running");
        running > 5 || running == 5 && pending(&mut conn, "limits_env", "limits_env_group", 2) > 5
    })
    .await;
    let mut released = 0;
    while counter(&mut conn, "done") < JOBS && released < JOBS {
        let _: i64 = redis::cmd("INCR")
            .arg("redisaq-test:tokens:limits_env")
            .query(&mut conn)
            .unwrap();
        released += 1;
        if !eventually(Duration::from_secs(30), || {
            counter(&mut conn, "done") >= released
        })
        .await
        {
            break;
        }
    }
    let _: () = redis::cmd("SET")
        .arg("redisaq-test:tokens:limits_env")
        .arg(10_000)
        .query(&mut conn)
        .unwrap();
    assert!(child.exited().is_none(), "the worker kept running");
    assert!(
        piled_up,
        "the calls never piled up at 5: at most {} ran at once",
        counter(&mut conn, "max")
    );
    assert_eq!(counter(&mut conn, "done"), JOBS);
    assert_eq!(
        counter(&mut conn, "max"),
        5,
        "REDISAQ_CONCURRENCY=5 beats `concurrency = 3`"
    );
}

/// Starts the test worker with `REDISAQ_CONCURRENCY=value`; returns its exit status and
/// everything it printed, or fails if it is still running after a generous bound.
async fn start_with_concurrency(value: &str) -> (std::process::ExitStatus, String) {
    let mut child = KillOnDrop::spawn(
        // A topic no job of this binary goes to, in case the worker does start.
        worker_command(env!("CARGO_BIN_EXE_test_worker"), "invalid", "grow", 0)
            .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "1000")
            .env("REDISAQ_HEARTBEAT_TTL_MS", "10000")
            .env("REDISAQ_CONCURRENCY", value)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut status = None;
    eventually(Duration::from_secs(30), || {
        status = child.exited();
        status.is_some()
    })
    .await;
    let status = status.unwrap_or_else(|| {
        panic!("the worker with REDISAQ_CONCURRENCY={value:?} did not stop at start")
    });
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    (status, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_redisaq_concurrency_stops_the_worker_naming_the_variable() {
    let _ = redis();
    for value in ["abc", "0", "-3", "2.5"] {
        let (status, output) = start_with_concurrency(value).await;
        assert!(
            !status.success(),
            "REDISAQ_CONCURRENCY={value:?} must fail: {status:?}\n{output}"
        );
        assert!(
            output.contains("REDISAQ_CONCURRENCY"),
            "REDISAQ_CONCURRENCY={value:?}: the message names the variable:\n{output}"
        );
    }
}
