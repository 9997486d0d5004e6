//! A private `redis-server` for tests and examples, a fault-injecting proxy to put in
//! front of it, helpers to look at what redisaq left in it, and what the tests' own
//! handlers and workers share (a record of calls, a worker running beside the test).
//!
//! The server listens on a free loopback port, keeps nothing on disk, and dies with the
//! process that started it (even on SIGKILL), so tests never touch a server someone else
//! runs and never leave one behind.

pub mod cluster;
mod fixtures;
pub mod proxy;
pub mod tls;

pub use fixtures::{enqueue_retrying, id_set, Background, Calls, Hold};

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The payload of the test worker's jobs, and of the tests' own jobs that need nothing
/// else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    /// A sequence number.
    pub n: u64,
}

/// A `redis-server` child process on a free loopback port.
pub struct RedisServer {
    port: u16,
    keeper: Mutex<mpsc::Sender<Request>>,
}

enum Request {
    Start(u16, mpsc::Sender<Result<(), StartError>>),
    Stop(mpsc::Sender<()>),
}

enum StartError {
    /// The server exited at once, e.g. because another process took the port.
    Exited(String),
    Other(String),
}

/// The server of this test binary, started on first use.
pub fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A port nobody listened on a moment ago. Another process may take it before the server
/// binds it: [`RedisServer::start`] then notices the server exited and tries another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The major version of the `redis-server` on `PATH` (7 if it cannot be told).
pub fn server_major_version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let output = Command::new("redis-server").arg("--version").output();
        output
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                let version = text.split("v=").nth(1)?.split('.').next()?.to_string();
                version.parse().ok()
            })
            .unwrap_or(7)
    })
}

fn spawn_server(port: u16, extra: &[String]) -> Result<Child, String> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]);
    if server_major_version() >= 7 {
        // Redis 7 refuses DEBUG (the stall tests' DEBUG SLEEP) unless told; 6.2 does not
        // know the option.
        command.args(["--enable-debug-command", "local"]);
    }
    // Never the shared default dump.rdb: a file some other server wrote there (a
    // replica keeps what it is sent) would be loaded at start.
    command
        .arg("--dir")
        .arg(std::env::temp_dir())
        .args(["--dbfilename", &format!("redisaq-test-{port}.rdb")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    command.spawn().map_err(|e| {
        format!("could not start redis-server ({e}); install it (Debian: apt-get install redis-server) or put it on PATH")
    })
}

/// The child gets SIGKILL when the thread that started it ends (the test, or the whole
/// test binary, even when it is killed), so no process outlives its test.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Waits until the server answers, and checks that the one answering is our child (by its
/// process id), not some other process that owns the port.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), StartError> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("valid url");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited(format!(
                "redis-server on port {port} exited at start ({status})"
            )));
        }
        if let Ok(mut conn) = client.get_connection() {
            if let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn) {
                let pid = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|v| v.trim().parse::<u32>().ok());
                if pid == Some(child.id()) {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(StartError::Other(format!(
        "redis-server on port {port} did not answer within 10 s"
    )))
}

impl RedisServer {
    /// Starts a new server on a free port.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// Starts a new server on a free port with extra `redis-server` arguments, e.g.
    /// `["--maxmemory", "2mb"]`.
    pub fn start_with(extra: &[&str]) -> Result<Self, String> {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-server keeper".into())
            .spawn(move || {
                let mut child: Option<Child> = None;
                for request in rx {
                    match request {
                        Request::Start(port, reply) => {
                            let started = match spawn_server(port, &extra) {
                                Ok(mut c) => {
                                    let ready = wait_ready(&mut c, port);
                                    if ready.is_err() {
                                        let _ = c.kill();
                                        let _ = c.wait();
                                    } else {
                                        child = Some(c);
                                    }
                                    ready
                                }
                                Err(e) => Err(StartError::Other(e)),
                            };
                            let _ = reply.send(started);
                        }
                        Request::Stop(reply) => {
                            if let Some(mut c) = child.take() {
                                let _ = c.kill();
                                let _ = c.wait();
                            }
                            let _ = reply.send(());
                        }
                    }
                }
                // Only reached when the server handle is dropped: keep the thread (and so
                // the death signal) tied to the process from now on.
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            })
            .map_err(|e| e.to_string())?;
        let mut server = RedisServer {
            port: 0,
            keeper: Mutex::new(tx),
        };
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            // Whatever an earlier server on this port left is not ours to load.
            let _ = std::fs::remove_file(
                std::env::temp_dir().join(format!("redisaq-test-{}.rdb", server.port)),
            );
            match server.start_process() {
                Ok(()) => return Ok(server),
                Err(StartError::Exited(e)) => last = e, // the port was taken: another one
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last)
    }

