//! The `redisaq` tool against a real server with a real worker.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, id_set, redis, setup, worker_with_heartbeats, Background, Calls};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{RwLock, Semaphore};

/// Every test on the shared server holds this for reading; the test that pauses the
/// server's writes holds it alone, so no other test's worker stalls meanwhile.
static SERVER: RwLock<()> = RwLock::const_new(());

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mail {
    to: String,
}

static FAIL: AtomicBool = AtomicBool::new(true);
/// (job id, attempt) of every call of `fragile`.
static SEEN: Calls<(String, u32)> = Calls::new();

#[job(topic = "cli_dlq", group = "cli_group", partitions = 2, retries = 0)]
async fn fragile(job: Job<Mail>) -> Result<(), JobError> {
    SEEN.push((job.id().to_string(), job.attempt()));
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

/// The `--json` output of a command that succeeded, or `None` (for polling until the
/// worker has set things up).
fn try_json(args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = redisaq_cli(&all);
    (out.code == 0).then(|| serde_json::from_str(&out.stdout).expect("JSON"))
}

/// The `--json` output of a command and its exit code (`monitor` exits 3 with output).
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
    worker_with_heartbeats(Duration::from_millis(500), Duration::from_secs(10))
        .topics([topic])
        .consumer_name("cli")
        .concurrency(4)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(10))
}

async fn run_worker_until(worker: redisaq::Worker, done: impl FnMut() -> bool + Send) {
    assert!(
        redisaq_tests::run_worker_until(worker, done).await,
        "the worker got there"
    );
}

