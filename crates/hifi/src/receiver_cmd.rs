//! `hifi receiver`: a recording destination for tests and demos, which can fail on
//! purpose.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hifi_server::receiver::{bind, Capacity, Faults, Receiver};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// File to append one JSON line per received event to.
    #[arg(long)]
    record: PathBuf,
    /// Also record each event's `data` in its line.
    #[arg(long)]
    record_data: bool,
    /// Share of requests (0.0 to 1.0) to fail with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Status of injected failures.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Fail the first N requests with --fail-status.
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
    /// Refuse a whole request when any event id in it matches this regex.
    #[arg(long)]
    reject_ids_matching: Option<String>,
    /// Status of refused requests.
    #[arg(long, default_value_t = 422)]
    reject_status: u16,
    /// Added latency per request: "20ms" or a range "20ms..200ms".
    #[arg(long)]
    latency: Option<String>,
    /// Handle at most N requests at once (each taking --latency), like a server with N
    /// workers: more wait in a queue of --queue-max, and past it get 503.
    #[arg(long)]
    capacity: Option<usize>,
    /// Requests waiting for a worker with --capacity (default: as many as --capacity).
    #[arg(long, requires = "capacity")]
    queue_max: Option<usize>,
    /// Refuse connections (do not listen) for this long after start.
    #[arg(long, value_parser = humantime::parse_duration)]
    down_for: Option<Duration>,
    /// Send "Retry-After: N" (seconds) with injected failures, e.g. "2s".
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_after: Option<Duration>,
}

fn parse_latency(s: &str) -> Result<(Duration, Duration)> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let min = humantime::parse_duration(a.trim()).with_context(|| format!("--latency {s:?}"))?;
    let max = humantime::parse_duration(b.trim()).with_context(|| format!("--latency {s:?}"))?;
    if max < min {
        bail!("--latency {s:?}: the range must go from low to high");
    }
    Ok((min, max))
}

/// Serves until SIGINT/SIGTERM, then prints the summary.
pub async fn run(a: ReceiverArgs) -> Result<ExitCode> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        bail!("--fail-rate must be between 0.0 and 1.0");
    }
    let faults = Faults {
        fail_rate: a.fail_rate,
        fail_status: a.fail_status,
        fail_first: a.fail_first,
        reject_ids: a
            .reject_ids_matching
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .context("--reject-ids-matching")?,
        reject_status: a.reject_status,
        latency: a.latency.as_deref().map(parse_latency).transpose()?,
        retry_after_s: a.retry_after.map(|d| d.as_secs().max(1)),
        capacity: match a.capacity {
            Some(0) => bail!("--capacity must be at least 1"),
            Some(workers) => Some(Capacity {
                workers,
                queue: a.queue_max.unwrap_or(workers),
            }),
            None => None,
        },
    };
    let mut receiver = Receiver::with_faults(&a.record, faults)
        .with_context(|| format!("opening the record file {}", a.record.display()))?;
    if a.record_data {
        receiver = receiver.recording_data();
    }
    if let Some(d) = a.down_for {
        println!("receiver: down (refusing connections) for {d:?}");
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = crate::run::signal() => return Ok(ExitCode::SUCCESS),
        }
    }
    let listener = bind(a.listen, "the receiver").await?;
    println!(
        "receiver: POST http://{}/ (any path); recording to {}",
        listener.local_addr()?,
        a.record.display()
    );
    let stop = CancellationToken::new();
    let server = {
        let (r, stop) = (receiver.clone(), stop.clone());
        tokio::spawn(async move { r.serve(listener, stop).await })
    };
    crate::run::signal().await;
    stop.cancel();
    server.await??;
    let s = receiver.summary();
    println!(
        "received {} events ({} distinct, {} duplicates) in {} requests",
        s.received, s.distinct, s.duplicates, s.requests
    );
    if a.capacity.is_some() {
        println!(
            "turned away (503, over capacity): {} requests",
            receiver.turned_away()
        );
    }
    let (p50, p95, max) = receiver.handling_us();
    println!("handling time per answered request (arrival to answer): p50 {p50} µs, p95 {p95} µs, max {max} µs");
    Ok(ExitCode::SUCCESS)
}
