//! Fencing by epoch, not by name: after a consumer took a partition again, an ack sent
//! by its earlier holding of the same partition is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, init_tracing, pending, redis};

static STARTED: AtomicBool = AtomicBool::new(false);
static RELEASED: AtomicBool = AtomicBool::new(false);
/// (attempt, fencing token) of every call.
static CALLS: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

#[job(
    topic = "epochs",
    group = "epochs_group",
    partitions = 1,
    concurrency = 1
)]
async fn held(job: Job<u64>) -> Result<(), JobError> {
    CALLS
        .lock()
        .unwrap()
        .push((job.attempt(), job.fencing_token()));
    if !STARTED.swap(true, Ordering::SeqCst) {
        while !RELEASED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Before the epoch, the lease held only the consumer's name: the ack of the earlier
/// holding passed, and the job counted as done although a newer holding owned it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_holdings_ack_is_refused_after_the_same_consumer_took_the_partition_again() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Heartbeats far apart: the renewal must not be what notices the newer holding.
    let running = tokio::spawn(
        redisaq::Worker::new()
            .redis_url(redis().url())
            .topics([held::TOPIC])
            .consumer_name("epochs")
            .heartbeat_interval(Duration::from_secs(20))
            .heartbeat_ttl(Duration::from_secs(60))
            .run_until(async {
                let _ = stopped.await;
            }),
    );
    held::enqueue(0).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || STARTED.load(Ordering::SeqCst)).await,
        "the job started"
    );
    // The same consumer holds the partition again, with the next epoch (as after its
    // lease lapsed during a pause and it took the partition anew).
    let mut conn = redis().connection();
    let lease = redisaq::keys::lease(held::TOPIC, 0, held::GROUP);
    let value: String = redis::cmd("GET").arg(&lease).query(&mut conn).unwrap();
    let (consumer, epoch) = value.rsplit_once(' ').expect("consumer and epoch");
    let epoch: u64 = epoch.parse().unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg(format!("{consumer} {}", epoch + 1))
        .arg("PX")
        .arg(1500)
        .query(&mut conn)
        .unwrap();
    RELEASED.store(true, Ordering::SeqCst);
    let rerun = eventually(Duration::from_secs(60), || {
        CALLS.lock().unwrap().len() == 2
            && pending(&mut redis().connection(), held::TOPIC, held::GROUP, 1) == 0
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let calls = CALLS.lock().unwrap().clone();
    assert!(rerun, "the job ran again: {calls:?}");
    assert_eq!(calls[0].0, 1);
    assert_eq!(
        calls[1].0, 2,
        "the refused run counts as an attempt: {calls:?}"
    );
    assert!(
        calls[1].1 > epoch + 1,
        "it ran under a holding newer than both: {calls:?}"
    );
}
