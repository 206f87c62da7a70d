//! `hifi scale FILE --node sinks.partner --min 1 --max 6`: the reference scaler. It
//! supervises `hifi run FILE --only NODE` processes on this machine (Kafka engine: they
//! share the node's partitions as one consumer group) and follows the node's recommended
//! replica count (`GET /v1/scale` of its replicas: the largest answer, within --min and
//! --max). It starts replicas at once; it stops one at a time (SIGTERM: the replica
//! drains and commits, then its partitions move), as the recommendation comes down only
//! one step per `scale_down_after`. A replica that exits on its own is replaced. In
//! production an HPA or KEDA acts on the same signal (docs/deploy-kafka.md).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hifi_pipeline::config::{EngineKind, LoadedConfig};

/// `hifi scale` options.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The pipeline file (its engine must be Kafka: replicas share the node's partitions).
    file: PathBuf,
    /// The node to scale: `stages.NAME` or `sinks.NAME`.
    #[arg(long)]
    node: String,
    /// Fewest replicas.
    #[arg(long, default_value_t = 1)]
    min: u32,
    /// Most replicas (more than the input's partitions would idle).
    #[arg(long, default_value_t = 4)]
    max: u32,
    /// How often the replicas' recommendation is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Longest wait for a stopping replica to drain before it is killed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Append one JSON line per reading here: time, replicas, recommended, reason.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

/// One supervised `hifi run --only NODE`.
struct Replica {
    child: Child,
    /// Its admin address, once it printed it.
    admin: Arc<Mutex<Option<String>>>,
    n: u64,
    started: std::time::Instant,
}

