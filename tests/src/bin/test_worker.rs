//! A worker process for the multi-process tests. Its handlers record every call in Redis
//! so the test can check what was processed after killing, pausing and restarting
//! workers: `redisaq-test:starts:{topic}` (hash: job id -> number of calls started),
//! `redisaq-test:calls:{topic}` (hash: job id -> number of calls finished) and
//! `redisaq-test:intervals:{topic}` (list of "partition consumer start_us end_us").
//!
//! Environment: `REDIS_URL`, `TEST_RECORD_URL` (where the records go, if not to
//! `REDIS_URL`: the cluster tests keep them off the cluster whose faults they inject), the
//! `REDISAQ_*` settings, `TEST_JOB_MS` (how long each job
//! takes, default 0), `TEST_TOPICS` (comma-separated topics to run, default all),
//! `TEST_SHUTDOWN_TIMEOUT_MS` (`Worker::shutdown_timeout`, default the library's) and
//! `TEST_PRODUCE=claims_grow` (be a producer instead of a worker, see [`produce`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redisaq::{job, Job, JobError, Tick};
use redisaq_tests::Work;
use tokio::sync::OnceCell;

async fn recorder() -> ConnectionManager {
    static CONN: OnceCell<ConnectionManager> = OnceCell::const_new();
    CONN.get_or_init(|| async {
        let url = std::env::var("TEST_RECORD_URL")
            .or_else(|_| std::env::var("REDIS_URL"))
            .expect("REDIS_URL");
        let client = redis::Client::open(url).expect("REDIS_URL");
        // Records must survive the Redis stalls the tests inject.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)));
        ConnectionManager::new_with_config(client, config)
            .await
            .expect("connect")
    })
    .await
    .clone()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

async fn record(job: &Job<Work>) -> Result<(), JobError> {
    record_as(job, job.topic()).await
}

/// Records the call under `name` instead of the job's topic (to tell groups apart).
async fn record_as(job: &Job<Work>, name: &str) -> Result<(), JobError> {
    let started = now_us();
    let mut conn = recorder().await;
    let mut start = redis::pipe();
    start
        .cmd("HINCRBY")
        .arg(format!("redisaq-test:starts:{name}"))
        .arg(job.id().as_str())
        .arg(1);
    save(&mut conn, &start).await?;
    let pause = std::env::var("TEST_JOB_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    let ended = now_us();
    let consumer = CONSUMER.get().map(String::as_str).unwrap_or("?");
    let mut end = redis::pipe();
    end.atomic()
        .cmd("HINCRBY")
        .arg(format!("redisaq-test:calls:{name}"))
        .arg(job.id().as_str())
        .arg(1)
        .cmd("RPUSH")
        .arg(format!("redisaq-test:intervals:{name}"))
        .arg(format!("{} {consumer} {started} {ended}", job.partition()));
    save(&mut conn, &end).await?;
    Ok(())
}

/// Writes a record, trying again through dropped connections: a record that failed
/// would fail the job and make the test see a retry the fault did not cause. (A write
/// whose reply was lost may count twice; the tests inject no such fault on this
/// connection.)
async fn save(conn: &mut ConnectionManager, record: &redis::Pipeline) -> Result<(), JobError> {
    let mut last = None;
    for _ in 0..100 {
        match record.exec_async(conn).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(JobError::retry(last.expect("tried")))
}

/// This process's consumer name prefix, unique per test worker.
static CONSUMER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Jobs of the coordination tests.
#[job(
    topic = "coord",
    group = "coord_group",
    partitions = 8,
    concurrency = 4
)]
pub async fn coord(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the rebalance-on-join test.
#[job(topic = "join", group = "join_group", partitions = 6, concurrency = 4)]
pub async fn join(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the graceful-shutdown test.
#[job(
    topic = "graceful",
    group = "graceful_group",
    partitions = 2,
    concurrency = 8
)]
pub async fn graceful(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the partition-raising test.
#[job(topic = "grow", group = "grow_group", partitions = 2, concurrency = 4)]
pub async fn grow(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the crash tests.
#[job(
    topic = "crash",
    group = "crash_group",
    partitions = 4,
    concurrency = 8
)]
pub async fn crash(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Runs `script` every 10 ms until it returns 1; false if that did not happen within
/// two minutes (a guard against a test that never opens its gate).
async fn poll_until(script: &redis::Script, keys: &[String]) -> bool {
    let mut conn = recorder().await;
    for _ in 0..12_000 {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        if invocation.invoke_async::<i64>(&mut conn).await.ok() == Some(1) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Jobs of the `REDISAQ_CONCURRENCY` test. Each call counts itself in
/// `redisaq-test:running:{topic}` (highest value in `redisaq-test:max:{topic}`), then
/// waits for a token the test adds to `redisaq-test:tokens:{topic}` (one per call) and
/// counts itself done in `redisaq-test:done:{topic}`.
#[job(
    topic = "limits_env",
    group = "limits_env_group",
    partitions = 2,
    concurrency = 3,
    retries = 0
)]
pub async fn limits_env(job: Job<Work>) -> Result<(), JobError> {
    let topic = job.topic();
    let running = format!("redisaq-test:running:{topic}");
    let mut conn = recorder().await;
    let _: i64 = redis::Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
",
    )
    .key(&running)
    .key(format!("redisaq-test:max:{topic}"))
    .invoke_async(&mut conn)
    .await?;
    let take_token = redis::Script::new(
        r"
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
",
    );
    let released = poll_until(&take_token, &[format!("redisaq-test:tokens:{topic}")]).await;
    redis::pipe()
        .cmd("DECR")
        .arg(&running)
        .cmd("INCR")
        .arg(format!("redisaq-test:done:{topic}"))
        .exec_async(&mut conn)
        .await?;
    if released {
        Ok(())
    } else {
        Err(JobError::fatal("the test never released this call"))
    }
}

/// Jobs of the shutdown-deadline test: each run pushes this worker's name to
/// `redisaq-test:starts:{topic}`, waits until the test sets `redisaq-test:gate:{topic}`,
/// then pushes the name to `redisaq-test:finishes:{topic}`.
#[job(
    topic = "shutdown_slow",
    group = "shutdown_slow_group",
    partitions = 1,
    concurrency = 1,
    retries = 3
)]
pub async fn shutdown_slow(job: Job<Work>) -> Result<(), JobError> {
    let topic = job.topic();
    let consumer = CONSUMER.get().map(String::as_str).unwrap_or("?");
    let mut conn = recorder().await;
    redis::cmd("RPUSH")
        .arg(format!("redisaq-test:starts:{topic}"))
        .arg(consumer)
        .exec_async(&mut conn)
        .await?;
    let gate = redis::Script::new("return redis.call('EXISTS', KEYS[1])");
    if !poll_until(&gate, &[format!("redisaq-test:gate:{topic}")]).await {
        return Err(JobError::fatal("the test never opened the gate"));
    }
    redis::cmd("RPUSH")
        .arg(format!("redisaq-test:finishes:{topic}"))
        .arg(consumer)
        .exec_async(&mut conn)
        .await?;
    Ok(())
}