    fn start_process(&self) -> Result<(), StartError> {
        let (reply, answer) = mpsc::channel();
        self.keeper
            .lock()
            .unwrap()
            .send(Request::Start(self.port, reply))
            .map_err(|e| StartError::Other(e.to_string()))?;
        answer
            .recv()
            .map_err(|e| StartError::Other(e.to_string()))?
    }

    /// Stops the server process (SIGKILL) and starts a new one on the same port: a Redis
    /// restart without persistence.
    pub fn restart(&self) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.keeper
            .lock()
            .unwrap()
            .send(Request::Stop(reply))
            .map_err(|e| e.to_string())?;
        answer.recv().map_err(|e| e.to_string())?;
        self.start_process().map_err(|e| match e {
            StartError::Exited(e) | StartError::Other(e) => e,
        })
    }

    /// Stops the server process (SIGKILL); [`RedisServer::restart`] starts it again.
    pub fn stop(&self) {
        let (reply, answer) = mpsc::channel();
        if self
            .keeper
            .lock()
            .map(|k| k.send(Request::Stop(reply)).is_ok())
            .unwrap_or(false)
        {
            let _ = answer.recv_timeout(Duration::from_secs(5));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous connection, for the test's own checks.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a private server when nothing answers at `url`; returns the URL to use and the
/// server to keep alive (the examples run against `REDIS_URL` or a server of their own).
pub fn redis_or_private(url: &str) -> Result<(String, Option<RedisServer>), String> {
    let answers = redis::Client::open(url)
        .ok()
        .and_then(|c| {
            c.get_connection_with_timeout(Duration::from_millis(500))
                .ok()
        })
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
        .is_some();
    if answers {
        return Ok((url.to_string(), None));
    }
    let server = RedisServer::start()?;
    Ok((server.url(), Some(server)))
}

/// What a group has pending on a topic, summed over its partitions.
pub fn pending(
    conn: &mut impl redis::ConnectionLike,
    topic: &str,
    group: &str,
    partitions: u32,
) -> u64 {
    (0..partitions)
        .map(|p| {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(redisaq::keys::partition(topic, p))
                .arg(group)
                .query(conn)
                .expect("XPENDING");
            match &summary {
                redis::Value::Array(items) => match items.first() {
                    Some(redis::Value::Int(n)) => *n as u64,
                    _ => panic!("unexpected XPENDING summary: {summary:?}"),
                },
                _ => panic!("unexpected XPENDING summary: {summary:?}"),
            }
        })
        .sum()
}

/// The dead-letter entries of a topic as field maps: every partition's (as many as its
/// record says it has), by when they failed.
pub fn dead_letters(
    conn: &mut redis::Connection,
    topic: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let partitions: Option<u32> = redis::cmd("HGET")
        .arg(redisaq::keys::meta(topic))
        .arg("partitions")
        .query(conn)
        .expect("HGET partitions");
    let mut letters: Vec<std::collections::HashMap<String, String>> = Vec::new();
    for partition in 0..partitions.unwrap_or(0) {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(redisaq::keys::dead_letters(topic, partition))
            .arg("-")
            .arg("+")
            .query(conn)
            .expect("XRANGE dlq");
        letters.extend(reply.ids.into_iter().map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                .collect()
        }));
    }
    letters.sort_by_key(|letter| {
        letter
            .get("failed_at")
            .and_then(|at| at.parse::<u64>().ok())
    });
    letters
}

/// Polls `check` until it holds or `limit` passed; returns whether it held. A guard
/// against hanging tests, not a timing assertion.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// What most tests start with: [`init_tracing`], and `enqueue` pointed at the test server.
pub fn setup() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
}

