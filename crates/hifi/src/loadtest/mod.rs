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
//! It only sends to the `--target` URL (or the `--kafka` topic), for at most `--duration` plus the drain, and
//! schedules at most 250 000 000 events per run (it keeps 8 bytes per event).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use hifi_ledger::Quantiles;
use hifi_server::receiver::{bind, Receiver};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod observe;
mod schedule;
mod send;
mod timeline;
use observe::*;
use send::{Ids, Sender, Target};
use timeline::*;

#[derive(Debug, Args, Clone)]
pub struct LoadtestArgs {
    /// Ingest URL, e.g. http://127.0.0.1:8080/v1/events.
    #[arg(long, required_unless_present = "kafka", conflicts_with = "kafka")]
    target: Option<String>,
    /// Send to a Kafka cluster instead, e.g. 127.0.0.1:9092: each event one record of
    /// `--topic`, acknowledged when the cluster has it (`acks=all`) — the load of a
    /// pipeline with a Kafka source.
    #[arg(long, requires = "topic")]
    kafka: Option<String>,
    /// With --kafka: the topic the events go to (it must exist).
    #[arg(long, requires = "kafka")]
    topic: Option<String>,
    /// Events per second (spread over requests of `--batch` events).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send (--rate × --duration: at most 250 000 000 events per run).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Steps of rates instead of --rate/--duration: `RATE:DURATION,...`, e.g.
    /// `2000:20s,10000:40s,2000:40s` (a ramp up and down).
    #[arg(long, value_name = "STEPS", value_parser = parse_ramp_arg, conflicts_with_all = ["find_rating", "rate", "duration"])]
    ramp: Option<String>,
    /// The `--record` file of a `hifi scale` running beside: its replicas over time are
    /// drawn in the HTML report.
    #[arg(long, value_name = "FILE", conflicts_with = "find_rating")]
    scale_record: Option<PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Approximate size of each event's JSON.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// What the events are: `cloudevents` (a CloudEvents batch: any pipeline reads
    /// their ids and times) or `json` (plain objects `{"id", "ts", ...}`: for a source
    /// with `id_field = "/id"` and `event_time = "/ts"`).
    #[arg(long, value_enum, default_value_t = EventKind::Cloudevents)]
    events: EventKind,
    /// Fields every event carries, as a JSON object (in a CloudEvent: in its data),
    /// e.g. '{"amount": 42}' for a pipeline that filters on amount.
    #[arg(long, value_parser = parse_fields)]
    data: Option<serde_json::Map<String, serde_json::Value>>,
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
    /// With --receiver: keep its record (one JSON line per delivery: id, event time,
    /// receive time) at FILE, to study duplicates and delays afterwards. FILE must not
    /// exist yet.
    #[arg(long, requires = "receiver", conflicts_with = "find_rating")]
    keep_record: Option<PathBuf>,
    /// After sending, wait this long at most for acknowledged events to be delivered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts here (and the JSON beside it,
    /// same name with .json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Find the traffic rating: step the rate up from --rate (doubling), then bisect,
    /// until the pipeline stops meeting the SLO; each step lasts --duration.
    #[arg(long, requires = "slo_p95")]
    find_rating: bool,
    /// The SLO's bound on end-to-end p95 (with --find-rating), e.g. 100ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    slo_p95: Option<Duration>,
    /// Highest rate the search tries.
    #[arg(long, default_value_t = 1_000_000)]
    max_rate: u64,
    /// Faults while loading: "kill:every=20s" (SIGKILL a supervised `hifi run
    /// --pipeline FILE` at random moments around that period, restarting it) and/or
    /// "receiver-flap" (the in-process receiver goes down and up). Comma-separated.
    #[arg(long)]
    chaos: Option<String>,
    /// With --chaos kill: the pipeline file to run (and kill) as a child process.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// The pipeline's admin API. Acknowledged events that did not arrive are looked up
    /// in its ledger: filtered or dead-lettered on purpose, still retrying, or lost.
    /// When it cannot be reached, every one of them counts as lost.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
}

