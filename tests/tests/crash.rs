//! Worker processes killed with SIGKILL lose nothing: their jobs are processed by the
//! next worker.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use redisaq_tests::{
    eventually, id_set, pending, redis, setup, starts, worker_command, KillOnDrop, Work,
};

const TOPIC: &str = "crash";
const GROUP: &str = "crash_group";

// Producer-side declaration of the test worker's `crash` topic: this process runs no
// handler of it, it only enqueues.
#[redisaq::job(topic = "crash", group = "producer_only", partitions = 4)]
async fn crash_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

fn spawn_worker(name: &str) -> KillOnDrop {
    // A TTL long enough that a loaded machine does not make a lease lapse, short
    // enough that the next worker takes over soon after the kill.
    KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), name, TOPIC, 20)
            .env("REDISAQ_HEARTBEAT_TTL_MS", "2000")
            .stdout(Stdio::null()),
    )
}

fn calls(conn: &mut redis::Connection) -> HashMap<String, u64> {
    redisaq_tests::calls(conn, TOPIC)
}

fn consumers(conn: &mut redis::Connection) -> HashSet<String> {
    consumers_of(conn, TOPIC, GROUP, 4)
}

/// The consumers the Redis group knows on any partition of the topic.
fn consumers_of(
    conn: &mut redis::Connection,
    topic: &str,
    group: &str,
    partitions: u32,
) -> HashSet<String> {
    (0..partitions)
        .flat_map(|p| {
            let rows: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(redisaq::keys::partition(topic, p))
                .arg(group)
                .query(conn)
                .unwrap_or_default();
            rows.into_iter()
                .filter_map(|row| {
                    row.get("name")
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_job() {
    let mut conn = redis().connection();
    // Enqueue through the library, from this process.
    setup();
    let mut ids = HashSet::new();
    for round in 0..4u64 {
        let payloads = (0..100).map(|i| Work { n: round * 100 + i });
        ids.extend(id_set(
            crash_producer::enqueue_batch(payloads).await.unwrap(),
        ));
    }

    let mut first = spawn_worker("first");
    let started = eventually(Duration::from_secs(30), || calls(&mut conn).len() >= 40).await;
    assert!(started, "the first worker processed nothing");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let done_at_kill = calls(&mut conn).len();
    let pending_at_kill = pending(&mut conn, TOPIC, GROUP, 4);
    assert!(pending_at_kill > 0, "the killed worker held jobs");
    assert!(done_at_kill < ids.len(), "the kill came before the end");

    let mut second = spawn_worker("second");
    let finished = eventually(Duration::from_secs(60), || {
        let done: HashSet<String> = calls(&mut conn).into_keys().collect();
        done == ids && pending(&mut conn, TOPIC, GROUP, 4) == 0
    })
    .await;
    let after = calls(&mut conn);
    let dead_gone = eventually(Duration::from_secs(10), || {
        consumers(&mut conn).iter().all(|c| c.starts_with("second"))
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(
        finished,
        "processed {} of {}, {} pending",
        after.len(),
        ids.len(),
        pending(&mut conn, TOPIC, GROUP, 4)
    );
    assert!(
        dead_gone,
        "the dead consumer left the group: {:?}",
        consumers(&mut conn)
    );
    let repeated = after.values().filter(|&&n| n > 1).count();
    eprintln!(
        "enqueued {}, done at kill {done_at_kill}, pending at kill {pending_at_kill}, processed {}, processed twice {repeated}",
        ids.len(),
        after.len()
    );
    assert!(
        repeated as u64 <= pending_at_kill,
        "only jobs the dead worker held ran twice"
    );
}

// Producer-side declaration of the test worker's `graceful` topic: this process runs no
// handler of it, it only enqueues.
#[redisaq::job(topic = "graceful", group = "graceful_group", partitions = 2)]
async fn graceful_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_and_hands_everything_back() {
    let mut conn = redis().connection();
    setup();
    let ids = id_set(
        graceful_producer::enqueue_batch((0..200).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    let done = |conn: &mut redis::Connection| redisaq_tests::calls(conn, "graceful");

    let mut first = KillOnDrop::spawn(
        worker_command(
            env!("CARGO_BIN_EXE_test_worker"),
            "stopping",
            "graceful",
            200,
        )
        .env("REDISAQ_HEARTBEAT_TTL_MS", "10000")
        .stdout(Stdio::null()),
    );
    assert!(eventually(Duration::from_secs(30), || !done(&mut conn).is_empty()).await);
    unsafe {
        libc::kill(first.id() as i32, libc::SIGTERM);
    }
    let status = first.wait().unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    let leases: Vec<Option<String>> = (0..2)
        .map(|p| {
            redis::cmd("GET")
                .arg(redisaq::keys::lease("graceful", p, "graceful_group"))
                .query(&mut conn)
                .unwrap()
        })
        .collect();
    assert_eq!(leases, vec![None, None], "leases released at once");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(redisaq::keys::members("graceful", "graceful_group"))
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert!(members.is_empty(), "left the group at once: {members:?}");

    let finished_before_exit = done(&mut conn);
    assert!(
        finished_before_exit.len() < ids.len(),
        "the stop came mid-run"
    );
    // Every job the first worker started, it finished before it exited.
    let started_before_exit = starts(&mut conn, "graceful");
    assert_eq!(
        started_before_exit, finished_before_exit,
        "jobs running at SIGTERM were finished, not dropped"
    );

    let mut second = KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), "next", "graceful", 0)
            .env("REDISAQ_HEARTBEAT_TTL_MS", "10000")
            .stdout(Stdio::null()),
    );
    let all = eventually(Duration::from_secs(60), || {
        done(&mut conn).into_keys().collect::<HashSet<_>>() == ids
            && pending(&mut conn, "graceful", "graceful_group", 2) == 0
    })
    .await;
    // The first one's entries were claimed, so it goes from the Redis group too.
    let first_gone = eventually(Duration::from_secs(30), || {
        consumers_of(&mut conn, "graceful", "graceful_group", 2)
            .iter()
            .all(|c| c.starts_with("next-"))
    })
    .await;
    // Holding nothing, a cleanly stopped consumer leaves the Redis group itself, so
    // `redisaq monitor` shows no dead consumer after a deploy.
    unsafe {
        libc::kill(second.id() as i32, libc::SIGTERM);
    }
    assert!(second.wait().unwrap().success());
    assert!(all, "the next worker processed everything left");
    assert!(
        first_gone,
        "the stopped worker was removed once its entries were claimed"
    );
    let listed = consumers_of(&mut conn, "graceful", "graceful_group", 2);
    assert!(
        listed.is_empty(),
        "a clean stop leaves the Redis consumer group: {listed:?}"
    );
    let twice = starts(&mut conn, "graceful")
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .count();
    assert_eq!(
        twice, 0,
        "jobs running at SIGTERM finished and were acknowledged, not started again"
    );
}
