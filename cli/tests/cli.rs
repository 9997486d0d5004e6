//! The `redisaq` tool against a real server with a real worker.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, redis};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mail {
    to: String,
}

static FAIL: AtomicBool = AtomicBool::new(true);
static SEEN: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

#[job(topic = "cli_dlq", group = "cli_group", partitions = 2, retries = 0)]
async fn fragile(job: Job<Mail>) -> Result<(), JobError> {
    SEEN.lock()
        .unwrap()
        .push((job.id().to_string(), job.attempt()));
    if FAIL.load(Ordering::SeqCst) && job.payload().to.starts_with("bad") {
        return Err(JobError::fatal(format!("bad address {}", job.payload().to)));
    }
    Ok(())
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn redisaq_cli(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_redisaq"))
        .args(args)
        .env("REDIS_URL", redis().url())
        .output()
        .expect("run redisaq");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = redisaq_cli(&all);
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

async fn run_worker_until(done: impl FnMut() -> bool + Send) {
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_ttl(Duration::from_millis(600));
    worker
        .run_until(async move {
            assert!(
                eventually(Duration::from_secs(30), done).await,
                "the worker got there"
            );
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_replay_and_purge_dead_letters() {
    redisaq::set_redis_url(&redis().url()).unwrap();
    let mails = ["bad1@x", "ok1@x", "bad2@x", "ok2@x", "bad3@x"].map(|to| Mail { to: to.into() });
    let ids = fragile::enqueue_batch(mails).await.unwrap();
    let bad_id = ids[0].to_string();
    run_worker_until(|| {
        let seen = SEEN.lock().unwrap().len();
        let letters: u64 = redis::cmd("XLEN")
            .arg(redisaq::keys::dead_letters("cli_dlq"))
            .query(&mut redis().connection())
            .unwrap();
        seen == 5 && letters == 3
    })
    .await;

    let topics = json(&["topics"]);
    let topic = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "cli_dlq")
        .expect("listed");
    assert_eq!(topic["partitions"], 2);
    assert_eq!(topic["dead_letters"], 3);
    let lengths: u64 = topic["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["length"].as_u64().unwrap())
        .sum();
    assert_eq!(lengths, 5);

    let groups = json(&["groups", "cli_dlq"]);
    let group = &groups[0];
    assert_eq!(group["group"], "cli_group");
    assert_eq!(group["lag"], 0);
    assert_eq!(group["pending"], 0);
    assert!(group["generation"].as_u64().unwrap() >= 1);
    assert_eq!(group["owners"].as_array().unwrap().len(), 2);

    let letters = json(&["dlq", "list", "cli_dlq"]);
    let errors: HashSet<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        HashSet::from([
            "bad address bad1@x",
            "bad address bad2@x",
            "bad address bad3@x"
        ])
    );
    let shown = redisaq_cli(&["dlq", "show", "cli_dlq", "--id", &bad_id]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("bad1@x") && shown.stdout.contains("bad address"),
        "{}",
        shown.stdout
    );
    assert_eq!(
        redisaq_cli(&["dlq", "show", "cli_dlq", "--id", "nope"]).code,
        1
    );

    let refused = redisaq_cli(&["dlq", "purge", "cli_dlq"]);
    assert_eq!(refused.code, 2, "purge needs --yes");
    assert!(refused.stderr.contains("--yes"));

    // Replay one, twice: it goes back once, and now succeeds.
    FAIL.store(false, Ordering::SeqCst);
    let first = json(&["dlq", "replay", "cli_dlq", "--id", &bad_id]);
    assert_eq!(first.as_array().unwrap().len(), 1);
    let second = json(&["dlq", "replay", "cli_dlq", "--id", &bad_id]);
    assert_eq!(
        second.as_array().unwrap().len(),
        0,
        "a second replay adds nothing"
    );
    run_worker_until(|| {
        SEEN.lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == bad_id)
            .count()
            == 2
    })
    .await;
    let runs: Vec<u32> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id == bad_id)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(runs, vec![1, 1], "replayed with attempts reset, once");
    assert_eq!(
        json(&["dlq", "list", "cli_dlq"]).as_array().unwrap().len(),
        2
    );

    let lowered = redisaq_cli(&["partitions", "cli_dlq", "--set", "1"]);
    assert_eq!(lowered.code, 1);
    assert!(
        lowered.stderr.contains("can only be raised"),
        "{}",
        lowered.stderr
    );
    assert_eq!(
        redisaq_cli(&["partitions", "cli_dlq", "--set", "3"]).code,
        0
    );
    let topics = json(&["topics"]);
    assert_eq!(
        topics
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == "cli_dlq")
            .unwrap()["partitions"],
        3
    );

    let purged = json(&["dlq", "purge", "cli_dlq", "--yes"]);
    assert_eq!(purged["purged"], 2);
    assert!(json(&["dlq", "list", "cli_dlq"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn an_unreachable_redis_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_redisaq"))
        .args(["--redis-url", "redis://127.0.0.1:1", "topics"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

#[test]
fn an_unknown_topic_is_a_clear_error() {
    let out = redisaq_cli(&["groups", "no_such_topic"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("there is no topic `no_such_topic`"),
        "{}",
        out.stderr
    );
}