fn parse_ramp_arg(s: &str) -> Result<String, String> {
    schedule::parse_ramp(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e:#}"))
}

impl LoadtestArgs {
    /// The rates to send: the --ramp's steps, or --rate for --duration.
    fn steps(&self) -> Vec<schedule::Step> {
        let one = || {
            vec![schedule::Step {
                rate: self.rate.max(1),
                duration: self.duration,
            }]
        };
        match &self.ramp {
            Some(r) => schedule::parse_ramp(r).unwrap_or_else(|_| one()),
            None => one(),
        }
    }
}

/// A `hifi scale --record` file's readings, timed from `t0` (the load test's start):
/// `[{"t", "replicas", "recommended"}]`. A file that cannot be read, and lines that are
/// not readings (one being written), are left out with a warning: they never cost the
/// load test its outcome.
fn scale_readings(path: &std::path::Path, t0: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "warning: --scale-record {}: {e}; no replicas in the report",
                path.display()
            );
            return serde_json::Value::Array(Vec::new());
        }
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let reading = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| {
            let at = chrono::DateTime::parse_from_rfc3339(v["time"].as_str()?).ok()?;
            let t = (at.with_timezone(&chrono::Utc) - t0).num_milliseconds() as f64 / 1e3;
            Some(serde_json::json!({"t": t, "replicas": v["replicas"], "recommended": v["recommended"]}))
        });
        match reading {
            Some(r) if r["t"].as_f64().is_some_and(|t| t >= 0.0) => out.push(r),
            Some(_) => {}
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!(
            "warning: --scale-record {}: {skipped} lines are not hifi scale readings; left out",
            path.display()
        );
    }
    serde_json::Value::Array(out)
}

/// This process's command line, quoted for a shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The shape of the load test's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    /// A CloudEvents batch.
    Cloudevents,
    /// Plain JSON objects with `id` and `ts`.
    Json,
}

fn parse_fields(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("--data must be a JSON object, e.g. '{\"amount\": 42}'".into()),
        Err(e) => Err(format!("--data is not JSON: {e}")),
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
    /// Acknowledged, not delivered, and accounted for by the pipeline's ledger (`None`
    /// when it was not asked: everything arrived, or its admin API was unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounted: Option<Accounted>,
    pub duplicates: Option<u64>,
    pub ingest_ms: Quantiles,
    pub e2e_ms: Option<Quantiles>,
    /// Up to 20 lost ids, for investigation.
    pub lost_examples: Vec<String>,
    /// Per second of the run: acknowledged events and ingest latency.
    pub timeline: Vec<SecondStats>,
    /// Faults injected (with --chaos).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::chaos::ChaosReport>,
}

/// Events that did not arrive, as the pipeline's ledger accounts for them
/// (`POST /v1/outcomes`); none of these count as lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accounted {
    /// Dropped on purpose by a stage's filter.
    pub filtered: u64,
    /// Refused for good (dead-lettered, re-drivable).
    pub dead_lettered: u64,
    /// Waiting in a sink's retry topics.
    pub retrying: u64,
    /// Delivered by a sink other than the one this load test watches.
    pub delivered_elsewhere: u64,
    /// In a settled loss bucket, not among its lost events: they ended (filtered,
    /// dead-lettered or delivered somewhere); which, the settled table no longer says.
    pub ended_not_lost: u64,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondStats {
    /// Seconds since the start.
    pub t: u64,
    /// Events acknowledged from requests scheduled in this second.
    pub acked: u64,
    /// Ingest latency of those requests.
    pub ingest_ms: Quantiles,
    /// End-to-end delay of their events that were delivered (with a receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<Quantiles>,
}

