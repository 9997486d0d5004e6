//! The `redisaq` tool against a real server with a real worker.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, redis};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;

/// Every test on the shared server holds this for reading; the test that pauses the
/// server's writes holds it alone, so no other test's worker stalls meanwhile.
static SERVER: RwLock<()> = RwLock::const_new(());

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

fn cli_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_redisaq"));
    command.args(args).env("REDIS_URL", redis().url());
    command
}

fn redisaq_cli(args: &[&str]) -> Output {
    let output = cli_command(args).output().expect("run redisaq");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(args: &[&str]) -> Value {
    let (code, value) = json_and_code(args);
    assert_eq!(code, 0, "{args:?}: {value}");
    value
}

/// The `--json` output of a command and its exit code.
fn json_and_code(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = redisaq_cli(&all);
    let value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} exited {}: {e}: {}{}",
            out.code, out.stdout, out.stderr
        )
    });
    (out.code, value)
}

/// A worker on `topic` with every setting the tests rely on given explicitly (nothing
/// from `REDISAQ_*`), and heartbeats long enough that a busy machine never makes a live
/// consumer look dead.
fn worker(topic: &str) -> redisaq::Worker {
    redisaq::Worker::new()
        .redis_url(redis().url())
        .topics([topic])
        .consumer_name("cli")
        .concurrency(4)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(10))
}

async fn run_worker_until(worker: redisaq::Worker, done: impl FnMut() -> bool + Send) {
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

/// How many entries of `topic`'s partition streams carry the job id `id`.
fn entries_with_id(topic: &str, partitions: u32, id: &str) -> usize {
    let mut conn = redis().connection();
    (0..partitions)
        .map(|partition| {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(redisaq::keys::partition(topic, partition))
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .expect("XRANGE");
            reply
                .ids
                .iter()
                .filter(|entry| entry.get::<String>("id").as_deref() == Some(id))
                .count()
        })
        .sum()
}

/// Clients waiting in a script (`EVAL`/`EVALSHA`) held back by `CLIENT PAUSE`.
fn clients_waiting_in_a_script(conn: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
    list.lines()
        .filter(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
            };
            field("flags=").contains('b') && field("cmd=").starts_with("eval")
        })
        .count()
}

/// Ends a `CLIENT PAUSE` even when the test fails meanwhile.
struct Unpause;

impl Drop for Unpause {
    fn drop(&mut self) {
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut redis().connection());
    }
}

