//! `hifi replay`: what a sink read over a range of event time is delivered again, with
//! the same ids, and only that range; a dry run sends nothing; bad requests are refused.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_event_time_is_delivered_again_with_the_same_ids() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (ingest, admin) = (proc.addr("source api"), proc.addr("admin"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now - 600_000;
    // 40 events in [t0, t0 + 1 min), 30 after it.
    let events: Vec<_> = (0..70)
        .map(|i| {
            let ts = if i < 40 {
                t0 + i * 1000
            } else {
                t0 + 60_000 + i * 1000
            };
            json!({"id": format!("e{i}"), "ts": ts})
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("http://{ingest}/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(off_workers(|| wait_until(
        Duration::from_secs(20),
        || received_ids(&record).len() == 70
    )));

    let hifi = |args: &[&str]| {
        let out = std::process::Command::new(HIFI)
            .args(args)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (from, to) = (t0.to_string(), (t0 + 60_000).to_string());
    let (ok, out, err) = off_workers(|| {
        hifi(&[
            "replay",
            "out",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
            "--json",
        ])
    });
    assert!(ok, "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (dry["matched"].as_u64(), dry["scanned"].as_u64()),
        (Some(40), Some(70)),
        "{dry}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        received_ids(&record).values().all(|n| *n == 1),
        "a dry run sends nothing"
    );

    let (ok, out, err) = off_workers(|| hifi(&["replay", "out", "--from", &from, "--to", &to]));
    assert!(ok, "{err}");
    assert!(
        out.contains("40 of 70 records scanned are in the range"),
        "{out}"
    );
    let twice = off_workers(|| {
        wait_until(Duration::from_secs(30), || {
            received_ids(&record).values().filter(|n| **n == 2).count() == 40
        })
    });
    let got = received_ids(&record);
    assert!(twice, "the range arrives again: {got:?}");
    for i in 0..70 {
        let want = if i < 40 { 2 } else { 1 };
        assert_eq!(got[&format!("e{i}")], want, "e{i}");
    }

    // Refusals: an unknown sink, a bad time, an empty range.
    let (ok, _, err) = off_workers(|| hifi(&["replay", "nope", "--from", &from]));
    assert!(
        !ok && err.contains("not a sink running here (out)"),
        "{err}"
    );
    let (ok, _, err) = off_workers(|| hifi(&["replay", "out", "--from", "yesterday"]));
    assert!(!ok && err.contains("RFC 3339"), "{err}");
    let (ok, _, err) = off_workers(|| hifi(&["replay", "out", "--from", &to, "--to", &from]));
    assert!(!ok && err.contains("before"), "{err}");
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}