pub async fn run(args: LoadtestArgs) -> Result<ExitCode> {
    let spec = match &args.chaos {
        Some(c) => crate::chaos::ChaosSpec::parse(c)?,
        None => crate::chaos::ChaosSpec::default(),
    };
    if spec.receiver_flap && args.receiver.is_none() {
        bail!("--chaos receiver-flap needs the in-process receiver (--receiver ADDR)");
    }
    if args.rate == 0 || args.batch == 0 || args.connections == 0 {
        bail!("--rate, --batch and --connections must be at least 1");
    }
    let mut args = args;
    if args.ramp.is_some() {
        // The ramp's length and highest rate stand for --duration and --rate.
        let steps = args.steps();
        args.duration = steps.iter().map(|s| s.duration).sum();
        args.rate = steps.iter().map(|s| s.rate).max().unwrap_or(1);
    }
    // One target for every step: a Kafka producer connects (and learns the topic's
    // limits) once, before the first event is scheduled, not inside the measurement.
    let target = Arc::new(Target::of(&args)?);
    target.connect().await?;
    let killer = match (spec.kill_every, &args.pipeline) {
        (Some(every), Some(file)) => Some(crate::chaos::Killer::start(file.clone(), every).await?),
        (Some(_), None) => {
            bail!("--chaos kill:every=... needs --pipeline FILE (the pipeline to run and kill)")
        }
        _ => None,
    };
    let flaps = Arc::new(AtomicU64::new(0));
    let t0 = chrono::Utc::now();
    let result = if args.find_rating {
        find_rating(&args, &target, spec.receiver_flap, &flaps).await
    } else {
        run_once(&args, &target, spec.receiver_flap, &flaps)
            .await
            .map(|o| (o, None))
    };
    let chaos = match killer {
        Some(k) => {
            let (child, kills) = k.stop_killing().await;
            tokio::task::spawn_blocking(move || crate::chaos::terminate(child)).await?;
            Some(crate::chaos::ChaosReport {
                kills,
                receiver_flaps: flaps.load(Ordering::Relaxed),
            })
        }
        None if spec.receiver_flap => Some(crate::chaos::ChaosReport {
            kills: 0,
            receiver_flaps: flaps.load(Ordering::Relaxed),
        }),
        None => None,
    };
    let (mut outcome, rating) = result?;
    outcome.chaos = chaos;
    print_outcome(&outcome);
    if let Some(r) = &rating {
        outln!("{}", r.sentence());
    }
    let scale = args
        .scale_record
        .as_ref()
        .map(|path| scale_readings(path, t0));
    let json = serde_json::json!({
        "outcome": &outcome,
        "rating": &rating,
        "scale": &scale,
        "command": command_line(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let mut flat = serde_json::to_value(&outcome)?;
    if let (Some(o), Some(r)) = (flat.as_object_mut(), &rating) {
        o.insert("rating".into(), serde_json::to_value(r)?);
    }
    if let (Some(o), Some(s)) = (flat.as_object_mut(), &scale) {
        o.insert("scale".into(), s.clone());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&flat)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.report {
        std::fs::write(
            path.with_extension("json"),
            serde_json::to_vec_pretty(&flat)?,
        )?;
        std::fs::write(path, crate::report::html(&json))
            .with_context(|| format!("writing {}", path.display()))?;
        outln!(
            "report: {} (and {})",
            path.display(),
            path.with_extension("json").display()
        );
    }
    Ok(if outcome.lost.unwrap_or(0) > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One step of a rating search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: u64,
    pub achieved_rate: f64,
    pub e2e_p95_ms: f64,
    pub lost: u64,
    pub acked: u64,
    pub meets_slo: bool,
}

/// The traffic rating.
#[derive(Debug, Clone, Serialize)]
pub struct Rating {
    /// Highest rate that met the SLO (0 if none did).
    pub events_per_s: u64,
    /// Its E2E p95.
    pub e2e_p95_ms: f64,
    /// The SLO bound.
    pub slo_p95_ms: f64,
    /// Events checked over all steps.
    pub events_checked: u64,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl Rating {
    fn sentence(&self) -> String {
        if self.events_per_s == 0 {
            return format!(
                "no rate met the SLO (p95 E2E ≤ {} ms, zero loss, ≥ 99 % of target)",
                self.slo_p95_ms
            );
        }
        format!(
            "traffic rating: sustains {} events/s at p95 E2E {:.1} ms with 0 loss ({} events checked)",
            self.events_per_s, self.e2e_p95_ms, self.events_checked
        )
    }
}

/// Steps the rate up (doubling) from `--rate`, then bisects between the last rate that
/// met the SLO and the first that did not (4 steps). Returns the last step's outcome.
async fn find_rating(
    args: &LoadtestArgs,
    target: &Arc<Target>,
    flap: bool,
    flaps: &Arc<AtomicU64>,
) -> Result<(Outcome, Option<Rating>)> {
    if args.receiver.is_none() && args.receiver_record.is_none() {
        bail!("--find-rating needs a receiver (--receiver ADDR or --receiver-record FILE) to check loss and E2E");
    }
    let slo_ms = args.slo_p95.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let mut steps = Vec::new();
    let mut checked = 0;
    let mut last;
    let try_rate = |rate: u64| {
        let mut a = args.clone();
        a.rate = rate;
        a
    };
    let mut good: Option<(u64, f64)> = None;
    let mut bad: Option<u64> = None;
    let mut rate = args.rate.max(1);
    let mut bisections = 0;
    loop {
        eprintln!("rating: trying {rate} events/s for {:?}", args.duration);
        let o = run_once(&try_rate(rate), target, flap, flaps).await?;
        if o.acked > 0 && o.delivered == Some(0) && o.lost == Some(0) {
            bail!(
                "no event reached the receiver, and the pipeline accounts for all of them \
                 (filtered, dead-lettered or retrying): a rating needs events that reach the \
                 destination — shape them with --events and --data"
            );
        }
        let p95 = o.e2e_ms.map_or(f64::INFINITY, |q| q.p95);
        let meets = o.lost == Some(0) && o.achieved_rate >= 0.99 * rate as f64 && p95 <= slo_ms;
        checked += o.acked;
        steps.push(Step {
            rate,
            achieved_rate: o.achieved_rate,
            e2e_p95_ms: p95,
            lost: o.lost.unwrap_or(0),
            acked: o.acked,
            meets_slo: meets,
        });
        eprintln!(
            "rating: {rate} events/s → achieved {:.0}, p95 {p95:.1} ms, lost {} → {}",
            o.achieved_rate,
            o.lost.unwrap_or(0),
            if meets { "meets the SLO" } else { "misses" }
        );
        last = Some(o);
        if meets {
            good = Some((rate, p95));
        } else {
            bad = Some(rate);
        }
        rate = match (good, bad) {
            (_, None) if rate.saturating_mul(2) <= args.max_rate => rate * 2,
            (_, None) => break,
            (None, Some(_)) => break,
            (Some((g, _)), Some(b)) => {
                bisections += 1;
                if bisections > 4 || b - g <= g / 20 {
                    break;
                }
                (g + b) / 2
            }
        };
    }
    let (events_per_s, e2e_p95_ms) = good.unwrap_or((0, 0.0));
    let rating = Rating {
        events_per_s,
        e2e_p95_ms,
        slo_p95_ms: slo_ms,
        events_checked: checked,
        steps,
    };
    Ok((last.expect("at least one step"), Some(rating)))
}

/// The receiver, going down (connections refused) and up again until `stop`.
async fn flapping(
    receiver: Receiver,
    first: tokio::net::TcpListener,
    addr: SocketAddr,
    stop: CancellationToken,
    flaps: Arc<AtomicU64>,
) {
    let mut listener = Some(first);
    while !stop.is_cancelled() {
        let l = match listener.take() {
            Some(l) => l,
            None => match bind(addr, "the load test's receiver").await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let up_for =
            Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), 2000..6000));
        let down = CancellationToken::new();
        let serving = {
            let (r, d) = (receiver.clone(), down.clone());
            tokio::spawn(async move { r.serve(l, d).await })
        };
        tokio::select! {
            _ = stop.cancelled() => { down.cancel(); let _ = serving.await; return; }
            _ = tokio::time::sleep(up_for) => {}
        }
        down.cancel();
        let _ = serving.await;
        flaps.fetch_add(1, Ordering::Relaxed);
        let down_for =
            Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), 500..3000));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(down_for) => {}
        }
    }
}

