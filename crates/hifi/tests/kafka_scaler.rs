//! `hifi scale` on a real Kafka cluster (`KAFKA_BROKERS`, 3 Apache Kafka nodes on
//! loopback, started by `scripts/test-broker`): a sink that one process cannot keep up
//! with (one request of 5 events at a time to a destination answering in 50 ms: ~100
//! events/s per replica) gets more replicas within seconds of a ramp from 20 to 400
//! events/s (`hifi loadtest --ramp`), and loses them one at a time, slowly, after the
//! ramp; every acknowledged event arrives, and the load test's report draws the replicas
//! (`--scale-record`). Without `KAFKA_BROKERS` the test says so and passes, unless
//! `HIFI_REQUIRE_KAFKA=1` (as in CI).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// The scaler's readings so far: (seconds since `t0`, replicas running, next).
fn readings(path: &std::path::Path, t0: chrono::DateTime<chrono::Utc>) -> Vec<(f64, u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
            let since = (at.with_timezone(&chrono::Utc) - t0).num_milliseconds() as f64 / 1e3;
            (
                since,
                v["replicas"].as_u64().unwrap(),
                v["next"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_adds_replicas_at_a_ramp_and_removes_them_one_at_a_time_after() {
    let Some(brokers) = required("KAFKA_BROKERS") else {
        return;
    };
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = Proc::start(
        &[
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--record",
            record.to_str().unwrap(),
            "--latency",
            "50ms",
        ],
        "receiver:",
        dir.path(),
    );
    let prefix = unique_prefix("scale");
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\n\
             replication_factor = 3\npartitions = 4\n\
             [engine.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [scale]\nscale_down_after = \"5s\"\ndrain_within = \"20s\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\nconcurrency = 1\n\
             [sinks.out.batch]\nmax_events = 5\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let ingest = Proc::start(
        &["run", f, "--only", "sources.api", "--admin", "127.0.0.1:0"],
        "hifi is running",
        dir.path(),
    );
    let url = format!("http://{}/v1/events", ingest.addr("source api"));
    let decisions = dir.path().join("scale.jsonl");
    let scaler = Proc::start(
        &[
            "scale",
            f,
            "--node",
            "sinks.out",
            "--min",
            "1",
            "--max",
            "4",
            "--every",
            "1s",
            "--drain",
            "20s",
            "--record",
            decisions.to_str().unwrap(),
        ],
        "scale:",
        dir.path(),
    );
    let t0 = chrono::Utc::now();
    // 20 events/s, a ramp to 400 (four times what a replica delivers), back to 20; the
    // load test checks every acknowledged event at the receiver and draws the replicas.
    let report = dir.path().join("report.html");
    let out = dir.path().join("outcome.json");
    let args: Vec<String> = [
        "loadtest",
        "--target",
        &url,
        "--ramp",
        "20:5s,400:12s,20:5s",
        "--batch",
        "10",
        "--receiver-record",
        record.to_str().unwrap(),
        "--scale-record",
        decisions.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
        "--drain",
        "120s",
        "--admin",
        &ingest.addr("admin").to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let loadtest = off_workers(|| {
        Command::new(HIFI)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    });
    let ramp = 5.0;
    let after = 17.0;
    let back_to_one = wait_until(Duration::from_secs(90), || {
        readings(&decisions, t0).last().is_some_and(|r| r.1 == 1)
    });
    let (status, _) = scaler.sigterm(Duration::from_secs(60));
    ingest.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap_or_default()).unwrap_or_default();
    let readings = readings(&decisions, t0);
    let timeline: Vec<String> = readings
        .iter()
        .map(|(t, n, next)| format!("{t:.1}s:{n}->{next}"))
        .collect();
    eprintln!(
        "acknowledged {}, lost {}, duplicates {}; ramp at ~{ramp:.1}s, back to 20/s at ~{after:.1}s; readings {}",
        outcome["acked"],
        outcome["lost"],
        outcome["duplicates"],
        timeline.join(" ")
    );
    assert!(
        loadtest.status.success(),
        "{}",
        String::from_utf8_lossy(&loadtest.stdout)
    );
    assert_eq!(outcome["lost"], 0, "{outcome}");
    assert!(outcome["acked"].as_u64().unwrap() >= 5_000, "{outcome}");
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        page.contains("Replicas (hifi scale --record)"),
        "no replicas chart"
    );
    assert!(status.success());
    // Up within 30 s of the ramp, to at least 3 replicas.
    let up = readings
        .iter()
        .find(|(t, n, _)| *t >= ramp && *n >= 3)
        .unwrap_or_else(|| panic!("never 3 replicas: {timeline:?}"));
    assert!(
        up.0 - ramp <= 30.0,
        "3 replicas only at {:.1}s: {timeline:?}",
        up.0
    );
    // Down one at a time, never below what ran before minus one.
    for w in readings.windows(2) {
        assert!(
            w[1].1 + 1 >= w[0].1,
            "more than one replica stopped at once: {timeline:?}"
        );
    }
    assert!(back_to_one, "not back to one replica: {timeline:?}");
    // No storm: a few steps up, a few down.
    let changes = readings.windows(2).filter(|w| w[1].1 != w[0].1).count();
    assert!(changes <= 10, "{changes} changes: {timeline:?}");
}
