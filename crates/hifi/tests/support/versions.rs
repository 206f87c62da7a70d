//! Helpers of the stage-versions tests (`versions.rs`, `versions_gc.rs`): one pipeline
//! file with a stage `big` that the tests edit, a receiver, and reading the registry and
//! version topics.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{get_json, received_ids, Proc};

/// The pipeline: source `api` (event time from `/ts` when `timed`), stage `big` setting
/// `/stage` (plus `extra` lines), sink `out` to the receiver.
pub const EMBEDDED: &str = "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n";

pub fn write_file(
    dir: &Path,
    receiver: &str,
    stage: &str,
    extra: &str,
    timed: bool,
) -> std::path::PathBuf {
    write_file_on(EMBEDDED, dir, receiver, stage, extra, timed)
}

/// [`write_file`] on the engine of `engine` (an `[engine]` section).
pub fn write_file_on(
    engine: &str,
    dir: &Path,
    receiver: &str,
    stage: &str,
    extra: &str,
    timed: bool,
) -> std::path::PathBuf {
    let event_time = if timed { "event_time = \"/ts\"\n" } else { "" };
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{engine}\
             [admin]\nlisten = \"127.0.0.1:0\"\n[ledger]\nsettle_after = \"1s\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n{event_time}\
             [stages.big]\ninput = \"events\"\noutput = \"big-orders\"\n{extra}\n\
             [[stages.big.transforms]]\ntype = \"set\"\nfield = \"/stage\"\nvalue = \"{stage}\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"big-orders\"\nurl = \"http://{receiver}/ingest\"\n\
             concurrency = 1\nbatch = {{ max_events = 20 }}\n\
             [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n"
        ),
    )
    .unwrap();
    file
}

/// `hifi receiver` on any port, recording to `record`, with `extra` flags.
pub fn start_receiver(dir: &Path, record: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "receiver",
        "--listen",
        "127.0.0.1:0",
        "--record",
        record.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::start(&args, "receiver:", dir)
}

/// `/v1/versions` of stage `big`.
pub async fn big(admin: std::net::SocketAddr) -> Value {
    get_json(&format!("http://{admin}/v1/versions?stage=big")).await["stages"][0].clone()
}

/// Polls `/v1/versions` until `cond`; the admin API may be away for a moment (the nodes
/// restart for a publish): `cond` then sees `null`, which it must not take for an answer.
pub async fn wait_for(
    admin: std::net::SocketAddr,
    within: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let url = format!("http://{admin}/v1/versions?stage=big");
        let v = match reqwest::get(&url).await {
            Ok(r) => r
                .json::<Value>()
                .await
                .map(|v| v["stages"][0].clone())
                .unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits up to 60 s until `results()` (what a receiver recorded, by some key) holds `n`
/// entries; fails with what it holds.
pub async fn wait_results<K: std::fmt::Debug, V: std::fmt::Debug>(
    results: impl Fn() -> std::collections::BTreeMap<K, V>,
    n: usize,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = results();
        if got.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} window results: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn candidate_state(v: &Value) -> String {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["state"] == "candidate")
        .map(|x| x["status"]["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// Ids in every partition of a topic of the (stopped) pipeline's data directory.
pub fn topic_ids(dir: &Path, topic: &str) -> HashSet<String> {
    topic_records(dir, topic).0
}

/// The ids in a topic and how many records it holds.
pub fn topic_records(dir: &Path, topic: &str) -> (HashSet<String>, usize) {
    let (mut ids, mut records) = (HashSet::new(), 0);
    for p in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
            .args([
                "log",
                "dump",
                "data",
                "--topic",
                topic,
                "--partition",
                &p.to_string(),
            ])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            records += 1;
            let r: Value = serde_json::from_str(line).unwrap();
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            ids.insert(v["id"].as_str().unwrap().to_owned());
        }
    }
    (ids, records)
}

pub fn publish_cli(
    admin: std::net::SocketAddr,
    version: &str,
    extra: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args(["publish", "big", version, "--admin", &admin.to_string()])
        .args(extra)
        .output()
        .unwrap()
}

pub async fn all_arrive(
    record: &Path,
    ids: &HashSet<String>,
) -> std::collections::HashMap<String, u32> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = received_ids(record);
        let missing = ids.iter().filter(|i| !got.contains_key(*i)).count();
        if missing == 0 {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to a minute) until the candidate of `big` has caught up (`live`); returns
/// `big`'s versions then.
pub async fn candidate_live(admin: std::net::SocketAddr, what: &str) -> Value {
    wait_for(admin, Duration::from_secs(60), what, |v| {
        candidate_state(v) == "live"
    })
    .await
}

/// The `[engine]` section of the shared test Kafka cluster (`KAFKA_BROKERS`), 2
/// partitions, topics under a prefix of their own; `None` (the test is skipped) without
/// a cluster, unless `HIFI_REQUIRE_KAFKA=1`.
pub fn kafka_engine(name: &str) -> Option<String> {
    let brokers = super::required("KAFKA_BROKERS")?;
    let prefix = super::unique_prefix(name);
    Some(format!(
        "[engine]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\npartitions = 2\n"
    ))
}

/// POSTs `events` (a JSON array) to the source at `ingest` (`host:port`); asserts 200.
pub async fn post_events(ingest: impl std::fmt::Display, events: &[Value]) {
    let r = reqwest::Client::new()
        .post(format!("http://{ingest}/v1/events"))
        .json(events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Asks for `version` of `big` to be published, SIGKILLs the pipeline while the test
/// hook (`test_publish_pause_ms`, 2 s) holds the publish before its record, and starts
/// it again from `file`: the publish was not recorded.
pub async fn kill_during_publish(proc: Proc, version: &str, dir: &Path, file: &Path) -> Proc {
    let admin = proc.addr("admin");
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/v1/versions/big/{version}/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proc.sigkill();
    let proc = super::run_pipeline(dir, file);
    let v = big(proc.addr("admin")).await;
    assert_ne!(
        v["published"], version,
        "not recorded, not published: {v:#}"
    );
    proc
}
