//! A handler that blocks its thread cannot be cancelled: its partition stays with it
//! (never two owners), and the tools say so (`STUCK` in `redisaq monitor`) until the call
//! ends; then the partition moves.

use std::time::Duration;

use redisaq::admin::Admin;
use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, pending, redis, setup, worker_with_heartbeats, Background, Calls};

/// (n, attempt, partition) of every call that started, and the n of every call that ended.
static STARTED: Calls<(u64, u32, u32)> = Calls::new();
static ENDED: Calls<u64> = Calls::new();

#[job(
    topic = "stuck",
    group = "stuck_group",
    partitions = 2,
    concurrency = 2
)]
async fn blocking(job: Job<u64>) -> Result<(), JobError> {
    STARTED.push((*job.payload(), job.attempt(), job.partition()));
    if job.attempt() == 1 {
        // Blocking code: no `.await`, so neither a timeout nor a hand-over can stop it.
        std::thread::sleep(Duration::from_secs(6));
    }
    ENDED.push(*job.payload());
    Ok(())
}

fn worker(name: &str) -> Background {
    Background::start(
        worker_with_heartbeats(Duration::from_millis(200), Duration::from_millis(1000))
            .consumer_name(name)
            .topics([blocking::TOPIC]),
    )
}

async fn statuses(admin: &Admin) -> Vec<(String, String)> {
    admin
        .monitor(blocking::TOPIC, blocking::GROUP, u64::MAX, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.consumer, c.status.to_string()))
        .collect()
}

/// Before: the consumer showed `OK` (or `IDLE`) the whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_whose_calls_ignore_cancellation_shows_stuck_until_they_end() {
    setup();
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let a = worker("stuck-a");
    blocking::enqueue_batch([0, 1]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || STARTED.len() == 2).await,
        "both jobs started"
    );
    let partitions: Vec<u32> = STARTED.all().iter().map(|s| s.2).collect();
    assert!(
        partitions.contains(&0) && partitions.contains(&1),
        "{partitions:?}"
    );

    // A second consumer joins: one partition is to move, behind a call that blocks.
    let b = worker("stuck-b");
    let mut seen = Vec::new();
    let mut stuck = false;
    for _ in 0..100 {
        seen = statuses(&admin).await;
        if seen
            .iter()
            .any(|(name, status)| name.starts_with("stuck-a") && status == "STUCK")
        {
            stuck = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stuck, "the blocked consumer shows STUCK: {seen:?}");
    assert!(ENDED.is_empty(), "seen while the calls still blocked");

    // Once the calls end (still under the lease: their results count) the partition
    // moves, and nobody is stuck any more.
    let mut conn = redis().connection();
    let handle = tokio::runtime::Handle::current();
    let mut last = String::new();
    let settled = eventually(Duration::from_secs(60), || {
        let started = STARTED.all();
        let statuses = tokio::task::block_in_place(|| handle.block_on(statuses(&admin)));
        let b_owns = (0..2).any(|p| {
            redis::cmd("GET")
                .arg(redisaq::keys::lease(blocking::TOPIC, p, blocking::GROUP))
                .query::<Option<String>>(&mut conn)
                .unwrap()
                .is_some_and(|holder| holder.starts_with("stuck-b"))
        });
        let left = pending(&mut conn, blocking::TOPIC, blocking::GROUP, 2);
        last = format!("b owns a partition: {b_owns}, pending {left}, statuses {statuses:?}");
        ENDED.len() >= 2
            && started.len() >= 2
            && b_owns
            && pending(&mut conn, blocking::TOPIC, blocking::GROUP, 2) == 0
            && statuses.iter().all(|(_, status)| status != "STUCK")
    })
    .await;
    let (a, b) = tokio::join!(a.stop(), b.stop());
    a.unwrap();
    b.unwrap();
    assert!(
        settled,
        "both jobs ended, a partition moved to b, nothing is pending or stuck: {last}; {STARTED:?} {ENDED:?}"
    );
}
