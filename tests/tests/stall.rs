//! A Redis stall shorter than the heartbeat TTL costs no partition and runs no job
//! twice. Its own test binary: `DEBUG SLEEP` stalls the whole server.

use std::collections::HashSet;
use std::time::Duration;

use redisaq_tests::{calls, eventually, id_set, pending, redis, setup, starts, LoggedWorker, Work};

const TEST_WORKER: &str = env!("CARGO_BIN_EXE_test_worker");

#[redisaq::job(topic = "graceful", group = "graceful_group", partitions = 2)]
async fn graceful(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_shorter_than_the_ttl_costs_no_partition() {
    setup();
    let mut conn = redis().connection();
    let worker = LoggedWorker::test_worker(TEST_WORKER, "s", "graceful", 20, 500, 3_000);
    let ids = id_set(
        graceful::enqueue_batch((0..300).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(30), || !calls(&mut conn, "graceful")
            .is_empty())
        .await,
        "jobs started"
    );
    // Redis answers nobody for 1.5 s, twice: shorter than the 3 s TTL each time.
    for _ in 0..2 {
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1.5)
            .query(&mut conn)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let done = eventually(Duration::from_secs(60), || {
        calls(&mut conn, "graceful")
            .into_keys()
            .collect::<HashSet<_>>()
            == ids
            && pending(&mut conn, "graceful", "graceful_group", 2) == 0
    })
    .await;
    assert!(done, "every job finished");
    let lost = worker.lines("lost the lease");
    assert!(
        lost.is_empty(),
        "a stall shorter than the TTL cost a partition: {lost:#?}"
    );
    let runs = starts(&mut conn, "graceful");
    let twice: Vec<_> = runs.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "jobs started twice: {twice:?}");
}
