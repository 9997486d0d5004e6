//! The `scale` scenario: one topic of 256 partitions consumed by 16 consumers in 4
//! worker processes (this program, started again with `--scale-worker 4`). It reports
//! how long the group takes to settle (every partition's lease held by the consumer the
//! stored assignment names, for the expected members) from the start, after a 17th
//! consumer joins and after that one is killed (`kill -9`, so its heartbeat and leases
//! must run out: the heartbeat TTL is most of that time), the jobs/s of draining a
//! backlog meanwhile, and what the idle group costs Redis per consumer and second.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redisaq::{job, Job, JobError};
use serde::Serialize;

use super::{commands_over, payload, Bench, Payload};

const PARTITIONS: u32 = 256;
const PROCESSES: usize = 4;
const PER_PROCESS: usize = 4;
const CONSUMERS: usize = PROCESSES * PER_PROCESS;
/// How long the idle group is measured.
const MEASURED: Duration = Duration::from_secs(10);
/// More than a heartbeat interval (default 5 s): every consumer has looked after its
/// partitions since the group last changed.
const AFTER_CHANGE: Duration = Duration::from_secs(7);

static HANDLED: AtomicU64 = AtomicU64::new(0);

#[job(topic = "bench_scale", group = "bench_scale", partitions = 256)]
async fn bench_scale(_job: Job<Payload>) -> Result<(), JobError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What the scale scenario measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scale {
    pub partitions: u32,
    pub consumers: usize,
    pub processes: usize,
    /// From starting the worker processes to a settled group.
    pub settle_from_start_s: f64,
    /// Jobs/s draining the backlog enqueued before the start, from the start.
    pub jobs_per_second: f64,
    /// From a 17th consumer's start to a settled group of 17.
    pub settle_after_join_s: f64,
    /// From its `kill -9` to a settled group of 16.
    pub settle_after_kill_s: f64,
    /// Redis commands per second per consumer with nothing to do, blocking reads apart.
    pub idle_commands_per_consumer_second: f64,
    /// Those commands, busiest first, per second per consumer.
    pub idle_by_command: Vec<(String, f64)>,
}

/// The `--scale-worker N` process: N workers of the scale topic until stdin closes (or
/// the process is killed); it prints how many jobs it handled every 100 ms.
pub(crate) async fn worker(url: String, workers: usize) {
    let stop = tokio::sync::watch::Sender::new(false);
    let mut running = Vec::new();
    for _ in 0..workers {
        let worker = redisaq::Worker::new()
            .redis_url(url.clone())
            .topics(["bench_scale"]);
        let mut stopped = stop.subscribe();
        running.push(tokio::spawn(worker.run_until(async move {
            let _ = stopped.changed().await;
        })));
    }
    let reporter = tokio::spawn(async {
        loop {
            println!("handled {}", HANDLED.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The parent closes stdin to stop it cleanly.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    })
    .await
    .unwrap();
    let _ = stop.send(true);
    for worker in running {
        worker.await.unwrap().unwrap();
    }
    reporter.abort();
}

/// A worker process and the latest count it printed.
struct Process {
    child: Child,
    handled: Arc<AtomicU64>,
}

impl Process {
    fn start(url: &str, workers: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the benchmark's path"))
            .args(["--redis-url", url, "--scale-worker", &workers.to_string()])
            .env("REDISAQ_CONSUMER_NAME", "scale")
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a scale worker process");
        let handled = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().unwrap();
        let count = handled.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("handled ").and_then(|n| n.parse().ok()) {
                    count.store(n, Ordering::Relaxed);
                }
            }
        });
        Process { child, handled }
    }

    /// Closes its stdin: the workers stop cleanly.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the group is settled with `members` consumers: the stored assignment is for
