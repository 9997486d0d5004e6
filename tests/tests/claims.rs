//! README claims about topics and groups: a producer in another process picks up a
//! raised partition count without being told, and a group that starts after another
//! group finished every job still gets every retained job (reconsumption).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, id_set, pending, redis, run_worker_until, setup, worker_command,
    worker_with_heartbeats, Calls, KillOnDrop, Work,
};

fn stream_len(conn: &mut redis::Connection, topic: &str, partition: u32) -> u64 {
    redis::cmd("XLEN")
        .arg(redisaq::keys::partition(topic, partition))
        .query(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_in_another_process_uses_raised_partitions() {
    setup();
    let mut conn = redis().connection();
    let topic = "claims_grow";
    // The test worker binary as a producer: a job without a key every 10 ms.
    let mut producer = KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), "producer", topic, 0)
            .env("TEST_PRODUCE", topic)
            .stdout(Stdio::null()),
    );
    let producing = eventually(Duration::from_secs(30), || {
        stream_len(&mut conn, topic, 0) >= 5 && stream_len(&mut conn, topic, 1) >= 5
    })
    .await;
    assert!(
        producing,
        "the producer enqueues round-robin over 2 partitions"
    );
    assert_eq!(stream_len(&mut conn, topic, 2), 0);
    assert_eq!(stream_len(&mut conn, topic, 3), 0);

    // This process raises the count; the producer process is not told.
    assert_eq!(redisaq::set_partitions(topic, 4).await.unwrap(), 2);
    let spread = eventually(Duration::from_secs(60), || {
        stream_len(&mut conn, topic, 2) >= 3 && stream_len(&mut conn, topic, 3) >= 3
    })
    .await;
    let still_producing = producer.exited().is_none();
    assert!(
        spread,
        "new jobs reached the new partitions: lengths {:?}",
        (0..4)
            .map(|p| stream_len(&mut conn, topic, p))
            .collect::<Vec<_>>()
    );
    assert!(still_producing, "the producer kept enqueuing");
    // Round-robin goes on over all four: the old partitions keep getting jobs too.
    let old = [
        stream_len(&mut conn, topic, 0),
        stream_len(&mut conn, topic, 1),
    ];
    let all_four = eventually(Duration::from_secs(60), || {
        stream_len(&mut conn, topic, 0) > old[0] && stream_len(&mut conn, topic, 1) > old[1]
    })
    .await;
    assert!(all_four, "jobs still go to partitions 0 and 1 as well");
}

/// (group, job id) of every call of the reconsumption handlers.
static HANDLED: Calls<(&'static str, String)> = Calls::new();

#[job(
    topic = "claims_reconsume",
    group = "reconsume_v1",
    partitions = 3,
    concurrency = 4,
    retries = 0
)]
async fn reconsume_v1(job: Job<Work>) -> Result<(), JobError> {
    HANDLED.push((reconsume_v1::GROUP, job.id().to_string()));
    Ok(())
}

#[job(
    topic = "claims_reconsume",
    group = "reconsume_v2",
    partitions = 3,
    concurrency = 4,
    retries = 0
)]
async fn reconsume_v2(job: Job<Work>) -> Result<(), JobError> {
    HANDLED.push((reconsume_v2::GROUP, job.id().to_string()));
    Ok(())
}

/// How many times `group` handled each job.
fn handled(group: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in HANDLED.tagged(group) {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

fn groups_on(conn: &mut redis::Connection, topic: &str, partition: u32) -> Vec<String> {
    let rows: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(redisaq::keys::partition(topic, partition))
        .query(conn)
        .unwrap();
    rows.into_iter()
        .filter_map(|row| {
            row.get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        })
        .collect()
}

/// Runs a worker for one group of the reconsumption topic until the group handled every
/// job of `ids` and has nothing pending (bounded), then stops it; returns whether it got
/// there.
async fn run_group(group: &'static str, ids: &HashSet<String>) -> bool {
    let worker = worker_with_heartbeats(Duration::from_secs(1), Duration::from_secs(10))
        .consumer_name(group)
        .topics([reconsume_v1::TOPIC])
        .groups([group])
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .concurrency(4)
        .shutdown_timeout(Duration::from_secs(10));
    run_worker_until(worker, || {
        handled(group).keys().cloned().collect::<HashSet<_>>() == *ids
            && pending(&mut redis().connection(), reconsume_v1::TOPIC, group, 3) == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_after_another_finished_reconsumes_every_job_once() {
    setup();
    let mut conn = redis().connection();
    const JOBS: usize = 60;
    let ids = id_set(
        reconsume_v1::enqueue_batch((0..JOBS as u64).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    assert_eq!(ids.len(), JOBS);

    let first_done = run_group(reconsume_v1::GROUP, &ids).await;
    assert!(first_done, "group v1 processed every job");
    assert!(handled(reconsume_v2::GROUP).is_empty());
    for partition in 0..3 {
        assert_eq!(
            groups_on(&mut conn, reconsume_v1::TOPIC, partition),
            vec![reconsume_v1::GROUP.to_string()],
            "group v2 did not exist while v1 ran"
        );
    }

    // Group v2 starts only now, after v1 finished everything.
    let second_done = run_group(reconsume_v2::GROUP, &ids).await;
    assert!(
        second_done,
        "group v2 reconsumed every job: {} of {JOBS}",
        handled(reconsume_v2::GROUP).len()
    );
    for group in [reconsume_v1::GROUP, reconsume_v2::GROUP] {
        let counts = handled(group);
        assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), ids);
        assert!(
            counts.values().all(|&n| n == 1),
            "{group} handled each job exactly once: {counts:?}"
        );
        assert_eq!(pending(&mut conn, reconsume_v1::TOPIC, group, 3), 0);
    }
}
