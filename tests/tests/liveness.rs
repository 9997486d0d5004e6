//! Nothing that waits on jobs may delay lease renewal: a worker whose slots are all busy
//! with long jobs keeps its partitions while another worker joins and dies. Real worker
//! processes, a real server.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redisaq_tests::{calls, eventually, id_set, pending, redis, setup, starts, LoggedWorker, Work};

const TEST_WORKER: &str = env!("CARGO_BIN_EXE_test_worker");

// Producer-side declarations of the test worker's topics.
#[redisaq::job(topic = "crash", group = "crash_group", partitions = 4)]
async fn crash(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

fn lease_owners(conn: &mut redis::Connection, topic: &str, group: &str, n: u32) -> Vec<String> {
    (0..n)
        .map(|p| {
            redis::cmd("GET")
                .arg(redisaq::keys::lease(topic, p, group))
                .query::<Option<String>>(conn)
                .unwrap()
                .unwrap_or_default()
        })
        .collect()
}

/// Pending entries per consumer name on one group of a topic.
fn pending_by_consumer(
    conn: &mut redis::Connection,
    topic: &str,
    group: &str,
    n: u32,
) -> HashMap<String, u64> {
    let mut by = HashMap::new();
    for p in 0..n {
        let summary: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(redisaq::keys::partition(topic, p))
            .arg(group)
            .query(conn)
            .unwrap();
        if let redis::streams::StreamPendingReply::Data(data) = summary {
            for consumer in data.consumers {
                *by.entry(consumer.name).or_default() += consumer.pending as u64;
            }
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_never_cost_a_worker_its_partitions() {
    setup();
    let mut conn = redis().connection();
    // 3 s jobs, 8 slots, 4 partitions, heartbeats far shorter than a job.
    let a = LoggedWorker::test_worker(TEST_WORKER, "a", "crash", 3_000, 200, 1_500);
    let ids = id_set(
        crash::enqueue_batch((0..60).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(30), || starts(&mut conn, "crash").len()
            >= 8)
        .await,
        "the first worker started its jobs"
    );
    // A second worker joins, takes its share, reads jobs, and is killed.
    let mut b = LoggedWorker::test_worker(TEST_WORKER, "b", "crash", 3_000, 200, 1_500);
    let b_holds = eventually(Duration::from_secs(60), || {
        pending_by_consumer(&mut conn, "crash", "crash_group", 4)
            .iter()
            .any(|(consumer, &n)| consumer.starts_with("b-") && n > 0)
    })
    .await;
    assert!(b_holds, "the second worker read jobs of its own");
    b.child.kill().unwrap();
    b.child.wait().unwrap();

    // The first worker takes everything back, with all its slots still busy.
    let done = eventually(Duration::from_secs(180), || {
        calls(&mut conn, "crash")
            .into_keys()
            .collect::<HashSet<_>>()
            == ids
            && pending(&mut conn, "crash", "crash_group", 4) == 0
    })
    .await;
    let finished = calls(&mut conn, "crash");
    assert!(
        done,
        "finished {} of 60, {} pending; owners {:?}",
        finished.len(),
        pending(&mut conn, "crash", "crash_group", 4),
        lease_owners(&mut conn, "crash", "crash_group", 4)
    );
    let lost = a.lines("lost the lease");
    assert!(lost.is_empty(), "the busy worker lost leases: {lost:#?}");
    let twice: Vec<_> = finished.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "jobs finished twice: {twice:?}");
}