fn print_outcome(o: &Outcome) {
    outln!(
        "sent {} events/s target, achieved {:.0} events/s over {:.1} s ({} requests of {}, {} retried)",
        o.target_rate, o.achieved_rate, o.duration_s, o.sent_requests, o.batch, o.retried_requests
    );
    let q = |q: &Quantiles| {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            q.p50, q.p95, q.p99, q.max
        )
    };
    outln!("ingest latency: {}", q(&o.ingest_ms));
    match (o.delivered, o.lost, o.duplicates, &o.e2e_ms) {
        (Some(d), Some(l), Some(dup), Some(e2e)) => {
            let accounted = o.accounted.as_ref().map_or(String::new(), |a| {
                format!(
                    ", filtered {} and dead-lettered {} by the pipeline on purpose, retrying {}{}",
                    a.filtered,
                    a.dead_lettered,
                    a.retrying,
                    [
                        (a.delivered_elsewhere, "delivered by another sink"),
                        (a.ended_not_lost, "ended without loss in settled buckets"),
                    ]
                    .iter()
                    .filter(|(n, _)| *n > 0)
                    .map(|(n, what)| format!(", {what} {n}"))
                    .collect::<String>()
                )
            });
            outln!(
                "acknowledged {}, delivered {d}{accounted}, LOST {l}, duplicates {dup}",
                o.acked
            );
            outln!("end-to-end delay: {}", q(e2e));
            if l > 0 {
                outln!(
                    "note: \"lost\" = acknowledged, not delivered within --drain, and not filtered, \
                     dead-lettered or retrying by the pipeline's ledger (--admin). Events still on their \
                     way count here too: check `hifi loss` before concluding, or run with a longer --drain."
                );
                outln!(
                    "lost ids (first {}): {}",
                    o.lost_examples.len(),
                    o.lost_examples.join(", ")
                );
            }
        }
        _ => outln!(
            "acknowledged {} (no receiver: delivery not checked)",
            o.acked
        ),
    }
}

