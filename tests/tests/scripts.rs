//! Scripts go by hash (EVALSHA); when Redis forgets them (a restart, a failover, `SCRIPT
//! FLUSH`), they are loaded again and nothing stops: acks, heartbeats and lease renewals
//! go on.

use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, pending, redis, setup, worker_with_heartbeats, Background, Calls};

/// The payload of every call.
static DONE: Calls<u64> = Calls::new();

#[job(topic = "scripts", group = "scripts_group", partitions = 2)]
async fn work(job: Job<u64>) -> Result<(), JobError> {
    DONE.push(*job.payload());
    Ok(())
}

fn done() -> usize {
    DONE.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_on_after_redis_forgot_its_scripts() {
    setup();
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(1))
            .topics([work::TOPIC])
            .consumer_name("scripts"),
    );
    let mut conn = redis().connection();
    work::enqueue_batch(0..10).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || done() == 10
            && pending(&mut redis().connection(), work::TOPIC, work::GROUP, 2)
                == 0)
        .await
    );
    let lease = |conn: &mut redis::Connection, p: u32| -> Option<String> {
        redis::cmd("GET")
            .arg(redisaq::keys::lease(work::TOPIC, p, work::GROUP))
            .query(conn)
            .unwrap()
    };
    let before: Vec<Option<String>> = (0..2).map(|p| lease(&mut conn, p)).collect();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    // Heartbeats and renewals go through the flushed scripts meanwhile.
    // Longer than the TTL: renewals that failed would have cost the leases.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    work::enqueue_batch(10..20).await.unwrap();
    let finished = eventually(Duration::from_secs(30), || {
        done() == 20 && pending(&mut redis().connection(), work::TOPIC, work::GROUP, 2) == 0
    })
    .await;
    let after: Vec<Option<String>> = (0..2).map(|p| lease(&mut conn, p)).collect();
    worker.stop().await.unwrap();
    assert!(
        finished,
        "jobs after the flush ran and were acknowledged: {}",
        done()
    );
    assert_eq!(before, after, "no lease was lost or taken anew");
}

/// A topic only enqueued to (no worker runs it here).
#[job(
    topic = "scripts_enqueue",
    group = "scripts_enqueue_group",
    partitions = 2
)]
async fn enqueued_only(_job: Job<u64>) -> Result<(), JobError> {
    Ok(())
}

/// Jobs with an id of their own and delayed ones go through a script too: after Redis
/// forgot it, a batch mixing them with plain jobs stores each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_enqueues_go_on_after_redis_forgot_the_script() {
    setup();
    let mut conn = redis().connection();
    let options = |n: u64| match n % 3 {
        0 => redisaq::EnqueueOptions::new(),
        1 => redisaq::EnqueueOptions::new().id(format!("forgotten-{n}")),
        _ => redisaq::EnqueueOptions::new().delay(Duration::from_secs(600)),
    };
    enqueued_only::enqueue_batch_with((0..3).map(|n| (100 + n, options(n))))
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let ids = enqueued_only::enqueue_batch_with((3..9).map(|n| (100 + n, options(n))))
        .await
        .unwrap();
    assert_eq!(ids.len(), 6);
    let delayed: u64 = (0..2)
        .map(|p| {
            redis::cmd("ZCARD")
                .arg(redisaq::keys::delayed(enqueued_only::TOPIC, p))
                .query::<u64>(&mut conn)
                .unwrap()
        })
        .sum();
    assert_eq!(delayed, 3, "each delayed job stored once");
    let stored: Vec<String> = (0..2)
        .flat_map(|p| {
            let rows: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(redisaq::keys::partition(enqueued_only::TOPIC, p))
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            rows.ids
                .into_iter()
                .filter_map(|row| row.get::<String>("id"))
                .collect::<Vec<_>>()
        })
        .collect();
    for n in [4u64, 7] {
        let id = format!("forgotten-{n}");
        assert_eq!(
            stored.iter().filter(|s| **s == id).count(),
            1,
            "{id} stored once"
        );
    }
}