/// Records, once per job, when its first call started by Redis' clock (ms), in
/// `redisaq-test:started_ms:{name}`, then records the call as [`record_as`] does: the
/// scheduling tests judge "not before it was due" by the clock Redis keeps due times by.
async fn record_started(job: &Job<Work>, name: &str) -> Result<(), JobError> {
    let mut conn = recorder().await;
    let mut stamp = redis::pipe();
    stamp
        .cmd("EVAL")
        .arg(
            "local t = redis.call('TIME') \
             redis.call('HSETNX', KEYS[1], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))",
        )
        .arg(1)
        .arg(format!("redisaq-test:started_ms:{name}"))
        .arg(job.id().as_str());
    save(&mut conn, &stamp).await?;
    record_as(job, name).await
}

/// Delayed jobs of the scheduling tests.
#[job(
    topic = "delayed",
    group = "delayed_group",
    partitions = 4,
    concurrency = 8
)]
pub async fn delayed(job: Job<Work>) -> Result<(), JobError> {
    record_started(&job, "delayed").await
}

/// Jobs enqueued with ids of their own.
#[job(
    topic = "once",
    group = "once_group",
    partitions = 4,
    dedupe_window_s = 3600
)]
pub async fn once(job: Job<Work>) -> Result<(), JobError> {
    record(&job).await
}

/// Jobs of the pause tests, in two groups.
#[job(topic = "paused", group = "paused_a", partitions = 2)]
pub async fn paused_a(job: Job<Work>) -> Result<(), JobError> {
    record_started(&job, "paused_a").await
}

#[job(topic = "paused", group = "paused_b", partitions = 2)]
pub async fn paused_b(job: Job<Work>) -> Result<(), JobError> {
    record_started(&job, "paused_b").await
}

/// Jobs of the group-rate test: at most 20 start per second across all workers.
#[job(
    topic = "rate_group",
    group = "rate_g",
    partitions = 4,
    concurrency = 8,
    rate = "20/s"
)]
pub async fn rate_group(job: Job<Work>) -> Result<(), JobError> {
    record_started(&job, "rate_group").await
}

/// Jobs of the key-rate test: at most 5 of one key start per second; one at a time, so
/// one key's jobs run in order.
#[job(
    topic = "rate_key",
    group = "rate_k",
    partitions = 2,
    concurrency = 1,
    key_rate = "5/s"
)]
pub async fn rate_key(job: Job<Work>) -> Result<(), JobError> {
    record_started(&job, "rate_key").await
}

/// Counts a cron job's fire time in `redisaq-test:ticks:{name}` (fire ms → calls).
async fn record_tick(job: &Job<Tick>, name: &str) -> Result<(), JobError> {
    let fired = job
        .payload()
        .scheduled_at()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut conn = recorder().await;
    let mut tick = redis::pipe();
    tick.cmd("HINCRBY")
        .arg(format!("redisaq-test:ticks:{name}"))
        .arg(fired)
        .arg(1);
    save(&mut conn, &tick).await
}

