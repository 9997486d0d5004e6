//! Fencing by epoch, not by name: after a consumer took a partition again, an ack sent
//! by its earlier holding of the same partition is refused.

use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, pending, redis, setup, worker_with_heartbeats, Background, Calls, Hold,
};

/// Holds the first call.
static HOLD: Hold = Hold::new();
/// (attempt, fencing token) of every call.
static CALLS: Calls<(u32, u64)> = Calls::new();

#[job(
    topic = "epochs",
    group = "epochs_group",
    partitions = 1,
    concurrency = 1
)]
async fn held(job: Job<u64>) -> Result<(), JobError> {
    CALLS.push((job.attempt(), job.fencing_token()));
    HOLD.hold_first().await;
    Ok(())
}

/// Before the epoch, the lease held only the consumer's name: the ack of the earlier
/// holding passed, and the job counted as done although a newer holding owned it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_holdings_ack_is_refused_after_the_same_consumer_took_the_partition_again() {
    setup();
    // Heartbeats far apart: the renewal must not be what notices the newer holding.
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_secs(20), Duration::from_secs(60))
            .topics([held::TOPIC])
            .consumer_name("epochs"),
    );
    held::enqueue(0).await.unwrap();
    assert!(HOLD.started().await, "the job started");
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
    HOLD.release();
    let rerun = eventually(Duration::from_secs(60), || {
        CALLS.len() == 2 && pending(&mut redis().connection(), held::TOPIC, held::GROUP, 1) == 0
    })
    .await;
    worker.stop().await.unwrap();
    let calls = CALLS.all();
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
