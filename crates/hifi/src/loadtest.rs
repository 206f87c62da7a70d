//! `hifi loadtest`: an open-loop load generator with an exact outcome.
//!
//! Requests are *scheduled* at a fixed rate and sent at their scheduled time whether or
//! not earlier ones were answered; latency is measured from the scheduled time, so a
//! slow server shows up as latency instead of silently lowering the rate (no coordinated
//! omission). Up to `--connections` requests are in flight; scheduled requests beyond
//! that wait (their wait counts as latency). Unacknowledged requests are retried like a
//! real producer would (same ids). Every acknowledged id is remembered; with a receiver
//! the outcome is exact: delivered, lost (acknowledged, never delivered after the
//! drain), duplicates, and end-to-end delay (receive time − event time).
//!
//! It only sends to the `--target` URL, for at most `--duration` plus the drain.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use hifi_server::receiver::{bind, Receiver};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone)]
pub struct LoadtestArgs {
    /// Ingest URL, e.g. http://127.0.0.1:8080/v1/events.
    #[arg(long)]
    target: String,
    /// Events per second (spread over requests of `--batch` events).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Approximate size of each event's JSON.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Bearer token for the target.
    #[arg(long)]
    token: Option<String>,
    /// Run a receiver in this process on ADDR (point the pipeline's sink at it).
    #[arg(long)]
    receiver: Option<SocketAddr>,
    /// Read delivered events from a separate `hifi receiver`'s record file instead.
    #[arg(long, conflicts_with = "receiver")]
    receiver_record: Option<PathBuf>,
    /// After sending, wait this long at most for acknowledged events to be delivered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    fn of_us(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub duration_s: f64,
    pub batch: u64,
    pub payload_bytes: usize,
    pub sent_requests: u64,
    pub retried_requests: u64,
    pub acked: u64,
    /// `None` without a receiver.
    pub delivered: Option<u64>,
    pub lost: Option<u64>,
    pub duplicates: Option<u64>,
    pub ingest_ms: Quantiles,
    pub e2e_ms: Option<Quantiles>,
    /// Up to 20 lost ids, for investigation.
    pub lost_examples: Vec<String>,
}

pub async fn run(args: LoadtestArgs) -> Result<ExitCode> {
    let outcome = run_once(&args).await?;
    print_outcome(&outcome);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if outcome.lost.unwrap_or(0) > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_outcome(o: &Outcome) {
    println!(
        "sent {} events/s target, achieved {:.0} events/s over {:.1} s ({} requests of {}, {} retried)",
        o.target_rate, o.achieved_rate, o.duration_s, o.sent_requests, o.batch, o.retried_requests
    );
    let q = |q: &Quantiles| {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            q.p50, q.p95, q.p99, q.max
        )
    };
    println!("ingest latency: {}", q(&o.ingest_ms));
    match (o.delivered, o.lost, o.duplicates, &o.e2e_ms) {
        (Some(d), Some(l), Some(dup), Some(e2e)) => {
            println!(
                "acknowledged {}, delivered {d}, LOST {l}, duplicates {dup}",
                o.acked
            );
            println!("end-to-end delay: {}", q(e2e));
            if l > 0 {
                println!(
                    "lost ids (first {}): {}",
                    o.lost_examples.len(),
                    o.lost_examples.join(", ")
                );
            }
        }
        _ => println!(
            "acknowledged {} (no receiver: delivery not checked)",
            o.acked
        ),
    }
}

/// Where delivered events are observed.
enum Delivered {
    InProcess {
        receiver: Receiver,
        record: PathBuf,
        stop: CancellationToken,
        _dir: tempfile::TempDir,
    },
    File(PathBuf),
    None,
}

pub async fn run_once(args: &LoadtestArgs) -> Result<Outcome> {
    if args.rate == 0 || args.batch == 0 || args.connections == 0 {
        bail!("--rate, --batch and --connections must be at least 1");
    }
    let url = reqwest::Url::parse(&args.target)
        .with_context(|| format!("--target {:?} is not a URL", args.target))?;
    let delivered = match (&args.receiver, &args.receiver_record) {
        (Some(addr), _) => {
            let dir = tempfile::tempdir()?;
            let record = dir.path().join("received.jsonl");
            let receiver = Receiver::open(&record)?;
            let listener = bind(*addr, "the load test's receiver").await?;
            let stop = CancellationToken::new();
            let (r, s) = (receiver.clone(), stop.clone());
            tokio::spawn(async move { r.serve(listener, s).await });
            Delivered::InProcess {
                receiver,
                record,
                stop,
                _dir: dir,
            }
        }
        (None, Some(path)) => Delivered::File(path.clone()),
        (None, None) => Delivered::None,
    };
    let run_id = format!("{:x}", hifi_pipeline::now_ms());
    let sender = Sender::new(args, url, run_id)?;
    let started = Instant::now();
    let (acked_ids, ingest) = sender.send_all().await;
    let elapsed = started
        .elapsed()
        .as_secs_f64()
        .max(args.duration.as_secs_f64());
    let acked = acked_ids.len() as u64;
    let mut outcome = Outcome {
        target_rate: args.rate,
        achieved_rate: acked as f64 / elapsed,
        duration_s: elapsed,
        batch: args.batch,
        payload_bytes: args.payload_bytes,
        sent_requests: sender.sent.load(Ordering::Relaxed),
        retried_requests: sender.retried.load(Ordering::Relaxed),
        acked,
        delivered: None,
        lost: None,
        duplicates: None,
        ingest_ms: Quantiles::of_us(&ingest),
        e2e_ms: None,
        lost_examples: Vec::new(),
    };
    let record = match &delivered {
        Delivered::InProcess { record, .. } => Some(record.clone()),
        Delivered::File(p) => Some(p.clone()),
        Delivered::None => None,
    };
    if let Some(record) = record {
        let deadline = Instant::now() + args.drain;
        let mut seen = read_record(&record, &sender.run_id)?;
        while acked_ids.iter().any(|id| !seen.contains_key(id)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = read_record(&record, &sender.run_id)?;
        }
        let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        let mut duplicates = 0;
        for (count, delay_us) in seen.values() {
            duplicates += u64::from(*count - 1);
            e2e.saturating_record(*delay_us);
        }
        let lost: Vec<&String> = acked_ids
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        outcome.delivered =
            Some(acked_ids.iter().filter(|id| seen.contains_key(*id)).count() as u64);
        outcome.lost = Some(lost.len() as u64);
        outcome.lost_examples = lost.iter().take(20).map(|s| s.to_string()).collect();
        outcome.duplicates = Some(duplicates);
        outcome.e2e_ms = Some(Quantiles::of_us(&e2e));
    }
    if let Delivered::InProcess { stop, receiver, .. } = &delivered {
        let _ = receiver.summary();
        stop.cancel();
    }
    Ok(outcome)
}