/// A cron job every second.
#[job(topic = "cron_each_second", group = "cron_group", cron = "* * * * * *")]
pub async fn each_second(job: Job<Tick>) -> Result<(), JobError> {
    record_tick(&job, "cron_each_second").await
}

/// A cron job every minute, at second 0 (in a zone with whole-hour offsets).
#[job(
    topic = "cron_each_minute",
    group = "cron_group",
    cron = "0 * * * * *",
    tz = "Europe/Berlin"
)]
pub async fn each_minute(job: Job<Tick>) -> Result<(), JobError> {
    record_tick(&job, "cron_each_minute").await
}

/// The payload number that aborts the worker process in the crash-loop handlers.
pub const POISON: u64 = 999_999;

/// Partitions of the crash-loop topics.
const CRASH_LOOP_PARTITIONS: u32 = 4;

/// Whether a job the handlers already recorded as done is still pending (its ack not yet
/// written), so that aborting now would run it a second time.
async fn done_but_unacked(conn: &mut ConnectionManager, topic: &str, group: &str) -> bool {
    let done: std::collections::HashSet<String> = redis::cmd("HKEYS")
        .arg(format!("redisaq-test:calls:{topic}"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    for partition in 0..CRASH_LOOP_PARTITIONS {
        let stream = redisaq::keys::partition(topic, partition);
        let pending: redis::streams::StreamPendingCountReply = match redis::cmd("XPENDING")
            .arg(&stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1000)
            .query_async(conn)
            .await
        {
            Ok(reply) => reply,
            Err(_) => return true,
        };
        for entry in pending.ids {
            let rows: redis::streams::StreamRangeReply = match redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&entry.id)
                .arg(&entry.id)
                .query_async(conn)
                .await
            {
                Ok(rows) => rows,
                Err(_) => return true,
            };
            let job_id: Option<String> = rows.ids.first().and_then(|row| row.get("id"));
            if job_id.is_some_and(|id| done.contains(&id)) {
                return true;
            }
        }
    }
    false
}

/// The crash-loop tests' handler: the payload [`POISON`] counts itself in
/// `redisaq-test:poison:{topic}` and aborts the process (once every job already done has
/// been acknowledged, so only the poison job and jobs not yet run are redelivered);
/// every other job is recorded as the other topics' jobs are.
async fn crash_or_record(job: Job<Work>) -> Result<(), JobError> {
    if job.payload().n != POISON {
        return record(&job).await;
    }
    let mut conn = recorder().await;
    redis::cmd("INCR")
        .arg(format!("redisaq-test:poison:{}", job.topic()))
        .exec_async(&mut conn)
        .await?;
    for _ in 0..1_000 {
        if !done_but_unacked(&mut conn, job.topic(), "crash_loop_group").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::process::abort();
}

/// Jobs of the crash-loop test (see [`crash_or_record`]).
#[job(
    topic = "crash_loop",
    group = "crash_loop_group",
    partitions = 4,
    concurrency = 1,
    retries = 2
)]
pub async fn crash_loop(job: Job<Work>) -> Result<(), JobError> {
    crash_or_record(job).await
}

/// The same as [`crash_loop`], on a topic of its own for a second test.
#[job(
    topic = "crash_loop_bystanders",
    group = "crash_loop_group",
    partitions = 4,
    concurrency = 1,
    retries = 2
)]
pub async fn crash_loop_bystanders(job: Job<Work>) -> Result<(), JobError> {
    crash_or_record(job).await
}

/// Producer-side declaration of the topic the partition-raising producer test enqueues
/// to (`TEST_PRODUCE=claims_grow`); no test runs its handler.
/// The cluster tests' topic: 12 partitions, spread over the masters, and two groups
/// (recorded as `spread_a` and `spread_b`).
#[job(topic = "spread", group = "spread_a", partitions = 12)]
pub async fn spread_a(job: Job<Work>) -> Result<(), JobError> {
    record_as(&job, "spread_a").await
}

#[job(topic = "spread", group = "spread_b", partitions = 12)]
pub async fn spread_b(job: Job<Work>) -> Result<(), JobError> {
    record_as(&job, "spread_b").await
}

#[job(topic = "claims_grow", group = "claims_grow_group", partitions = 2)]
pub async fn claims_grow(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

/// `TEST_PRODUCE=claims_grow`: enqueue a job without a key every 10 ms (at most 12,000)
/// instead of running a worker.
async fn produce() -> Result<(), redisaq::Error> {
    for n in 0..12_000 {
        claims_grow::enqueue(Work { n }).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), redisaq::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    CONSUMER
        .set(std::env::var("REDISAQ_CONSUMER_NAME").unwrap_or_else(|_| "worker".into()))
        .unwrap();
    if std::env::var("TEST_PRODUCE").as_deref() == Ok("claims_grow") {
        return produce().await;
    }
    let mut worker = redisaq::Worker::new();
    if let Ok(topics) = std::env::var("TEST_TOPICS") {
        worker = worker.topics(topics.split(','));
    }
    if let Some(ms) = std::env::var("TEST_SHUTDOWN_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        worker = worker.shutdown_timeout(Duration::from_millis(ms));
    }
    worker.run().await
}
