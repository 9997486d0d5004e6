//! Handlers that never return: a call past its `timeout_ms` is cancelled and counts as a
//! failed attempt, and a hand-over waits for running calls only up to the release
//! deadline, so a hung job cannot hold its partition (and every job behind it) forever.

use std::collections::HashMap;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    dead_letters, eventually, id_set, pending, redis, setup, worker_with_heartbeats, Background,
    Calls,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    n: u64,
    /// Attempts that hang before one succeeds (`u32::MAX`: every attempt).
    hang_attempts: u32,
}

/// (tag, (n, attempt)) of every call that returned.
static DONE: Calls<(&'static str, (u64, u32))> = Calls::new();
/// (tag, (n, attempt)) of every call that started.
static STARTED: Calls<(&'static str, (u64, u32))> = Calls::new();

async fn run(tag: &'static str, job: &Job<Work>) -> Result<(), JobError> {
    let work = job.payload();
    STARTED.push((tag, (work.n, job.attempt())));
    if job.attempt() <= work.hang_attempts {
        std::future::pending::<()>().await;
    }
    DONE.push((tag, (work.n, job.attempt())));
    Ok(())
}

fn done(tag: &str) -> Vec<(u64, u32)> {
    DONE.tagged(tag)
}

fn started(tag: &str) -> Vec<(u64, u32)> {
    STARTED.tagged(tag)
}

fn worker(topic: &str, name: &str) -> redisaq::Worker {
    setup();
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(2))
        .topics([topic])
        .consumer_name(name)
        .concurrency(8)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .shutdown_timeout(Duration::from_millis(500))
}

#[job(
    topic = "hung_timeout",
    group = "timeout_group",
    partitions = 1,
    retries = 2,
    timeout_ms = 300
)]
async fn timed(job: Job<Work>) -> Result<(), JobError> {
    run("timed", &job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_timeout_is_cancelled_and_counts_as_a_failed_attempt() {
    let _ = worker(timed::TOPIC, "timeout");
    // Hangs twice then succeeds; hangs every time (dead-lettered after 3 attempts).
    timed::enqueue(Work {
        n: 1,
        hang_attempts: 2,
    })
    .await
    .unwrap();
    timed::enqueue(Work {
        n: 2,
        hang_attempts: u32::MAX,
    })
    .await
    .unwrap();
    let running = Background::start(worker(timed::TOPIC, "timeout"));
    let finished = eventually(Duration::from_secs(60), || {
        done("timed").contains(&(1, 3))
            && dead_letters(&mut redis().connection(), timed::TOPIC).len() == 1
            && pending(&mut redis().connection(), timed::TOPIC, timed::GROUP, 1) == 0
    })
    .await;
    running.stop().await.unwrap();
    assert!(finished, "started {:?}", started("timed"));
    let mut attempts: HashMap<u64, Vec<u32>> = HashMap::new();
    for (n, attempt) in started("timed") {
        attempts.entry(n).or_default().push(attempt);
    }
    assert_eq!(attempts[&1], vec![1, 2, 3]);
    assert_eq!(attempts[&2], vec![1, 2, 3]);
    assert_eq!(done("timed"), vec![(1, 3)]);
    let letters = dead_letters(&mut redis().connection(), timed::TOPIC);
    assert_eq!(letters[0]["error"], "timed out after 300 ms");
    assert_eq!(letters[0]["attempts"], "3");
}

#[job(topic = "hung_handover", group = "handover_group", partitions = 2)]
async fn handed_over(job: Job<Work>) -> Result<(), JobError> {
    run("handover", &job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_cannot_stall_a_hand_over() {
    let _ = worker(handed_over::TOPIC, "first");
    // One job that never returns on each partition (round-robin), under the default
    // timeout of 30 minutes.
    handed_over::enqueue_batch((0..2).map(|n| Work {
        n,
        hang_attempts: u32::MAX,
    }))
    .await
    .unwrap();
    let first = Background::start(worker(handed_over::TOPIC, "first"));
    assert!(
        eventually(Duration::from_secs(30), || started("handover").len() == 2).await,
        "both hanging jobs started"
    );
    // A second consumer joins: one partition, with its hung call, moves to it.
    let second = Background::start(worker(handed_over::TOPIC, "second"));
    let assignment = redisaq::keys::assignment(handed_over::TOPIC, handed_over::GROUP);
    assert!(
        eventually(Duration::from_secs(30), || {
            let owners: Option<String> = redis::cmd("HGET")
                .arg(&assignment)
                .arg("owners")
                .query(&mut redis().connection())
                .unwrap();
            owners.is_some_and(|o| o.contains("second-"))
        })
        .await,
        "a partition was assigned to the second consumer"
    );
    // The partition that moved is handed over despite its hung call: the call is
    // cancelled after the release deadline (one heartbeat TTL, 2 s here).
    let lease_owner = |p: u32| -> Option<String> {
        redis::cmd("GET")
            .arg(redisaq::keys::lease(
                handed_over::TOPIC,
                p,
                handed_over::GROUP,
            ))
            .query(&mut redis().connection())
            .unwrap()
    };
    let handed = eventually(Duration::from_secs(60), || {
        (0..2).any(|p| lease_owner(p).is_some_and(|o| o.starts_with("second-")))
    })
    .await;
    let owners: Vec<Option<String>> = (0..2).map(lease_owner).collect();
    // And jobs behind the hung ones run, on both partitions.
    let ids = id_set(
        handed_over::enqueue_batch((10..50).map(|n| Work {
            n,
            hang_attempts: 0,
        }))
        .await
        .unwrap(),
    );
    assert_eq!(ids.len(), 40);
    let all_done = eventually(Duration::from_secs(60), || {
        done("handover").iter().filter(|(n, _)| *n >= 10).count() >= 40
    })
    .await;
    // The hung calls outlive the shutdown deadline: both workers say so.
    let _ = tokio::join!(first.stop(), second.stop());
    assert!(handed, "the second consumer took its partition: {owners:?}");
    assert!(
        all_done,
        "jobs behind the hung ones ran: {} of 40",
        done("handover").iter().filter(|(n, _)| *n >= 10).count()
    );
    // The call the hand-over cancelled had its attempt: it starts again at the new owner
    // as the next one, while the one that stayed starts once.
    let mut hung = started("handover");
    hung.retain(|(n, _)| *n < 10);
    hung.sort_unstable();
    assert!(
        hung == [(0, 1), (0, 2), (1, 1)] || hung == [(0, 1), (1, 1), (1, 2)],
        "the moved hung job started again as attempt 2: {hung:?}"
    );
    let mut runs: HashMap<u64, usize> = HashMap::new();
    for (n, _) in done("handover") {
        *runs.entry(n).or_default() += 1;
    }
    assert!(runs.values().all(|&r| r == 1), "each job once: {runs:?}");
}

/// (n, attempt, partition) of every job a call of `mixed` started with.
static MIXED: Calls<(u64, u32, u32)> = Calls::new();

#[job(
    topic = "hung_mixed",
    group = "mixed_group",
    partitions = 2,
    batch = 10,
    max_wait_ms = 500
)]
async fn mixed(jobs: Vec<Job<u64>>) -> Vec<Result<(), JobError>> {
    for job in &jobs {
        MIXED.push((*job.payload(), job.attempt(), job.partition()));
    }
    if jobs.iter().any(|job| job.attempt() == 1) {
        std::future::pending::<()>().await;
    }
    jobs.iter().map(|_| Ok(())).collect()
}

/// Before: a hand-over cancelled a hung batch call that also held a job of a partition
/// staying with the worker; that job stayed pending under the worker, never to run
/// again while it kept the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_that_cancels_a_batch_runs_again_the_jobs_of_partitions_that_stay() {
    let _ = worker(mixed::TOPIC, "first");
    // One job on each partition (round-robin), in one call that hangs.
    mixed::enqueue_batch([0, 1]).await.unwrap();
    let first = Background::start(worker(mixed::TOPIC, "mixed-a"));
    assert!(
        eventually(Duration::from_secs(30), || MIXED.len() == 2).await,
        "both jobs started: {MIXED:?}"
    );
    assert_eq!(
        MIXED.count(|(_, attempt, _)| *attempt == 1),
        2,
        "in one call: {MIXED:?}"
    );
    // A second consumer joins: one partition moves, and its release cancels the call
    // after the release deadline (one heartbeat TTL, 2 s here).
    let second = Background::start(worker(mixed::TOPIC, "mixed-b"));
    let done = eventually(Duration::from_secs(60), || {
        MIXED.count(|(_, attempt, _)| *attempt == 2) == 2
            && pending(&mut redis().connection(), mixed::TOPIC, mixed::GROUP, 2) == 0
    })
    .await;
    let _ = tokio::join!(first.stop(), second.stop());
    assert!(done, "both jobs ran again, as attempt 2: {MIXED:?}");
}
