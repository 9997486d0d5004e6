//! Batch handlers: size and wait limits, per-job outcomes, panics, ordering.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    dead_letters, eventually, pending, redis, run_worker_until, test_worker, Background, Calls,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    n: u64,
    key: String,
}

fn item(n: u64) -> Item {
    Item {
        n,
        key: String::new(),
    }
}

/// (test, the (n, attempt) of each job) of every call.
static CALLS: Calls<(&'static str, Vec<(u64, u32)>)> = Calls::new();

fn record(tag: &'static str, jobs: &[Job<Item>]) {
    CALLS.push((
        tag,
        jobs.iter().map(|j| (j.payload().n, j.attempt())).collect(),
    ));
}

fn calls(tag: &str) -> Vec<Vec<(u64, u32)>> {
    CALLS.tagged(tag)
}

fn processed(tag: &str) -> Vec<u64> {
    calls(tag).into_iter().flatten().map(|(n, _)| n).collect()
}

#[job(
    topic = "batch_sizes",
    group = "sizes",
    partitions = 4,
    batch = 10,
    max_wait_ms = 50
)]
async fn sizes(jobs: Vec<Job<Item>>) -> Vec<Result<(), JobError>> {
    record("sizes", &jobs);
    jobs.iter().map(|_| Ok(())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_never_exceed_their_size_and_every_job_runs_once() {
    let _ = test_worker(&[sizes::TOPIC]);
    sizes::enqueue_batch((0..250).map(item)).await.unwrap();
    let done = run_worker_until(test_worker(&[sizes::TOPIC]), || {
        processed("sizes").len() >= 250
    })
    .await;
    assert!(done, "processed {}", processed("sizes").len());
    let mut all = processed("sizes");
    all.sort_unstable();
    assert_eq!(all, (0..250).collect::<Vec<_>>(), "each job exactly once");
    let largest = calls("sizes").iter().map(Vec::len).max().unwrap();
    assert!(largest <= 10, "a batch held {largest} jobs");
    assert!(largest > 1, "jobs were batched");
    assert_eq!(
        pending(&mut redis().connection(), sizes::TOPIC, sizes::GROUP, 4),
        0
    );
}

#[job(
    topic = "batch_wait",
    group = "wait",
    partitions = 1,
    batch = 10,
    max_wait_ms = 5000
)]
async fn half_full(jobs: Vec<Job<Item>>) -> Vec<Result<(), JobError>> {
    record("wait", &jobs);
    jobs.iter().map(|_| Ok(())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_full_batch_waits_for_more_then_goes_after_the_max_wait() {
    let _ = test_worker(&[half_full::TOPIC]);
    half_full::enqueue(item(0)).await.unwrap();
    let worker = Background::start(test_worker(&[half_full::TOPIC]));
    // Once the first job is read (pending), the batch waits for more: these two join it.
    let read = eventually(Duration::from_secs(30), || {
        // The group may not exist yet: that is "not read".
        let summary: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
            .arg(redisaq::keys::partition(half_full::TOPIC, 0))
            .arg(half_full::GROUP)
            .query(&mut redis().connection());
        matches!(summary.as_deref(), Ok([redis::Value::Int(1), ..])) || !calls("wait").is_empty()
    })
    .await;
    assert!(read, "the first job was read");
    half_full::enqueue_batch((1..3).map(item)).await.unwrap();
    let done = eventually(Duration::from_secs(60), || processed("wait").len() == 3).await;
    worker.stop().await.unwrap();
    assert!(done, "the partial batch never arrived: {:?}", calls("wait"));
    assert_eq!(
        calls("wait"),
        vec![vec![(0, 1), (1, 1), (2, 1)]],
        "the first job waited for more and all three went together in one call"
    );
}

#[job(
    topic = "batch_partial",
    group = "partial",
    partitions = 1,
    batch = 8,
    max_wait_ms = 300,
    retries = 1
)]
async fn partial_failure(jobs: Vec<Job<Item>>) -> Vec<Result<(), JobError>> {
    record("partial", &jobs);
    jobs.iter()
        .map(|job| match job.payload().n {
            2 | 5 => Err(JobError::retry(format!("job {} failed", job.payload().n))),
            _ => Ok(()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_failed_jobs_of_a_batch_are_retried_and_dead_lettered() {
    let _ = test_worker(&[partial_failure::TOPIC]);
    partial_failure::enqueue_batch((1..=8).map(item))
        .await
        .unwrap();
    let done = run_worker_until(test_worker(&[partial_failure::TOPIC]), || {
        dead_letters(&mut redis().connection(), partial_failure::TOPIC).len() == 2
    })
    .await;
    assert!(done);
    let mut runs: HashMap<u64, Vec<u32>> = HashMap::new();
    for (n, attempt) in calls("partial").into_iter().flatten() {
        runs.entry(n).or_default().push(attempt);
    }
    for n in 1..=8 {
        let expected = if n == 2 || n == 5 {
            vec![1, 2]
        } else {
            vec![1]
        };
        assert_eq!(runs[&n], expected, "job {n}");
    }
    let letters = dead_letters(&mut redis().connection(), partial_failure::TOPIC);
    let errors: HashSet<&str> = letters.iter().map(|l| l["error"].as_str()).collect();
    assert_eq!(errors, HashSet::from(["job 2 failed", "job 5 failed"]));
    assert!(letters.iter().all(|l| l["attempts"] == "2"));
    assert_eq!(
        pending(
            &mut redis().connection(),
            partial_failure::TOPIC,
            partial_failure::GROUP,
            1
        ),
        0
    );
}

static PANICKED: AtomicBool = AtomicBool::new(false);
/// The jobs of the call that panicked.
static PANICKED_JOBS: Calls<u64> = Calls::new();

#[job(
    topic = "batch_panic",
    group = "panic",
    partitions = 2,
    batch = 5,
    max_wait_ms = 50
)]
async fn panics_once(jobs: Vec<Job<Item>>) -> Vec<Result<(), JobError>> {
    if !PANICKED.swap(true, Ordering::SeqCst) {
        for job in &jobs {
            PANICKED_JOBS.push(job.payload().n);
        }
        panic!("handler bug");
    }
    record("panic", &jobs);
    jobs.iter().map(|_| Ok(())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_loses_nothing() {
    let _ = test_worker(&[panics_once::TOPIC]);
    panics_once::enqueue_batch((0..20).map(item)).await.unwrap();
    let done = run_worker_until(test_worker(&[panics_once::TOPIC]), || {
        processed("panic").iter().collect::<HashSet<_>>().len() == 20
    })
    .await;
    assert!(done, "processed {:?}", processed("panic"));
    assert!(PANICKED.load(Ordering::SeqCst));
    let mut all = processed("panic");
    all.sort_unstable();
    assert_eq!(
        all,
        (0..20).collect::<Vec<_>>(),
        "each job ran once after the panic"
    );
    let mut retried: Vec<u64> = calls("panic")
        .into_iter()
        .flatten()
        .filter(|(_, attempt)| *attempt == 2)
        .map(|(n, _)| n)
        .collect();
    retried.sort_unstable();
    let mut panicked = PANICKED_JOBS.all();
    panicked.sort_unstable();
    assert!(!panicked.is_empty());
    assert_eq!(
        retried, panicked,
        "exactly the jobs of the panicking call ran again, as attempt 2"
    );
    assert_eq!(
        pending(
            &mut redis().connection(),
            panics_once::TOPIC,
            panics_once::GROUP,
            2
        ),
        0
    );
}

static WRONG_LENGTH: AtomicBool = AtomicBool::new(false);

#[job(
    topic = "batch_length",
    group = "length",
    partitions = 1,
    batch = 4,
    max_wait_ms = 50
)]
async fn wrong_length(jobs: Vec<Job<Item>>) -> Vec<Result<(), JobError>> {
    record("length", &jobs);
    if !WRONG_LENGTH.swap(true, Ordering::SeqCst) {
        return vec![Ok(())];
    }
    jobs.iter().map(|_| Ok(())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_vector_of_the_wrong_length_retries_the_whole_batch() {
    let _ = test_worker(&[wrong_length::TOPIC]);
    wrong_length::enqueue_batch((0..4).map(item)).await.unwrap();
    let done = run_worker_until(test_worker(&[wrong_length::TOPIC]), || {
        calls("length")
            .iter()
            .flatten()
            .filter(|(_, a)| *a == 2)
            .count()
            == 4
    })
    .await;
    assert!(done, "calls: {:?}", calls("length"));
    assert_eq!(
        pending(
            &mut redis().connection(),
            wrong_length::TOPIC,
            wrong_length::GROUP,
            1
        ),
        0
    );
}

/// (key, n) of every call, in the order they ran.
static ORDER: Calls<(String, u64)> = Calls::new();

#[job(topic = "ordered", group = "ordered", partitions = 4, concurrency = 1)]
async fn ordered(job: Job<Item>) -> Result<(), JobError> {
    ORDER.push((job.payload().key.clone(), job.payload().n));
    tokio::task::yield_now().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_one_key_run_in_order_with_concurrency_one() {
    let _ = test_worker(&[ordered::TOPIC]);
    for n in 0..200u64 {
        let key = format!("user-{}", n % 7);
        ordered::enqueue_with(
            Item {
                n,
                key: key.clone(),
            },
            redisaq::EnqueueOptions::new().key(key),
        )
        .await
        .unwrap();
    }
    // Concurrency 1 is what keeps one partition's jobs in order: set it here, whatever
    // REDISAQ_CONCURRENCY says.
    let done = run_worker_until(test_worker(&[ordered::TOPIC]).concurrency(1), || {
        ORDER.len() == 200
    })
    .await;
    assert!(done);
    assert_eq!(ORDER.len(), 200, "each job once");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, n) in ORDER.all() {
        if let Some(previous) = last.insert(key.clone(), n) {
            assert!(previous < n, "{key}: {n} ran after {previous}");
        }
    }
    assert_eq!(last.len(), 7);
}
