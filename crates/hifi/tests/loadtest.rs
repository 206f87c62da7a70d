//! `hifi loadtest --find-rating` against a real `hifi run`: every step of the search
//! runs its own in-process receiver on the same port, so each step must give the port
//! back before the next binds it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::*;

#[test]
fn a_rating_search_runs_step_after_step_on_one_receiver_port() {
    let dir = test_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = pipeline_file(
        dir.path(),
        &format!("http://127.0.0.1:{port}/ingest"),
        "",
        false,
    );
    let hifi = run_pipeline(dir.path(), &file);
    let ingest = hifi.addr("source api");
    let json = dir.path().join("rating.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args([
            "loadtest",
            "--target",
            &format!("http://{ingest}/v1/events"),
        ])
        .args(["--receiver", &format!("127.0.0.1:{port}")])
        .args(["--rate", "2000", "--duration", "2s", "--batch", "100"])
        .args(["--drain", "10s", "--find-rating", "--slo-p95", "3s"])
        .args(["--max-rate", "8000", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let steps = v["rating"]["steps"].as_array().unwrap();
    assert!(steps.len() >= 2, "the search went past its first step: {v}");
    for s in steps {
        assert_eq!(s["lost"], 0, "{s}");
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
    }
    assert!(
        v["rating"]["events_per_s"].as_u64().unwrap() >= 200,
        "{}",
        v["rating"]
    );
}
