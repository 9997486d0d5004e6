//! Trace context across services: the span that enqueues and the handler's `job` span
//! share one trace id (the handler's continues the enqueuer's); a delayed job's span
//! starts a trace of its own with a link to the enqueuer's. Spans go to an in-memory
//! exporter through tracing-opentelemetry; this binary holds only this test, since the
//! subscriber is the process's.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redisaq::{job, EnqueueOptions, Job, JobError};
use redisaq_tests::{run_worker_until, test_worker, Calls, Work};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

static SEEN: Calls<String> = Calls::new();

#[job(topic = "traced", group = "traced_group", partitions = 2)]
async fn traced(job: Job<Work>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

fn span_named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name}: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

/// The `job` span of the job with this id.
fn job_span<'a>(spans: &'a [SpanData], id: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| {
            s.name == "job"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "job_id" && kv.value.as_str() == id)
        })
        .unwrap_or_else(|| panic!("no job span for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_span_continues_the_enqueuers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("redisaq-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let worker = test_worker(&["traced"]);
    let now = traced::enqueue(Work { n: 1 })
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    let later = traced::enqueue_with(
        Work { n: 2 },
        EnqueueOptions::new().delay(Duration::from_millis(300)),
    )
    .instrument(tracing::info_span!("schedule_reminder"))
    .await
    .unwrap();
    let untraced = traced::enqueue(Work { n: 3 }).await.unwrap();
    let ids = [now.to_string(), later.to_string(), untraced.to_string()];
    let ran = run_worker_until(worker, || ids.iter().all(|id| SEEN.all().contains(id))).await;
    assert!(ran, "the jobs ran");
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let checkout = span_named(&spans, "checkout");
    let handled = job_span(&spans, now.as_str());
    assert_eq!(
        handled.span_context.trace_id(),
        checkout.span_context.trace_id()
    );
    assert_eq!(handled.parent_span_id, checkout.span_context.span_id());

    let scheduled = span_named(&spans, "schedule_reminder");
    let reminded = job_span(&spans, later.as_str());
    assert_ne!(
        reminded.span_context.trace_id(),
        scheduled.span_context.trace_id()
    );
    assert!(
        reminded
            .links
            .iter()
            .any(|link| link.span_context.trace_id() == scheduled.span_context.trace_id()),
        "the delayed job's span links to the enqueuer's: {:?}",
        reminded.links
    );

    let alone = job_span(&spans, untraced.as_str());
    assert_eq!(alone.parent_span_id, SpanId::INVALID, "no trace, no parent");
    assert_ne!(alone.span_context.trace_id(), TraceId::INVALID);
}
