//! Rate limits with real worker processes, judged by Redis' clock: a group's rate holds
//! across two workers, and a key's rate holds per key while other keys flow past it, in
//! order, without spending attempts.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use redisaq::EnqueueOptions;
use redisaq_tests::{
    calls, dead_letters, eventually, id_set, redis, setup, started_ms, worker_command, KillOnDrop,
    Work,
};

#[redisaq::job(topic = "rate_group", group = "producer_only", partitions = 4)]
async fn rate_group_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[redisaq::job(topic = "rate_key", group = "producer_only", partitions = 2)]
async fn rate_key_producer(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

fn spawn_worker(name: &str, topic: &str) -> KillOnDrop {
    KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), name, topic, 0)
            .env("REDISAQ_HEARTBEAT_TTL_MS", "2000")
            .stdout(Stdio::null()),
    )
}

/// A start is recorded a little after Redis admitted it; a window this much shorter
/// than the period still may not hold more starts than the limit.
const SLACK_MS: u64 = 500;

/// The most starts within any window of `window_ms` (start times sorted).
fn most_within(sorted: &[u64], window_ms: u64) -> usize {
    let mut most = 0;
    let mut from = 0;
    for to in 0..sorted.len() {
        while sorted[to] - sorted[from] >= window_ms {
            from += 1;
        }
        most = most.max(to - from + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rate_holds_across_two_workers() {
    setup();
    let mut conn = redis().connection();
    let ids = id_set(
        rate_group_producer::enqueue_batch((0..100).map(|n| Work { n }))
            .await
            .unwrap(),
    );
    let _workers = [
        spawn_worker("rate1", "rate_group"),
        spawn_worker("rate2", "rate_group"),
    ];
    let all = eventually(Duration::from_secs(60), || {
        started_ms(&mut conn, "rate_group").len() == ids.len()
    })
    .await;
    assert!(
        all,
        "{} of 100 started",
        started_ms(&mut conn, "rate_group").len()
    );
    let mut starts: Vec<u64> = started_ms(&mut conn, "rate_group").into_values().collect();
    starts.sort_unstable();
    let most = most_within(&starts, 1000 - SLACK_MS);
    assert!(
        most <= 20,
        "{most} jobs started within {} ms (rate 20/s)",
        1000 - SLACK_MS
    );
    // The limit is what it holds to, not a crawl: whole seconds of 20 ran.
    assert!(most_within(&starts, 1000 + SLACK_MS) >= 20, "{starts:?}");
    let runs = calls(&mut conn, "rate_group");
    assert!(
        runs.values().all(|&n| n == 1),
        "a throttled job ran twice: {runs:?}"
    );
    assert!(dead_letters(&mut conn, "rate_group").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rate_holds_per_key_in_order_while_other_keys_flow() {
    setup();
    let mut conn = redis().connection();
    // 15 jobs each of keys a, b, c, interleaved with 15 jobs without a key.
    let mut by_key: HashMap<&str, Vec<String>> = HashMap::new();
    let mut unkeyed = Vec::new();
    for n in 0..15u64 {
        for key in ["a", "b", "c"] {
            let id = rate_key_producer::enqueue_with(Work { n }, EnqueueOptions::new().key(key))
                .await
                .unwrap();
            by_key.entry(key).or_default().push(id.to_string());
        }
        unkeyed.push(
            rate_key_producer::enqueue(Work { n: 100 + n })
                .await
                .unwrap()
                .to_string(),
        );
    }
    let _worker = spawn_worker("keyrate", "rate_key");
    let all = eventually(Duration::from_secs(60), || {
        started_ms(&mut conn, "rate_key").len() == 60
    })
    .await;
    assert!(
        all,
        "{} of 60 started",
        started_ms(&mut conn, "rate_key").len()
    );
    let started = started_ms(&mut conn, "rate_key");
    for (key, ids) in &by_key {
        let starts: Vec<u64> = ids.iter().map(|id| started[id]).collect();
        assert!(
            starts.windows(2).all(|w| w[0] <= w[1]),
            "key {key}'s jobs started out of order: {starts:?}"
        );
        let most = most_within(&starts, 1000 - SLACK_MS);
        assert!(
            most <= 5,
            "{most} jobs of key {key} started within {} ms (5/s)",
            1000 - SLACK_MS
        );
    }
    // The jobs without a key did not wait behind the throttled keys.
    let last_unkeyed = unkeyed.iter().map(|id| started[id]).max().unwrap();
    let last_keyed = by_key["a"].iter().map(|id| started[id]).max().unwrap();
    assert!(
        last_unkeyed < last_keyed,
        "unkeyed jobs waited for a throttled key: last at {last_unkeyed}, key a's last at {last_keyed}"
    );
    let runs = calls(&mut conn, "rate_key");
    assert!(
        runs.values().all(|&n| n == 1),
        "a throttled job ran twice: {runs:?}"
    );
    assert!(dead_letters(&mut conn, "rate_key").is_empty());
}