/// Holds a handler until `gate` is closed (at most a minute, so nothing hangs).
async fn hold(gate: &Semaphore) {
    let _ = tokio::time::timeout(Duration::from_secs(60), gate.acquire()).await;
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
    setup();
    let mails = ["bad1@x", "ok1@x", "bad2@x", "ok2@x", "bad3@x"].map(|to| Mail { to: to.into() });
    let ids = fragile::enqueue_batch(mails).await.unwrap();
    let bad_id = ids[0].to_string();
    run_worker_until(worker("cli_dlq"), || {
        SEEN.len() == 5 && dlq_length("cli_dlq") == 3
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
        SEEN.all()
            .into_iter()
            .filter(|(id, _)| *id == bad_id)
            .map(|(_, a)| a)
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

/// The id of every call of `monitored`.
static MONITORED: Calls<String> = Calls::new();

#[job(topic = "cli_mon", group = "mon_group", partitions = 1)]
async fn monitored(job: Job<Mail>) -> Result<(), JobError> {
    MONITORED.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_a_dead_consumer_and_cleanup_waits_for_its_entries() {
    let _shared = SERVER.read().await;
    setup();
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
    let expected = id_set(ids);
    run_worker_until(worker("cli_mon"), move || MONITORED.distinct() == expected).await;

    let out = redisaq_cli(&["monitor", "cli_mon", "mon_group", "--cleanup", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    // The ghost went once its entries were taken over (the new owner removes dead
    // consumers holding nothing), and the worker, stopped cleanly holding nothing, left
    // the group itself: nothing is left to clean up.
    assert!(report["kept"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
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
    setup();
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

#[job(
    topic = "cli_scale_slow",
    group = "slow_group",
    partitions = 2,
    concurrency = 1
)]
async fn slow(_job: Job<Mail>) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// A topic keeping a long history of processed entries is not idle when its one
/// consumer falls behind (utilisation used to be backlog / retained entries: 0.4%).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_advice_ignores_retained_history() {
    let _shared = SERVER.read().await;
    setup();
    slow::enqueue(Mail {
        to: "first@x".into(),
    })
    .await
    .unwrap();
    let mut conn = redis().connection();
    for partition in 0..2 {
        let stream = redisaq::keys::partition("cli_scale_slow", partition);
        let mut history = redis::pipe();
        for i in 0..5_000 {
            history
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("processed")
                .arg(i)
                .ignore();
        }
        let () = history.query(&mut conn).unwrap();
        // The group starts after the history: all of it counts as processed.
        let _: redis::Value = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("slow_group")
            .arg("$")
            .query(&mut conn)
            .unwrap();
    }
    slow::enqueue_batch((0..40).map(|i| Mail {
        to: format!("slow{i}@x"),
    }))
    .await
    .unwrap();

    let advised = std::sync::Arc::new(Mutex::new(Value::Null));
    let seen = advised.clone();
    run_worker_until(worker("cli_scale_slow").concurrency(1), move || {
        let advice = json(&["scale", "cli_scale_slow", "slow_group"]);
        let working = advice["consumers"] == 1 && advice["finished"].as_u64() > Some(0);
        *seen.lock().unwrap() = advice;
        working
    })
    .await;
    let advice = advised.lock().unwrap().clone();
    assert_eq!(advice["decision"], "OUT", "{advice}");
    assert!(
        advice["utilisation_pct"].as_f64().unwrap() > 60.0,
        "{advice}"
    );
    assert!(advice["backlog"].as_u64().unwrap() >= 10, "{advice}");
}

#[job(
    topic = "cli_letters",
    group = "letters_a",
    partitions = 1,
    retries = 0
)]
async fn refused_by_a(job: Job<Mail>) -> Result<(), JobError> {
    Err(JobError::fatal(format!("a refuses {}", job.payload().to)))
}

#[job(
    topic = "cli_letters",
    group = "letters_b",
    partitions = 1,
    retries = 0
)]
async fn refused_by_b(job: Job<Mail>) -> Result<(), JobError> {
    Err(JobError::fatal(format!("b refuses {}", job.payload().to)))
}

fn dlq_length(topic: &str) -> u64 {
    redisaq_tests::dead_letters(&mut redis().connection(), topic).len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_by_group_and_limit_and_shown_by_dead_letter_id() {
    let _shared = SERVER.read().await;
    setup();
    refused_by_a::enqueue_batch((0..3).map(|i| Mail {
        to: format!("l{i}@x"),
    }))
    .await
    .unwrap();
    // One group after the other, so the dead-letter stream holds a's three letters, then
    // b's three (of the same three jobs).
    run_worker_until(worker("cli_letters").groups(["letters_a"]), || {
        dlq_length("cli_letters") == 3
    })
    .await;
    run_worker_until(worker("cli_letters").groups(["letters_b"]), || {
        dlq_length("cli_letters") == 6
    })
    .await;

    let all = json(&["dlq", "list", "cli_letters"]);
    let all = all.as_array().unwrap();
    let groups: Vec<&str> = all.iter().map(|l| l["group"].as_str().unwrap()).collect();
    assert_eq!(
        groups,
        [
            "letters_a",
            "letters_a",
            "letters_a",
            "letters_b",
            "letters_b",
            "letters_b"
        ],
        "oldest first"
    );
    let list = |args: &[&str]| {
        let mut all_args = vec!["dlq", "list", "cli_letters"];
        all_args.extend_from_slice(args);
        json(&all_args).as_array().unwrap().clone()
    };
    assert_eq!(list(&["--limit", "2"]), all[..2], "the oldest two");
    assert_eq!(list(&["--group", "letters_b"]), all[3..], "only b's");
    assert_eq!(list(&["--group", "letters_a"]), all[..3], "only a's");
    assert_eq!(
        list(&["--group", "letters_b", "--limit", "2"]),
        all[3..5],
        "the group filters before the limit counts"
    );
    assert_eq!(list(&["--group", "letters_a", "--limit", "50"]), all[..3]);
    assert!(list(&["--group", "nobody"]).is_empty());

    // b's letter of a job that a dead-lettered too: only the dead-letter id tells them
    // apart.
    let letter = &all[4];
    assert_eq!(
        all.iter().filter(|l| l["id"] == letter["id"]).count(),
        2,
        "both groups dead-lettered the job"
    );
    let dead_letter_id = letter["dead_letter_id"].as_str().unwrap();
    let shown = json(&["dlq", "show", "cli_letters", "--id", dead_letter_id]);
    assert_eq!(&shown, letter, "the letter in full");
    assert_eq!(shown["group"], "letters_b");
    assert_eq!(shown["topic"], "cli_letters");
    assert_eq!(shown["attempts"], 1);
    let to = serde_json::from_str::<Value>(shown["payload"].as_str().unwrap()).unwrap()["to"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(shown["error"], format!("b refuses {to}"));
    let table = redisaq_cli(&["dlq", "show", "cli_letters", "--id", dead_letter_id]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains(dead_letter_id) && table.stdout.contains(&format!("b refuses {to}")),
        "{}",
        table.stdout
    );
}

static BUSY_GATE: Semaphore = Semaphore::const_new(0);
/// The id of every call of `busy`.
static BUSY_RUNS: Calls<String> = Calls::new();

#[job(topic = "cli_busy", group = "busy_group", partitions = 1, retries = 0)]
async fn busy(job: Job<Mail>) -> Result<(), JobError> {
    BUSY_RUNS.push(job.id().to_string());
    hold(&BUSY_GATE).await;
    Ok(())
}

/// `redisaq monitor cli_busy busy_group` with `args`: the exit code and the one consumer.
fn busy_monitor(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["monitor", "cli_busy", "busy_group"];
    all.extend_from_slice(args);
    let (code, consumers) = json_and_code(&all);
    assert_eq!(consumers.as_array().unwrap().len(), 1, "{consumers}");
    (code, consumers[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_flags_an_idle_and_an_overloaded_consumer() {
    let _shared = SERVER.read().await;
    setup();
    let ids = id_set(
        busy::enqueue_batch((0..3).map(|i| Mail {
            to: format!("b{i}@x"),
        }))
        .await
        .unwrap(),
    );
    let worker = Background::start(worker("cli_busy").consumer_name("busy").concurrency(1));
    // With one slot, the first job runs (and holds it) and the other two wait in the
    // consumer's queue: three entries pending on it.
    let mut seen = Value::Null;
    assert!(
        eventually(Duration::from_secs(30), || {
            seen = json_and_code(&["monitor", "cli_busy", "busy_group"]).1;
            seen.as_array().unwrap().len() == 1 && seen[0]["pending"] == 3 && BUSY_RUNS.len() == 1
        })
        .await,
        "{seen}"
    );

    let (code, consumer) = busy_monitor(&[]);
    assert_eq!(
        (code, &consumer["status"]),
        (0, &Value::from("OK")),
        "{consumer}"
    );
    assert_eq!(consumer["alive"], true);
    assert_eq!(consumer["partitions"], serde_json::json!([0]));
    assert_eq!(consumer["pending"], 3);
    assert!(consumer["consumer"].as_str().unwrap().starts_with("busy"));

    // Too many pending: more than the threshold, not as many.
    let quiet = ["--idle-threshold", "3600000"];
    let (code, consumer) = busy_monitor(&[&quiet[..], &["--pending-threshold", "3"]].concat());
    assert_eq!(
        (code, &consumer["status"]),
        (0, &Value::from("OK")),
        "{consumer}"
    );
    let (code, consumer) = busy_monitor(&[&quiet[..], &["--pending-threshold", "2"]].concat());
    assert_eq!(
        (code, &consumer["status"]),
        (3, &Value::from("TOO_MANY_PENDING")),
        "{consumer}"
    );
    let table = redisaq_cli(&[
        "monitor",
        "cli_busy",
        "busy_group",
        "--idle-threshold",
        "3600000",
        "--pending-threshold",
        "2",
    ]);
    assert_eq!(table.code, 3, "{}", table.stderr);
    assert!(
        table.stdout.contains("TOO_MANY_PENDING"),
        "{}",
        table.stdout
    );

    // Idle: alive, but it read nothing for longer than the threshold.
    let mut idle = (0, Value::Null);
    assert!(
        eventually(Duration::from_secs(30), || {
            idle = busy_monitor(&["--idle-threshold", "300"]);
            idle.1["status"] == "IDLE"
        })
        .await,
        "{idle:?}"
    );
    let (code, consumer) = idle;
    assert_eq!(code, 3, "{consumer}");
    assert!(consumer["idle_ms"].as_u64().unwrap() > 300, "{consumer}");
    assert_eq!(consumer["alive"], true);
    let (code, consumer) = busy_monitor(&quiet);
    assert_eq!(
        (code, &consumer["status"]),
        (0, &Value::from("OK")),
        "{consumer}"
    );

    // Let the jobs finish: the consumer reads again and is OK.
    BUSY_GATE.close();
    let mut conn = redis().connection();
    assert!(
        eventually(Duration::from_secs(30), || {
            BUSY_RUNS.distinct() == ids
                && redisaq_tests::pending(&mut conn, "cli_busy", "busy_group", 1) == 0
        })
        .await,
        "every job ran"
    );
    let (code, consumer) = busy_monitor(&[]);
    assert_eq!(
        (code, &consumer["status"]),
        (0, &Value::from("OK")),
        "{consumer}"
    );
    assert_eq!(consumer["pending"], 0);
    worker.stop().await.expect("worker stopped cleanly");
}

static FULL_GATE: Semaphore = Semaphore::const_new(0);

#[job(topic = "cli_full", group = "full_group", partitions = 1, retries = 0)]
async fn stuck(_job: Job<Mail>) -> Result<(), JobError> {
    hold(&FULL_GATE).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_holds_out_back_while_every_partition_has_a_consumer() {
    let _shared = SERVER.read().await;
    setup();
    stuck::enqueue_batch((0..4).map(|i| Mail {
        to: format!("f{i}@x"),
    }))
    .await
    .unwrap();
    let worker = Background::start(worker("cli_full").concurrency(1));
    // Nothing finishes while the gate is shut: the whole stream is backlog.
    let mut advice = Value::Null;
    assert!(
        eventually(Duration::from_secs(30), || {
            advice = try_json(&["scale", "cli_full", "full_group"]).unwrap_or_default();
            advice["consumers"] == 1 && advice["pending"].as_u64().unwrap_or(0) > 0
        })
        .await,
        "{advice}"
    );
    assert_eq!(advice["backlog"], 4, "{advice}");
    assert_eq!(advice["finished"], 0, "{advice}");
    assert_eq!(advice["utilisation_pct"], 100.0, "{advice}");
    assert_eq!(advice["partitions"], 1, "{advice}");
    assert_eq!(
        advice["decision"], "NO_SCALE",
        "one consumer per partition: {advice}"
    );
    assert!(
        advice["reason"]
            .as_str()
            .unwrap()
            .contains("raise the partition count"),
        "{advice}"
    );

    // With a partition to spare, the same backlog asks for another consumer.
    assert_eq!(
        redisaq_cli(&["partitions", "cli_full", "--set", "2"]).code,
        0
    );
    let advice = json(&["scale", "cli_full", "full_group"]);
    assert_eq!(advice["partitions"], 2, "{advice}");
    assert_eq!(advice["consumers"], 1, "{advice}");
    assert_eq!(advice["backlog"], 4, "{advice}");
    assert_eq!(advice["decision"], "OUT", "{advice}");

    FULL_GATE.close();
    worker.stop().await.expect("worker stopped cleanly");
}

/// The id of every call of `paired`.
static PAIRED: Calls<String> = Calls::new();

#[job(topic = "cli_pair", group = "pair_group", partitions = 2, retries = 0)]
async fn paired(job: Job<Mail>) -> Result<(), JobError> {
    PAIRED.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_advises_in_when_several_consumers_have_little_to_do() {
    let _shared = SERVER.read().await;
    setup();
    paired::enqueue_batch((0..4).map(|i| Mail {
        to: format!("p{i}@x"),
    }))
    .await
    .unwrap();
    let first = Background::start(worker("cli_pair").consumer_name("pair-a"));
    let second = Background::start(worker("cli_pair").consumer_name("pair-b"));
    let mut advice = Value::Null;
    assert!(
        eventually(Duration::from_secs(30), || {
            advice = try_json(&["scale", "cli_pair", "pair_group"]).unwrap_or_default();
            advice["consumers"] == 2 && advice["backlog"] == 0
        })
        .await,
        "{advice}"
    );
    assert_eq!(advice["utilisation_pct"], 0.0, "{advice}");
    assert_eq!(advice["decision"], "IN", "{advice}");
    assert_eq!(
        json(&["scale", "cli_pair", "pair_group", "--scale-in-pct", "0"])["decision"],
        "NO_SCALE",
        "0% is not below 0%"
    );
    let table = redisaq_cli(&["scale", "cli_pair", "pair_group"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("| IN ")
            && table.stdout.contains("utilisation 0.0%")
            && table.stdout.contains("is below 20% and not growing"),
        "{}",
        table.stdout
    );

    // One consumer left: nothing to take away.
    first.stop().await.expect("worker stopped cleanly");
    let advice = json(&["scale", "cli_pair", "pair_group"]);
    assert_eq!(advice["consumers"], 1, "{advice}");
    assert_eq!(advice["decision"], "NO_SCALE", "{advice}");
    second.stop().await.expect("worker stopped cleanly");
}

#[test]
fn tls_with_a_private_ca_given_by_flag() {
    let files = redisaq_tests::tls::TlsFiles::generate_temp("redisaq-cli-tls");
    let (_server, url) = files.start_server().expect("a TLS redis-server");
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_redisaq"))
            .args(["--redis-url", &url, "--json", "topics"])
            .args(extra)
            .env_remove("REDISAQ_TLS_CA_FILE")
            .output()
            .expect("run redisaq");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The test's CA is not among the system's roots: refused, with an error, no panic.
    let (code, stderr) = run(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("certificate"), "says why: {stderr}");
    let ca = files.ca.to_string_lossy().into_owned();
    let (code, stderr) = run(&["--tls-ca-file", &ca]);
    assert_eq!(code, 0, "trusted through --tls-ca-file: {stderr}");
}

#[test]
fn no_output_shows_the_password_in_redis_url() {
    for args in [&["--help"][..], &["topics", "--help"][..], &["topics"][..]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_redisaq"))
            .args(args)
            .env("REDIS_URL", "redis://user:topsecret@127.0.0.1:1")
            .output()
            .expect("run redisaq");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("topsecret"), "{args:?}: {all}");
    }
}

/// (job id) of every call of `scheduled`.
static SCHEDULED: Calls<String> = Calls::new();

#[job(topic = "cli_schedule", group = "cli_schedule_group", partitions = 2)]
async fn scheduled(job: Job<Mail>) -> Result<(), JobError> {
    SCHEDULED.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pause_and_resume_from_the_tool() {
    let _server = SERVER.read().await;
    setup();
    let later = redisaq::EnqueueOptions::new().delay(Duration::from_secs(600));
    let mail = |to: &str| Mail { to: to.into() };
    let kept = scheduled::enqueue_with(mail("kept"), later.clone())
        .await
        .unwrap();
    let dropped = scheduled::enqueue_with(mail("dropped"), later)
        .await
        .unwrap();
    let topics = json(&["topics"]);
    let topic = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "cli_schedule")
        .unwrap();
    assert_eq!(topic["delayed"], 2, "{topic}");
    assert_eq!(topic["paused"], false);

    let found = json(&["job", "cli_schedule", kept.as_str()]);
    assert!(found["due_ms"].is_u64(), "{found}");
    let nowhere = redisaq_cli(&["job", "cli_schedule", "no-such-job"]);
    assert_eq!(nowhere.code, 1);
    assert!(
        nowhere.stderr.contains("is not in topic"),
        "{}",
        nowhere.stderr
    );
    let out = redisaq_cli(&["cancel", "cli_schedule", "--id", dropped.as_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("cancelled delayed job"),
        "{}",
        out.stdout
    );
    let again = redisaq_cli(&["cancel", "cli_schedule", "--id", dropped.as_str()]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("no delayed job"), "{}", again.stderr);
    let unknown = redisaq_cli(&["cancel", "no_such_topic", "--id", "x"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no topic"), "{}", unknown.stderr);

    let out = redisaq_cli(&["pause", "cli_schedule", "--group", "cli_schedule_group"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let topics = json(&["topics"]);
    let topic = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "cli_schedule")
        .unwrap();
    assert_eq!(
        topic["paused_groups"],
        serde_json::json!(["cli_schedule_group"])
    );
    let table = redisaq_cli(&["topics"]).stdout;
    assert!(
        table.contains("delayed") && table.contains("cli_schedule_group"),
        "{table}"
    );

    // A paused group runs nothing, however long the worker runs; resumed, it runs.
    let running = Background::start(worker("cli_schedule"));
    let now = scheduled::enqueue(mail("now")).await.unwrap();
    let pending_now = eventually(Duration::from_secs(30), || {
        try_json(&["groups", "cli_schedule"]).is_some_and(|groups| {
            groups[0]["paused"] == true
                && groups[0]["consumers"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
        })
    })
    .await;
    assert!(pending_now, "the group shows paused with its consumer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(SCHEDULED.is_empty(), "a paused group ran a job");
    let out = redisaq_cli(&["resume", "cli_schedule", "--group", "cli_schedule_group"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ran = eventually(Duration::from_secs(30), || {
        SCHEDULED.all().contains(&now.to_string())
    })
    .await;
    assert!(ran, "the resumed group ran the job");
    running.stop().await.unwrap();
    // The cancelled job never ran; the other still waits.
    assert!(!SCHEDULED.all().contains(&dropped.to_string()));
    assert!(!SCHEDULED.all().contains(&kept.to_string()));
}

#[test]
fn the_dashboard_serves_on_loopback_and_refuses_an_open_address_without_a_token() {
    let _server = SERVER.blocking_read();
    let open = redisaq_cli(&["dashboard", "--listen", "0.0.0.0:0"]);
    assert_eq!(open.code, 2);
    assert!(open.stderr.contains("--token"), "{}", open.stderr);

    let port = redisaq_tests::free_port();
    let mut child = cli_command(&["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dashboard");
    let mut page = String::new();
    for _ in 0..100 {
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .unwrap();
            stream.read_to_string(&mut page).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<h1>Topics</h1>"), "{page}");
}

/// Two partitions' dead-letter streams can hold entries with the same id: given such an
/// id, `dlq show` and `dlq replay` refuse and ask for the job id, which is unique.
#[test]
fn a_dead_letter_id_two_partitions_share_is_refused_and_the_job_id_works() {
    let _server = SERVER.blocking_read();
    let mut conn = redis().connection();
    let topic = "cli_twin_letters";
    let _: () = redis::cmd("HSET")
        .arg(redisaq::keys::meta(topic))
        .arg("partitions")
        .arg(2)
        .arg("maxlen")
        .arg(100)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(redisaq::keys::topics())
        .arg(topic)
        .query(&mut conn)
        .unwrap();
    for partition in 0..2u32 {
        let _: String = redis::cmd("XADD")
            .arg(redisaq::keys::dead_letters(topic, partition))
            .arg("1000-1")
            .arg("id")
            .arg(format!("twin-job-{partition}"))
            .arg("topic")
            .arg(topic)
            .arg("group")
            .arg("twins")
            .arg("partition")
            .arg(partition)
            .arg("attempts")
            .arg(1)
            .arg("error")
            .arg("boom")
            .arg("payload")
            .arg("{}")
            .arg("entry_id")
            .arg("1-0")
            .arg("failed_at")
            .arg(1000)
            .query(&mut conn)
            .unwrap();
    }
    for args in [
        ["dlq", "show", topic, "--id", "1000-1"],
        ["dlq", "replay", topic, "--id", "1000-1"],
    ] {
        let out = redisaq_cli(&args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains("give the job id"), "{}", out.stderr);
    }
    let still: u64 = (0..2u32)
        .map(|p| {
            redis::cmd("XLEN")
                .arg(redisaq::keys::dead_letters(topic, p))
                .query::<u64>(&mut conn)
                .unwrap()
        })
        .sum();
    assert_eq!(still, 2, "nothing was replayed");
    let shown = json(&["dlq", "show", topic, "--id", "twin-job-1"]);
    assert_eq!(shown["partition"], 1, "{shown}");
    let replayed = json(&["dlq", "replay", topic, "--id", "twin-job-1"]);
    assert_eq!(replayed.as_array().map(Vec::len), Some(1), "{replayed}");
}
