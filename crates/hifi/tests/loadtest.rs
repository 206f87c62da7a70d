//! `hifi loadtest --find-rating` against a real `hifi run`: every step of the search
//! runs its own in-process receiver on the same port, so each step must give the port
//! back before the next binds it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// A running ingest -> sink pipeline whose sink sends to a free loopback port.
fn pipeline_to_a_free_port(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_addr().port();
    let file = pipeline_file(dir, &format!("http://127.0.0.1:{port}/ingest"), "", false);
    (run_pipeline(dir, &file), port)
}

#[test]
fn a_rating_search_runs_step_after_step_on_one_receiver_port() {
    let dir = test_dir();
    let (hifi, port) = pipeline_to_a_free_port(dir.path());
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

/// One short load test against `ingest`; returns (exit success, outcome JSON).
fn loadtest(
    dir: &std::path::Path,
    ingest: std::net::SocketAddr,
    how: &[&str],
) -> (bool, serde_json::Value) {
    let json = dir.join(format!(
        "out-{}.json",
        how.join("-").replace(['/', ':', '.'], "_")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args([
            "loadtest",
            "--target",
            &format!("http://{ingest}/v1/events"),
        ])
        .args(["--rate", "1000", "--duration", "1s", "--batch", "10"])
        .args(how)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{how:?}: no outcome ({e}): {text}"));
    (out.status.success(), v)
}

#[test]
fn deliveries_observed_in_memory_or_read_from_a_record_give_the_same_exact_outcome() {
    let dir = test_dir();
    let (hifi, port) = pipeline_to_a_free_port(dir.path());
    let ingest = hifi.addr("source api");
    let receiver = format!("127.0.0.1:{port}");
    let all_delivered = |how: &str, (ok, v): (bool, serde_json::Value)| {
        assert!(ok, "{how}: {v}");
        assert_eq!(v["acked"], 1000, "{how}: {v}");
        assert_eq!(v["delivered"], 1000, "{how}: {v}");
        assert_eq!(
            (&v["lost"], &v["duplicates"]),
            (&0.into(), &0.into()),
            "{how}: {v}"
        );
        assert!(
            v["e2e_ms"]["max"].as_f64().unwrap() < 60_000.0,
            "{how}: {v}"
        );
    };

    // In memory (the in-process receiver hands its events over).
    all_delivered(
        "in memory",
        loadtest(dir.path(), ingest, &["--receiver", &receiver]),
    );

    // In-process, kept as a record file: read back from the file.
    let kept = dir.path().join("kept.jsonl");
    let how = [
        "--receiver",
        &receiver,
        "--keep-record",
        kept.to_str().unwrap(),
    ];
    all_delivered("kept record", loadtest(dir.path(), ingest, &how));
    assert_eq!(received_ids(&kept).len(), 1000);

    // A separate receiver's record file.
    let record = dir.path().join("external.jsonl");
    let external = run_receiver(dir.path(), &receiver, &record);
    let how = ["--receiver-record", record.to_str().unwrap()];
    all_delivered("separate receiver", loadtest(dir.path(), ingest, &how));

    // Nothing delivered: every acknowledged event counts as lost, both ways.
    external.sigkill();
    let how = [
        "--receiver-record",
        record.to_str().unwrap(),
        "--drain",
        "1s",
    ];
    let (ok, v) = loadtest(dir.path(), ingest, &how);
    assert!(!ok && v["acked"] == 1000 && v["lost"] == 1000, "{v}");
    let elsewhere = free_addr();
    let (ok, v) = loadtest(
        dir.path(),
        ingest,
        &["--receiver", &elsewhere.to_string(), "--drain", "1s"],
    );
    assert!(!ok && v["acked"] == 1000 && v["lost"] == 1000, "{v}");
}

#[test]
fn a_connection_that_never_finishes_its_request_does_not_hold_the_load_test_open() {
    let dir = test_dir();
    let (hifi, port) = pipeline_to_a_free_port(dir.path());
    let ingest = hifi.addr("source api");
    let json = dir.path().join("out.json");
    let started = std::time::Instant::now();
    let mut run = Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args([
            "loadtest",
            "--target",
            &format!("http://{ingest}/v1/events"),
        ])
        .args(["--receiver", &format!("127.0.0.1:{port}")])
        .args([
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--batch",
            "10",
            "--drain",
            "5s",
        ])
        .args(["--json", json.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A client of the in-process receiver that sends half a request and waits: a
    // graceful stop would wait for it forever.
    let mut stuck = None;
    assert!(wait_until(Duration::from_secs(10), || {
        stuck = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        stuck.is_some()
    }));
    use std::io::Write;
    stuck
        .as_mut()
        .unwrap()
        .write_all(b"POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"id\":")
        .unwrap();
    let finished = wait_until(Duration::from_secs(40), || {
        run.try_wait().unwrap().is_some()
    });
    if !finished {
        let _ = run.kill();
    }
    assert!(finished, "the load test hung on the stuck connection");
    let took = started.elapsed();
    assert!(run.wait().unwrap().success(), "took {took:?}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["delivered"], 2000, "{v}");
    drop(stuck);
}

/// Events a pipeline drops on purpose are not loss: the load test asks the pipeline's
/// ledger about every event that did not arrive.
#[test]
fn events_filtered_by_the_pipeline_are_accounted_for_not_lost() {
    let dir = test_dir();
    let port = free_addr().port();
    let keep_first =
        "[[stages.clean.transforms]]\ntype = \"filter\"\ncondition = 'event.id.endsWith(\"-0\")'\n";
    let file = pipeline_file_with(
        dir.path(),
        &format!("http://127.0.0.1:{port}/ingest"),
        "",
        Some(keep_first),
    );
    // Buckets stay open (their tallies say which event was filtered) for the test.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("settle_after = \"2s\"", "settle_after = \"10m\"");
    std::fs::write(&file, text).unwrap();
    let hifi = run_pipeline(dir.path(), &file);
    let ingest = hifi.addr("source api");
    let admin = hifi.addr("admin").to_string();
    let how = [
        "--receiver",
        &format!("127.0.0.1:{port}"),
        "--events",
        "json",
        "--data",
        r#"{"amount": 42}"#,
        "--admin",
        &admin,
    ];
    let (ok, v) = loadtest(dir.path(), ingest, &how);
    assert!(ok, "{v}");
    assert_eq!(
        (&v["acked"], &v["delivered"], &v["lost"]),
        (&1000.into(), &100.into(), &0.into()),
        "{v}"
    );
    assert_eq!(v["accounted"]["filtered"], 900, "{v}");
    // Without the ledger (an admin address where nothing listens) they count as lost.
    let nowhere = free_addr().to_string();
    let mut how = how.to_vec();
    let last = how.len() - 1;
    how[last] = &nowhere;
    let (ok, v) = loadtest(dir.path(), ingest, &how);
    assert!(!ok && v["lost"] == 900, "{v}");
}
