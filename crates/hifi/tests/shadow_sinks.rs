//! Shadow testing a sink (`[sinks.X] shadow = "sinks.Y"`): the same events go to a
//! second destination, and the ledger compares what both acknowledged. Here the shadow's
//! destination refuses some events; `/v1/shadow` names them (only the primary has them)
//! and counts what each dead-lettered.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_shows_which_events_only_the_primary_destination_acknowledged() {
    let dir = test_dir();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let primary = run_receiver(dir.path(), "127.0.0.1:0", &a);
    let candidate = Proc::start(
        &[
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--record",
            b.to_str().unwrap(),
            "--reject-ids-matching",
            "^bad-",
        ],
        "receiver:",
        dir.path(),
    );
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"2s\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\nshadow = \"sinks.candidate\"\n\
             [sinks.candidate]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\n",
            primary.addr("receiver"),
            candidate.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    let mut events: Vec<_> = (0..20)
        .map(|i| serde_json::json!({"id": format!("ok-{i}")}))
        .collect();
    events.extend((0..3).map(|i| serde_json::json!({"id": format!("bad-{i}")})));
    let r = reqwest::Client::new()
        .post(&url)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(wait_until(Duration::from_secs(30), || {
        received_ids(&a).len() == 23 && received_ids(&b).len() == 20
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    let shadow = loop {
        let v = get_json(&format!("http://{admin}/v1/shadow")).await;
        let settled = v["buckets"]
            .as_array()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["settled"] == true));
        if settled {
            break v;
        }
        assert!(Instant::now() < deadline, "not settled in 60 s: {v:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let totals = &shadow["totals"][0];
    assert_eq!(
        (
            &totals["primary"],
            &totals["shadow"],
            &totals["both"],
            &totals["only_primary"],
            &totals["only_shadow"],
            &totals["primary_dead_lettered"],
            &totals["shadow_dead_lettered"],
        ),
        (
            &serde_json::json!("out"),
            &serde_json::json!("candidate"),
            &serde_json::json!(20),
            &serde_json::json!(3),
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(3),
        ),
        "{shadow:#}"
    );
    // The examples are origins: each one traces to a refused event.
    let mut refused = Vec::new();
    for b in shadow["buckets"].as_array().unwrap() {
        for o in b["pairs"][0]["only_primary_examples"].as_array().unwrap() {
            let o = o.as_str().unwrap();
            let t = get_json(&format!("http://{admin}/v1/events/{o}/trace")).await;
            refused.push(t["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    refused.sort();
    assert_eq!(refused, ["bad-0", "bad-1", "bad-2"], "{shadow:#}");
    proc.sigterm(Duration::from_secs(20));
    primary.sigterm(Duration::from_secs(10));
    candidate.sigterm(Duration::from_secs(10));
}
