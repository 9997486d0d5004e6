//! Trace context across services (cargo feature `opentelemetry`): the trace context of
//! the span that enqueues travels with the job as a W3C `traceparent`, and the handler's
//! `job` span continues it: as its parent, or, for a delayed job (which runs in another
//! moment's work), as a link. Without the feature, or without a trace, nothing is added.

/// How a job's trace context is carried in its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    /// The W3C `traceparent` of the enqueuing span.
    pub traceparent: String,
    /// Linked to rather than continued (a delayed job).
    pub link: bool,
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::Carried;

    const TRACEPARENT: &str = "traceparent";

    /// The current span's trace context, if it has one.
    pub(crate) fn current() -> Option<String> {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    /// Continues `carried` in `span`: as its parent, or as a link.
    pub(crate) fn continue_in(span: &tracing::Span, carried: &Carried) {
        let carrier = HashMap::from([(TRACEPARENT.to_string(), carried.traceparent.clone())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        let remote = context.span().span_context().clone();
        if !remote.is_valid() {
            return;
        }
        if carried.link {
            span.add_link(remote);
        } else {
            let _ = span.set_parent(context);
        }
    }
}

/// The trace context of the current span, to send with a job.
pub(crate) fn current() -> Option<String> {
    #[cfg(feature = "opentelemetry")]
    return otel::current();
    #[cfg(not(feature = "opentelemetry"))]
    None
}

/// Continues a job's trace in its handler's span.
pub(crate) fn continue_in(span: &tracing::Span, carried: &Carried) {
    #[cfg(feature = "opentelemetry")]
    otel::continue_in(span, carried);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, carried);
}