/// A `test_worker` process on the test server, as a test would start one: short
/// heartbeats (200 ms, TTL 600 ms), jobs taking `job_ms`, running only `topics`.
/// `binary` is `env!("CARGO_BIN_EXE_test_worker")` of the calling test.
pub fn worker_command(binary: &str, name: &str, topics: &str, job_ms: u64) -> Command {
    worker_command_at(binary, &redis().url(), name, topics, job_ms)
}

/// [`worker_command`] with the worker pointed at `url`.
pub fn worker_command_at(
    binary: &str,
    url: &str,
    name: &str,
    topics: &str,
    job_ms: u64,
) -> Command {
    let mut command = Command::new(binary);
    command
        .env("REDIS_URL", url)
        .env("REDISAQ_CONSUMER_NAME", name)
        .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "200")
        .env("REDISAQ_HEARTBEAT_TTL_MS", "600")
        .env("TEST_JOB_MS", job_ms.to_string())
        .env("TEST_TOPICS", topics)
        .env_remove("REDISAQ_CONCURRENCY")
        .env("RUST_LOG", "warn,redisaq::consumer::coordinator=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    die_with_parent(&mut command);
    command
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing assert
/// never leaves a worker running that could later join another test's server.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts `command` (see [`worker_command`]); it also dies with the test.
    pub fn spawn(command: &mut Command) -> Self {
        die_with_parent(command);
        KillOnDrop(command.spawn().expect("start the child process"))
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().expect("try_wait")
    }

    /// SIGTERM, then its exit status (`None` if it did not exit within a generous bound).
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let mut status = None;
        eventually(Duration::from_secs(60), || {
            status = self.exited();
            status.is_some()
        })
        .await;
        status
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// How many times the test workers ran each job of `topic` to the end.
pub fn calls(conn: &mut redis::Connection, topic: &str) -> std::collections::HashMap<String, u64> {
    record(conn, "calls", topic)
}

/// How many times the test workers started each job of `topic`.
pub fn starts(conn: &mut redis::Connection, topic: &str) -> std::collections::HashMap<String, u64> {
    record(conn, "starts", topic)
}

/// When the test workers first started each job of `name` (a topic or a group the
/// handler records under), by Redis' clock in ms.
pub fn started_ms(
    conn: &mut redis::Connection,
    name: &str,
) -> std::collections::HashMap<String, u64> {
    record(conn, "started_ms", name)
}

/// How many times the test workers ran each fire time (ms) of a cron topic.
pub fn ticks(conn: &mut redis::Connection, topic: &str) -> std::collections::BTreeMap<u64, u64> {
    record(conn, "ticks", topic)
}

/// One of the test workers' records, `redisaq-test:{kind}:{name}` (see `test_worker`).
fn record<T: redis::FromRedisValue>(conn: &mut redis::Connection, kind: &str, name: &str) -> T {
    redis::cmd("HGETALL")
        .arg(format!("redisaq-test:{kind}:{name}"))
        .query(conn)
        .unwrap_or_else(|e| panic!("HGETALL {kind}: {e}"))
}

/// The Redis server's clock, in ms.
pub fn server_ms(conn: &mut redis::Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).expect("TIME");
    secs * 1000 + micros / 1000
}

/// One handler run recorded by a test worker.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The job's partition.
    pub partition: u32,
    /// The worker's consumer name prefix.
    pub consumer: String,
    /// Start, µs since the epoch.
    pub start: u128,
    /// End, µs since the epoch.
    pub end: u128,
}

