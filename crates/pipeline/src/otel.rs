//! OpenTelemetry spans of hifi's work, as `tracing` spans with target [`TARGET`] (the
//! binary exports them over OTLP when `[telemetry] otlp_endpoint` is set; otherwise no
//! layer is interested and they cost a callsite check):
//!
//! | span | per | parent / links |
//! |---|---|---|
//! | `ingest` | `POST /v1/events` request | child of the request's W3C `traceparent` |
//! | `append` | durable append of a request's events | child of `ingest` |
//! | `stage` | batch a stage handles | linked to its events' traces (at most [`LINKS_MAX`]) |
//! | `deliver` | delivery request (attempt) | linked to its events' traces |
//!
//! An event keeps its trace context (the `traceparent` of its ingest request, see
//! [`crate::event::Trace`]), so a trace shows where its event went after the request:
//! which stage batch and which delivery attempts carried it.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::Trace;

/// The `tracing` target of hifi's OpenTelemetry spans.
pub const TARGET: &str = "hifi::otel";

/// Most links a batch span gets (its events may come from as many traces as it has
/// events).
pub const LINKS_MAX: usize = 32;

/// The remote span context of a W3C trace context; `None` when malformed.
pub fn span_context(t: &Trace) -> Option<SpanContext> {
    let mut parts = t.traceparent.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = t
        .tracestate
        .as_ref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let cx = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    cx.is_valid().then_some(cx)
}

/// Makes `span` a child of the trace context `t`.
pub fn set_parent(span: &tracing::Span, t: &Trace) {
    if let Some(cx) = span_context(t) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(cx));
    }
}

/// Links `span` to the traces of events (distinct, at most [`LINKS_MAX`]).
pub fn link<'a>(span: &tracing::Span, traces: impl Iterator<Item = &'a Trace>) {
    if span.is_disabled() {
        return;
    }
    let mut seen: Vec<SpanContext> = Vec::new();
    for cx in traces.filter_map(span_context) {
        if seen.len() == LINKS_MAX {
            break;
        }
        if !seen.contains(&cx) {
            span.add_link(cx.clone());
            seen.push(cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_becomes_a_remote_span_context() {
        let t = Trace {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let cx = span_context(&t).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
        let bad = Trace {
            traceparent: "00-zz-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        assert!(span_context(&bad).is_none());
    }
}
