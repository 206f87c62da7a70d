//! Real processes for integration tests: `hifi run` and `hifi receiver` started on
//! loopback with port 0, their addresses read from their first lines of output.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod producers;
pub mod versions;
#[allow(unused_imports)] // only the tests that kill a whole cluster
pub use cluster::{Cluster, OWN_CLUSTER};
#[allow(unused_imports)] // not every test binary posts with producers
pub use producers::Producers;

pub const HIFI: &str = env!("CARGO_BIN_EXE_hifi");

/// A loopback address nothing listens on (yet), for a listener that must be named before
/// it runs (a sink's URL written before its receiver starts, a receiver restarted at the
/// same address, an address where nothing answers). Listeners that can be named after
/// they start bind port 0 and print their address instead.
///
/// Ports come from 10000–14999: below Linux's ephemeral range, so the kernel never hands
/// one to an outgoing connection (hifi's own, a Kafka client's) between this call and the
/// bind; apart from the test cluster's (`scripts/test-broker`: 15000 and up, reused when
/// a node restarts); and never twice in one test process (tests run in parallel).
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 5_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// A running `hifi` child process with the addresses it printed.
pub struct Proc {
    pub child: Child,
    /// "source api" → addr, "admin" → addr, "receiver" → addr.
    pub addrs: HashMap<String, SocketAddr>,
    pub stdout_rest: std::sync::mpsc::Receiver<String>,
    /// Its stderr (the log), in the test's directory.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `hifi ARGS` and waits until it printed `ready_line_prefix`.
    pub fn start(args: &[&str], ready_prefix: &str, dir: &Path) -> Proc {
        let level = std::env::var("HIFI_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Proc::start_logging(args, ready_prefix, dir, &level)
    }

    /// [`Proc::start`] with the log at `level` (`HIFI_LOG`), for a test that reads it.
    pub fn start_logging(args: &[&str], ready_prefix: &str, dir: &Path, level: &str) -> Proc {
        // One log per process: `hifi-1.stderr`, `hifi-2.stderr`, ... in start order.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let log_path = dir.join(format!("hifi-{n}.stderr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(HIFI)
            .args(args)
            .current_dir(dir)
            .env("HIFI_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let err = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("hifi {args:?} did not start within 30 s; stderr:\n{err}");
                }
            };
            if let Some((name, addr)) = parse_addr(&line) {
                addrs.insert(name, addr);
            }
            if line.starts_with(ready_prefix) {
                break;
            }
        }
        Proc {
            child,
            addrs,
            stdout_rest: rx,
            log: log_path,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no address {name:?} in {:?}", self.addrs))
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success());
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the remaining stdout.
    pub fn sigterm(mut self, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + within;
        let child = &mut self.child;
        let status = off_workers(|| loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        let mut rest = Vec::new();
        while let Ok(l) = self.stdout_rest.recv_timeout(Duration::from_millis(500)) {
            rest.push(l);
        }
        (status, rest)
    }
}

impl Drop for Proc {
    /// A test that fails (panics) must not leave its processes running: they would load
    /// the machine for every test after it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A test's directory, removed afterwards unless `HIFI_TEST_KEEP=1` (then its path is
/// printed, with the processes' `hifi-N.stderr`; `HIFI_TEST_LOG=info` makes that verbose).
pub fn test_dir() -> tempfile::TempDir {
    let keep = std::env::var("HIFI_TEST_KEEP").as_deref() == Ok("1");
    let dir = tempfile::Builder::new()
        .prefix("hifi-test")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("test directory kept: {}", dir.path().display());
    }
    dir
}

/// "source api: POST http://127.0.0.1:1234/v1/events" → ("source api", addr);
/// "admin: http://127.0.0.1:1235" → ("admin", addr); "receiver: POST http://..." → ("receiver", addr).
fn parse_addr(line: &str) -> Option<(String, SocketAddr)> {
    let (name, rest) = line.split_once(": ")?;
    let url = rest.split_whitespace().find(|w| w.starts_with("http://"))?;
    let hostport = url.trim_start_matches("http://").split('/').next()?;
    Some((name.to_owned(), hostport.parse().ok()?))
}

/// A pipeline file: one HTTP source on any port, an optional pass-through stage, and a
/// sink to `sink_url`; the ledger settles after 2 s.
pub fn pipeline_file(dir: &Path, sink_url: &str, extra_source: &str, with_stage: bool) -> PathBuf {
    pipeline_file_with(
        dir,
        sink_url,
        extra_source,
        if with_stage { Some("") } else { None },
    )
}

/// As [`pipeline_file`]; `stage` = extra lines of a stage `clean` (None: no stage).
pub fn pipeline_file_with(
    dir: &Path,
    sink_url: &str,
    extra_source: &str,
    stage: Option<&str>,
) -> PathBuf {
    pipeline_file_full(dir, sink_url, extra_source, stage, "")
}

/// As [`pipeline_file_with`], with extra lines after the sink (e.g. its retry tables).
pub fn pipeline_file_full(
    dir: &Path,
    sink_url: &str,
    extra_source: &str,
    stage: Option<&str>,
    extra_sink: &str,
) -> PathBuf {
    let (sink_input, stage) = match stage {
        Some(extra) => (
            "clean",
            format!("[stages.clean]\ninput = \"events\"\noutput = \"clean\"\n{extra}\n"),
        ),
        None => ("events", String::new()),
    };
    let text = format!(
        "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [ledger]\nsettle_after = \"2s\"\n\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n{extra_source}\n\n\
         {stage}\n[sinks.out]\ntype = \"http\"\ninput = \"{sink_input}\"\nurl = \"{sink_url}\"\n\
         [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n{extra_sink}"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A pipeline file whose sink sends to `addr` (a destination that may be down) with
/// local retries that never run out: undelivered events stay in the topic, uncommitted
/// (not moved to the retry topic, from which they would be re-sent only when due).
pub fn pipeline_file_holding(dir: &Path, addr: SocketAddr) -> PathBuf {
    pipeline_file_full(
        dir,
        &format!("http://{addr}/ingest"),
        "",
        None,
        "attempts = 1000000\n",
    )
}

pub fn run_pipeline(dir: &Path, file: &Path) -> Proc {
    Proc::start(
        &["run", file.to_str().unwrap(), "--drain", "5s"],
        "hifi is running",
        dir,
    )
}

pub fn run_receiver(dir: &Path, listen: &str, record: &Path) -> Proc {
    Proc::start(
        &[
            "receiver",
            "--listen",
            listen,
            "--record",
            record.to_str().unwrap(),
        ],
        "receiver:",
        dir,
    )
}

/// The records in a receiver's record file. The receiver may be writing while we
/// read, so only whole lines count.
pub fn received_records(record: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Vec::new();
    };
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Event ids in a receiver's record file, with how often each arrived.
pub fn received_ids(record: &Path) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for v in received_records(record) {
        *out.entry(v["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    out
}

/// Whether `cmd args` runs successfully: a third-party tool a test needs. When it does
/// not and `require_var` is set (as in CI), the test fails instead of skipping; otherwise
/// it says how to get the tool.
pub fn tool_present(cmd: &str, args: &[&str], require_var: &str, install: &str) -> bool {
    let ok = std::process::Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var(require_var).is_err(),
            "{require_var} is set but {cmd} {args:?} fails; {install}"
        );
        eprintln!("SKIPPED: {install}");
    }
    ok
}

/// Polls `cond` until true or `within` passes. Inside a multi-thread tokio test it
/// waits off the runtime's workers, so the test's own tasks (producers, servers) go on.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    off_workers(|| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cond()
    })
}