/// Every handler run the test workers recorded for `topic`.
pub fn intervals(conn: &mut redis::Connection, topic: &str) -> Vec<Interval> {
    let rows: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("redisaq-test:intervals:{topic}"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("LRANGE intervals");
    rows.iter()
        .map(|row| {
            let parse = || {
                let mut parts = row.split(' ');
                Some(Interval {
                    partition: parts.next()?.parse().ok()?,
                    consumer: parts.next()?.to_string(),
                    start: parts.next()?.parse().ok()?,
                    end: parts.next()?.parse().ok()?,
                })
            };
            parse().unwrap_or_else(|| panic!("unreadable interval row {row:?}"))
        })
        .collect()
}

/// Pairs of runs on one partition by two different consumers that overlapped in time.
pub fn overlaps(intervals: &[Interval]) -> Vec<(Interval, Interval)> {
    let mut by_partition: std::collections::BTreeMap<u32, Vec<&Interval>> = Default::default();
    for interval in intervals {
        by_partition
            .entry(interval.partition)
            .or_default()
            .push(interval);
    }
    let mut found = Vec::new();
    for runs in by_partition.values_mut() {
        runs.sort_by_key(|r| r.start);
        // Latest end seen so far per consumer; a run overlaps another consumer's if that
        // consumer's latest end is after this run's start.
        let mut latest_end: std::collections::HashMap<&str, &Interval> = Default::default();
        for run in runs.iter() {
            for (consumer, other) in &latest_end {
                if *consumer != run.consumer && other.end > run.start {
                    found.push(((*other).clone(), (*run).clone()));
                }
            }
            let entry = latest_end.entry(run.consumer.as_str()).or_insert(run);
            if run.end > entry.end {
                *entry = run;
            }
        }
    }
    found
}

/// A worker process whose output lines are collected, for tests that read its log.
pub struct LoggedWorker {
    /// The process; killed when this is dropped.
    pub child: KillOnDrop,
    log: std::sync::Arc<Mutex<Vec<String>>>,
}

impl LoggedWorker {
    /// Starts `command` (see [`worker_command`]) with its output collected.
    pub fn start(command: &mut Command) -> Self {
        use std::io::BufRead;
        let mut child = KillOnDrop::spawn(command.stdout(Stdio::piped()));
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (stdout, sink) = (child.stdout.take().expect("piped stdout"), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        LoggedWorker { child, log }
    }

    /// A `test_worker` process (see [`worker_command`]; `binary` is the calling test's
    /// `env!("CARGO_BIN_EXE_test_worker")`) with the given heartbeats, logging its
    /// consumers' info lines for the test to read.
    pub fn test_worker(
        binary: &str,
        name: &str,
        topic: &str,
        job_ms: u64,
        interval_ms: u64,
        ttl_ms: u64,
    ) -> Self {
        Self::start(
            worker_command(binary, name, topic, job_ms)
                .env("REDISAQ_HEARTBEAT_INTERVAL_MS", interval_ms.to_string())
                .env("REDISAQ_HEARTBEAT_TTL_MS", ttl_ms.to_string())
                .env("RUST_LOG", "warn,redisaq::consumer=info"),
        )
    }

    /// The log lines so far that contain `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

/// An in-process worker on the test server that sends a heartbeat every `interval`, with a
/// TTL of `ttl`; every other setting is the library's unless the test sets it.
pub fn worker_with_heartbeats(interval: Duration, ttl: Duration) -> redisaq::Worker {
    redisaq::Worker::new()
        .redis_url(redis().url())
        .heartbeat_interval(interval)
        .heartbeat_ttl(ttl)
}

/// An in-process worker on the test server for `topics`: heartbeats every 200 ms (TTL
/// 10 s, so nothing expires unless a test means it to) and quick retries (20–100 ms).
/// Also does the [`setup`].
pub fn test_worker(topics: &[&str]) -> redisaq::Worker {
    setup();
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(10))
        .topics(topics.iter().copied())
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
}

/// The error `worker` stops with at start, for tests of what it refuses to start with.
pub async fn start_error(worker: redisaq::Worker) -> redisaq::Error {
    worker
        .run_until(async {})
        .await
        .expect_err("the worker refuses to start")
}

/// Runs `worker` until `done` holds (or a minute passed), then stops it cleanly; returns
/// whether `done` held. Panics if the worker fails.
pub async fn run_worker_until(
    worker: redisaq::Worker,
    mut done: impl FnMut() -> bool + Send,
) -> bool {
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = held.clone();
    worker
        .run_until(async move {
            flag.store(
                eventually(Duration::from_secs(60), &mut done).await,
                std::sync::atomic::Ordering::SeqCst,
            );
        })
        .await
        .expect("worker ran");
    held.load(std::sync::atomic::Ordering::SeqCst)
}
