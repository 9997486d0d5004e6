//! A Redis restart (here without persistence, so streams, groups and leases vanish) is
//! survived: the worker reconnects, takes its leases again before it runs anything,
//! recreates its group and processes what is enqueued afterwards. Its own test binary,
//! since it restarts the binary's server.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    enqueue_retrying, eventually, pending, redis, setup, worker_with_heartbeats, Background, Calls,
};

/// (job id, the partition's lease in Redis when the call started) of every call.
static SEEN: Calls<(String, Option<String>)> = Calls::new();

fn seen() -> HashSet<String> {
    SEEN.all().into_iter().map(|(id, _)| id).collect()
}

#[job(topic = "restart", group = "restart_group", partitions = 2)]
async fn after_restart(job: Job<u64>) -> Result<(), JobError> {
    let lease: Option<String> = redis::cmd("GET")
        .arg(redisaq::keys::lease(
            after_restart::TOPIC,
            job.partition(),
            after_restart::GROUP,
        ))
        .query(&mut redis().connection())
        .unwrap();
    SEEN.push((job.id().to_string(), lease));
    Ok(())
}

/// Enqueues job `n`, again and again while Redis is away; returns its id.
async fn enqueue(n: u64) -> String {
    enqueue_retrying(Duration::from_millis(50), || after_restart::enqueue(n))
        .await
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_on_after_redis_restarts() {
    setup();
    // Heartbeats far apart: renewing the leases is not what notices they are gone.
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_secs(10), Duration::from_secs(30))
            .consumer_name("restart"),
    );

    let mut before = HashSet::new();
    for n in 0..20 {
        before.insert(enqueue(n).await);
    }
    assert!(
        eventually(Duration::from_secs(30), || seen() == before).await,
        "before the restart"
    );

    redis().restart().unwrap();

    let mut after = HashSet::new();
    for n in 20..40 {
        after.insert(enqueue(n).await);
    }
    let all: HashSet<String> = before.union(&after).cloned().collect();
    let done = eventually(Duration::from_secs(60), || seen() == all).await;
    worker.stop().await.unwrap();
    assert!(
        done,
        "processed {} of the 20 jobs enqueued after the restart",
        seen().intersection(&after).count()
    );
    let calls = SEEN.all();
    for (id, lease) in &calls {
        assert!(
            lease.as_deref().is_some_and(|l| l.starts_with("restart-")),
            "job {id} started while the lease was {lease:?}"
        );
    }
    assert_eq!(calls.len(), 40, "each job once: {calls:?}");
    assert_eq!(
        pending(
            &mut redis().connection(),
            after_restart::TOPIC,
            after_restart::GROUP,
            2
        ),
        0
    );
}