/// The replicas running; any still here when it is dropped (an error on the way out) are
/// killed, never left behind.
#[derive(Default)]
struct Replicas(Vec<Replica>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for r in &mut self.0 {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// Replicas that exit within this of starting count as failing to start.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// After this many quick exits in a row, `hifi scale` gives up (a replica that cannot
/// start: a bad file, the cluster unreachable) instead of restarting it forever.
const QUICK_EXITS_MAX: u32 = 5;

impl Replica {
    fn start(file: &std::path::Path, node: &str, n: u64) -> Result<Replica> {
        let exe = std::env::current_exe().context("cannot find the hifi executable")?;
        let mut child = Command::new(exe)
            .arg("run")
            .arg(file)
            .args(["--only", node, "--admin", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a replica")?;
        let admin = Arc::new(Mutex::new(None));
        if let Some(out) = child.stdout.take() {
            let admin = admin.clone();
            std::thread::spawn(move || {
                // Read to the end whatever it holds (the pipe never fills and blocks the
                // replica); forwarding is best effort (our stdout may be closed).
                let mut out = BufReader::new(out);
                let mut buf = Vec::new();
                while matches!(out.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end();
                    if let Some(addr) = line.strip_prefix("admin: http://") {
                        *admin.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_owned());
                    }
                    let _ = writeln!(std::io::stdout().lock(), "[replica {n}] {line}");
                    buf.clear();
                }
            });
        }
        Ok(Replica {
            child,
            admin,
            n,
            started: std::time::Instant::now(),
        })
    }

    fn admin(&self) -> Option<String> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Stops a replica: SIGTERM, then SIGKILL after `drain`.
fn terminate(mut r: Replica, drain: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + drain;
    while std::time::Instant::now() < deadline {
        if matches!(r.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "scale: replica {} did not stop within {drain:?} of SIGTERM; killing it",
        r.n
    );
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// The recommendation of one replica for `name`: (replicas, reason).
async fn ask(client: &reqwest::Client, admin: &str, name: &str) -> Option<(u32, String)> {
    let v: serde_json::Value = client
        .get(format!("http://{admin}/v1/scale"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let n = v["nodes"].as_array()?.iter().find(|n| n["node"] == name)?;
    let replicas = u32::try_from(n["recommended_replicas"].as_u64()?).ok()?;
    Some((
        replicas,
        n["reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `hifi scale`.
pub async fn run(a: ScaleArgs) -> Result<ExitCode> {
    let loaded = match LoadedConfig::load(&a.file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let c = &loaded.config;
    let name = match a.node.split_once('.') {
        Some(("stages", n)) if c.stages.contains_key(n) => n.to_owned(),
        Some(("sinks", n)) if c.sinks.contains_key(n) => n.to_owned(),
        _ => {
            let mut nodes: Vec<String> = c.stages.keys().map(|n| format!("stages.{n}")).collect();
            nodes.extend(c.sinks.keys().map(|n| format!("sinks.{n}")));
            bail!(
                "--node {}: not a stage or sink of {} (there are: {})",
                a.node,
                a.file.display(),
                if nodes.is_empty() {
                    "none".to_owned()
                } else {
                    nodes.join(", ")
                }
            );
        }
    };
    if c.stages.get(&name).is_some_and(|s| s.window.is_some()) && a.node.starts_with("stages.") {
        bail!("--node {}: a window stage runs in one process (it reads every partition itself to close windows over all of them); run it with hifi run --only {}", a.node, a.node);
    }
    if c.engine.kind != EngineKind::Kafka {
        bail!("hifi scale needs the Kafka engine: an embedded log belongs to one process, so replicas could not share the node's input");
    }
    if a.min == 0 || a.max < a.min {
        bail!("--min {} --max {}: need 1 ≤ min ≤ max", a.min, a.max);
    }
    let mut record = match &a.record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut replicas = Replicas::default();
    let mut started = 0u64;
    let mut want = a.min as usize;
    let mut quick_exits = 0u32;
    // A replica being stopped (one at a time: it drains and commits before the next).
    let mut stopping: Option<tokio::task::JoinHandle<()>> = None;
    println!(
        "scale: {} between {} and {} replicas, reading /v1/scale every {:?}",
        a.node, a.min, a.max, a.every
    );
    // Watched from here on: a signal while replicas are read is not missed.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    loop {
        // Replicas that exited on their own are replaced (with a pause after quick exits).
        let mut exited_quickly = false;
        replicas.0.retain_mut(|r| match r.child.try_wait() {
            Ok(None) => true,
            Ok(Some(s)) => {
                let quick = r.started.elapsed() < QUICK_EXIT;
                exited_quickly |= quick;
                eprintln!(
                    "scale: replica {} exited ({s}){}; replacing it",
                    r.n,
                    if quick { " right after it started" } else { "" }
                );
                false
            }
            Err(e) => {
                eprintln!(
                    "scale: cannot tell whether replica {} runs ({e}); killing it",
                    r.n
                );
                let _ = r.child.kill();
                let _ = r.child.wait();
                false
            }
        });
        if exited_quickly {
            quick_exits += 1;
            if quick_exits >= QUICK_EXITS_MAX {
                bail!("{quick_exits} replicas in a row exited right after starting; see their messages above (stopping the others)");
            }
        } else if replicas.0.iter().any(|r| r.started.elapsed() >= QUICK_EXIT) {
            quick_exits = 0;
        }
        while replicas.0.len() < want && (quick_exits == 0 || !exited_quickly) {
            started += 1;
            replicas.0.push(Replica::start(&a.file, &a.node, started)?);
        }
        // A pause that grows with quick exits, so a failing replica is not restarted in
        // a tight loop.
        let pause = a.every * 2u32.pow(quick_exits.min(5));
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        // Every replica at once: a slow one does not delay the reading.
        let mut asks = tokio::task::JoinSet::new();
        for r in &replicas.0 {
            let Some(admin) = r.admin() else { continue };
            let (client, name) = (client.clone(), name.clone());
            asks.spawn(async move { ask(&client, &admin, &name).await });
        }
        let mut best: Option<(u32, String)> = None;
        while let Some(got) = asks.join_next().await {
            if let Ok(Some((n, why))) = got {
                if best.as_ref().is_none_or(|(b, _)| n > *b) {
                    best = Some((n, why));
                }
            }
        }
        let Some((recommended, why)) = best else {
            continue; // no replica answered yet: keep what runs
        };
        let next = recommended.clamp(a.min, a.max) as usize;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if let Some(f) = record.as_mut() {
            let line = serde_json::json!({"time": now, "replicas": replicas.0.len(),
                "recommended": recommended, "next": next, "reason": why});
            // One write per line: a reader never sees half of one.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
        if next != want {
            println!("scale: {now} {} → {next} replicas: {why}", replicas.0.len());
        }
        want = next;
        if stopping.as_ref().is_some_and(|h| h.is_finished()) {
            stopping = None;
        }
        // Down one at a time, newest first, in the background: readings go on (and a
        // signal is heard) while it drains.
        if replicas.0.len() > want && stopping.is_none() {
            if let Some(r) = replicas.0.pop() {
                let drain = a.drain;
                stopping = Some(tokio::task::spawn_blocking(move || terminate(r, drain)));
            }
        }
    }
    println!("scale: stopping {} replicas", replicas.0.len());
    let drain = a.drain;
    let mut stops: Vec<_> = std::mem::take(&mut replicas.0)
        .into_iter()
        .map(|r| tokio::task::spawn_blocking(move || terminate(r, drain)))
        .collect();
    stops.extend(stopping);
    for s in stops {
        let _ = s.await;
    }
    Ok(ExitCode::SUCCESS)
}
