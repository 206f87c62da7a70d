//! Autoscaling signals (`GET /v1/scale`, the `hifi_node_*` scale gauges) from a real
//! pipeline: a sink that cannot keep up with its input (one request of 5 events at a
//! time to a destination answering in 50 ms: ~100 events/s) is shown busy, with a
//! measured sustainable rate near that, and more replicas recommended — capped at its
//! input's 2 partitions, with the reason; a stage that keeps up beside it is not busy
//! and needs one replica.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn node<'a>(scale: &'a Value, name: &str) -> &'a Value {
    scale["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {scale}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_cannot_keep_up_is_busy_and_gets_more_replicas_recommended() {
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
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             [stages.copy]\ninput = \"events\"\noutput = \"copied\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\nconcurrency = 1\n\
             [sinks.out.batch]\nmax_events = 5\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    let client = reqwest::Client::new();
    // 4 000 events in about 4 s: 10 times what the sink can deliver.
    for chunk in 0..40 {
        let body: Vec<_> = (0..100)
            .map(|i| serde_json::json!({"id": format!("e-{}", chunk * 100 + i)}))
            .collect();
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let scale = loop {
        let scale = get_json(&format!("http://{admin}/v1/scale")).await;
        let out = node(&scale, "out");
        // The stage keeps up, but the last batch posted may not be copied yet: wait for
        // its backlog to drain too, so the snapshot shows both nodes settled.
        let copied = node(&scale, "copy")["backlog_records"] == 0;
        if out["recommended_replicas"] == 2
            && out["busy_ratio"].as_f64().unwrap_or(0.0) > 0.8
            && copied
        {
            break scale;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-up with the stage caught up in 30 s: {scale:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let out = node(&scale, "out");
    assert_eq!(out["kind"], "sink");
    assert_eq!(out["partitions"], 2);
    assert_eq!(out["readers_here"], 2);
    assert_eq!(out["sustainable_from"], "measured");
    let per = out["sustainable_rate_per_replica"].as_f64().unwrap();
    assert!(
        (30.0..400.0).contains(&per),
        "~100 events/s expected: {out:#}"
    );
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason.contains("capped at the input's 2 partitions"),
        "{reason}"
    );
    assert!(out["backlog_records"].as_u64().unwrap() > 500, "{out:#}");
    assert!(out["backlog_seconds"].as_f64().unwrap() > 1.0, "{out:#}");
    for span in ["1s", "10s", "1m"] {
        assert!(out["rate_in"][span].as_f64().is_some(), "{out:#}");
    }
    assert!(out["rate_in"]["10s"].as_f64().unwrap() > 0.0, "{out:#}");
    // The stage copies the same input at its own pace: it waits for input, one replica.
    let copy = node(&scale, "copy");
    assert!(copy["busy_ratio"].as_f64().unwrap() < 0.5, "{copy:#}");
    assert_eq!(
        copy["readers_here"], 2,
        "the re-drive reader is not counted: {copy:#}"
    );
    assert_eq!(copy["recommended_replicas"], 1, "{copy:#}");
    assert_eq!(copy["backlog_records"], 0, "{copy:#}");
    assert!(scale["process"]["cores"].as_u64().unwrap() >= 1);
    assert!(
        scale["process"]["cpu_ratio"].as_f64().is_some(),
        "{scale:#}"
    );
    assert_eq!(scale["policy"]["headroom"], 1.2);

    let metrics = metrics_text(admin).await;
    for line in [
        "hifi_node_recommended_replicas{node=\"out\"} 2",
        "hifi_node_recommended_replicas{node=\"copy\"} 1",
        "hifi_node_busy_ratio{node=\"out\"}",
        "hifi_node_sustainable_records_per_second{node=\"out\"}",
        "hifi_node_input_records_per_second{node=\"copy\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    drop(proc);
    receiver.sigterm(Duration::from_secs(10));
}

/// `hifi scale` refuses what it cannot scale, saying why: the embedded engine (one
/// process owns the log) and a window stage (one process reads every partition).
#[test]
fn hifi_scale_refuses_the_embedded_engine_and_window_stages() {
    let dir = test_dir();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\
         [topics.orders]\nschema = { id = \"string\", ts = \"timestamp\", amount = \"float64\" }\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
         [stages.per_minute]\ninput = \"orders\"\noutput = \"totals\"\nwindow = { size = \"1m\" }\n\
         sql = \"SELECT count(*) AS n FROM input\"\n\
         [sinks.out]\ntype = \"http\"\ninput = \"orders\"\nurl = \"http://127.0.0.1:9/\"\n",
    )
    .unwrap();
    let scale = |node: &str| {
        std::process::Command::new(HIFI)
            .args(["scale", file.to_str().unwrap(), "--node", node])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = scale("sinks.out");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs the Kafka engine"), "{err}");
    let out = scale("stages.per_minute");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("a window stage runs in one process"), "{err}");
    let out = scale("sinks.nope");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a stage or sink") && err.contains("sinks.out"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing started");
}
