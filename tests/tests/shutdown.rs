//! The shutdown deadline: a job still running when `shutdown_timeout` passes makes
//! `run_until` return `Error::ShutdownTimeout` (a worker process exits non-zero); the job
//! stays pending, the next worker runs it, and it runs to completion exactly once.
//!
//! The handlers record each start and each finish separately and wait at a gate the test
//! opens, so "longer than the deadline" is a condition, not a duration.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, pending, redis, setup, worker_command, worker_with_heartbeats, Background, Calls,
    KillOnDrop, Work,
};
use tokio::sync::Semaphore;

/// Attempt of every start of the in-process slow job.
static STARTS: Calls<u32> = Calls::new();
/// Finished runs of the in-process slow job.
static FINISHES: AtomicUsize = AtomicUsize::new(0);
/// Runs of the in-process slow job that are still alive (started, not finished, not
/// dropped).
static ALIVE: AtomicUsize = AtomicUsize::new(0);
/// Opened by the test (many permits at once): every waiting run goes on.
static GATE: Semaphore = Semaphore::const_new(0);

struct Alive;

impl Drop for Alive {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[job(
    topic = "shutdown_inprocess",
    group = "shutdown_inprocess_group",
    partitions = 1,
    concurrency = 1,
    retries = 3
)]
async fn slow(job: Job<Work>) -> Result<(), JobError> {
    ALIVE.fetch_add(1, Ordering::SeqCst);
    let _alive = Alive;
    STARTS.push(job.attempt());
    match tokio::time::timeout(Duration::from_secs(120), GATE.acquire()).await {
        Ok(Ok(_permit)) => {}
        _ => return Err(JobError::fatal("the test never opened the gate")),
    }
    FINISHES.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// A worker for the slow job. The heartbeat TTL (2 s) is how long the next worker waits
/// for the lease of the partition whose job overran the deadline.
fn worker(name: &str, shutdown_timeout: Duration) -> redisaq::Worker {
    setup();
    worker_with_heartbeats(Duration::from_millis(500), Duration::from_secs(2))
        .consumer_name(name)
        .topics([slow::TOPIC])
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .concurrency(1)
        .shutdown_timeout(shutdown_timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_the_shutdown_deadline_is_an_error_and_runs_once_on_the_next_worker() {
    let _ = worker("setup", Duration::from_secs(1));
    let mut conn = redis().connection();
    slow::enqueue(Work { n: 1 }).await.unwrap();

    let first = Background::start(worker("first", Duration::from_millis(300)));
    let started = eventually(Duration::from_secs(30), || STARTS.len() == 1).await;
    let stopped = first.stop().await;
    assert!(started, "the first worker started the job");
    assert!(
        matches!(stopped, Err(redisaq::Error::ShutdownTimeout(1))),
        "one job was running at the deadline: {stopped:?}"
    );
    assert_eq!(FINISHES.load(Ordering::SeqCst), 0);
    assert_eq!(
        pending(&mut conn, slow::TOPIC, slow::GROUP, 1),
        1,
        "the job is still pending"
    );

    let second = Background::start(worker("second", Duration::from_secs(10)));
    // The first worker's run is dropped once its lease may have run out; the next
    // worker takes the partition over and starts the job again.
    let handed_over = eventually(Duration::from_secs(60), || {
        STARTS.len() == 2 && ALIVE.load(Ordering::SeqCst) == 1
    })
    .await;
    let alive_before_gate = ALIVE.load(Ordering::SeqCst);
    GATE.add_permits(1_000);
    let finished = eventually(Duration::from_secs(30), || {
        FINISHES.load(Ordering::SeqCst) >= 1 && pending(&mut conn, slow::TOPIC, slow::GROUP, 1) == 0
    })
    .await;
    let stopped = second.stop().await;
    assert!(
        handed_over,
        "the next worker started the job and the overrun run was stopped: starts {:?}, {alive_before_gate} run(s) alive",
        STARTS.all(),
    );
    assert!(finished, "the job finished and was acknowledged");
    assert!(
        stopped.is_ok(),
        "nothing ran at the second stop: {stopped:?}"
    );
    assert_eq!(
        STARTS.all(),
        vec![1, 2],
        "started once per worker, the second time as attempt 2"
    );
    assert_eq!(
        FINISHES.load(Ordering::SeqCst),
        1,
        "ran to completion exactly once"
    );
    assert_eq!(ALIVE.load(Ordering::SeqCst), 0);
}

// Producer-side declaration of the test worker's slow topic (same topic and partitions).
#[job(topic = "shutdown_slow", group = "shutdown_slow_group", partitions = 1)]
async fn shutdown_slow(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

fn slow_worker(name: &str) -> KillOnDrop {
    KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), name, "shutdown_slow", 0)
            .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "500")
            .env("REDISAQ_HEARTBEAT_TTL_MS", "2000")
            .env("REDISAQ_CONCURRENCY", "1")
            .env("TEST_SHUTDOWN_TIMEOUT_MS", "300")
            .stdout(Stdio::null()),
    )
}

fn list(conn: &mut redis::Connection, name: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("redisaq-test:{name}:shutdown_slow"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_past_the_shutdown_deadline_exits_non_zero_and_the_next_runs_the_job() {
    setup();
    let mut conn = redis().connection();
    shutdown_slow::enqueue(Work { n: 1 }).await.unwrap();

    let mut first = slow_worker("slow1");
    let started = eventually(Duration::from_secs(30), || {
        list(&mut conn, "starts").len() == 1
    })
    .await;
    assert!(started, "the first worker started the job");
    let status = first.terminate().await.expect("the first worker exited");
    assert!(
        !status.success(),
        "a job ran past the deadline: non-zero exit, got {status:?}"
    );
    assert!(list(&mut conn, "finishes").is_empty());
    assert_eq!(
        pending(&mut conn, "shutdown_slow", "shutdown_slow_group", 1),
        1
    );

    let mut second = slow_worker("slow2");
    let restarted = eventually(Duration::from_secs(60), || {
        list(&mut conn, "starts").len() == 2
    })
    .await;
    let _: () = redis::cmd("SET")
        .arg("redisaq-test:gate:shutdown_slow")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let finished = eventually(Duration::from_secs(30), || {
        !list(&mut conn, "finishes").is_empty()
            && pending(&mut conn, "shutdown_slow", "shutdown_slow_group", 1) == 0
    })
    .await;
    let status = second.terminate().await.expect("the second worker exited");
    assert!(restarted, "the next worker started the job");
    assert!(finished, "the job finished and was acknowledged");
    assert!(
        status.success(),
        "nothing ran at the second stop: {status:?}"
    );
    assert_eq!(list(&mut conn, "starts"), vec!["slow1", "slow2"]);
    assert_eq!(
        list(&mut conn, "finishes"),
        vec!["slow2"],
        "ran to completion exactly once, on the next worker"
    );
}
