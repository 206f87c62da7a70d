//! Adaptive delivery concurrency against a destination of limited capacity (`hifi
//! receiver --capacity 4 --queue-max 4 --latency 20ms`: four requests handled at once,
//! four more queued, the rest answered 503): the adaptive limit stays near the capacity
//! and is shown in `/v1/stats`, `/metrics` and `hifi lag`; a fixed concurrency of 64
//! floods the destination with requests it turns away. Every event arrives either way.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const EVENTS: usize = 3_000;

struct Run {
    /// The sink's limit, sampled every 50 ms while the backlog drained.
    limits: Vec<u64>,
    /// Events in requests the destination turned away (503, over capacity).
    turned_away: usize,
    lag_output: String,
}

async fn drain_through(dir: &Path, concurrency: &str) -> Run {
    let record = dir.join("received.jsonl");
    let receiver = Proc::start(
        &[
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--record",
            record.to_str().unwrap(),
            "--capacity",
            "4",
            "--queue-max",
            "4",
            "--latency",
            "20ms",
        ],
        "receiver:",
        dir,
    );
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\n\
             concurrency = {concurrency}\n\
             [sinks.out.batch]\nmax_events = 5\n\
             [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\nattempts = 1000\n\
             [sinks.out.breaker]\nfailures = 1000000\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir, &file);
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    let client = reqwest::Client::new();
    for chunk in 0..EVENTS / 100 {
        let body: Vec<_> = (0..100)
            .map(|i| serde_json::json!({"id": format!("e-{}", chunk * 100 + i)}))
            .collect();
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut limits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = node_stats(admin, "out").await;
        limits.push(out["concurrency_limit"].as_u64().unwrap());
        if off_workers(|| received_ids(&record).len()) >= EVENTS {
            break;
        }
        assert!(Instant::now() < deadline, "not everything arrived in 90 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = off_workers(|| received_ids(&record));
    for i in 0..EVENTS {
        assert!(got.contains_key(&format!("e-{i}")), "e-{i} never arrived");
    }
    let lag = off_workers(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
            .args(["lag", "--admin", &admin.to_string()])
            .output()
            .unwrap()
    });
    assert!(lag.status.success(), "{lag:?}");
    let metrics = metrics_text(admin).await;
    assert!(
        metrics.contains("hifi_sink_concurrency_limit{sink=\"out\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hifi_sink_concurrency_cuts_total{sink=\"out\",cause=\"backpressure\"}"),
        "{metrics}"
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
    let failures =
        std::fs::read_to_string(record.with_extension("failures.jsonl")).unwrap_or_default();
    // One line per event of a turned-away request.
    let turned_away = failures.lines().count();
    Run {
        limits,
        turned_away,
        lag_output: String::from_utf8_lossy(&lag.stdout).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_follows_the_destinations_capacity_where_a_fixed_one_floods_it() {
    let adaptive_dir = tempfile::tempdir().unwrap();
    let adaptive = drain_through(adaptive_dir.path(), "\"adaptive\"").await;
    let fixed_dir = tempfile::tempdir().unwrap();
    let fixed = drain_through(fixed_dir.path(), "64").await;

    let mut sorted = adaptive.limits.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "adaptive limit median {median}; events turned away: adaptive {}, fixed 64 {}",
        adaptive.turned_away, fixed.turned_away
    );
    assert!(
        (2..=10).contains(&median),
        "the adaptive limit settles near the capacity (4 handled + 4 queued): median {median}, samples {:?}",
        adaptive.limits
    );
    assert!(
        adaptive.limits.iter().all(|&l| l <= 32),
        "never past concurrency_max: {:?}",
        adaptive.limits
    );
    assert!(
        adaptive
            .lag_output
            .contains("requests in flight allowed: out "),
        "hifi lag shows the limit: {}",
        adaptive.lag_output
    );
    assert!(fixed.limits.iter().all(|&l| l == 64), "{:?}", fixed.limits);
    assert!(
        fixed.lag_output.contains("out 64 (fixed)"),
        "{}",
        fixed.lag_output
    );
    assert!(
        fixed.turned_away > 0,
        "64 requests at once overflow a destination taking 8"
    );
    assert!(
        adaptive.turned_away * 2 < fixed.turned_away,
        "events turned away: adaptive {}, fixed 64 {}",
        adaptive.turned_away,
        fixed.turned_away
    );
}