/// Delivered ids of this run: id → (times received, first delay in µs).
fn read_record(path: &PathBuf, run_id: &str) -> Result<HashMap<String, (u32, u64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let prefix = format!("lt-{run_id}-");
    let mut out: HashMap<String, (u32, u64)> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(id) = v["id"].as_str().filter(|id| id.starts_with(&prefix)) else {
            continue;
        };
        let delay_ms =
            v["received_at_ms"].as_i64().unwrap_or(0) - v["event_time_ms"].as_i64().unwrap_or(0);
        let e = out
            .entry(id.to_owned())
            .or_insert((0, delay_ms.max(0) as u64 * 1000));
        e.0 += 1;
    }
    Ok(out)
}

/// Sends the scheduled requests.
struct Sender {
    args: LoadtestArgs,
    url: reqwest::Url,
    run_id: String,
    client: reqwest::Client,
    pad: String,
    sent: AtomicU64,
    retried: AtomicU64,
}

impl Sender {
    fn new(args: &LoadtestArgs, url: reqwest::Url, run_id: String) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .timeout(Duration::from_secs(30))
            .build()?;
        let overhead = 130 + run_id.len();
        Ok(Arc::new(Sender {
            args: args.clone(),
            url,
            run_id,
            client,
            pad: "x".repeat(args.payload_bytes.saturating_sub(overhead)),
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }))
    }

    /// Runs the schedule; returns the acknowledged ids and the ingest latency histogram
    /// (µs from the scheduled time to the acknowledgement).
    async fn send_all(self: &Arc<Self>) -> (HashSet<String>, Histogram<u64>) {
        let interval = Duration::from_secs_f64(self.args.batch as f64 / self.args.rate as f64);
        let requests = (self.args.duration.as_secs_f64() / interval.as_secs_f64())
            .round()
            .max(1.0) as u64;
        let permits = Arc::new(Semaphore::new(self.args.connections));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        ));
        let give_up = Instant::now() + self.args.duration + self.args.drain;
        let start = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let progress_every = (requests / 10).max(1);
        for i in 0..requests {
            let scheduled = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
            let (me, permits, acked_by_task, hist) =
                (self.clone(), permits.clone(), acked.clone(), hist.clone());
            tasks.spawn(async move {
                let ids: Vec<String> = (0..me.args.batch)
                    .map(|j| format!("lt-{}-{i}-{j}", me.run_id))
                    .collect();
                let body = me.body(&ids);
                let _permit = permits.acquire().await;
                if me.post_until_acked(body, give_up).await {
                    let us = scheduled.elapsed().as_micros() as u64;
                    hist.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .saturating_record(us);
                    acked_by_task
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(ids);
                }
            });
            while tasks.try_join_next().is_some() {}
            if i % progress_every == 0 && i > 0 {
                eprint!(
                    "\r{:>3}% sent, {} events acknowledged",
                    i * 100 / requests,
                    acked.lock().unwrap_or_else(|p| p.into_inner()).len()
                );
            }
        }
        while tasks.join_next().await.is_some() {}
        eprintln!("\r100% sent                                   ");
        let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
        let hist = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (acked, hist)
    }

    /// A CloudEvents batch (ids and event times are standard attributes, so any
    /// pipeline carries them without extra settings). Event time = now (the send moment).
    fn body(&self, ids: &[String]) -> Vec<u8> {
        let time = hifi_pipeline::event::rfc3339_ms(hifi_pipeline::now_ms());
        let mut out = Vec::with_capacity(ids.len() * (self.args.payload_bytes + 8));
        out.push(b'[');
        for (k, id) in ids.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                format!(
                    "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"hifi-loadtest\",\"type\":\"loadtest\",\"time\":\"{time}\",\"data\":{{\"pad\":\"{}\"}}}}",
                    self.pad
                )
                .as_bytes(),
            );
        }
        out.push(b']');
        out
    }

    /// Posts until a 2xx (true) or until `give_up` (false: never acknowledged).
    async fn post_until_acked(&self, body: Vec<u8>, give_up: Instant) -> bool {
        let body = bytes::Bytes::from(body);
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut req = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/cloudevents-batch+json")
                .body(body.clone());
            if let Some(t) = &self.args.token {
                req = req.bearer_auth(t);
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
            if let Ok(r) = req.send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            if Instant::now() + backoff > give_up {
                return false;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
