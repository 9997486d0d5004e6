//! Scheduling and flow control with real worker processes: delayed jobs start when due
//! and never before (judged by Redis' clock), a cancelled one never runs, an id enqueued
//! twice is stored once, and a pause holds until resumed, across a restart.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use redisaq::admin::Admin;
use redisaq::{EnqueueOptions, JobId};
use redisaq_tests::{
    calls, eventually, id_set, pending, redis, server_ms, setup, started_ms, worker_command,
    KillOnDrop, LoggedWorker, Work,
};

// Producer-side declarations of the test worker's topics: this process only enqueues.
#[redisaq::job(topic = "delayed", group = "producer_only", partitions = 4)]
async fn delayed_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[redisaq::job(
    topic = "once",
    group = "producer_only",
    partitions = 4,
    dedupe_window_s = 3600
)]
async fn once_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[redisaq::job(topic = "paused", group = "producer_only", partitions = 2)]
async fn paused_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

fn spawn_worker(name: &str, topic: &str) -> KillOnDrop {
    KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), name, topic, 5)
            .env("REDISAQ_HEARTBEAT_TTL_MS", "2000")
            .stdout(Stdio::null()),
    )
}

/// Every job id in the topic's partition streams, with how many entries carry it.
fn entries_by_id(
    conn: &mut redis::Connection,
    topic: &str,
    partitions: u32,
) -> HashMap<String, u64> {
    let mut found = HashMap::new();
    for partition in 0..partitions {
        let rows: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(redisaq::keys::partition(topic, partition))
            .arg("-")
            .arg("+")
            .query(conn)
            .unwrap();
        for row in rows.ids {
            let id: String = row.get("id").expect("an id field");
            *found.entry(id).or_insert(0) += 1;
        }
    }
    found
}

