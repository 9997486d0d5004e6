//! The run: servers, the fleet of worker processes, the producer and the fault schedule.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redisaq::admin::Admin;
use redisaq_tests::{KillOnDrop, RedisServer};
use serde::Serialize;

use crate::jobs::{self, TOPIC};
use crate::report::{self, Outcome};
use crate::Args;

/// The heartbeat TTL the workers use (see `jobs::work`).
pub const TTL: Duration = Duration::from_millis(1000);
/// The partition count is raised up to this.
const MAX_PARTITIONS: u32 = 6;

/// A fault the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` of a worker, restarted at once.
    KillWorker,
    /// SIGSTOP of a worker for 1.5–3 heartbeat TTLs, then SIGCONT.
    PauseWorker,
    /// Redis killed and restarted (AOF, `appendfsync always`).
    RestartRedis,
    /// `DEBUG SLEEP` of 0.2–1.5 s.
    StallRedis,
    /// `CLIENT KILL TYPE normal`: every connection dropped.
    KillConnections,
    /// The topic gets one more partition.
    RaisePartitions,
    /// A new worker joins.
    WorkerJoins,
    /// A worker stops cleanly (SIGTERM).
    WorkerLeaves,
}

struct Worker {
    name: String,
    child: KillOnDrop,
    paused_until: Option<Instant>,
}

/// The worker processes.
struct Fleet {
    binary: PathBuf,
    redis_url: String,
    sink_url: String,
    logs: PathBuf,
    running: Vec<Worker>,
    leaving: Vec<Worker>,
    started: usize,
    /// Each waking from a pause: the worker and when (unix ms).
    resumed: Vec<(String, u64)>,
}

impl Fleet {
    fn spawn(&mut self) -> Result<(), String> {
        self.started += 1;
        let name = format!("w{}", self.started);
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))
            .map_err(|e| format!("cannot write worker logs: {e}"))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--worker")
            .env("REDIS_URL", &self.redis_url)
            .env("CHAOS_SINK_URL", &self.sink_url)
            .env("REDISAQ_CONSUMER_NAME", &name)
            .env_remove("REDISAQ_CONCURRENCY")
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.running.push(Worker {
            name,
            child: KillOnDrop::spawn(&mut command),
            paused_until: None,
        });
        Ok(())
    }

    fn signal(worker: &Worker, signal: i32) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(worker.child.id() as i32, signal);
        }
    }

    /// Resumes paused workers whose pause is over (all of them with `all`), and forgets
    /// workers that finished leaving.
    fn tick(&mut self, all: bool) {
        let now = Instant::now();
        for worker in &mut self.running {
            if worker.paused_until.is_some_and(|until| all || until <= now) {
                Self::signal(worker, libc::SIGCONT);
                worker.paused_until = None;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.resumed
                    .push((worker.name.clone(), now.as_millis() as u64));
            }
        }
        self.leaving.retain_mut(|w| w.child.exited().is_none());
    }

    fn pick(&self, rng: &mut StdRng, running_only: bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.running.len())
            .filter(|&i| !running_only || self.running[i].paused_until.is_none())
            .collect();
        (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
    }

    async fn stop(&mut self) {
        self.tick(true);
        for worker in self.running.iter_mut().chain(self.leaving.iter_mut()) {
            worker.child.terminate().await;
        }
    }
}

/// What the producer stored, and what it does not know about.
#[derive(Default)]
pub struct Enqueued {
    pub stored: HashSet<String>,
    pub unknown: HashSet<String>,
    pub failed: u64,
}