/// Runs `redisaq args` in `copies` processes that really race: the server's writes are
/// paused until every process waits in a script, so each has read what it is about to
/// change before any of them changes anything. Hold [`SERVER`] for writing around it.
async fn race(args: &[&str], copies: usize) -> Vec<Output> {
    let mut conn = redis().connection();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "8000", "WRITE"])
        .query(&mut conn)
        .unwrap();
    let unpause = Unpause;
    let children: Vec<Child> = (0..copies)
        .map(|_| {
            cli_command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run redisaq")
        })
        .collect();
    let mut waiting = 0;
    let all_waiting = eventually(Duration::from_secs(7), || {
        waiting = clients_waiting_in_a_script(&mut conn);
        waiting == copies
    })
    .await;
    drop(unpause);
    let outputs = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("redisaq ran");
            Output {
                code: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        })
        .collect();
    assert!(
        all_waiting,
        "{waiting} of {copies} processes reached the script while writes were paused"
    );
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_replay_and_purge_dead_letters() {
    // Alone on the server: the concurrent replay below pauses its writes.
    let _alone = SERVER.write().await;
    redisaq::set_redis_url(&redis().url()).unwrap();
    let mails = ["bad1@x", "ok1@x", "bad2@x", "ok2@x", "bad3@x"].map(|to| Mail { to: to.into() });
    let ids = fragile::enqueue_batch(mails).await.unwrap();
    let bad_id = ids[0].to_string();
    run_worker_until(worker("cli_dlq"), || {
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

    // Replay one dead letter from several processes at once: each of them has read it
    // before any puts it back, so only the replayed-set check in the script keeps the job
    // from going back once per process.
    FAIL.store(false, Ordering::SeqCst);
    let letter = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == bad_id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(entries_with_id("cli_dlq", 2, &bad_id), 1, "the original");
    let replays = race(&["dlq", "replay", "cli_dlq", "--id", &bad_id, "--json"], 4).await;
    let mut put_back = Vec::new();
    for out in &replays {
        assert_eq!(out.code, 0, "{}", out.stderr);
        let replayed: Value = serde_json::from_str(&out.stdout).unwrap();
        put_back.extend(replayed.as_array().unwrap().iter().cloned());
    }
    assert_eq!(
        put_back,
        vec![letter.clone()],
        "exactly one replay put it back"
    );
    assert_eq!(
        entries_with_id("cli_dlq", 2, &bad_id),
        2,
        "one job added to the partition stream"
    );
    let partition = letter["partition"].as_u64().unwrap() as u32;
    let recorded: bool = redis::cmd("SISMEMBER")
        .arg(redisaq::keys::replayed("cli_dlq", partition))
        .arg(letter["dead_letter_id"].as_str().unwrap())
        .query(&mut redis().connection())
        .unwrap();
    assert!(recorded, "the replayed dead letter is remembered");
    assert_eq!(
        redisaq_cli(&[
            "dlq",
            "show",
            "cli_dlq",
            "--id",
            letter["dead_letter_id"].as_str().unwrap()
        ])
        .code,
        1,
        "the dead letter is gone"
    );
    let runs_of_bad = || -> Vec<u32> {
        SEEN.lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == bad_id)
            .map(|(_, a)| *a)
            .collect()
    };
    // Run until the group has nothing left, then count: no second copy ran either.
    run_worker_until(worker("cli_dlq"), || {
        let group = &json(&["groups", "cli_dlq"])[0];
        runs_of_bad().len() >= 2 && group["lag"] == 0 && group["pending"] == 0
    })
    .await;
    assert_eq!(
        runs_of_bad(),
        vec![1, 1],
        "replayed with attempts reset, once"
    );
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

static MONITORED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[job(topic = "cli_mon", group = "mon_group", partitions = 1)]
async fn monitored(job: Job<Mail>) -> Result<(), JobError> {
    MONITORED.lock().unwrap().push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_a_dead_consumer_and_cleanup_waits_for_its_entries() {
    let _shared = SERVER.read().await;
    redisaq::set_redis_url(&redis().url()).unwrap();
    let ids = monitored::enqueue_batch((0..5).map(|i| Mail {
        to: format!("m{i}@x"),
    }))
    .await
    .unwrap();
    // A consumer that read the jobs and died without a heartbeat.
    let stream = redisaq::keys::partition("cli_mon", 0);
    let mut conn = redis().connection();
    let _: redis::Value = redis::cmd("XGROUP")
        .arg(&["CREATE", &stream, "mon_group", "0", "MKSTREAM"])
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "mon_group",
            "ghost",
            "COUNT",
            "5",
            "STREAMS",
            &stream,
            ">",
        ])
        .query(&mut conn)
        .unwrap();

    let out = redisaq_cli(&["monitor", "cli_mon", "mon_group", "--json"]);
    assert_eq!(out.code, 3, "a consumer is not OK: {}", out.stderr);
    let consumers: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(consumers[0]["consumer"], "ghost");
    assert_eq!(consumers[0]["status"], "DEAD");
    assert_eq!(consumers[0]["pending"], 5);
    assert_eq!(consumers[0]["alive"], false);

    let out = redisaq_cli(&["monitor", "cli_mon", "mon_group", "--cleanup", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert!(
        report["removed"].as_array().unwrap().is_empty(),
        "a consumer holding entries stays"
    );
    assert_eq!(report["kept"][0]["consumer"], "ghost");

    // A worker takes the partition over and, with it, the ghost's entries.
    let expected: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    run_worker_until(worker("cli_mon"), move || {
        MONITORED
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<HashSet<_>>()
            == expected
    })
    .await;

    let out = redisaq_cli(&["monitor", "cli_mon", "mon_group", "--cleanup", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    // The ghost went once its entries were taken over (the new owner removes dead
    // consumers holding nothing); the stopped worker's consumer, holding nothing, goes now.
    assert!(report["kept"].as_array().unwrap().is_empty(), "{report}");
    let removed = report["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{report}");
    assert_ne!(removed[0], "ghost", "{report}");
    assert_eq!(
        json(&["monitor", "cli_mon", "mon_group"]),
        serde_json::json!([]),
        "nobody left"
    );
}

#[job(topic = "cli_scale", group = "scale_group", partitions = 2)]
async fn scaled(_job: Job<Mail>) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_advice_follows_the_backlog() {
    let _shared = SERVER.read().await;
    redisaq::set_redis_url(&redis().url()).unwrap();
    scaled::enqueue_batch((0..10).map(|i| Mail {
        to: format!("s{i}@x"),
    }))
    .await
    .unwrap();
    let mut conn = redis().connection();
    for partition in 0..2 {
        let _: redis::Value = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(redisaq::keys::partition("cli_scale", partition))
            .arg("scale_group")
            .arg("0")
            .query(&mut conn)
            .unwrap();
    }
    let advice = json(&["scale", "cli_scale", "scale_group"]);
    assert_eq!(advice["decision"], "OUT", "{advice}");
    assert_eq!(advice["backlog"], 10);
    assert_eq!(advice["consumers"], 0);
    assert_eq!(advice["utilisation_pct"], 100.0);

    let done = std::sync::Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    run_worker_until(worker("cli_scale"), move || {
        let advice = json(&["scale", "cli_scale", "scale_group"]);
        let drained = advice["backlog"] == 0;
        flag.store(drained, Ordering::SeqCst);
        drained
    })
    .await;
    assert!(done.load(Ordering::SeqCst));
    let advice = json(&["scale", "cli_scale", "scale_group"]);
    assert_eq!(advice["decision"], "NO_SCALE", "{advice}");
    assert_eq!(advice["utilisation_pct"], 0.0);
}