fn delayed_left(conn: &mut redis::Connection, topic: &str, partitions: u32) -> u64 {
    (0..partitions)
        .map(|p| {
            let waiting: u64 = redis::cmd("ZCARD")
                .arg(redisaq::keys::delayed(topic, p))
                .query(conn)
                .unwrap();
            let fields: u64 = redis::cmd("HLEN")
                .arg(redisaq::keys::delayed_jobs(topic, p))
                .query(conn)
                .unwrap();
            waiting + fields
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_start_when_due_never_before_and_cancelled_ones_never_run() {
    setup();
    let mut conn = redis().connection();
    let admin = Admin::connect(&redis().url()).await.unwrap();

    // Earliest each job may start, by Redis' clock: its delay counts from when Redis
    // stored it, which is after `before`.
    let mut not_before: HashMap<String, u64> = HashMap::new();
    let before = server_ms(&mut conn);
    for n in 0..150u64 {
        let delay = Duration::from_millis(300 + (n % 15) * 150);
        let id = delayed_producer::enqueue_with(Work { n }, EnqueueOptions::new().delay(delay))
            .await
            .unwrap();
        not_before.insert(id.to_string(), before + delay.as_millis() as u64);
    }
    let at = SystemTime::now() + Duration::from_millis(1500);
    let at_ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let batch = delayed_producer::enqueue_batch_with(
        (150..200u64).map(|n| (Work { n }, EnqueueOptions::new().at(at))),
    )
    .await
    .unwrap();
    not_before.extend(batch.iter().map(|id| (id.to_string(), at_ms)));
    // Due at once: a delay of zero, and a time in the past.
    let now = delayed_producer::enqueue_with(
        Work { n: 200 },
        EnqueueOptions::new().delay(Duration::ZERO),
    )
    .await
    .unwrap();
    let past = delayed_producer::enqueue_with(
        Work { n: 201 },
        EnqueueOptions::new().at(SystemTime::UNIX_EPOCH),
    )
    .await
    .unwrap();
    not_before.insert(now.to_string(), before);
    not_before.insert(past.to_string(), before);
    // To be cancelled: due long after the test ends.
    let mut cancelled = Vec::new();
    for n in 300..320u64 {
        cancelled.push(
            delayed_producer::enqueue_with(
                Work { n },
                EnqueueOptions::new().delay(Duration::from_secs(600)),
            )
            .await
            .unwrap(),
        );
    }
    let topic = admin
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.topic == "delayed")
        .unwrap();
    assert!(
        topic.delayed >= 20,
        "`topics` counts the delayed jobs: {}",
        topic.delayed
    );
    for id in &cancelled {
        assert!(
            admin.cancel("delayed", id).await.unwrap(),
            "{id} was waiting"
        );
        assert!(
            !admin.cancel("delayed", id).await.unwrap(),
            "{id} cancelled twice"
        );
    }
    assert!(!admin
        .cancel("delayed", &JobId::from("no-such-job"))
        .await
        .unwrap());

    // Two workers; one is killed -9 while jobs are being moved and run.
    let mut first = spawn_worker("first", "delayed");
    let _second = spawn_worker("second", "delayed");
    let some = eventually(Duration::from_secs(60), || {
        calls(&mut conn, "delayed").len() >= 60
    })
    .await;
    assert!(
        some,
        "delayed jobs started: {}",
        calls(&mut conn, "delayed").len()
    );
    first.kill().unwrap();
    let expected: HashSet<String> = not_before.keys().cloned().collect();
    let all = eventually(Duration::from_secs(120), || {
        let done: HashSet<String> = calls(&mut conn, "delayed").into_keys().collect();
        expected.is_subset(&done)
    })
    .await;
    let done: HashSet<String> = calls(&mut conn, "delayed").into_keys().collect();
    assert!(
        all,
        "{} of {} delayed jobs ran",
        expected.intersection(&done).count(),
        expected.len()
    );

    let started = started_ms(&mut conn, "delayed");
    for (id, earliest) in &not_before {
        let at = started[id];
        assert!(
            at >= *earliest,
            "job {id} started at {at}, {} ms before it was due",
            earliest - at
        );
    }
    let cancelled = id_set(&cancelled);
    assert!(
        started.keys().all(|id| !cancelled.contains(id)),
        "a cancelled job ran"
    );
    // Each job was moved into its stream exactly once; nothing waits or is left pending.
    let entries = entries_by_id(&mut conn, "delayed", 4);
    let doubled: Vec<_> = entries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "moved twice: {doubled:?}");
    assert_eq!(
        id_set(entries.keys()),
        expected,
        "the streams hold exactly the jobs that were due"
    );
    assert_eq!(delayed_left(&mut conn, "delayed", 4), 0);
    let settled = eventually(Duration::from_secs(30), || {
        pending(&mut conn, "delayed", "delayed_group", 4) == 0
    })
    .await;
    assert!(settled, "entries left pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_enqueued_twice_is_stored_and_run_once() {
    setup();
    let mut conn = redis().connection();
    let with_id = |id: &str| EnqueueOptions::new().id(id);

    let first = once_producer::enqueue_with(Work { n: 1 }, with_id("order-1"))
        .await
        .unwrap();
    let again = once_producer::enqueue_with(Work { n: 2 }, with_id("order-1"))
        .await
        .unwrap();
    assert_eq!((first.as_str(), again.as_str()), ("order-1", "order-1"));
    let batch = once_producer::enqueue_batch_with([
        (Work { n: 3 }, with_id("order-2")),
        (Work { n: 4 }, with_id("order-2")),
        (Work { n: 5 }, with_id("order-3")),
        (Work { n: 6 }, with_id("order-1")),
        (Work { n: 7 }, EnqueueOptions::new()),
    ])
    .await
    .unwrap();
    assert_eq!(batch[..4], ["order-2", "order-2", "order-3", "order-1"]);
    let plain = batch[4].to_string();
    // Delayed with an id: held while it waits, whether enqueued again delayed or not.
    let delayed = with_id("order-4").delay(Duration::from_millis(500));
    once_producer::enqueue_with(Work { n: 8 }, delayed.clone())
        .await
        .unwrap();
    once_producer::enqueue_with(Work { n: 9 }, delayed)
        .await
        .unwrap();
    once_producer::enqueue_with(Work { n: 10 }, with_id("order-4"))
        .await
        .unwrap();
    // With a key too: the key routes it, the id still counts once.
    for n in 11..13 {
        once_producer::enqueue_with(Work { n }, with_id("order-5").key("customer-9"))
            .await
            .unwrap();
    }
    let empty = once_producer::enqueue_with(Work { n: 13 }, with_id("")).await;
    assert!(
        matches!(&empty, Err(redisaq::Error::Config(m)) if m.contains("EnqueueOptions::id")),
        "{empty:?}"
    );

    let expected: HashSet<String> = ["order-1", "order-2", "order-3", "order-4", "order-5"]
        .into_iter()
        .map(String::from)
        .chain([plain])
        .collect();
    let _worker = spawn_worker("once", "once");
    let all = eventually(Duration::from_secs(60), || {
        id_set(calls(&mut conn, "once").into_keys()) == expected
    })
    .await;
    assert!(all, "ran: {:?}", calls(&mut conn, "once"));
    // Enqueued again after it ran, within the window: still nothing new.
    once_producer::enqueue_with(Work { n: 14 }, with_id("order-1"))
        .await
        .unwrap();
    let entries = entries_by_id(&mut conn, "once", 4);
    assert_eq!(id_set(entries.keys()), expected);
    assert!(
        entries.values().all(|&n| n == 1),
        "stored twice: {entries:?}"
    );
    let settled = eventually(Duration::from_secs(30), || {
        pending(&mut conn, "once", "once_group", 4) == 0
    })
    .await;
    assert!(settled, "entries left pending");
    let runs = calls(&mut conn, "once");
    assert!(runs.values().all(|&n| n == 1), "ran twice: {runs:?}");
}

#[redisaq::job(
    topic = "once_raised",
    group = "producer_only",
    partitions = 2,
    dedupe_window_s = 3600
)]
async fn once_raised(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_enqueued_again_after_a_partition_raise_is_still_stored_once() {
    setup();
    let mut conn = redis().connection();
    let ids: Vec<String> = (0..16).map(|n| format!("raise-{n}")).collect();
    let enqueue_all = || async {
        once_raised::enqueue_batch_with(
            ids.iter()
                .enumerate()
                .map(|(n, id)| (Work { n: n as u64 }, EnqueueOptions::new().id(id.clone()))),
        )
        .await
        .unwrap();
    };
    enqueue_all().await;
    // Routes change with the count: about half the ids now route to another partition.
    assert_eq!(redisaq::set_partitions("once_raised", 8).await.unwrap(), 2);
    enqueue_all().await;
    for id in &ids {
        once_raised::enqueue_with(Work { n: 99 }, EnqueueOptions::new().id(id.clone()))
            .await
            .unwrap();
    }
    let entries = entries_by_id(&mut conn, "once_raised", 8);
    assert_eq!(id_set(entries.keys()), id_set(&ids));
    let doubled: Vec<_> = entries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "stored again after the raise: {doubled:?}"
    );
}

