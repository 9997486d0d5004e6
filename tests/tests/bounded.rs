//! What a worker holds is bounded by its concurrency, whatever the number of partitions
//! and failures: running calls plus its delivery queue (concurrency × batch, plus a
//! read-ahead of 512) are pending under it; retries waiting for their backoff wait
//! in Redis, where the partition's next owner finds them when they are due.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    dead_letters, eventually, pending, redis, setup, worker_with_heartbeats, Background, Calls,
    Work,
};

const PARTITIONS: u32 = 8;
const CONCURRENCY: usize = 2;
/// The read-ahead README documents.
const READ_AHEAD: usize = 512;

static SLOW_DONE: AtomicU64 = AtomicU64::new(0);
/// The payloads whose handler call returned.
static SLOW_FINISHED: Calls<u64> = Calls::new();

#[job(
    topic = "bounded_reads",
    group = "bounded_reads_group",
    partitions = 8,
    concurrency = 2
)]
async fn slow(job: Job<Work>) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    SLOW_FINISHED.push(job.payload().n);
    SLOW_DONE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Entries delivered to the worker whose call has not returned yet: queued or running.
/// (Entries whose call returned but whose ack is still on its way are not held.) The
/// pending lists are read in one atomic step; an entry whose call returns while the rest
/// is looked up is not counted, so this never counts more than was held at once.
fn held(conn: &mut redis::Connection) -> usize {
    let mut snapshot = redis::pipe();
    snapshot.atomic();
    for partition in 0..PARTITIONS {
        snapshot
            .cmd("XPENDING")
            .arg(redisaq::keys::partition(slow::TOPIC, partition))
            .arg(slow::GROUP)
            .arg("-")
            .arg("+")
            .arg(1000);
    }
    let pending: Vec<redis::streams::StreamPendingCountReply> = snapshot.query(conn).unwrap();
    let mut payloads = Vec::new();
    for (partition, pending) in (0..PARTITIONS).zip(pending) {
        let stream = redisaq::keys::partition(slow::TOPIC, partition);
        for row in pending.ids {
            let entry: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&row.id)
                .arg(&row.id)
                .query(conn)
                .unwrap();
            if let Some(entry) = entry.ids.first() {
                let payload: String = entry.get("payload").unwrap();
                payloads.push(serde_json::from_str::<Work>(&payload).unwrap().n);
            }
        }
    }
    let finished = SLOW_FINISHED.all();
    payloads.iter().filter(|n| !finished.contains(n)).count()
}

/// Before: one read asked every owned partition for the room in the queue, so with 8
/// partitions it took up to 8 × the queue at once (about all 1,200 jobs here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holds_no_more_than_its_concurrency_and_read_ahead_however_many_partitions() {
    setup();
    let mut conn = redis().connection();
    let jobs = 1200;
    slow::enqueue_batch((0..jobs).map(|n| Work { n }))
        .await
        .unwrap();

    let worker = Background::start(
        worker_with_heartbeats(Duration::from_millis(500), Duration::from_secs(5))
            .consumer_name("bounded")
            .topics([slow::TOPIC]),
    );
    let mut most = 0;
    let done = eventually(Duration::from_secs(120), || {
        // Once a job ran, the group exists on every partition.
        if SLOW_DONE.load(Ordering::SeqCst) > 0 {
            most = most.max(held(&mut conn));
        }
        SLOW_DONE.load(Ordering::SeqCst) >= jobs
    })
    .await;
    worker.stop().await.unwrap();
    assert!(done, "all jobs ran: {}", SLOW_DONE.load(Ordering::SeqCst));
    assert!(most > 0, "the sampling saw the worker hold jobs");
    // Running calls (concurrency × batch) plus the delivery queue (as much again plus
    // the read-ahead).
    let bound = 2 * CONCURRENCY + READ_AHEAD;
    assert!(
        most <= bound,
        "at most {bound} entries (running + read-ahead) were held at once, saw {most}"
    );
    assert_eq!(pending(&mut conn, slow::TOPIC, slow::GROUP, PARTITIONS), 0);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether `failing` fails its first attempts (the test turns it off to let them pass).
static FAIL_FIRST: AtomicBool = AtomicBool::new(true);
/// (job n, attempt, when it started in ms) of every call of `failing`.
static FAILING_CALLS: Calls<(u64, u32, u64)> = Calls::new();

