//! Prometheus metrics of this process's consumers, served on `REDISAQ_METRICS_ADDR` (or
//! `Worker::metrics_addr`) at `GET /metrics` in the OpenMetrics text format.

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
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
    pub delayed: Family<PartitionLabels, Gauge>,
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
        delayed: Family::default(),
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
            "delayed_jobs",
            "Delayed jobs waiting beside an owned partition, as of the last move of due ones",
            metrics.delayed.clone(),
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
/// Serves `GET /metrics` on `addr` until `stop`, on axum (keep-alive, `HEAD`, slow
/// clients and size limits come with it).
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
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/", axum::routing::get(metrics));
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.render(),
    )
}