fn paused_worker(name: &str) -> LoggedWorker {
    LoggedWorker::test_worker(
        env!("CARGO_BIN_EXE_test_worker"),
        name,
        "paused",
        0,
        200,
        2000,
    )
}

async fn enqueue_paused(from: u64, count: u64) -> HashSet<String> {
    id_set(
        paused_producer::enqueue_batch((from..from + count).map(|n| Work { n }))
            .await
            .unwrap(),
    )
}

fn ran(conn: &mut redis::Connection, group: &str) -> HashSet<String> {
    calls(conn, group).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_across_a_restart_and_resume_releases() {
    setup();
    let mut conn = redis().connection();
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let worker = paused_worker("pause1");
    let joined = eventually(Duration::from_secs(30), || {
        worker.lines("assigned partitions").len() >= 2
    })
    .await;
    assert!(joined, "both groups' consumers were assigned partitions");

    // One group paused: the other runs everything, it runs nothing.
    admin.pause("paused", Some("paused_a")).await.unwrap();
    let held = eventually(Duration::from_secs(30), || {
        worker.lines("paused: no new job").len() == 1
    })
    .await;
    assert!(held, "the group's consumer followed the pause");
    let first = enqueue_paused(0, 50).await;
    let b_ran = eventually(Duration::from_secs(60), || {
        first.is_subset(&ran(&mut conn, "paused_b"))
    })
    .await;
    assert!(b_ran, "the group not paused ran its jobs");
    assert!(
        ran(&mut conn, "paused_a").is_empty(),
        "the paused group started a job"
    );
    let groups = admin.groups("paused").await.unwrap();
    let paused: Vec<(&str, bool)> = groups
        .iter()
        .map(|g| (g.group.as_str(), g.paused))
        .collect();
    assert!(
        paused.contains(&("paused_a", true)) && paused.contains(&("paused_b", false)),
        "{paused:?}"
    );
    let topics = admin.topics().await.unwrap();
    let topic = topics.iter().find(|t| t.topic == "paused").unwrap();
    assert_eq!(
        (topic.paused, topic.paused_groups.as_slice()),
        (false, &["paused_a".to_string()][..])
    );

    let resumed_at = server_ms(&mut conn);
    admin.resume("paused", Some("paused_a")).await.unwrap();
    let a_ran = eventually(Duration::from_secs(60), || {
        first.is_subset(&ran(&mut conn, "paused_a"))
    })
    .await;
    assert!(a_ran, "the resumed group ran its jobs");
    let started = started_ms(&mut conn, "paused_a");
    assert!(
        first.iter().all(|id| started[id] >= resumed_at),
        "a job of the paused group started before the resume"
    );

    // The whole topic paused, and the worker restarted while it is: still paused.
    admin.pause("paused", None).await.unwrap();
    let held = eventually(Duration::from_secs(30), || {
        worker.lines("paused: no new job").len() == 3
    })
    .await;
    assert!(
        held,
        "both consumers followed the pause: {:?}",
        worker.lines("paused")
    );
    drop(worker);
    let worker = paused_worker("pause2");
    let held = eventually(Duration::from_secs(30), || {
        worker.lines("paused: no new job").len() == 2
    })
    .await;
    assert!(held, "the restarted worker found the topic paused");
    let second = enqueue_paused(100, 30).await;
    // Time for a pause that did not hold to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for group in ["paused_a", "paused_b"] {
        assert!(
            second.is_disjoint(&ran(&mut conn, group)),
            "{group} started a job of the paused topic"
        );
    }
    let resumed_at = server_ms(&mut conn);
    admin.resume("paused", None).await.unwrap();
    for group in ["paused_a", "paused_b"] {
        let done = eventually(Duration::from_secs(60), || {
            second.is_subset(&ran(&mut conn, group))
        })
        .await;
        assert!(done, "{group} ran the jobs after the resume");
        let started = started_ms(&mut conn, group);
        assert!(second.iter().all(|id| started[id] >= resumed_at));
    }
    drop(worker);
}
