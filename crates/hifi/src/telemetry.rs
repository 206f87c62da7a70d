//! Logs and OpenTelemetry: the `tracing` subscriber of every command, and — for `hifi
//! run` with `[telemetry] otlp_endpoint` — a layer that exports hifi's spans (target
//! [`hifi_pipeline::otel::TARGET`]) over OTLP/HTTP.
//!
//! The subscriber is installed once, inside the runtime (the span exporter runs on it),
//! after the pipeline file's `[telemetry]` was read; HIFI_LOG filters the log lines only,
//! never the spans. A change of `[telemetry]` takes a restart (not a reload).

use anyhow::{Context, Result};
use hifi_pipeline::config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the subscriber: log lines on stderr (`json` or text, coloured only on a
/// terminal) filtered by HIFI_LOG (default `info`), and the span exporter when `cfg`
/// names an endpoint. Logs work even when the exporter cannot be built (the error comes
/// back for the caller to report).
pub fn init(json: bool, cfg: Option<&TelemetryConfig>) -> Result<Option<Spans>> {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HIFI_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    };
    let exporter = cfg.map(exporter).transpose();
    let (provider, error) = match exporter {
        Ok(p) => (p.flatten(), None),
        Err(e) => (None, Some(e)),
    };
    let spans = provider.as_ref().map(|(provider, _)| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hifi"))
            .with_filter(Targets::new().with_target(hifi_pipeline::otel::TARGET, LevelFilter::INFO))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    if let Some(e) = error {
        return Err(e);
    }
    Ok(provider.map(|(provider, endpoint)| {
        tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
        Spans(provider)
    }))
}

/// Exports spans while it lives; [`Spans::shutdown`] sends what is buffered.
#[derive(Debug)]
pub struct Spans(SdkTracerProvider);

impl Spans {
    /// Flushes the buffered spans and stops exporting.
    pub async fn shutdown(self) {
        let provider = self.0;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// The span exporter `cfg` asks for (with its endpoint), `None` when it names none.
fn exporter(cfg: &TelemetryConfig) -> Result<Option<(SdkTracerProvider, String)>> {
    use opentelemetry_otlp::WithExportConfig as _;
    let Some(base) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
        .with_context(|| format!("cannot export spans to {endpoint}"))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    Ok(Some((provider, endpoint)))
}
