//! hifi's pipelines: the configuration model, the checked topology, and the three kinds
//! of nodes — sources (ingest), stages (transform) and sinks (delivery) — over the
//! engine's [`hifi_log::Log`].
//!
//! Every link is at-least-once: a node commits its input position only after its output
//! is durable (a stage's append, a sink's 2xx).
#![forbid(unsafe_code)]

pub mod audit;
pub mod ce_binary;
pub mod config;
pub mod consumer;
pub mod dedup;
pub mod delivery;
pub mod durations;
pub mod event;
pub mod event_window;
pub mod fingerprint;
pub mod health;
pub mod interpolate;
pub mod json_limits;
#[cfg(feature = "kafka")]
mod kafka_sink;
#[cfg(feature = "kafka")]
pub mod kafka_source;
pub mod lineage;
pub mod loss_alarms;
pub mod openlineage;
pub mod otel;
pub mod owned;
pub mod parse;
pub mod pii;
pub mod process;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod scale;
pub mod schemas;
pub mod signals;
pub mod sink;
pub mod source;
pub mod sql;
pub mod stage;
pub mod standby;
pub mod topology;
pub mod transform;
pub mod units;
pub mod versions;
pub mod webhook;
pub mod window;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
