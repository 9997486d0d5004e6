//! The working core against a real redis-server: every job processed, failures retried
//! then dead-lettered, bad entries dead-lettered, several groups, keyed routing, trimming.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    dead_letters, id_set, pending, redis, run_worker_until, start_error, test_worker, Calls,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Task {
    n: u64,
}

/// (test, (job id, attempt, partition)) of every handler call.
static SEEN: Calls<(&'static str, (String, u32, u32))> = Calls::new();

fn record(tag: &'static str, job: &Job<Task>) {
    SEEN.push((tag, (job.id().to_string(), job.attempt(), job.partition())));
}

fn seen(tag: &str) -> Vec<(String, u32, u32)> {
    SEEN.tagged(tag)
}

fn seen_ids(tag: &str) -> HashSet<String> {
    seen(tag).into_iter().map(|(id, _, _)| id).collect()
}

#[job(topic = "core_bulk", group = "bulk_group", partitions = 4)]
async fn bulk(job: Job<Task>) -> Result<(), JobError> {
    record("bulk", &job);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_over_four_partitions_are_all_processed() {
    let _ = test_worker(&[]);
    let mut ids = HashSet::new();
    for chunk in 0..10u64 {
        let batch: Vec<Task> = (0..100).map(|i| Task { n: chunk * 100 + i }).collect();
        ids.extend(id_set(bulk::enqueue_batch(batch).await.unwrap()));
    }
    assert_eq!(ids.len(), 1000);
    let expected = ids.clone();
    let done = run_worker_until(test_worker(&[bulk::TOPIC]), move || {
        seen_ids("bulk") == expected
    })
    .await;
    assert!(
        done,
        "only {} of 1000 jobs were processed",
        seen_ids("bulk").len()
    );
    assert_eq!(seen_ids("bulk"), ids);
    assert_eq!(seen("bulk").len(), 1000, "each job once");
    let mut per_partition: HashMap<u32, usize> = HashMap::new();
    for (_, _, partition) in seen("bulk") {
        *per_partition.entry(partition).or_default() += 1;
    }
    assert_eq!(
        per_partition,
        (0..4).map(|p| (p, 250)).collect(),
        "round-robin spreads the jobs evenly"
    );
    let mut conn = redis().connection();
    assert_eq!(pending(&mut conn, bulk::TOPIC, bulk::GROUP, 4), 0);
    assert!(seen("bulk").iter().all(|(_, attempt, _)| *attempt == 1));
}

#[job(
    topic = "core_flaky",
    group = "flaky_group",
    partitions = 2,
    retries = 2
)]
async fn always_failing(job: Job<Task>) -> Result<(), JobError> {
    record("flaky", &job);
    Err(JobError::retry(format!(
        "smtp timeout for job {}",
        job.payload().n
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_then_dead_lettered_with_its_error() {
    let _ = test_worker(&[]);
    let id = always_failing::enqueue(Task { n: 42 }).await.unwrap();
    let mut conn = redis().connection();
    let done = run_worker_until(test_worker(&[always_failing::TOPIC]), move || {
        !dead_letters(&mut redis().connection(), always_failing::TOPIC).is_empty()
    })
    .await;
    assert!(done, "the job was never dead-lettered");
    let attempts: Vec<u32> = seen("flaky").iter().map(|(_, a, _)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3], "first attempt and two retries");
    let letters = dead_letters(&mut conn, always_failing::TOPIC);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["id"], id.to_string());
    assert_eq!(letter["error"], "smtp timeout for job 42");
    assert_eq!(letter["attempts"], "3");
    assert_eq!(letter["topic"], "core_flaky");
    assert_eq!(letter["group"], "flaky_group");
    assert_eq!(letter["partition"], seen("flaky")[0].2.to_string());
    assert_eq!(letter["payload"], r#"{"n":42}"#);
    assert_eq!(
        pending(&mut conn, always_failing::TOPIC, always_failing::GROUP, 2),
        0
    );
}

#[job(
    topic = "core_fatal",
    group = "fatal_group",
    partitions = 1,
    retries = 5
)]
async fn fatal(job: Job<Task>) -> Result<(), JobError> {
    record("fatal", &job);
    Err(JobError::fatal("address does not exist"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_dead_letters_at_once() {
    let _ = test_worker(&[]);
    let id = fatal::enqueue(Task { n: 1 }).await.unwrap();
    let done = run_worker_until(test_worker(&[fatal::TOPIC]), move || {
        !dead_letters(&mut redis().connection(), fatal::TOPIC).is_empty()
    })
    .await;
    assert!(done);
    assert_eq!(seen("fatal").len(), 1, "no retry after a fatal error");
    let letters = dead_letters(&mut redis().connection(), fatal::TOPIC);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], id.to_string());
    assert_eq!(letters[0]["error"], "address does not exist");
    assert_eq!(letters[0]["attempts"], "1");
    assert_eq!(
        pending(&mut redis().connection(), fatal::TOPIC, fatal::GROUP, 1),
        0
    );
}

#[job(topic = "core_poison", group = "poison_group", partitions = 1)]
async fn poison(job: Job<Task>) -> Result<(), JobError> {
    record("poison", &job);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_and_the_worker_goes_on() {
    let _ = test_worker(&[]);
    let before = poison::enqueue(Task { n: 1 }).await.unwrap();
    let mut conn = redis().connection();
    let stream = redisaq::keys::partition(poison::TOPIC, 0);
    let no_payload: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("garbage")
        .arg("yes")
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(&[
            "id",
            "wrong-shape",
            "payload",
            r#"{"m":"not a task"}"#,
            "enqueued_at",
            "1",
        ])
        .query(&mut conn)
        .unwrap();
    let after = poison::enqueue(Task { n: 2 }).await.unwrap();
    let expected: HashSet<String> = [before.to_string(), after.to_string()].into();
    let done = run_worker_until(test_worker(&[poison::TOPIC]), move || {
        seen_ids("poison") == expected
            && dead_letters(&mut redis().connection(), poison::TOPIC).len() == 2
    })
    .await;
    assert!(done, "seen {:?}", seen_ids("poison"));
    let letters = dead_letters(&mut conn, poison::TOPIC);
    let missing = letters
        .iter()
        .find(|l| l["entry_id"] == no_payload)
        .expect("entry without payload");
    assert!(
        missing["error"].contains("missing field `id`"),
        "{}",
        missing["error"]
    );
    assert_eq!(missing["payload"], r#"{"garbage":"yes"}"#);
    let shape = letters
        .iter()
        .find(|l| l["id"] == "wrong-shape")
        .expect("undecodable payload");
    assert!(
        shape["error"].contains("payload does not decode as"),
        "{}",
        shape["error"]
    );
    assert!(
        shape["error"].contains("missing field `n`"),
        "{}",
        shape["error"]
    );
    assert_eq!(shape["attempts"], "1", "decode errors are not retried");
    assert_eq!(pending(&mut conn, poison::TOPIC, poison::GROUP, 1), 0);
}

#[job(topic = "core_fanout", group = "fanout_a", partitions = 3)]
async fn fanout_a(job: Job<Task>) -> Result<(), JobError> {
    record("fanout_a", &job);
    Ok(())
}

#[job(topic = "core_fanout", group = "fanout_b", partitions = 3)]
async fn fanout_b(job: Job<Task>) -> Result<(), JobError> {
    record("fanout_b", &job);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_gets_every_job_even_when_it_starts_later() {
    let _ = test_worker(&[]);
    // Enqueued before either group exists: both read from the oldest entry.
    let ids = id_set(
        fanout_a::enqueue_batch((0..50).map(|n| Task { n }))
            .await
            .unwrap(),
    );
    let expected = ids.clone();
    let done = run_worker_until(test_worker(&[fanout_a::TOPIC]), move || {
        seen_ids("fanout_a") == expected && seen_ids("fanout_b") == expected
    })
    .await;
    assert!(done);
    assert_eq!(seen("fanout_a").len(), 50, "each job once per group");
    assert_eq!(seen("fanout_b").len(), 50);
    let mut conn = redis().connection();
    assert_eq!(pending(&mut conn, fanout_a::TOPIC, fanout_a::GROUP, 3), 0);
    assert_eq!(pending(&mut conn, fanout_b::TOPIC, fanout_b::GROUP, 3), 0);
}

#[job(topic = "core_keyed", group = "keyed_group", partitions = 4)]
async fn keyed(job: Job<Task>) -> Result<(), JobError> {
    record("keyed", &job);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_one_key_share_a_partition() {
    let _ = test_worker(&[]);
    let mut key_of = HashMap::new();
    for n in 0..80 {
        let key = format!("user-{}", n % 8);
        let id = keyed::enqueue_with(Task { n }, redisaq::EnqueueOptions::new().key(&key))
            .await
            .unwrap();
        key_of.insert(id.to_string(), key);
    }
    let done = run_worker_until(test_worker(&[keyed::TOPIC]), || seen("keyed").len() == 80).await;
    assert!(done);
    let mut partitions_of: HashMap<&str, HashSet<u32>> = HashMap::new();
    for (id, _, partition) in seen("keyed") {
        partitions_of
            .entry(key_of[&id].as_str())
            .or_default()
            .insert(partition);
    }
    assert_eq!(partitions_of.len(), 8);
    assert!(
        partitions_of.values().all(|p| p.len() == 1),
        "each key stays on one partition: {partitions_of:?}"
    );
    let used: HashSet<u32> = partitions_of.values().flatten().copied().collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
}

#[tokio::test]
async fn running_with_an_unknown_topic_fails_with_a_clear_error() {
    let error = start_error(test_worker(&["no_such_topic"])).await;
    let message = error.to_string();
    assert!(
        message.contains("no_such_topic") && message.contains("core_bulk"),
        "{message}"
    );
}

#[tokio::test]
async fn a_bad_heartbeat_setting_names_the_variable() {
    let error =
        start_error(test_worker(&[bulk::TOPIC]).heartbeat_ttl(Duration::from_millis(100))).await;
    assert!(
        error.to_string().contains("REDISAQ_HEARTBEAT_TTL_MS"),
        "{error}"
    );
}

#[job(topic = "core_trim", group = "trim_fast", partitions = 1, maxlen = 100)]
async fn trim_fast(job: Job<Task>) -> Result<(), JobError> {
    record("trim_fast", &job);
    Ok(())
}

#[job(
    topic = "core_trim",
    group = "trim_slow",
    partitions = 1,
    maxlen = 100,
    retries = 1
)]
async fn trim_slow(job: Job<Task>) -> Result<(), JobError> {
    record("trim_slow", &job);
    if job.attempt() == 1 {
        return Err(JobError::retry("not yet"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_a_group_still_has_pending() {
    let _ = test_worker(&[]);
    let ids = id_set(
        trim_fast::enqueue_batch((0..1_000).map(|n| Task { n }))
            .await
            .unwrap(),
    );
    let expected = ids.clone();
    // The slow group holds every job pending through a retry backoff while the fast
    // group finishes them all and the trimmer runs on every heartbeat.
    let slow_done = move || {
        let retried: HashSet<String> = seen("trim_slow")
            .into_iter()
            .filter(|(_, attempt, _)| *attempt == 2)
            .map(|(id, _, _)| id)
            .collect();
        retried == expected
    };
    let done = run_worker_until(
        test_worker(&[trim_fast::TOPIC])
            .retry_backoff(Duration::from_secs(2), Duration::from_secs(2)),
        slow_done,
    )
    .await;
    assert!(done, "every pending job survived trimming and ran again");
    assert_eq!(seen_ids("trim_fast"), ids);
    let mut conn = redis().connection();
    assert!(dead_letters(&mut conn, trim_fast::TOPIC).is_empty());
    // Now both groups are done: a run of the worker trims down to about maxlen (whole
    // stream nodes of 100 entries at a time).
    let stream = redisaq::keys::partition(trim_fast::TOPIC, 0);
    let trimmed = run_worker_until(test_worker(&[trim_fast::TOPIC]), || {
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query(&mut redis().connection())
            .unwrap();
        len <= 200
    })
    .await;
    assert!(trimmed, "the stream was trimmed once every group was done");
}
