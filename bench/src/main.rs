//! The redisaq benchmark: each library scenario next to the raw-Redis scenario that bounds
//! it, measured in the same run on the same server, so the ratio means something on any
//! machine.
//!
//! `cargo run --release -p redisaq-bench -- [--jobs N] [--only a,b] [--json PATH]`

mod cluster;
mod delayed;
mod idle;
mod scale;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::MultiplexedConnection;
use redisaq::{job, EnqueueOptions, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Throughput and latency of redisaq, as ratios to raw Redis in the same run")]
struct Args {
    /// Jobs per throughput scenario.
    #[arg(long, default_value_t = 200_000)]
    jobs: u64,
    /// Use this Redis instead of a private redis-server (nothing is flushed there).
    #[arg(long)]
    redis_url: Option<String>,
    /// Jobs per second in the latency scenario, one run per rate (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [5_000, 20_000])]
    rate: Vec<u64>,
    /// How long the latency scenario enqueues.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Run only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A smoke run: 10,000 jobs, 2 s of latency.
    #[arg(long)]
    quick: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Also run the cluster scenarios on a local Redis Cluster (3 masters, 3 replicas):
    /// consume-single there, and commands per second on each master, busy and idle.
    #[arg(long)]
    cluster: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run N workers of the scale scenario's topic until stdin closes (the scale
    /// scenario starts this program so).
    #[arg(long, hide = true)]
    scale_worker: Option<usize>,
}

/// The payload: small, like a typical job reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    user: u64,
    action: String,
    /// When it was enqueued, in µs since the epoch (the latency scenario).
    sent_us: u64,
}

