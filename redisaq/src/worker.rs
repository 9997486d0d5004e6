//! Running the registered handlers: [`run`] for a worker binary, [`Worker`] to configure
//! it or embed it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::consumer;
use crate::error::Error;
use crate::registry::{self, Selection};
use crate::store;

/// Runs every `#[job]` handler of this binary until SIGINT or SIGTERM, then stops
/// fetching, lets running jobs finish (up to 30 s; the rest is delivered again later)
/// and returns. Configuration comes from the environment (see [`Worker`]).
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), redisaq::Error> {
///     redisaq::run().await
/// }
/// ```
pub async fn run() -> Result<(), Error> {
    Worker::new().run().await
}

/// A configurable worker. Every setting left unset comes from the environment, then
/// from the default:
///
/// | builder | environment | default |
/// |---|---|---|
/// | [`redis_url`](Self::redis_url) | `REDIS_URL` | `redis://127.0.0.1:6379` |
/// | [`consumer_name`](Self::consumer_name) | `REDISAQ_CONSUMER_NAME` | `consumer` (a unique suffix is added per start) |
/// | [`heartbeat_interval`](Self::heartbeat_interval) | `REDISAQ_HEARTBEAT_INTERVAL_MS` | 5 s |
/// | [`heartbeat_ttl`](Self::heartbeat_ttl) | `REDISAQ_HEARTBEAT_TTL_MS` | 10 s |
/// | [`concurrency`](Self::concurrency) | `REDISAQ_CONCURRENCY` | the handler's `concurrency` |
/// | [`metrics_addr`](Self::metrics_addr) | `REDISAQ_METRICS_ADDR` | off |
///
/// ```no_run
/// # async fn demo() -> Result<(), redisaq::Error> {
/// use std::time::Duration;
///
/// redisaq::Worker::new()
///     .redis_url("redis://127.0.0.1:6379")
///     .topics(["send_email"])
///     .heartbeat_interval(Duration::from_secs(1))
///     .heartbeat_ttl(Duration::from_secs(3))
///     .run_until(tokio::time::sleep(Duration::from_secs(60)))
///     .await
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a Worker does nothing until `run` or `run_until` is awaited"]
pub struct Worker {
    overrides: Overrides,
    selection: Selection,
}

impl Worker {
    /// A worker for every registered handler, configured from the environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Redis to work on (`redis://`, or `rediss://` for TLS; user and password as in
    /// the `redis` crate).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.overrides.redis_url = Some(crate::config::RedisUrl(url.into()));
        self
    }

    /// Prefix of this worker's consumer names; a unique suffix is added per start.
    pub fn consumer_name(mut self, prefix: impl Into<String>) -> Self {
        self.overrides.consumer_name = Some(prefix.into());
        self
    }

    /// Runs only the handlers of these topics.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection.topics = Some(topics.into_iter().map(Into::into).collect());
        self
    }

    /// Runs only the handlers of these consumer groups.
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection.groups = Some(groups.into_iter().map(Into::into).collect());
        self
    }

    /// How often the liveness record is renewed.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.overrides.heartbeat_interval = Some(interval);
        self
    }

    /// How long a consumer stays alive without a heartbeat; after that its jobs are taken
    /// over. Must be longer than the interval.
    pub fn heartbeat_ttl(mut self, ttl: Duration) -> Self {
        self.overrides.heartbeat_ttl = Some(ttl);
        self
    }

    /// How many calls of each handler run at once, overriding `#[job(concurrency)]`.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.overrides.concurrency = Some(concurrency);
        self
    }

    /// Where to serve Prometheus metrics (`GET /metrics`, OpenMetrics text format).
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.overrides.metrics_addr = Some(addr);
        self
    }

    /// How long running jobs may take to finish once shutdown began (default 30 s).
    /// Jobs still running then are delivered again later.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.shutdown_timeout = Some(timeout);
        self
    }

    /// Backoff between attempts of a failing job: `first` before the first retry,
    /// doubling each time up to `max`, with jitter (default 1 s and 5 min).
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.overrides.retry_backoff = Some((first, max));
        self
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `stop` completes (or a handler's consumer fails to start), then shuts
    /// down as [`run`] does.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let config = Config::resolve(&self.overrides)?;
        store::conn::client(&config.redis_url)?;

        let handlers = registry::handlers(&self.selection)?;
        let shutdown = CancellationToken::new();
        let metrics_stop = CancellationToken::new();
        let _metrics_guard = metrics_stop.clone().drop_guard();
        if let Some(addr) = config.metrics_addr {
            crate::metrics::serve(addr, metrics_stop).await?;
        }
        let hints = consumer::hints::Hints::new(handlers.iter().map(|def| def.spec.topic));
        // One keeper renews every consumer's heartbeat and leases.
        let keeper = consumer::keeper::Keeper::default();
        let mut consumers = tokio::task::JoinSet::new();
        for def in handlers {
            let hints = hints.subscribe(def.spec.topic);
            consumers.spawn(consumer::run(
                def,
                config.clone(),
                hints,
                keeper.clone(),
                shutdown.clone(),
            ));
        }
        let hints_stop = CancellationToken::new();
        let _hints_guard = hints_stop.clone().drop_guard();
        tokio::spawn(hints.run(store::conn::client(&config.redis_url)?, hints_stop));
        tokio::pin!(stop);
        let mut outcome = Ok(());
        loop {
            tokio::select! {
                () = &mut stop, if !shutdown.is_cancelled() => {
                    tracing::info!("shutting down: no new jobs are fetched, running jobs finish");
                    shutdown.cancel();
                }
                joined = consumers.join_next() => match joined {
                    None => break,
                    Some(result) => {
                        let result = match result {
                            Ok(result) => result,
                            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                            // Cancelled: the runtime is shutting down under us.
                            Err(_) => Ok(()),
                        };
                        if let Err(e) = result {
                            tracing::error!(error = %e, "consumer stopped");
                            if outcome.is_ok() {
                                outcome = Err(e);
                            }
                            shutdown.cancel();
                        }
                    }
                },
            }
        }
        keeper.stop().await;
        outcome
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
