//! Prometheus metrics of this process's consumers, served on `REDISAQ_METRICS_ADDR` (or
//! `Worker::metrics_addr`) at `GET /metrics` in the OpenMetrics text format.

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// A handler's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandlerLabels {
    pub topic: String,
    pub group: String,
}

/// A partition's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub topic: String,
    pub group: String,
    pub partition: u32,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the runtime records.
pub(crate) struct Metrics {
    pub processed: Family<HandlerLabels, Counter>,
    pub failed: Family<HandlerLabels, Counter>,
    pub retried: Family<HandlerLabels, Counter>,
    pub dead_lettered: Family<HandlerLabels, Counter>,
    pub lost: Family<HandlerLabels, Counter>,
    pub promoted: Family<HandlerLabels, Counter>,
    pub paused: Family<HandlerLabels, Gauge>,
    pub throttled: Family<HandlerLabels, Counter>,
    pub throttled_waiting: Family<HandlerLabels, Gauge>,
    pub duration: Family<HandlerLabels, Histogram, fn() -> Histogram>,
    pub owned_partitions: Family<HandlerLabels, Gauge>,
    pub lag: Family<PartitionLabels, Gauge>,
    pub pending: Family<PartitionLabels, Gauge>,
    pub stuck_calls: Family<PartitionLabels, Gauge>,
    registry: Mutex<Registry>,
}

/// The process's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        processed: Family::default(),
        failed: Family::default(),
        retried: Family::default(),
        dead_lettered: Family::default(),
        lost: Family::default(),
        promoted: Family::default(),
        paused: Family::default(),
        throttled: Family::default(),
        throttled_waiting: Family::default(),
        duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        owned_partitions: Family::default(),
        lag: Family::default(),
        pending: Family::default(),
        stuck_calls: Family::default(),
        registry: Mutex::new(Registry::with_prefix("redisaq")),
    };
    {
        let mut registry = metrics.registry.lock().expect("metrics registry");
        registry.register(
            "jobs_processed",
            "Jobs whose handler succeeded",
            metrics.processed.clone(),
        );
        registry.register(
            "jobs_failed",
            "Handler failures (each failed attempt)",
            metrics.failed.clone(),
        );
        registry.register(
            "jobs_retried",
            "Failed jobs scheduled for another attempt",
            metrics.retried.clone(),
        );
        registry.register(
            "jobs_dead_lettered",
            "Jobs moved to the dead-letter queue",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "entries_lost",
            "Pending entries found deleted from their stream (XDEL, or trimming by someone \
             else): their jobs cannot run",
            metrics.lost.clone(),
        );
        registry.register(
            "jobs_promoted",
            "Delayed jobs moved into their partition stream when due",
            metrics.promoted.clone(),
        );
        registry.register(
            "paused",
            "1 while the handler's topic or group is paused (`redisaq pause`)",
            metrics.paused.clone(),
        );
        registry.register(
            "jobs_throttled",
            "Job starts a rate limit (rate, key_rate) held back; each waits, spending no attempt",
            metrics.throttled.clone(),
        );
        registry.register(
            "throttled_jobs",
            "Jobs waiting now for their rate limit",
            metrics.throttled_waiting.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time a handler call took (one job or one batch)",
            metrics.duration.clone(),
        );
        registry.register(
            "owned_partitions",
            "Partitions this process's consumer owns",
            metrics.owned_partitions.clone(),
        );
        registry.register(
            "partition_lag",
            "Entries not yet delivered to the group",
            metrics.lag.clone(),
        );
        registry.register(
            "partition_pending",
            "Entries delivered but not acknowledged",
            metrics.pending.clone(),
        );
        registry.register(
            "stuck_calls",
            "Calls that ignored cancellation past the release deadline, holding up the \
             hand-over of their partition (a handler blocking its thread?)",
            metrics.stuck_calls.clone(),
        );
    }
    metrics
});

/// One handler's series, looked up once: the hot path then only touches atomics.
#[derive(Clone)]
pub(crate) struct HandlerMetrics {
    pub labels: HandlerLabels,
    pub processed: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub lost: Counter,
    pub promoted: Counter,
    pub paused: Gauge,
    pub throttled: Counter,
    pub throttled_waiting: Gauge,
    pub duration: Histogram,
}

impl HandlerMetrics {
    pub(crate) fn new(topic: &str, group: &str) -> Self {
        let labels = HandlerLabels {
            topic: topic.to_string(),
            group: group.to_string(),
        };
        HandlerMetrics {
            processed: METRICS.processed.get_or_create(&labels).clone(),
            failed: METRICS.failed.get_or_create(&labels).clone(),
            retried: METRICS.retried.get_or_create(&labels).clone(),
            dead_lettered: METRICS.dead_lettered.get_or_create(&labels).clone(),
            lost: METRICS.lost.get_or_create(&labels).clone(),
            promoted: METRICS.promoted.get_or_create(&labels).clone(),
            paused: METRICS.paused.get_or_create(&labels).clone(),
            throttled: METRICS.throttled.get_or_create(&labels).clone(),
            throttled_waiting: METRICS.throttled_waiting.get_or_create(&labels).clone(),
            duration: METRICS.duration.get_or_create(&labels).clone(),
            labels,
        }
    }
}

impl Metrics {
    fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String");
        text
    }
}

/// Serves `GET /metrics` on `addr` until `stop`. Binding fails at start with a message
/// naming the setting.
pub(crate) async fn serve(
    addr: SocketAddr,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::config(format!(
            "cannot serve metrics on {addr} (REDISAQ_METRICS_ADDR / Worker::metrics_addr): {e}"
        ))
    })?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (mut socket, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            tokio::spawn(async move {
                // Only the request line matters; answer once the headers are in.
                let mut request = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let wanted =
                    request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ");
                let response = if wanted {
                    let body = METRICS.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    }))
}
