//! A node that dies is not left dead while the rest runs on: a stage whose partition
//! worker panics (a simulated bug, test builds only) makes `hifi run` stop with the
//! reason, so a supervisor restarts it from the committed positions.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_panics_stops_the_pipeline_with_the_reason() {
    let dir = test_dir();
    let file = pipeline_file_with(
        dir.path(),
        "http://127.0.0.1:9/ingest",
        "",
        Some("test_panic_ids_matching = \"^boom\""),
    );
    let mut proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let r = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!([{"id": "fine-1"}, {"id": "boom-1"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = proc.log.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hifi run still runs after the stage panicked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{status}");
    let err = std::fs::read_to_string(log).unwrap();
    assert!(
        err.contains("cannot run") && err.contains("panicked at") && err.contains("boom-1"),
        "{err}"
    );
}
