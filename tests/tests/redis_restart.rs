//! A Redis restart (here without persistence, so streams and groups vanish) is survived:
//! the worker reconnects, recreates its group and processes what is enqueued afterwards.
//! Its own test binary, since it restarts the binary's server.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, init_tracing, pending, redis};

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn seen() -> HashSet<String> {
    SEEN.lock().unwrap().iter().cloned().collect()
}

#[job(topic = "restart", group = "restart_group", partitions = 2)]
async fn after_restart(job: Job<u64>) -> Result<(), JobError> {
    SEEN.lock().unwrap().push(job.id().to_string());
    Ok(())
}

async fn enqueue_retrying(n: u64) -> String {
    loop {
        match after_restart::enqueue(n).await {
            Ok(id) => return id.to_string(),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_on_after_redis_restarts() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_ttl(Duration::from_millis(600));
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