/// that many members and every partition's lease is held by the owner it names.
async fn settled(conn: &mut redis::aio::MultiplexedConnection, members: usize) -> bool {
    let assignment = redisaq::keys::assignment("bench_scale", "bench_scale");
    let (names, owners): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&assignment)
        .arg(&["members", "owners"])
        .query_async(conn)
        .await
        .unwrap();
    let parse = |text: Option<String>| -> Vec<String> {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let (names, owners) = (parse(names), parse(owners));
    if names.len() != members || owners.len() != PARTITIONS as usize {
        return false;
    }
    let mut pipe = redis::pipe();
    for p in 0..PARTITIONS {
        pipe.get(redisaq::keys::lease("bench_scale", p, "bench_scale"));
    }
    let leases: Vec<Option<String>> = pipe.query_async(conn).await.unwrap();
    leases.iter().zip(&owners).all(|(lease, owner)| {
        lease
            .as_deref()
            .and_then(|l| l.rsplit_once(' '))
            .is_some_and(|(holder, _)| holder == owner)
    })
}

/// Waits until the group is settled with `members` consumers; the time it took.
async fn settle(conn: &mut redis::aio::MultiplexedConnection, members: usize) -> f64 {
    let started = Instant::now();
    while !settled(conn, members).await {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "scale: the group did not settle with {members} consumers within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed().as_secs_f64()
}

pub(crate) async fn run(bench: &mut Bench) -> Scale {
    bench.reset().await;
    let jobs = bench.args.jobs;
    let mut n = 0;
    while n < jobs {
        let chunk: Vec<Payload> = (n..(n + 1_000).min(jobs)).map(payload).collect();
        n += chunk.len() as u64;
        bench_scale::enqueue_batch(chunk).await.unwrap();
    }
    let mut conn = bench.conn.clone();
    let started = Instant::now();
    let processes: Vec<Process> = (0..PROCESSES)
        .map(|_| Process::start(&bench.url, PER_PROCESS))
        .collect();
    let settle_from_start_s = settle(&mut conn, CONSUMERS).await;
    let handled = || -> u64 {
        processes
            .iter()
            .map(|p| p.handled.load(Ordering::Relaxed))
            .sum()
    };
    while handled() < jobs {
        assert!(
            started.elapsed() < Duration::from_secs(30 + jobs / 2_000),
            "scale: only {} of {jobs} jobs handled",
            handled()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let jobs_per_second = jobs as f64 / started.elapsed().as_secs_f64();

    let joiner = Process::start(&bench.url, 1);
    let settle_after_join_s = settle(&mut conn, CONSUMERS + 1).await;
    joiner.kill();
    let settle_after_kill_s = settle(&mut conn, CONSUMERS).await;

    // Each consumer looks once more at every partition it holds after the membership
    // changed (the dead are removed there): let that pass before measuring what idling
    // costs.
    tokio::time::sleep(AFTER_CHANGE).await;
    let (seconds, counts) = commands_over(&mut conn, MEASURED).await;
    let per_consumer_second = |n: u64| n as f64 / seconds / CONSUMERS as f64;
    let idle_by_command: Vec<(String, f64)> = counts
        .into_iter()
        .filter(|(name, _)| name != "xreadgroup")
        .map(|(name, n)| (name, per_consumer_second(n)))
        .collect();
    for process in processes {
        process.stop();
    }
    let scale = Scale {
        partitions: PARTITIONS,
        consumers: CONSUMERS,
        processes: PROCESSES,
        settle_from_start_s,
        jobs_per_second,
        settle_after_join_s,
        settle_after_kill_s,
        idle_commands_per_consumer_second: idle_by_command.iter().map(|(_, n)| n).sum(),
        idle_by_command,
    };
    eprintln!(
        "{:>16}: {PARTITIONS} partitions, {CONSUMERS} consumers in {PROCESSES} processes: \
         settled {:.2} s after the start, {:.2} s after a join, {:.2} s after a kill -9; \
         {jobs} jobs at {:.0} jobs/s; idle {:.2} commands/s per consumer",
        "scale",
        scale.settle_from_start_s,
        scale.settle_after_join_s,
        scale.settle_after_kill_s,
        scale.jobs_per_second,
        scale.idle_commands_per_consumer_second
    );
    scale
}
