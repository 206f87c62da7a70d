//! Faults during a load test, to prove zero loss under them.
//!
//! - `kill:every=20s`: the load test supervises `hifi run --pipeline FILE` as a child and
//!   SIGKILLs it at random moments (uniform in 0.5–1.5 × the period), restarting it at
//!   once; its output goes to `<pipeline>.chaos.log`.
//! - `receiver-flap`: the in-process receiver stops listening for 0.5–3 s every 2–6 s
//!   (connections refused), then comes back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Which faults to inject.
#[derive(Debug, Clone, Default)]
pub struct ChaosSpec {
    /// Kill the supervised pipeline about this often.
    pub kill_every: Option<Duration>,
    /// Make the in-process receiver go down and up.
    pub receiver_flap: bool,
}

impl ChaosSpec {
    /// Parses `--chaos`.
    pub fn parse(s: &str) -> Result<ChaosSpec> {
        let mut spec = ChaosSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "receiver-flap" {
                spec.receiver_flap = true;
            } else if let Some(d) = part.strip_prefix("kill:every=") {
                spec.kill_every = Some(
                    humantime::parse_duration(d).with_context(|| format!("--chaos {part:?}"))?,
                );
            } else {
                bail!("--chaos {part:?}: expected kill:every=DURATION or receiver-flap");
            }
        }
        Ok(spec)
    }
}

/// What the faults did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    /// SIGKILLs of the pipeline.
    pub kills: u64,
    /// Times the receiver went down.
    pub receiver_flaps: u64,
}

/// A supervised `hifi run` that gets killed.
#[derive(Debug)]
pub struct Killer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Child>,
    kills: Arc<AtomicU64>,
}

fn spawn_pipeline(file: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file.with_extension("chaos.log"))?;
    let exe = std::env::current_exe().context("finding the hifi executable")?;
    Command::new(exe)
        .args(["run", file.to_str().unwrap_or_default(), "--drain", "5s"])
        // Quiet unless the load test runs with HIFI_LOG set (then the child logs alike).
        .env(
            "HIFI_LOG",
            std::env::var("HIFI_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the supervised hifi run")
}

impl Killer {
    /// Starts the pipeline and the killing loop.
    pub async fn start(file: PathBuf, every: Duration) -> Result<Killer> {
        let mut child = spawn_pipeline(&file)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (stop, kills) = (CancellationToken::new(), Arc::new(AtomicU64::new(0)));
        let (s, k) = (stop.clone(), kills.clone());
        let task = tokio::spawn(async move {
            loop {
                let wait = every.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
                tokio::select! {
                    _ = s.cancelled() => return child,
                    _ = tokio::time::sleep(wait) => {}
                }
                let _ = child.kill(); // SIGKILL
                let _ = child.wait();
                k.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "\rchaos: SIGKILLed the pipeline (kill {}); restarting",
                    k.load(Ordering::Relaxed)
                );
                match spawn_pipeline(&file) {
                    Ok(c) => child = c,
                    Err(e) => {
                        eprintln!("chaos: cannot restart the pipeline: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(c) = spawn_pipeline(&file) {
                            child = c;
                        }
                    }
                }
            }
        });
        Ok(Killer { stop, task, kills })
    }

    /// Stops killing; the pipeline keeps running (so the drain can finish).
    pub async fn stop_killing(self) -> (Child, u64) {
        self.stop.cancel();
        let child = self.task.await.expect("killer task does not panic");
        (child, self.kills.load(Ordering::Relaxed))
    }
}

/// Stops a supervised pipeline cleanly (SIGTERM, then SIGKILL after 15 s).
pub fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..150 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