/// Runs blocking `f` (sleeps, child processes) without holding a tokio worker when
/// called from a multi-thread runtime; as is elsewhere.
pub fn off_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// GET a JSON document from a running instance.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// An instance's `/metrics` text.
pub async fn metrics_text(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One node's entry in an instance's `/v1/stats`.
pub async fn node_stats(admin: std::net::SocketAddr, node: &str) -> serde_json::Value {
    let v = get_json(&format!("http://{admin}/v1/stats")).await;
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {v}"))
        .clone()
}

/// The value of an unlabelled metric (the first sample whose name starts with `name`)
/// in an instance's `/metrics`.
pub async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = metrics_text(admin).await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// Waits until every loss bucket of the instance is settled; returns them.
pub async fn settled_buckets(
    admin: std::net::SocketAddr,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let v = get_json(&format!("http://{admin}/v1/loss?lost=true")).await;
        let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
        if !buckets.is_empty() && buckets.iter().all(|b| b["settled"] == true) {
            return buckets;
        }
        assert!(
            Instant::now() < deadline,
            "buckets did not settle within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sum of a node's column over buckets.
pub fn node_sum(buckets: &[serde_json::Value], node: &str, column: &str) -> u64 {
    buckets
        .iter()
        .flat_map(|b| b["nodes"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["node"] == node)
        .map(|n| n[column].as_u64().unwrap())
        .sum()
}

/// The value of a variable a Kafka test needs; `None` (the test is skipped) when unset,
/// unless `HIFI_REQUIRE_KAFKA=1` (as in CI) makes that a failure.
pub fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("HIFI_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "HIFI_REQUIRE_KAFKA=1 but {var} is not set"
            );
            eprintln!("{var} is not set: Kafka test skipped");
            None
        }
    }
}

/// A topic prefix no other test run uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}-{nanos}-{test}.", std::process::id())
}

/// Waits for every acknowledged id at the receiver; returns (missing sample, duplicates).
pub fn check_delivered(
    record: &Path,
    acked: &std::collections::HashSet<String>,
) -> (Vec<String>, u32) {
    wait_until(Duration::from_secs(120), || {
        let got = received_ids(record);
        acked.iter().all(|id| got.contains_key(id))
    });
    let got = received_ids(record);
    let missing: Vec<String> = acked
        .iter()
        .filter(|id| !got.contains_key(*id))
        .take(10)
        .cloned()
        .collect();
    let duplicates = got.values().map(|n| n - 1).sum();
    (missing, duplicates)
}

/// Posts one event with id `id` to `target` (waiting up to 30 s); its status and how
/// long the answer took.
pub async fn post_one(target: &str, id: &str) -> (u16, Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let asked = Instant::now();
    let r = client
        .post(target)
        .json(&serde_json::json!([{ "id": id }]))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), asked.elapsed())
}

/// Every record of a topic, read back from the stopped pipeline's log: (id, value).
pub fn dump_topic(dir: &Path, topic: &str, partitions: u32) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let o = Command::new(HIFI)
            .args(["log", "dump", "data", "--topic", topic, "--partition"])
            .arg(p.to_string())
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            let id = r["headers"]["hifi-id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.push((id, value));
        }
    }
    out
}