async fn produce(rate: u64, enqueued: Arc<Mutex<Enqueued>>, stop: Arc<tokio::sync::Notify>) {
    let per_tick = (rate / 20).max(1);
    let mut next = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.notified() => return,
        }
        let numbers = next..next + per_tick;
        next += per_tick;
        let outcome = jobs::enqueue(numbers).await;
        let mut enqueued = enqueued.lock().unwrap();
        match outcome {
            Ok(ids) => enqueued.stored.extend(ids.iter().map(|id| id.to_string())),
            Err(redisaq::Error::Enqueue {
                stored,
                not_stored,
                unknown,
                ..
            }) => {
                enqueued
                    .stored
                    .extend(stored.iter().map(|id| id.to_string()));
                enqueued
                    .unknown
                    .extend(unknown.iter().map(|id| id.to_string()));
                enqueued.failed += not_stored.len() as u64;
            }
            Err(_) => enqueued.failed += per_tick,
        }
    }
}

/// Runs the whole thing and reports.
pub async fn run(args: Args) -> Result<Outcome, String> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let duration = args.duration();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("redisaq-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir_arg = dir.to_string_lossy().to_string();
    let redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ])?;
    let sink = RedisServer::start()?;
    redisaq::set_redis_url(&redis.url()).map_err(|e| e.to_string())?;
    let admin = Admin::connect(&redis.url())
        .await
        .map_err(|e| e.to_string())?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut fleet = Fleet {
        binary: std::env::current_exe().map_err(|e| e.to_string())?,
        redis_url: redis.url(),
        sink_url: sink.url(),
        logs: logs.clone(),
        running: Vec::new(),
        leaving: Vec::new(),
        started: 0,
        resumed: Vec::new(),
    };
    for _ in 0..args.workers.max(1) {
        fleet.spawn()?;
    }
    eprintln!(
        "redisaq-chaos: seed {seed}, {} s of faults, {} workers, {} jobs/s; worker logs in {}",
        duration.as_secs(),
        args.workers,
        args.rate,
        logs.display()
    );

    let enqueued = Arc::new(Mutex::new(Enqueued::default()));
    let stop_producing = Arc::new(tokio::sync::Notify::new());
    let producer = tokio::spawn(produce(args.rate, enqueued.clone(), stop_producing.clone()));

    let progress = ProgressBar::new(duration.as_secs());
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let verbose = !std::io::stderr().is_terminal();
    let mut faults: BTreeMap<Fault, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut next_fault = started + Duration::from_secs_f64(rng.random_range(1.0..3.0));
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fleet.tick(false);
        progress.set_position(started.elapsed().as_secs());
        if Instant::now() < next_fault {
            continue;
        }
        next_fault = Instant::now() + Duration::from_secs_f64(rng.random_range(1.0..3.0));
        let partitions = admin.partitions(TOPIC).await.unwrap_or(MAX_PARTITIONS);
        let fault = choose(&mut rng, &fleet, partitions, args.workers);
        // A fault that could not be injected (its own connection dropped by the last
        // one, say) is reported and the run goes on.
        let what = inject(fault, &mut rng, &mut fleet, &redis, &admin, partitions)
            .await
            .unwrap_or_else(|e| format!("could not be injected: {e}"));
        *faults.entry(fault).or_default() += 1;
        let line = format!(
            "{:>5.1}s {fault:?}: {what} (enqueued {})",
            started.elapsed().as_secs_f64(),
            enqueued.lock().unwrap().stored.len()
        );
        if verbose {
            eprintln!("{line}");
        }
        progress.set_message(line);
    }
    progress.finish_and_clear();

    // Faults stop; the fleet drains what is left.
    stop_producing.notify_one();
    let _ = producer.await;
    fleet.tick(true);
    while fleet.running.len() < args.workers.max(1) {
        fleet.spawn()?;
    }
    let expected = {
        let enqueued = enqueued.lock().unwrap();
        (
            enqueued.stored.clone(),
            enqueued.unknown.clone(),
            enqueued.failed,
        )
    };
    eprintln!(
        "redisaq-chaos: faults over; draining {} jobs (up to {} s)",
        expected.0.len(),
        args.drain
    );
    let drain_started = Instant::now();
    let mut outcome;
    loop {
        let over = drain_started.elapsed() > Duration::from_secs(args.drain);
        match report::collect(
            &sink,
            &redis.url(),
            &admin,
            &expected,
            &report::Run {
                seed,
                duration,
                faults: &faults,
                resumed: &fleet.resumed,
            },
        )
        .await
        {
            Ok(collected) => {
                outcome = collected;
                if outcome.drained() || over {
                    break;
                }
            }
            // The checker's own connection may have been dropped by the last fault.
            Err(e) if !over => eprintln!("redisaq-chaos: reading the outcome failed ({e}); again"),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.tick(false);
    }
    outcome.drain_seconds = drain_started.elapsed().as_secs_f64();
    fleet.stop().await;
    report::print(&outcome, args.json);
    if outcome.passed() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "redisaq-chaos: FAILED; replay with --seed {seed}; worker logs in {}",
            logs.display()
        );
    }
    Ok(outcome)
}