/// The in-process receiver's serving task.
struct InProcess {
    stop: CancellationToken,
    /// Awaited after `stop`, so its port is free before the next step of a rating search
    /// binds it again.
    serving: tokio::task::JoinHandle<()>,
    /// Holds nothing; keeps the temporary directory of a record file alive.
    _dir: Option<tempfile::TempDir>,
}

/// One run at `args.rate`; `flap` makes the in-process receiver go down and up.
async fn run_once(
    args: &LoadtestArgs,
    target: &Arc<Target>,
    flap: bool,
    flaps: &Arc<AtomicU64>,
) -> Result<Outcome> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run_id = format!(
        "{:x}{:x}",
        hifi_pipeline::now_ms(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let sender = Sender::new(args, target.clone(), run_id)?;
    let ids = sender.ids();
    let (observed, in_process) = match (&args.receiver, &args.receiver_record) {
        (Some(addr), _) => {
            let (observed, receiver, dir) = match &args.keep_record {
                Some(path) if path.exists() => {
                    bail!(
                        "--keep-record {}: the file exists; remove it or name another",
                        path.display()
                    )
                }
                Some(path) => (
                    Observed::file(path.clone(), ids),
                    Receiver::open(path)?,
                    None,
                ),
                None => {
                    // Handed over in memory: no record line is written or read back.
                    let live = Arc::new(Mutex::new(Deliveries::new(ids)));
                    let to = live.clone();
                    let receiver = Receiver::observed(Box::new(move |events| {
                        let mut d = to.lock().unwrap_or_else(|p| p.into_inner());
                        for e in events {
                            d.add(e.id, e.event_time_ms, Some(e.received_at_ms));
                        }
                    }));
                    (Observed::Live(live), receiver, None)
                }
            };
            let listener = bind(*addr, "the load test's receiver").await?;
            let stop = CancellationToken::new();
            let (r, s) = (receiver.clone(), stop.clone());
            let serving = if flap {
                let (addr, flaps) = (*addr, flaps.clone());
                tokio::spawn(async move { flapping(r, listener, addr, s, flaps).await })
            } else {
                tokio::spawn(async move {
                    if let Err(e) = r.serve(listener, s).await {
                        eprintln!("the load test's receiver stopped: {e}");
                    }
                })
            };
            let in_process = InProcess {
                stop,
                serving,
                _dir: dir,
            };
            (Some(observed), Some(in_process))
        }
        (None, Some(path)) => (Some(Observed::file(path.clone(), ids)), None),
        (None, None) => (None, None),
    };
    let outcome = measure(args, &sender, observed).await;
    if let Some(InProcess { stop, serving, .. }) = in_process {
        stop.cancel();
        // In-flight deliveries finish first (graceful); a sink that keeps sending is
        // cut off after a few seconds rather than holding the port.
        let abort = serving.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    outcome
}

/// Sends the load and computes the outcome against the deliveries `observed`.
async fn measure(
    args: &LoadtestArgs,
    sender: &Arc<Sender>,
    observed: Option<Observed>,
) -> Result<Outcome> {
    let started = Instant::now();
    let (acked_ids, ingest) = sender.send_all().await;
    let elapsed = started
        .elapsed()
        .as_secs_f64()
        .max(args.duration.as_secs_f64());
    let acked = acked_ids.count();
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
        accounted: None,
        duplicates: None,
        ingest_ms: ingest.overall(),
        timeline: ingest.per_second(),
        chaos: None,
        e2e_ms: None,
        lost_examples: Vec::new(),
    };
    if let Some(mut observed) = observed {
        let deadline = Instant::now() + args.drain;
        let undelivered = |d: &Deliveries| acked_ids.events().any(|e| d.count[e] == 0);
        while observed.refresh()?.with(undelivered) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        observed.with(|deliveries| -> Result<()> {
            let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            // Per second of the schedule (of the event's request), like the timeline.
            let mut per_second: Vec<Histogram<u64>> = Vec::new();
            let batch = args.batch.max(1) as usize;
            let mut duplicates = 0;
            for (e, (&count, &delay_ms)) in deliveries
                .count
                .iter()
                .zip(&deliveries.first_delay_ms)
                .enumerate()
            {
                if count > 0 {
                    duplicates += u64::from(count - 1);
                    e2e.saturating_record(u64::from(delay_ms) * 1000);
                    let second = sender.schedule.offset((e / batch) as u64).as_secs() as usize;
                    if per_second.len() <= second {
                        per_second.resize_with(second + 1, || {
                            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
                        });
                    }
                    per_second[second].saturating_record(u64::from(delay_ms) * 1000);
                }
            }
            for (s, h) in outcome.timeline.iter_mut().zip(&per_second) {
                if !h.is_empty() {
                    s.e2e_ms = Some(Quantiles::of(h));
                }
            }
            let lost: Vec<usize> = acked_ids
                .events()
                .filter(|&e| deliveries.count[e] == 0)
                .collect();
            outcome.delivered = Some(acked - lost.len() as u64);
            outcome.lost = Some(lost.len() as u64);
            outcome.lost_examples = lost.iter().take(20).map(|&e| acked_ids.ids.id(e)).collect();
            outcome.duplicates = Some(duplicates);
            outcome.e2e_ms = Some(Quantiles::of(&e2e));
            Ok(())
        })?;
        if outcome.lost.unwrap_or(0) > 0 {
            let undelivered: Vec<String> = observed.with(|d| {
                acked_ids
                    .events()
                    .filter(|&e| d.count[e] == 0)
                    .map(|e| acked_ids.ids.id(e))
                    .collect()
            });
            match account(&args.admin, &undelivered).await {
                Ok((accounted, lost, examples)) => {
                    outcome.lost = Some(lost);
                    outcome.lost_examples = examples;
                    outcome.accounted = Some(accounted);
                }
                Err(e) => eprintln!(
                    "note: could not ask the pipeline's ledger about the {} undelivered events ({e:#}); \
                     all of them count as lost",
                    undelivered.len()
                ),
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Load test arguments against a loopback target, plus `more`.
    pub(super) fn test_args(more: &[&str]) -> LoadtestArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        let fixed = ["loadtest", "--target", "http://127.0.0.1:1/v1/events"];
        <Cli as clap::Parser>::parse_from(fixed.iter().chain(more)).args
    }

    #[test]
    fn each_second_keeps_its_histogram_only_until_its_requests_finish() {
        let mut t = Timeline::default();
        t.start(0);
        t.start(0);
        t.finish(0, Some(1_000), 10);
        t.start(1);
        assert_eq!(t.histograms(), 2, "second 0 still has a request out");
        t.finish(0, None, 10);
        assert_eq!(t.histograms(), 1, "second 0 closed: only the total is kept");
        t.finish(1, Some(1_500), 10);
        assert_eq!(
            t.histograms(),
            2,
            "second 1 is the latest: more may start in it"
        );
        t.start(5);
        assert_eq!(t.histograms(), 1);
        t.finish(5, Some(2_000), 10);
        let per: Vec<(u64, u64, f64)> = t
            .per_second()
            .iter()
            .map(|s| (s.t, s.acked, s.ingest_ms.max))
            .collect();
        assert_eq!(
            per,
            vec![
                (0, 10, 1.0),
                (1, 10, 1.5),
                (2, 0, 0.0),
                (3, 0, 0.0),
                (4, 0, 0.0),
                (5, 10, 2.0)
            ]
        );
        assert_eq!(t.overall().max, 2.0);
    }

    #[derive(clap::Parser)]
    struct Dummy {
        #[arg(long, value_parser = parse_fields)]
        data: Option<serde_json::Map<String, serde_json::Value>>,
    }

    #[test]
    fn data_must_be_a_json_object() {
        assert!(clap::Parser::try_parse_from(["x", "--data", "[1]"].iter())
            .map(|_: Dummy| ())
            .is_err());
    }
}
