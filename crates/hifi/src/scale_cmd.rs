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
}

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
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("admin: http://") {
                        *admin.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_owned());
                    }
                    println!("[replica {n}] {line}");
                }
            });
        }
        Ok(Replica { child, admin, n })
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
    let mut replicas: Vec<Replica> = Vec::new();
    let mut started = 0u64;
    let mut want = a.min as usize;
    println!(
        "scale: {} between {} and {} replicas, reading /v1/scale every {:?}",
        a.node, a.min, a.max, a.every
    );
    let stop = crate::run::signal();
    tokio::pin!(stop);
    loop {
        // Replicas that exited on their own are replaced.
        replicas.retain_mut(|r| match r.child.try_wait() {
            Ok(None) => true,
            Ok(Some(s)) => {
                eprintln!("scale: replica {} exited ({s}); replacing it", r.n);
                false
            }
            Err(_) => false,
        });
        while replicas.len() < want {
            started += 1;
            replicas.push(Replica::start(&a.file, &a.node, started)?);
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(a.every) => {}
        }
        let mut best: Option<(u32, String)> = None;
        for r in &replicas {
            let Some(admin) = r.admin() else { continue };
            if let Some((n, why)) = ask(&client, &admin, &name).await {
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
            let line = serde_json::json!({"time": now, "replicas": replicas.len(),
                "recommended": recommended, "next": next, "reason": why});
            let _ = writeln!(f, "{line}");
        }
        if next != want {
            println!("scale: {now} {} → {next} replicas: {why}", replicas.len());
        }
        want = next;
        // Down one at a time, newest first: it drains and commits before the next.
        if replicas.len() > want {
            if let Some(r) = replicas.pop() {
                let drain = a.drain;
                tokio::task::spawn_blocking(move || terminate(r, drain)).await?;
            }
        }
    }
    println!("scale: stopping {} replicas", replicas.len());
    let drain = a.drain;
    let stops: Vec<_> = replicas
        .into_iter()
        .map(|r| tokio::task::spawn_blocking(move || terminate(r, drain)))
        .collect();
    for s in stops {
        s.await?;
    }
    Ok(ExitCode::SUCCESS)
}
