//! `hifi demo`: a pipeline, a generator and a receiver, all on loopback, printing what
//! flows once a second. Data lives in a temporary directory removed at exit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hifi_pipeline::config::LoadedConfig;
use hifi_pipeline::topology::Topology;
use hifi_server::receiver::{bind, Receiver};
use tokio_util::sync::CancellationToken;

/// Runs the demo for `duration` (or until Ctrl-C) at `rate` events per second.
pub async fn run(rate: u64, duration: Option<Duration>) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let receiver = Receiver::open(&dir.path().join("received.jsonl"))?;
    let listener = bind(([127, 0, 0, 1], 0).into(), "the demo receiver").await?;
    let receiver_addr = listener.local_addr()?;
    let receiver_stop = CancellationToken::new();
    let recv_task = {
        let (r, stop) = (receiver.clone(), receiver_stop.clone());
        tokio::spawn(async move { r.serve(listener, stop).await })
    };
    let text = format!(
        r#"
[engine]
kind = "embedded"
data_dir = "data"

[admin]
listen = "127.0.0.1:0"

[sources.api]
type = "http"
listen = "127.0.0.1:0"
topic = "events"
event_time = "/ts"
id_field = "/id"

[stages.clean]
input = "events"
output = "clean"
[[stages.clean.transforms]]
type = "filter"
condition = "event.amount >= 10"
[[stages.clean.transforms]]
type = "redact"
field = "/email"
mode = "mask"
keep_last = 6

[sinks.partner]
type = "http"
input = "clean"
url = "http://{receiver_addr}/ingest"
"#
    );
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, &text)?;
    let loaded = LoadedConfig::parse(&path, text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topology = Topology::build(&loaded).map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = crate::run::RunOptions {
        drain: Duration::from_secs(5),
        ..Default::default()
    };
    let running = crate::run::start(&loaded, topology, &opts).await?;
    let ingest = format!("http://{}/v1/events", running.source_addrs[0].1);
    println!("hifi demo: generator → POST {ingest} → topic events → stage clean (filter amount >= 10, mask email)");
    println!("           → topic clean → sink partner → receiver http://{receiver_addr}/ingest");
    println!(
        "           admin http://{}  · pipeline file {}  · Ctrl-C to stop\n",
        running.admin_addr,
        path.display()
    );

    let stop = CancellationToken::new();
    let posted = Arc::new(AtomicU64::new(0));
    let generator = tokio::spawn(generate(ingest, rate, posted.clone(), stop.clone()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = crate::run::signal() => break,
            _ = tick.tick() => {
                let s = receiver.summary();
                let d = receiver.take_delays();
                let filtered: u64 = running.pipeline.stages.iter().map(|s| s.stats.filtered_events_total.load(Ordering::Relaxed)).sum();
                println!(
                    "{:>4}s  acked {:>6}  filtered {:>5}  delivered {:>6} (dup {})  e2e lag p50 {:>3} ms  p99 {:>4} ms",
                    started.elapsed().as_secs(), posted.load(Ordering::Relaxed), filtered, s.distinct, s.duplicates, d.p50, d.p99
                );
                if duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
            }
        }
    }
    stop.cancel();
    let _ = generator.await;
    // Let what was acknowledged finish its way through (bounded), then report.
    let acked = posted.load(Ordering::Relaxed);
    let filtered = || -> u64 {
        running
            .pipeline
            .stages
            .iter()
            .map(|s| s.stats.filtered_events_total.load(Ordering::Relaxed))
            .sum()
    };
    let settle = Instant::now();
    while receiver.summary().distinct + filtered() < acked
        && settle.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, f) = (receiver.summary(), filtered());
    running.stop().await;
    receiver_stop.cancel();
    let _ = recv_task.await;
    println!(
        "\nstopped: {acked} events acknowledged to the generator; {} delivered, {f} filtered on purpose, {} not delivered yet when stopped",
        s.distinct,
        acked.saturating_sub(s.distinct + f)
    );
    Ok(ExitCode::SUCCESS)
}

/// Posts batches of 10 events on a fixed schedule; counts acknowledged events.
async fn generate(
    url: String,
    rate: u64,
    acked: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<()> {
    let client = reqwest::Client::new();
    let batch = 10u64;
    let mut every =
        tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate.max(1) as f64));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tokio::select! { _ = stop.cancelled() => break, _ = every.tick() => {} }
        let now = hifi_pipeline::now_ms();
        let events: Vec<_> = (n..n + batch)
            .map(|i| serde_json::json!({"id": format!("demo-{i}"), "ts": now, "amount": i % 500, "email": format!("user{}@example.com", i % 97)}))
            .collect();
        n += batch;
        let resp = client
            .post(&url)
            .json(&events)
            .send()
            .await
            .context("posting to the demo pipeline")?;
        if resp.status().is_success() {
            acked.fetch_add(batch, Ordering::Relaxed);
        }
    }
    Ok(())
}
