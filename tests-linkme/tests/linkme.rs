//! With the cargo feature `linkme`, `#[job]` handlers register through linkme's
//! distributed slices: same macro, same behaviour. Run on its own, so no other package
//! turns on inventory's path:
//! `cargo test -p redisaq-tests-linkme --features linkme`.
#![cfg(feature = "linkme")]

use redisaq::{job, Job, JobError};
use redisaq_tests::{id_set, run_worker_until, test_worker, Calls, Work};

static SEEN: Calls<String> = Calls::new();

#[job(topic = "linkme_jobs", group = "linkme_group", partitions = 2)]
async fn linked(job: Job<Work>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

#[job(
    topic = "linkme_batches",
    group = "linkme_group",
    batch = 4,
    max_wait_ms = 20
)]
async fn linked_batch(jobs: Vec<Job<Work>>) -> Vec<Result<(), JobError>> {
    for job in &jobs {
        SEEN.push(job.id().to_string());
    }
    jobs.iter().map(|_| Ok(())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_registered_through_linkme_run() {
    let worker = test_worker(&["linkme_jobs", "linkme_batches"]);
    let mut ids = id_set(
        linked::enqueue_batch((0..10).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    ids.extend(id_set(
        linked_batch::enqueue_batch((0..10).map(|n| Work { n }))
            .await
            .unwrap(),
    ));
    let done = run_worker_until(worker, || id_set(SEEN.all()) == ids).await;
    assert!(done, "ran {} of {}", SEEN.len(), ids.len());
}