fn choose(rng: &mut StdRng, fleet: &Fleet, partitions: u32, workers: usize) -> Fault {
    let mut options: Vec<(Fault, u32)> = vec![
        (Fault::KillWorker, 3),
        (Fault::PauseWorker, 2),
        (Fault::RestartRedis, 1),
        (Fault::StallRedis, 2),
        (Fault::KillConnections, 2),
    ];
    if partitions < MAX_PARTITIONS {
        options.push((Fault::RaisePartitions, 1));
    }
    if fleet.running.len() < workers + 2 {
        options.push((Fault::WorkerJoins, 1));
    }
    if fleet.running.len() > 1 {
        options.push((Fault::WorkerLeaves, 1));
    }
    let total: u32 = options.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (fault, weight) in options {
        if pick < weight {
            return fault;
        }
        pick -= weight;
    }
    unreachable!("the weights cover the range")
}

async fn inject(
    fault: Fault,
    rng: &mut StdRng,
    fleet: &mut Fleet,
    redis: &RedisServer,
    admin: &Admin,
    partitions: u32,
) -> Result<String, String> {
    Ok(match fault {
        Fault::KillWorker => match fleet.pick(rng, false) {
            Some(i) => {
                let mut worker = fleet.running.remove(i);
                let _ = worker.child.kill();
                let _ = worker.child.wait();
                fleet.spawn()?;
                format!("{} killed, a new worker started", worker.name)
            }
            None => "no worker to kill".into(),
        },
        Fault::PauseWorker => match fleet.pick(rng, true) {
            Some(i) => {
                let pause = TTL.mul_f64(rng.random_range(1.5..3.0));
                let worker = &mut fleet.running[i];
                Fleet::signal(worker, libc::SIGSTOP);
                worker.paused_until = Some(Instant::now() + pause);
                format!("{} stopped for {} ms", worker.name, pause.as_millis())
            }
            None => "no worker to pause".into(),
        },
        Fault::RestartRedis => {
            redis.restart()?;
            "redis-server killed and restarted from its AOF".into()
        }
        Fault::StallRedis => {
            let seconds = rng.random_range(0.2..1.5);
            let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                        .arg("SLEEP")
                        .arg(seconds)
                        .query_async(&mut conn)
                        .await;
                }
            });
            format!("DEBUG SLEEP {seconds:.2}")
        }
        Fault::KillConnections => {
            let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            format!("{killed} connections killed")
        }
        Fault::RaisePartitions => {
            admin
                .set_partitions(TOPIC, partitions + 1)
                .await
                .map_err(|e| e.to_string())?;
            format!("{partitions} -> {} partitions", partitions + 1)
        }
        Fault::WorkerJoins => {
            fleet.spawn()?;
            format!(
                "{} joined",
                fleet.running.last().map_or("?", |w| w.name.as_str())
            )
        }
        Fault::WorkerLeaves => match fleet.pick(rng, true) {
            Some(i) => {
                let worker = fleet.running.remove(i);
                Fleet::signal(&worker, libc::SIGTERM);
                let name = worker.name.clone();
                fleet.leaving.push(worker);
                format!("{name} leaves")
            }
            None => "no worker to leave".into(),
        },
    })
}
