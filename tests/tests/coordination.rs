//! Consumer-group coordination with real worker processes: joins, SIGKILL, SIGSTOP past
//! the heartbeat TTL, raising the partition count. Handlers record (partition, consumer,
//! start, end) of every run; no two consumers may ever have run one partition's jobs at
//! the same time.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redisaq_tests::{
    calls, eventually, intervals, overlaps, pending, redis, setup, starts, worker_command,
    worker_command_at, KillOnDrop, RedisServer, Work,
};

// Producer-side declarations of the test worker's topics (same topic and partitions).
#[redisaq::job(topic = "coord", group = "coord_group", partitions = 8)]
async fn coord(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[redisaq::job(topic = "grow", group = "grow_group", partitions = 2)]
async fn grow(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

#[redisaq::job(topic = "join", group = "join_group", partitions = 6)]
async fn join(_job: redisaq::Job<Work>) -> Result<(), redisaq::JobError> {
    Ok(())
}

/// A test worker process whose log lines are collected.
struct Worker {
    child: KillOnDrop,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How long a worker's lease and heartbeat live: short where a crash or a pause must be
/// noticed, long where only clean hand-overs happen (a loaded machine must not make a
/// lease lapse there).
#[derive(Clone, Copy)]
enum Ttl {
    Short,
    Long,
}

impl Worker {
    fn start(name: &str, topic: &str, job_ms: u64, ttl: Ttl) -> Self {
        let mut command = worker_command(env!("CARGO_BIN_EXE_test_worker"), name, topic, job_ms);
        if let Ttl::Long = ttl {
            command.env("REDISAQ_HEARTBEAT_TTL_MS", "10000");
        }
        let mut child = KillOnDrop::spawn(&mut command);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Worker {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGTERM, then wait: the worker finishes its jobs and hands its partitions back.
    fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap();
        // The reader ends at the end of the output: every line is in.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        log
    }

    /// Log lines containing `needle`, from line `from` on.
    fn lines(&self, needle: &str, from: usize) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

/// The partition list at the end of a log line: "... partitions [1, 2] (generation 3)".
fn partitions_in(line: &str) -> Vec<u32> {
    let Some(start) = line.find('[') else {
        return Vec::new();
    };
    let end = line[start..].find(']').map_or(line.len(), |e| start + e);
    line[start + 1..end]
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Enqueues `total` jobs in batches of `batch` every `every`, in the background.
fn produce(
    total: u64,
    batch: u64,
    every: Duration,
    enqueue: fn(Vec<Work>) -> EnqueueFuture,
) -> tokio::task::JoinHandle<HashSet<String>> {
    tokio::spawn(async move {
        let mut ids = HashSet::new();
        let mut n = 0;
        while n < total {
            let payloads: Vec<Work> = (n..(n + batch).min(total)).map(|n| Work { n }).collect();
            n += payloads.len() as u64;
            ids.extend(
                enqueue(payloads)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|id| id.to_string()),
            );
            tokio::time::sleep(every).await;
        }
        ids
    })
}

type EnqueueFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<redisaq::JobId>, redisaq::Error>> + Send>,
>;

/// The consumer holding each partition's lease (its value is `consumer epoch`).
fn lease_owners(
    conn: &mut redis::Connection,
    topic: &str,
    group: &str,
    partitions: u32,
) -> Vec<Option<String>> {
    (0..partitions)
        .map(|p| {
            let value: Option<String> = redis::cmd("GET")
                .arg(redisaq::keys::lease(topic, p, group))
                .query(conn)
                .unwrap();
            value.map(|v| v.rsplit_once(' ').map_or(v.clone(), |(c, _)| c.to_string()))
        })
        .collect()
}

/// A clean rebalance runs every job exactly once: started once, finished once, one
/// recorded interval per call.
fn assert_once(conn: &mut redis::Connection, topic: &str) {
    let started = starts(conn, topic);
    let finished = calls(conn, topic);
    let twice: Vec<_> = started.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "jobs started more than once: {twice:?}");
    assert_eq!(started, finished, "every started job finished once");
    assert_eq!(
        intervals(conn, topic).len(),
        finished.len(),
        "one interval per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_crashes_and_pauses_lose_nothing_and_never_overlap() {
    setup();
    let mut conn = redis().connection();
    const TOTAL: usize = 20_000;
    let workers: Vec<Worker> = (1..=3)
        .map(|i| Worker::start(&format!("w{i}"), "coord", 2, Ttl::Short))
        .collect();
    let producer = produce(TOTAL as u64, 500, Duration::from_millis(100), |p| {
        Box::pin(coord::enqueue_batch(p))
    });
    let mut workers: Vec<Option<Worker>> = workers.into_iter().map(Some).collect();

    let progress = |conn: &mut redis::Connection| calls(conn, "coord").len();
    assert!(eventually(Duration::from_secs(60), || progress(&mut conn) >= 3_000).await);
    workers.push(Some(Worker::start("w4", "coord", 2, Ttl::Short)));

    assert!(eventually(Duration::from_secs(60), || progress(&mut conn) >= 7_000).await);
    let killed = workers[0].take().unwrap();
    let killed_at = Instant::now();
    killed.signal(libc::SIGKILL);
    let taken_over = eventually(Duration::from_secs(30), || {
        lease_owners(&mut conn, "coord", "coord_group", 8)
            .iter()
            .all(|owner| owner.as_deref().is_some_and(|o| !o.starts_with("w1-")))
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(taken_over, "the killed worker's partitions were taken over");

    assert!(eventually(Duration::from_secs(60), || progress(&mut conn) >= 11_000).await);
    let paused = workers[1].as_ref().unwrap();
    let paused_from = paused.log_len();
    paused.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1_500)).await; // TTL is 600 ms
    paused.signal(libc::SIGCONT);

    let noticed = eventually(Duration::from_secs(10), || {
        let lost = paused.lines("lost the lease", paused_from);
        lost.len() + paused.lines("abandoning", paused_from).len() > 0
    })
    .await;
    let paused_log = paused.lines("", paused_from);
    let ids = producer.await.unwrap();
    assert_eq!(ids.len(), TOTAL);
    let finished = eventually(Duration::from_secs(120), || {
        let done: HashSet<String> = calls(&mut conn, "coord").into_keys().collect();
        done == ids && pending(&mut conn, "coord", "coord_group", 8) == 0
    })
    .await;
    for worker in workers.into_iter().flatten() {
        worker.stop();
    }
    let runs = calls(&mut conn, "coord");
    let rows = intervals(&mut conn, "coord");
    assert_eq!(
        rows.len() as u64,
        runs.values().sum::<u64>(),
        "one interval per finished call"
    );
    let overlapping = overlaps(&rows);
    let more_than_once = runs.values().filter(|&&n| n > 1).count();
    eprintln!(
        "coordination: enqueued {}, processed {}, processed more than once {}, overlaps {}, kill to takeover {} ms",
        ids.len(),
        runs.len(),
        more_than_once,
        overlapping.len(),
        takeover.as_millis()
    );
    assert!(
        finished,
        "processed {} of {}; {} pending",
        runs.len(),
        ids.len(),
        pending(&mut conn, "coord", "coord_group", 8)
    );
    assert!(
        overlapping.is_empty(),
        "overlapping runs: {:?}",
        &overlapping[..overlapping.len().min(5)]
    );
    assert!(
        noticed,
        "the paused worker noticed it lost its partitions: {paused_log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_partitions_at_run_time_spreads_the_work() {
    setup();
    let mut conn = redis().connection();
    let workers = [
        Worker::start("g1", "grow", 1, Ttl::Long),
        Worker::start("g2", "grow", 1, Ttl::Long),
    ];
    let before = produce(2_000, 100, Duration::from_millis(50), |p| {
        Box::pin(grow::enqueue_batch(p))
    });
    assert!(
        eventually(Duration::from_secs(60), || calls(&mut conn, "grow").len()
            >= 1_000)
        .await
    );
    // Raised while jobs run; what is enqueued from now on spreads over six partitions.
    assert_eq!(redisaq::set_partitions("grow", 6).await.unwrap(), 2);
    let lowered = redisaq::set_partitions("grow", 3).await.unwrap_err();
    assert!(
        lowered.to_string().contains("can only be raised"),
        "{lowered}"
    );
    let after = produce(2_000, 100, Duration::from_millis(50), |p| {
        Box::pin(grow::enqueue_batch(p))
    });
    let mut ids = before.await.unwrap();
    ids.extend(after.await.unwrap());
    let finished = eventually(Duration::from_secs(60), || {
        let done: HashSet<String> = calls(&mut conn, "grow").into_keys().collect();
        done == ids && pending(&mut conn, "grow", "grow_group", 6) == 0
    })
    .await;
    for worker in workers {
        worker.stop();
    }
    assert!(
        finished,
        "processed {} of {}",
        calls(&mut conn, "grow").len(),
        ids.len()
    );
    assert_once(&mut conn, "grow");
    let used: BTreeSet<u32> = intervals(&mut conn, "grow")
        .iter()
        .map(|i| i.partition)
        .collect();
    assert_eq!(
        used,
        (0..6).collect(),
        "jobs ran on every partition, new ones included"
    );
    assert!(overlaps(&intervals(&mut conn, "grow")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_pauses_only_the_partitions_that_move() {
    setup();
    let mut conn = redis().connection();
    let first = Worker::start("j1", "join", 1, Ttl::Long);
    let second = Worker::start("j2", "join", 1, Ttl::Long);
    let producer = produce(3_000, 100, Duration::from_millis(50), |p| {
        Box::pin(join::enqueue_batch(p))
    });
    assert!(
        eventually(Duration::from_secs(60), || {
            // Settled: each of the two holds three partitions.
            let owners = lease_owners(&mut conn, "join", "join_group", 6);
            let held_by = |prefix: &str| {
                owners
                    .iter()
                    .filter(|o| o.as_deref().is_some_and(|o| o.starts_with(prefix)))
                    .count()
            };
            calls(&mut conn, "join").len() >= 500 && held_by("j1-") == 3 && held_by("j2-") == 3
        })
        .await
    );
    let before: Vec<Option<String>> = lease_owners(&mut conn, "join", "join_group", 6);
    let seen_before = [first.log_len(), second.log_len()];
    let third = Worker::start("j3", "join", 1, Ttl::Long);
    let ids = producer.await.unwrap();
    let finished = eventually(Duration::from_secs(60), || {
        let done: HashSet<String> = calls(&mut conn, "join").into_keys().collect();
        done == ids && pending(&mut conn, "join", "join_group", 6) == 0
    })
    .await;
    let after = lease_owners(&mut conn, "join", "join_group", 6);
    let gained: BTreeSet<u32> = third
        .lines("resuming consumption", 0)
        .iter()
        .flat_map(|l| partitions_in(l))
        .collect();
    let paused: Vec<u32> = [&first, &second]
        .iter()
        .zip(seen_before)
        .flat_map(|(w, from)| w.lines("pausing consumption", from))
        .flat_map(|l| partitions_in(&l))
        .collect();
    // What the coordinators said, for a failure to explain itself.
    let story: Vec<String> = [first, second, third]
        .into_iter()
        .flat_map(|worker| worker.stop())
        .filter(|l| {
            ["assigned", "pausing", "released", "resuming", "lost"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(finished);
    assert_once(&mut conn, "join");
    let moved: BTreeSet<u32> = (0..6)
        .filter(|&p| before[p as usize] != after[p as usize])
        .collect();
    assert_eq!(gained.len(), 2, "the newcomer got its share: {gained:?}");
    assert_eq!(
        moved, gained,
        "only the newcomer's partitions changed owner: before {before:?}, after {after:?}, \
         coordinators: {story:#?}"
    );
    let paused_set: BTreeSet<u32> = paused.iter().copied().collect();
    assert_eq!(
        paused.len(),
        paused_set.len(),
        "each moved partition paused once"
    );
    assert_eq!(paused_set, gained, "only partitions that moved were paused");
    assert!(overlaps(&intervals(&mut conn, "join")).is_empty());
}

/// A join and a clean leave move partitions at once, not at the next heartbeat: the
/// consumer that wrote the new assignment, and the one that left, raise the topic's
/// change hint, which every worker of the topic follows within a tick. (With a 30 s
/// heartbeat interval, the partitions would otherwise stay put for up to 30 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_are_followed_before_the_next_heartbeat() {
    let server = RedisServer::start().unwrap();
    let mut conn = server.connection();
    let start = |name: &str| {
        let mut command = worker_command_at(
            env!("CARGO_BIN_EXE_test_worker"),
            &server.url(),
            name,
            "join",
            1,
        );
        command
            .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "30000")
            .env("REDISAQ_HEARTBEAT_TTL_MS", "60000");
        KillOnDrop::spawn(&mut command)
    };
    let held_by = |conn: &mut redis::Connection, prefix: &str| {
        lease_owners(conn, "join", "join_group", 6)
            .iter()
            .filter(|o| o.as_deref().is_some_and(|o| o.starts_with(prefix)))
            .count()
    };
    let _first = start("h1");
    assert!(
        eventually(Duration::from_secs(20), || held_by(&mut conn, "h1-") == 6).await,
        "the first worker took every partition"
    );
    let mut second = start("h2");
    assert!(
        eventually(Duration::from_secs(15), || {
            held_by(&mut conn, "h1-") == 3 && held_by(&mut conn, "h2-") == 3
        })
        .await,
        "the partitions moved long before the next heartbeat: {:?}",
        lease_owners(&mut conn, "join", "join_group", 6)
    );
    unsafe {
        libc::kill(second.id() as i32, libc::SIGTERM);
    }
    second.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || held_by(&mut conn, "h1-") == 6).await,
        "the partitions came back long before the next heartbeat: {:?}",
        lease_owners(&mut conn, "join", "join_group", 6)
    );
}