fn payload(n: u64) -> Payload {
    Payload {
        user: n,
        action: "send_welcome_email".into(),
        sent_us: now_us(),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

const PARTITIONS: u32 = 4;
static HANDLED: AtomicU64 = AtomicU64::new(0);
static LATENCIES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[job(topic = "bench_enqueue", group = "bench_enqueue", partitions = 4)]
async fn bench_enqueue(_job: Job<Payload>) -> Result<(), JobError> {
    Ok(())
}

#[job(topic = "bench_single", group = "bench_single", partitions = 4)]
async fn bench_single(_job: Job<Payload>) -> Result<(), JobError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[job(
    topic = "bench_batch",
    group = "bench_batch",
    partitions = 4,
    batch = 100,
    max_wait_ms = 20
)]
async fn bench_batch(jobs: Vec<Job<Payload>>) -> Vec<Result<(), JobError>> {
    HANDLED.fetch_add(jobs.len() as u64, Ordering::Relaxed);
    jobs.iter().map(|_| Ok(())).collect()
}

#[job(topic = "bench_latency", group = "bench_latency", partitions = 4)]
async fn bench_latency(job: Job<Payload>) -> Result<(), JobError> {
    let latency = now_us().saturating_sub(job.payload().sent_us);
    LATENCIES.lock().unwrap().push(latency);
    Ok(())
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    scenario: String,
    jobs: u64,
    seconds: f64,
    jobs_per_second: f64,
    /// Library throughput over the raw scenario that bounds it.
    ratio_to_raw: Option<f64>,
    /// Latency percentiles in ms (latency scenario only).
    latency_ms: Option<HashMap<String, f64>>,
    /// What the scenario cost per job (one-node scenarios on the private server).
    cost: Option<Cost>,
}

/// CPU and commands per job over a scenario's timed part.
#[derive(Debug, Clone, Copy, Serialize)]
struct Cost {
    /// Redis server CPU (`INFO cpu`: user + system, all its threads), µs per job.
    redis_us_per_job: f64,
    /// Commands Redis executed (`INFO commandstats`), per job.
    redis_commands_per_job: f64,
    /// This process's CPU (producer and worker, user + system), µs per job.
    client_us_per_job: f64,
}

/// Counters read at the start and the end of a scenario's timed part.
#[derive(Debug, Clone, Copy)]
struct Meter {
    redis_cpu_s: f64,
    redis_calls: u64,
    client_cpu_s: f64,
}

impl Meter {
    async fn read(conn: &mut MultiplexedConnection) -> Meter {
        let info = info(conn, &["cpu", "commandstats"]).await;
        Meter {
            redis_cpu_s: info_field(&info, "used_cpu_user") + info_field(&info, "used_cpu_sys"),
            redis_calls: command_calls(&info).values().sum(),
            client_cpu_s: process_cpu_s(),
        }
    }

    /// The cost per job of what happened between `self` and `end`.
    fn cost(&self, end: &Meter, jobs: u64) -> Cost {
        let jobs = jobs.max(1) as f64;
        Cost {
            redis_us_per_job: (end.redis_cpu_s - self.redis_cpu_s) * 1e6 / jobs,
            // The two INFO calls that measure are not the scenario's.
            redis_commands_per_job: end.redis_calls.saturating_sub(self.redis_calls + 1) as f64
                / jobs,
            client_us_per_job: (end.client_cpu_s - self.client_cpu_s) * 1e6 / jobs,
        }
    }
}

/// `INFO` of `sections` from the server behind `conn`.
async fn info(conn: &mut impl redis::aio::ConnectionLike, sections: &[&str]) -> String {
    redis::cmd("INFO")
        .arg(sections)
        .query_async(conn)
        .await
        .unwrap()
}

/// A number in an `INFO` reply (`name:value`), 0 when absent.
fn info_field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Calls per command so far, from an `INFO commandstats` reply.
fn command_calls(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The commands Redis ran over `span` (the measuring `INFO` left out), busiest first, and
/// the seconds measured.
async fn commands_over(
    conn: &mut impl redis::aio::ConnectionLike,
    span: Duration,
) -> (f64, Vec<(String, u64)>) {
    let before = command_calls(&info(conn, &["commandstats"]).await);
    let started = Instant::now();
    tokio::time::sleep(span).await;
    let after = command_calls(&info(conn, &["commandstats"]).await);
    let seconds = started.elapsed().as_secs_f64();
    let mut counts: Vec<(String, u64)> = after
        .into_iter()
        .map(|(name, calls)| {
            let was = before.get(&name).copied().unwrap_or(0);
            let own = u64::from(name == "info");
            let ran = calls.saturating_sub(was + own);
            (name, ran)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    (seconds, counts)
}

/// CPU time of this process so far (all threads, user + system), from `/proc/self/stat`
/// in clock ticks of 1/100 s (Linux's USER_HZ); 0 where that file does not exist.
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime and
    // stime are the 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

struct Bench {
    args: Args,
    url: String,
    private: bool,
    conn: MultiplexedConnection,
    outcomes: Vec<Outcome>,
    memory_per_1000: Option<f64>,
    /// What the cluster scenarios measured per master.
    cluster_shards: Option<serde_json::Value>,
    /// The counters at the start of the running scenario's timed part.
    mark: Option<Meter>,
    /// What the idle scenario measured.
    idle: Option<idle::Idle>,
    /// What the scale scenario measured.
    scale: Option<scale::Scale>,
}

impl Bench {
    fn wants(&self, scenario: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == scenario)
    }

    fn progress(&self, scenario: &str, total: u64) -> ProgressBar {
        if self.args.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total).with_message(scenario.to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg:>16} {bar:40} {pos}/{len} {per_sec}")
                .expect("valid template"),
        );
        bar
    }

    /// Starts a scenario's timed part: notes the counters, returns the start time.
    async fn start(&mut self) -> Instant {
        self.mark = Some(Meter::read(&mut self.conn).await);
        Instant::now()
    }

    async fn record(&mut self, scenario: &str, jobs: u64, elapsed: Duration, raw: Option<&str>) {
        let cost = match self.mark.take() {
            Some(mark) => Some(mark.cost(&Meter::read(&mut self.conn).await, jobs)),
            None => None,
        };
        let seconds = elapsed.as_secs_f64();
        let rate = jobs as f64 / seconds;
        let ratio = raw
            .and_then(|raw| self.outcomes.iter().find(|o| o.scenario == raw))
            .map(|raw| rate / raw.jobs_per_second);
        eprintln!(
            "{scenario:>16}: {jobs} jobs in {seconds:.2} s = {rate:.0} jobs/s{}{}",
            ratio.map_or(String::new(), |r| format!(
                " ({r:.2} x {})",
                raw.unwrap_or_default()
            )),
            cost.map_or(String::new(), |c| format!(
                "; per job: Redis {:.2} µs CPU and {:.3} commands, client {:.2} µs CPU",
                c.redis_us_per_job, c.redis_commands_per_job, c.client_us_per_job
            ))
        );
        self.outcomes.push(Outcome {
            scenario: scenario.into(),
            jobs,
            seconds,
            jobs_per_second: rate,
            ratio_to_raw: ratio,
            latency_ms: None,
            cost,
        });
    }

    /// Starts every scenario from an empty server (private server only).
    async fn reset(&mut self) {
        if self.private {
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut self.conn)
                .await
                .unwrap();
        }
    }

    async fn used_memory(&mut self) -> u64 {
        info_field(&info(&mut self.conn, &["memory"]).await, "used_memory") as u64
    }
}

fn raw_fields(n: u64) -> Vec<(&'static str, String)> {
    vec![
        ("id", format!("raw-{n}")),
        ("payload", serde_json::to_string(&payload(n)).unwrap()),
        ("enqueued_at", (now_us() / 1000).to_string()),
    ]
}

/// Pipelined XADD of the same entries redisaq writes, 1,000 per round trip.
async fn raw_xadd(conn: &mut MultiplexedConnection, topic: &str, jobs: u64, bar: &ProgressBar) {
    let mut n = 0;
    while n < jobs {
        let mut pipe = redis::pipe();
        for _ in 0..1_000.min(jobs - n) {
            pipe.cmd("XADD")
                .arg(redisaq::keys::partition(
                    topic,
                    (n % PARTITIONS as u64) as u32,
                ))
                .arg("*")
                .arg(raw_fields(n))
                .ignore();
            n += 1;
        }
        let _: () = pipe.query_async(conn).await.unwrap();
        bar.set_position(n);
    }
}

/// Waits until `handled()` reaches `jobs` and nothing is pending in the group.
async fn drain(
    conn: &mut MultiplexedConnection,
    topic: &str,
    jobs: u64,
    handled: impl Fn() -> u64,
    bar: &ProgressBar,
) {
    // Generous, and only there so a broken run fails instead of hanging.
    let limit = Duration::from_secs(30 + jobs / 2_000);
    let started = Instant::now();
    loop {
        if started.elapsed() > limit {
            panic!(
                "{topic}: after {limit:?} only {} of {jobs} jobs were handled and acknowledged; \
                 the run is invalid",
                handled()
            );
        }
        bar.set_position(handled());
        if handled() >= jobs {
            let mut pending = 0;
            for p in 0..PARTITIONS {
                let summary: redis::Value = redis::cmd("XPENDING")
                    .arg(redisaq::keys::partition(topic, p))
                    .arg(topic)
                    .query_async(conn)
                    .await
                    .unwrap();
                if let redis::Value::Array(items) = summary {
                    if let Some(redis::Value::Int(n)) = items.first() {
                        pending += n;
                    }
                }
            }
            if pending == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn consume(
    bench: &mut Bench,
    scenario: &str,
    topic: &'static str,
    preload: fn(Vec<Payload>) -> Preload,
) {
    bench.reset().await;
    HANDLED.store(0, Ordering::SeqCst);
    let jobs = bench.args.jobs;
    let mut n = 0;
    while n < jobs {
        let chunk: Vec<Payload> = (n..(n + 1_000).min(jobs)).map(payload).collect();
        n += chunk.len() as u64;
        preload(chunk).await.unwrap();
    }
    let bar = bench.progress(scenario, jobs);
    let started = bench.start().await;
    work_off(bench, topic, jobs, &bar).await;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    bench
        .record(scenario, jobs, elapsed, Some("raw-consume"))
        .await;
}

/// Runs a worker of `topic` until its handler has counted `jobs` in [`HANDLED`].
async fn work_off(bench: &Bench, topic: &'static str, jobs: u64, bar: &ProgressBar) {
    let worker = redisaq::Worker::new()
        .redis_url(bench.url.clone())
        .topics([topic]);
    let mut conn = bench.conn.clone();
    let bar = bar.clone();
    worker
        .run_until(async move {
            drain(
                &mut conn,
                topic,
                jobs,
                || HANDLED.load(Ordering::Relaxed),
                &bar,
            )
            .await
        })
        .await
        .unwrap();
}

type Preload = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<redisaq::JobId>, redisaq::Error>> + Send>,
>;

/// Enqueues `rate` jobs per second for the set time; enqueue → handler start.
async fn latency(bench: &mut Bench, rate: u64) {
    bench.reset().await;
    LATENCIES.lock().unwrap().clear();
    let secs = bench.args.latency_secs;
    let total = rate * secs;
    let scenario = format!("latency {rate}/s");
    let bar = bench.progress(&scenario, total);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = redisaq::Worker::new()
        .redis_url(bench.url.clone())
        .topics([bench_latency::TOPIC]);
    let running = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));
    // Let the worker take its partitions before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_tick = (rate / 1000).max(1);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 * per_tick / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    let started = Instant::now();
    while sent < total {
        ticker.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            tokio::spawn(bench_latency::enqueue(payload(sent)));
            sent += 1;
        }
        bar.set_position(sent);
    }
    let limit = Duration::from_secs(secs + 30);
    while (LATENCIES.lock().unwrap().len() as u64) < total {
        let handled = LATENCIES.lock().unwrap().len();
        assert!(
            started.elapsed() < limit,
            "latency: only {handled} of {total} jobs reached their handler; the run is invalid"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
    let mut latencies = LATENCIES.lock().unwrap().clone();
    latencies.sort_unstable();
    let figures: HashMap<String, f64> = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .map(|(name, p)| (name.to_string(), percentile(&latencies, p)))
        .collect();
    eprintln!(
        "{:>16}: {total} jobs at {rate}/s, enqueue to handler start p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        scenario, figures["p50"], figures["p90"], figures["p99"], figures["max"]
    );
    bench.outcomes.push(Outcome {
        scenario,
        jobs: total,
        seconds: elapsed.as_secs_f64(),
        jobs_per_second: total as f64 / elapsed.as_secs_f64(),
        ratio_to_raw: None,
        latency_ms: Some(figures),
        cost: None,
    });
}

/// The six busiest commands of `by_command` but blocking reads, as `name rate, …`.
fn busiest(by_command: &[(String, f64)]) -> String {
    let busiest: Vec<String> = by_command
        .iter()
        .filter(|(name, _)| name != "xreadgroup")
        .take(6)
        .map(|(name, n)| format!("{name} {n:.2}"))
        .collect();
    busiest.join(", ")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.jobs = 10_000;
        args.latency_secs = 2;
    }
    if let (Some(workers), Some(url)) = (args.scale_worker, &args.redis_url) {
        return scale::worker(url.clone(), workers).await;
    }
    let (url, _server) = match &args.redis_url {
        Some(url) => (url.clone(), None),
        None => {
            let server = redisaq_tests::RedisServer::start().expect("start redis-server");
            (server.url(), Some(server))
        }
    };
    redisaq::set_redis_url(&url).expect("valid Redis URL");
    let client = redis::Client::open(url.as_str()).expect("valid Redis URL");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let mut bench = Bench {
        private: args.redis_url.is_none(),
        args,
        url,
        conn,
        outcomes: Vec::new(),
        memory_per_1000: None,
        cluster_shards: None,
        mark: None,
        idle: None,
        scale: None,
    };
    let jobs = bench.args.jobs;
    eprintln!(
        "redisaq benchmark: {jobs} jobs per scenario, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if bench.wants("raw-xadd") {
        bench.reset().await;
        let bar = bench.progress("raw-xadd", jobs);
        let mut conn = bench.conn.clone();
        let started = bench.start().await;
        raw_xadd(&mut conn, "bench_raw", jobs, &bar).await;
        bar.finish_and_clear();
        bench
            .record("raw-xadd", jobs, started.elapsed(), None)
            .await;
    }
    if bench.wants("enqueue-batch") {
        bench.reset().await;
        let before = bench.used_memory().await;
        let bar = bench.progress("enqueue-batch", jobs);
        let started = bench.start().await;
        let mut n = 0;
        while n < jobs {
            let chunk: Vec<Payload> = (n..(n + 1_000).min(jobs)).map(payload).collect();
            n += chunk.len() as u64;
            bench_enqueue::enqueue_batch(chunk).await.unwrap();
            bar.set_position(n);
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        bench
            .record("enqueue-batch", jobs, elapsed, Some("raw-xadd"))
            .await;
        let after = bench.used_memory().await;
        bench.memory_per_1000 = Some(after.saturating_sub(before) as f64 / (jobs as f64 / 1000.0));
    }
    if bench.wants("enqueue-idempotent") {
        bench.reset().await;
        let bar = bench.progress("enqueue-idempotent", jobs);
        let started = bench.start().await;
        let mut n = 0;
        while n < jobs {
            let chunk: Vec<_> = (n..(n + 1_000).min(jobs))
                .map(|i| (payload(i), EnqueueOptions::new().id(format!("job-{i}"))))
                .collect();
            n += chunk.len() as u64;
            bench_enqueue::enqueue_batch_with(chunk).await.unwrap();
            bar.set_position(n);
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        bench
            .record("enqueue-idempotent", jobs, elapsed, Some("enqueue-batch"))
            .await;
    }
    if bench.wants("enqueue-single") {
        bench.reset().await;
        let bar = bench.progress("enqueue-single", jobs);
        let started = bench.start().await;
        let tasks: Vec<_> = (0..64u64)
            .map(|task| {
                let bar = bar.clone();
                tokio::spawn(async move {
                    let mut n = task;
                    while n < jobs {
                        bench_enqueue::enqueue(payload(n)).await.unwrap();
                        bar.inc(1);
                        n += 64;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        bench
            .record("enqueue-single", jobs, elapsed, Some("raw-xadd"))
            .await;
    }
    if bench.wants("raw-consume") {
        bench.reset().await;
        let mut conn = bench.conn.clone();
        raw_xadd(&mut conn, "bench_rawc", jobs, &ProgressBar::hidden()).await;
        let streams: Vec<String> = (0..PARTITIONS)
            .map(|p| redisaq::keys::partition("bench_rawc", p))
            .collect();
        for stream in &streams {
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg("g")
                .arg("0")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let bar = bench.progress("raw-consume", jobs);
        let started = bench.start().await;
        let mut acked = 0;
        while acked < jobs {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(500)
                .arg("STREAMS")
                .arg(&streams);
            for _ in &streams {
                read.arg(">");
            }
            let reply: redis::streams::StreamReadReply = read.query_async(&mut conn).await.unwrap();
            let mut pipe = redis::pipe();
            for key in &reply.keys {
                let ids: Vec<&str> = key.ids.iter().map(|e| e.id.as_str()).collect();
                acked += ids.len() as u64;
                pipe.cmd("XACK").arg(&key.key).arg("g").arg(ids).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
            bar.set_position(acked);
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        bench.record("raw-consume", jobs, elapsed, None).await;
    }
    if bench.wants("consume-single") {
        consume(&mut bench, "consume-single", bench_single::TOPIC, |p| {
            Box::pin(bench_single::enqueue_batch(p))
        })
        .await;
    }
    if bench.wants("consume-batch") {
        consume(&mut bench, "consume-batch", bench_batch::TOPIC, |p| {
            Box::pin(bench_batch::enqueue_batch(p))
        })
        .await;
    }
    if bench.wants("latency") {
        for rate in bench.args.rate.clone() {
            latency(&mut bench, rate).await;
        }
    }

    if bench.wants("delayed") {
        delayed::run(&mut bench).await;
    }

    if bench.wants("idle") {
        bench.idle = Some(idle::run(&mut bench).await);
    }

    if bench.wants("scale") {
        bench.scale = Some(scale::run(&mut bench).await);
    }

    if bench.args.cluster {
        cluster::run(&mut bench).await;
    }

    let mut table = comfy_table::Table::new();
    table.set_header([
        "scenario",
        "jobs",
        "seconds",
        "jobs/s",
        "ratio to raw",
        "latency p50 / p99 / max (ms)",
        "Redis µs/job",
        "commands/job",
        "client µs/job",
    ]);
    for o in &bench.outcomes {
        table.add_row([
            o.scenario.clone(),
            o.jobs.to_string(),
            format!("{:.2}", o.seconds),
            format!("{:.0}", o.jobs_per_second),
            o.ratio_to_raw.map_or("-".into(), |r| format!("{r:.2}")),
            o.latency_ms.as_ref().map_or("-".into(), |l| {
                format!("{:.2} / {:.2} / {:.2}", l["p50"], l["p99"], l["max"])
            }),
            o.cost
                .map_or("-".into(), |c| format!("{:.2}", c.redis_us_per_job)),
            o.cost
                .map_or("-".into(), |c| format!("{:.3}", c.redis_commands_per_job)),
            o.cost
                .map_or("-".into(), |c| format!("{:.2}", c.client_us_per_job)),
        ]);
    }
    println!("{table}");
    let rss = peak_rss_kib();
    if let Some(rss) = rss {
        println!(
            "peak RSS of the benchmark process: {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    if let Some(idle) = &bench.idle {
        println!(
            "idle: {:.2} commands/s per consumer ({}), plus {:.2} blocking reads/s, over {} consumers",
            idle.commands_per_consumer_second,
            busiest(&idle.by_command),
            idle.blocking_reads_per_consumer_second,
            idle.consumers
        );
    }
    if let Some(scale) = &bench.scale {
        println!(
            "scale: {} partitions, {} consumers in {} processes: settled {:.2} s after the \
             start, {:.2} s after a join, {:.2} s after a kill -9; {:.0} jobs/s; idle {:.2} \
             commands/s per consumer",
            scale.partitions,
            scale.consumers,
            scale.processes,
            scale.settle_from_start_s,
            scale.settle_after_join_s,
            scale.settle_after_kill_s,
            scale.jobs_per_second,
            scale.idle_commands_per_consumer_second
        );
        println!("scale, idle: {}", busiest(&scale.idle_by_command));
    }
    if let Some(bytes) = bench.memory_per_1000 {
        println!(
            "Redis used_memory per 1,000 retained jobs: {:.1} KiB",
            bytes / 1024.0
        );
    }
    if let Some(path) = &bench.args.json {
        let report = serde_json::json!({
            "jobs": jobs,
            "scenarios": bench.outcomes,
            "peak_rss_kib": rss,
            "redis_bytes_per_1000_jobs": bench.memory_per_1000,
            "cluster_shards": bench.cluster_shards,
            "idle": bench.idle,
            "scale": bench.scale,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .expect("write --json file");
    }
}
