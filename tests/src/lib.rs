//! A private `redis-server` for tests and examples, and helpers to look at what redisaq
//! left in it.
//!
//! The server listens on a free loopback port, keeps nothing on disk, and dies with the
//! process that started it (even on SIGKILL), so tests never touch a server someone else
//! runs and never leave one behind.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a free loopback port.
pub struct RedisServer {
    port: u16,
    keeper: Mutex<mpsc::Sender<Request>>,
}

enum Request {
    Start(u16, mpsc::Sender<Result<(), String>>),
    Stop(mpsc::Sender<()>),
}

/// The server of this test binary, started on first use.
pub fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn spawn_server(port: u16) -> Result<Child, String> {
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
        ])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        // The keeper thread never ends, so this fires only when the process dies.
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().map_err(|e| {
        format!("could not start redis-server ({e}); install it (Debian: apt-get install redis-server) or put it on PATH")
    })
}

fn wait_ready(port: u16) -> Result<(), String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("valid url");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(mut conn) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "redis-server on port {port} did not answer within 10 s"
    ))
}

impl RedisServer {
    /// Starts a new server on a free port.
    pub fn start() -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-server keeper".into())
            .spawn(move || {
                let mut child: Option<Child> = None;
                for request in rx {
                    match request {
                        Request::Start(port, reply) => {
                            let started = spawn_server(port).and_then(|c| {
                                child = Some(c);
                                wait_ready(port)
                            });
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
        let server = RedisServer {
            port: free_port(),
            keeper: Mutex::new(tx),
        };
        server.start_process()?;
        Ok(server)
    }

    fn start_process(&self) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.keeper
            .lock()
            .unwrap()
            .send(Request::Start(self.port, reply))
            .map_err(|e| e.to_string())?;
        answer.recv().map_err(|e| e.to_string())?
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
        self.start_process()
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
pub fn pending(conn: &mut redis::Connection, topic: &str, group: &str, partitions: u32) -> u64 {
    (0..partitions)
        .map(|p| {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(redisaq::keys::partition(topic, p))
                .arg(group)
                .query(conn)
                .expect("XPENDING");
            match summary {
                redis::Value::Array(items) => match items.first() {
                    Some(redis::Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            }
        })
        .sum()
}

/// The dead-letter entries of a topic as field maps.
pub fn dead_letters(
    conn: &mut redis::Connection,
    topic: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redisaq::keys::dead_letters(topic))
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE dlq");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                .collect()
        })
        .collect()
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

/// A `test_worker` process on the test server, as a test would start one: short
/// heartbeats (200 ms, TTL 600 ms), jobs taking `job_ms`, running only `topics`.
/// `binary` is `env!("CARGO_BIN_EXE_test_worker")` of the calling test.
pub fn worker_command(binary: &str, name: &str, topics: &str, job_ms: u64) -> Command {
    let mut command = Command::new(binary);
    command
        .env("REDIS_URL", redis().url())
        .env("REDISAQ_CONSUMER_NAME", name)
        .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "200")
        .env("REDISAQ_HEARTBEAT_TTL_MS", "600")
        .env("TEST_JOB_MS", job_ms.to_string())
        .env("TEST_TOPICS", topics)
        .env_remove("REDISAQ_CONCURRENCY")
        .env("RUST_LOG", "warn,redisaq::consumer::coordinator=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    command
}

/// How many times the test workers ran each job of `topic`.
pub fn calls(conn: &mut redis::Connection, topic: &str) -> std::collections::HashMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(format!("redisaq-test:calls:{topic}"))
        .query(conn)
        .expect("HGETALL calls")
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
        .filter_map(|row| {
            let mut parts = row.split(' ');
            Some(Interval {
                partition: parts.next()?.parse().ok()?,
                consumer: parts.next()?.to_string(),
                start: parts.next()?.parse().ok()?,
                end: parts.next()?.parse().ok()?,
            })
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