#[job(
    topic = "bounded_retries",
    group = "bounded_retries_group",
    partitions = 2,
    concurrency = 4,
    retries = 3
)]
async fn failing(job: Job<Work>) -> Result<(), JobError> {
    FAILING_CALLS.push((job.payload().n, job.attempt(), now_ms()));
    if job.attempt() == 1 && FAIL_FIRST.load(Ordering::SeqCst) {
        return Err(JobError::retry("first attempts fail"));
    }
    Ok(())
}

fn failing_worker(name: &str) -> redisaq::Worker {
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_millis(800))
        .consumer_name(name)
        .topics([failing::TOPIC])
        .retry_backoff(Duration::from_secs(4), Duration::from_secs(4))
}

/// Before: a retry waited in the memory of the worker that failed it; when that worker
/// went away the next owner claimed the entry at once and ran it before its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_redis_and_the_next_owner_runs_them_when_due() {
    setup();
    let mut conn = redis().connection();
    let jobs = 30;
    failing::enqueue_batch((0..jobs).map(|n| Work { n }))
        .await
        .unwrap();

    // The first worker fails every first attempt, then goes away (its process would be
    // killed; here its task is aborted, so it neither releases nor acks anything).
    let first = tokio::spawn(failing_worker("retries-a").run_until(std::future::pending::<()>()));
    let failed = eventually(Duration::from_secs(60), || {
        FAILING_CALLS.len() as u64 >= jobs
    })
    .await;
    first.abort();
    let _ = first.await;
    assert!(failed, "every first attempt ran");
    FAIL_FIRST.store(false, Ordering::SeqCst);
    let failed_at: HashMap<u64, u64> = FAILING_CALLS
        .all()
        .into_iter()
        .map(|(n, _, at)| (n, at))
        .collect();

    let second = Background::start(failing_worker("retries-b"));
    let retried = eventually(Duration::from_secs(60), || {
        FAILING_CALLS.count(|(_, attempt, _)| *attempt == 2) as u64 >= jobs
            && pending(&mut conn, failing::TOPIC, failing::GROUP, 2) == 0
    })
    .await;
    second.stop().await.unwrap();
    assert!(
        retried,
        "every job ran its second attempt: {FAILING_CALLS:?}"
    );

    let calls = FAILING_CALLS.all();
    for n in 0..jobs {
        let attempts: Vec<u32> = calls
            .iter()
            .filter(|(m, _, _)| *m == n)
            .map(|(_, a, _)| *a)
            .collect();
        assert_eq!(attempts, vec![1, 2], "job {n} ran once per attempt");
        let (_, _, retried_at) = calls
            .iter()
            .find(|(m, a, _)| *m == n && *a == 2)
            .copied()
            .unwrap();
        // The backoff is 4 s, jittered down by up to half: never earlier than 2 s.
        assert!(
            retried_at >= failed_at[&n] + 2000,
            "job {n}'s retry waited for its backoff: failed at {}, retried at {retried_at}",
            failed_at[&n]
        );
    }
}

/// Whether `racing` fails its first attempts.
static RACING_FAIL_FIRST: AtomicBool = AtomicBool::new(true);
/// (job n, attempt) of every call of `racing`.
static RACING_CALLS: Calls<(u64, u32)> = Calls::new();

#[job(
    topic = "bounded_race",
    group = "bounded_race_group",
    partitions = 1,
    concurrency = 8,
    retries = 3
)]
async fn racing(job: Job<Work>) -> Result<(), JobError> {
    RACING_CALLS.push((job.payload().n, job.attempt()));
    if job.attempt() == 1 && RACING_FAIL_FIRST.load(Ordering::SeqCst) {
        return Err(JobError::retry("first attempts fail"));
    }
    Ok(())
}

