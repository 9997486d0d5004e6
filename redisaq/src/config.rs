//! Worker configuration: builder values first, then `REDISAQ_*` / `REDIS_URL` environment
//! variables, then defaults. Checked once at start so a bad value fails with a message
//! that names what to change.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// Default Redis URL when neither the builder nor `REDIS_URL` gives one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A Redis URL that never shows its password: `Debug` prints it redacted.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::conn::redact(&self.0))
    }
}

impl std::ops::Deref for RedisUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Settings a [`Worker`](crate::Worker) was given explicitly; `None` falls back to the
/// environment, then to the default.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub redis_url: Option<RedisUrl>,
    pub consumer_name: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_ttl: Option<Duration>,
    pub concurrency: Option<usize>,
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown_timeout: Option<Duration>,
    pub retry_backoff: Option<(Duration, Duration)>,
}

/// The resolved configuration of a worker.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub redis_url: RedisUrl,
    pub consumer_prefix: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_ttl: Duration,
    pub concurrency: Option<usize>,
    /// Where metrics are served.
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    /// Longest wait of one blocking read; bounds how late a fetch loop notices a change of
    /// its partitions or a shutdown.
    pub block: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: FromStr>(name: &str, expected: &str) -> Result<Option<T>, Error> {
    match env(name) {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| {
            Error::config(format!("{name}={text:?} is not valid: expected {expected}"))
        }),
    }
}

fn env_ms(name: &str) -> Result<Option<Duration>, Error> {
    Ok(
        env_parse::<u64>(name, "a whole number of milliseconds, e.g. 5000")?
            .map(Duration::from_millis),
    )
}

impl Config {
    pub(crate) fn resolve(overrides: &Overrides) -> Result<Self, Error> {
        let heartbeat_interval = match overrides.heartbeat_interval {
            Some(d) => d,
            None => env_ms("REDISAQ_HEARTBEAT_INTERVAL_MS")?.unwrap_or(Duration::from_secs(5)),
        };
        let heartbeat_ttl = match overrides.heartbeat_ttl {
            Some(d) => d,
            None => env_ms("REDISAQ_HEARTBEAT_TTL_MS")?.unwrap_or(Duration::from_secs(10)),
        };
        if heartbeat_interval.is_zero() {
            return Err(Error::config(
                "the heartbeat interval (REDISAQ_HEARTBEAT_INTERVAL_MS) must be above 0 ms",
            ));
        }
        if heartbeat_ttl <= heartbeat_interval {
            return Err(Error::config(format!(
                "the heartbeat TTL ({} ms, REDISAQ_HEARTBEAT_TTL_MS) must be longer than the \
                 heartbeat interval ({} ms, REDISAQ_HEARTBEAT_INTERVAL_MS), or live consumers \
                 would look dead between two heartbeats; twice the interval is a good value",
                heartbeat_ttl.as_millis(),
                heartbeat_interval.as_millis()
            )));
        }
        let concurrency = match overrides.concurrency {
            Some(n) => Some(n),
            None => env_parse::<usize>("REDISAQ_CONCURRENCY", "a whole number of at least 1")?,
        };
        if concurrency == Some(0) {
            return Err(Error::config(
                "concurrency (REDISAQ_CONCURRENCY) must be at least 1",
            ));
        }
        let metrics_addr = match overrides.metrics_addr {
            Some(addr) => Some(addr),
            None => env_parse::<SocketAddr>(
                "REDISAQ_METRICS_ADDR",
                "an address with a port, e.g. 127.0.0.1:9100",
            )?,
        };
        let (retry_backoff_min, retry_backoff_max) = overrides
            .retry_backoff
            .unwrap_or((Duration::from_secs(1), Duration::from_secs(300)));
        if retry_backoff_min > retry_backoff_max {
            return Err(Error::config(
                "Worker::retry_backoff: the first delay must not exceed the maximum delay",
            ));
        }
        Ok(Config {
            redis_url: overrides
                .redis_url
                .clone()
                .or_else(|| env("REDIS_URL").map(RedisUrl))
                .unwrap_or_else(|| RedisUrl(DEFAULT_REDIS_URL.to_string())),
            consumer_prefix: overrides
                .consumer_name
                .clone()
                .or_else(|| env("REDISAQ_CONSUMER_NAME"))
                .unwrap_or_else(|| "consumer".to_string()),
            heartbeat_interval,
            heartbeat_ttl,
            concurrency,
            metrics_addr,
            shutdown_timeout: overrides
                .shutdown_timeout
                .unwrap_or(Duration::from_secs(30)),
            retry_backoff_min,
            retry_backoff_max,
            block: Duration::from_secs(1),
        })
    }

    /// `REDISAQ_ENQUEUE_TIMEOUT_MS`, if set.
    pub(crate) fn enqueue_timeout() -> Result<Option<Duration>, Error> {
        let timeout = env_ms("REDISAQ_ENQUEUE_TIMEOUT_MS")?;
        if timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "REDISAQ_ENQUEUE_TIMEOUT_MS must be above 0 ms",
            ));
        }
        Ok(timeout)
    }

    /// The Redis URL enqueue uses when `set_redis_url` was not called.
    pub(crate) fn producer_url() -> String {
        env("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_string())
    }
}
