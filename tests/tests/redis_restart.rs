//! A Redis restart (here without persistence, so streams, groups and leases vanish) is
//! survived: the worker reconnects, takes its leases again before it runs anything,
//! recreates its group and processes what is enqueued afterwards. Its own test binary,
//! since it restarts the binary's server.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, init_tracing, pending, redis};

/// (job id, the partition's lease in Redis when the call started) of every call.
static SEEN: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

fn seen() -> HashSet<String> {
    SEEN.lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect()
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
    SEEN.lock().unwrap().push((job.id().to_string(), lease));
    Ok(())
}

async fn enqueue_retrying(n: u64) -> String {
    let mut last = None;
    for _ in 0..200 {
        match after_restart::enqueue(n).await {
            Ok(id) => return id.to_string(),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("enqueue kept failing: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_on_after_redis_restarts() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    // Heartbeats far apart: renewing the leases is not what notices they are gone.
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .consumer_name("restart")
        .heartbeat_interval(Duration::from_secs(10))
        .heartbeat_ttl(Duration::from_secs(30));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));

    let mut before = HashSet::new();
    for n in 0..20 {
        before.insert(enqueue_retrying(n).await);
    }
    assert!(
        eventually(Duration::from_secs(30), || seen() == before).await,
        "before the restart"
    );

    redis().restart().unwrap();

    let mut after = HashSet::new();
    for n in 20..40 {
        after.insert(enqueue_retrying(n).await);
    }
    let all: HashSet<String> = before.union(&after).cloned().collect();
    let done = eventually(Duration::from_secs(60), || seen() == all).await;
    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
    assert!(
        done,
        "processed {} of the 20 jobs enqueued after the restart",
        seen().intersection(&after).count()
    );
    let calls = SEEN.lock().unwrap().clone();
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