/// Before: the next owner looks over what a dead consumer left pending (a page of the
/// pending list, then which of it waits for a retry) while its fetch loop claims the
/// retries that fall due. A retry claimed between the two looks was taken a second time
/// as the dead consumer's, and ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_falling_due_while_the_pending_list_is_looked_over_runs_once() {
    setup();
    let mut conn = redis().connection();
    let jobs = 1500;
    racing::enqueue_batch((0..jobs).map(|n| Work { n }))
        .await
        .unwrap();
    // Leases that outlast a loaded machine's stalls: only the first worker's going away
    // moves the partition.
    let worker = |name: &str| {
        worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(2))
            .consumer_name(name)
            .topics([racing::TOPIC])
            .retry_backoff(Duration::from_secs(6), Duration::from_secs(6))
    };

    // The first worker fails every first attempt and goes away with all of them waiting.
    let first = tokio::spawn(worker("race-a").run_until(std::future::pending::<()>()));
    let failed = eventually(Duration::from_secs(60), || {
        RACING_CALLS.len() as u64 >= jobs
    })
    .await;
    first.abort();
    let _ = first.await;
    assert!(failed, "every first attempt ran");
    RACING_FAIL_FIRST.store(false, Ordering::SeqCst);

    // The retries fall due over about 3 s, while the next owner keeps looking over the
    // 1,500 entries the first one left pending.
    let second = Background::start(worker("race-b"));
    let retried = eventually(Duration::from_secs(60), || {
        RACING_CALLS.count(|(_, attempt)| *attempt >= 2) as u64 >= jobs
            && pending(&mut conn, racing::TOPIC, racing::GROUP, 1) == 0
    })
    .await;
    second.stop().await.unwrap();
    assert!(retried, "every job ran its second attempt");
    let twice: Vec<(u64, u32)> = RACING_CALLS
        .counts()
        .into_iter()
        .filter(|(_, runs)| *runs > 1)
        .map(|(call, _)| call)
        .collect();
    assert!(twice.is_empty(), "attempts that ran twice: {twice:?}");
    assert_eq!(
        RACING_CALLS.count(|(_, attempt)| *attempt == 1) as u64,
        jobs,
        "each first attempt ran once"
    );
}

/// (job n, attempt) of every call of `handed`.
static HANDED_CALLS: Calls<(u64, u32)> = Calls::new();

#[job(
    topic = "bounded_handover",
    group = "bounded_handover_group",
    partitions = 2,
    concurrency = 1,
    retries = 0
)]
async fn handed(job: Job<Work>) -> Result<(), JobError> {
    HANDED_CALLS.push((job.payload().n, job.attempt()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Before: the jobs a worker had read ahead on a partition it handed over to a joining
/// worker were charged an attempt they never had: the next owner claimed them as another
/// consumer's and counted a new delivery, so with `retries = 0` they went to the dead
/// letters unrun ("the worker stopped while running the last ones").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_costs_the_jobs_it_moves_no_attempt() {
    setup();
    let mut conn = redis().connection();
    let jobs = 200;
    handed::enqueue_batch((0..jobs).map(|n| Work { n }))
        .await
        .unwrap();
    // Leases that outlast a loaded machine's stalls: only a hand-over moves a partition.
    let worker = |name: &str| {
        worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(3))
            .consumer_name(name)
            .topics([handed::TOPIC])
    };

    // The first worker holds both partitions and reads ahead all it can; the second
    // joins while most jobs wait in the first one's queue, and one partition moves.
    let first = Background::start(worker("handover-a"));
    assert!(
        eventually(Duration::from_secs(30), || HANDED_CALLS.len() >= 5).await,
        "the first worker started"
    );
    let second = Background::start(worker("handover-b"));
    let settled = eventually(Duration::from_secs(60), || {
        let ran: HashSet<u64> = HANDED_CALLS.all().into_iter().map(|(n, _)| n).collect();
        (ran.len() as u64 == jobs || !dead_letters(&mut conn, handed::TOPIC).is_empty())
            && pending(&mut conn, handed::TOPIC, handed::GROUP, 2) == 0
    })
    .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    assert!(settled, "every job ran or was dead-lettered");
    let letters = dead_letters(&mut conn, handed::TOPIC);
    assert!(
        letters.is_empty(),
        "no job was dead-lettered; {} were, the first: {:?}",
        letters.len(),
        letters.first()
    );
    let ran: HashSet<u64> = HANDED_CALLS.all().into_iter().map(|(n, _)| n).collect();
    assert_eq!(ran.len() as u64, jobs, "every job ran");
    let later: Vec<(u64, u32)> = HANDED_CALLS
        .all()
        .into_iter()
        .filter(|(_, attempt)| *attempt > 1)
        .collect();
    assert!(
        later.is_empty(),
        "every job ran as its first attempt: {later:?}"
    );
}
