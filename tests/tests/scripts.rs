//! Scripts go by hash (EVALSHA); when Redis forgets them (a restart, a failover, `SCRIPT
//! FLUSH`), they are loaded again and nothing stops: acks, heartbeats and lease renewals
//! go on.

use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, init_tracing, pending, redis};
use tokio::sync::oneshot;

static DONE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[job(topic = "scripts", group = "scripts_group", partitions = 2)]
async fn work(job: Job<u64>) -> Result<(), JobError> {
    DONE.lock().unwrap().push(*job.payload());
    Ok(())
}

fn done() -> usize {
    DONE.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_on_after_redis_forgot_its_scripts() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(
        redisaq::Worker::new()
            .redis_url(redis().url())
            .topics([work::TOPIC])
            .consumer_name("scripts")
            .heartbeat_interval(Duration::from_millis(200))
            .heartbeat_ttl(Duration::from_secs(1))
            .run_until(async move {
                let _ = stopped.await;
            }),
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
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(
        finished,
        "jobs after the flush ran and were acknowledged: {}",
        done()
    );
    assert_eq!(before, after, "no lease was lost or taken anew");
}
