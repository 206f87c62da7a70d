//! Window stages in a real pipeline: a GROUP BY query per closed event-time window over
//! every input partition, deterministic ids, late events dead-lettered, the ledger's
//! `aggregated`; and SIGKILLs under load — every window's result exact, each row id
//! written with one content only.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const SCHEMA: &str =
    "{ id = \"string\", ts = \"timestamp\", amount = \"float64\", country = \"string\" }";
const PER_COUNTRY: &str =
    "SELECT country, count(*) AS orders, sum(amount) AS total FROM input GROUP BY country";

fn pipeline(dir: &Path, receiver: std::net::SocketAddr, window: &str) -> std::path::PathBuf {
    pipeline_with(dir, receiver, window, PER_COUNTRY)
}

fn pipeline_with(
    dir: &Path,
    receiver: std::net::SocketAddr,
    window: &str,
    sql: &str,
) -> std::path::PathBuf {
    let file = dir.join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"2s\"\n\
             [topics.orders]\nschema = {SCHEMA}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             [stages.per_minute]\ninput = \"orders\"\noutput = \"per-minute\"\nwindow = {window}\n\
             sql = \"{sql}\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"per-minute\"\nurl = \"http://{receiver}/ingest\"\n"
        ),
    )
    .unwrap();
    file
}

/// Polls an admin endpoint until `ok` holds (or time is up); returns the last answer.
async fn poll_json(url: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = get_json(url).await;
        if ok(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_emits_one_row_per_group_per_window_across_partitions() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = pipeline(
        dir.path(),
        receiver.addr("receiver"),
        "{ size = \"1m\", allowed_lateness = \"5s\", idle_timeout = \"1s\" }",
    );
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();

    // Two whole minutes, ten minutes ago: W0 has DE 1..=10 and FR 2 ×5, W1 has DE 100 ×3.
    let w0 = (chrono::Utc::now().timestamp_millis() / 60_000 - 10) * 60_000;
    let w1 = w0 + 60_000;
    let mut events = Vec::new();
    for i in 1..=10 {
        events.push(json!({"id": format!("de-{i}"), "ts": rfc3339(w0 + i * 1000), "amount": i as f64, "country": "DE"}));
    }
    for i in 0..5 {
        events.push(json!({"id": format!("fr-{i}"), "ts": rfc3339(w0 + 30_000 + i), "amount": 2.0, "country": "FR"}));
    }
    for i in 0..3 {
        events.push(json!({"id": format!("de1-{i}"), "ts": rfc3339(w1 + 5_000 + i), "amount": 100.0, "country": "DE"}));
    }
    // Several requests: the source spreads them over both partitions.
    for chunk in events.chunks(3) {
        let r = client.post(&url).json(chunk).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len() == 3),
        "rows delivered: {:?}",
        received_ids(&record)
    );
    // A late event for W0 (emitted already): dead-lettered with the reason.
    let late = json!([{"id": "late-1", "ts": rfc3339(w0 + 1), "amount": 1000.0, "country": "DE"}]);
    assert_eq!(
        client.post(&url).json(&late).send().await.unwrap().status(),
        200
    );
    let dlq = format!("http://{admin}/v1/sinks/per_minute/dlq");
    let letters = poll_json(&dlq, Duration::from_secs(20), |v| v["total"] == 1).await;
    assert_eq!(letters["total"], 1, "{letters}");
    let letter = &letters["dead_letters"][0];
    assert_eq!(
        (&letter["id"], &letter["reason"]["class"]),
        (&json!("late-1"), &json!("late"))
    );

    let buckets = settled_buckets(admin, Duration::from_secs(60)).await;
    let sum = |node, col| node_sum(&buckets, node, col);
    assert_eq!(sum("api", "passed"), 19);
    assert_eq!(
        (
            sum("per_minute", "aggregated"),
            sum("per_minute", "dead_lettered"),
            sum("per_minute", "passed"),
            sum("per_minute", "lost")
        ),
        (18, 1, 3, 0),
        "{buckets:?}"
    );
    assert_eq!(sum("partner", "delivered"), 3);
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "{buckets:?}");

    // A restart re-emits nothing: every window was emitted and checkpointed.
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    let again = run_pipeline(dir.path(), &file);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = again.sigterm(Duration::from_secs(20));
    assert!(status.success());
    receiver.sigterm(Duration::from_secs(10));

    let rows = dump_topic(dir.path(), "per-minute", 2);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut by_window: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for (id, v) in &rows {
        assert!(id.starts_with("per_minute-") && id.ends_with("-r0"), "{id}");
        let key = (
            v["window_start"].as_str().unwrap().to_owned(),
            v["country"].as_str().unwrap().to_owned(),
        );
        assert!(v["window_end"].as_str().unwrap() > key.0.as_str(), "{v}");
        by_window.insert(
            key,
            (v["orders"].as_u64().unwrap(), v["total"].as_f64().unwrap()),
        );
    }
    let want = BTreeMap::from([
        ((rfc3339(w0), "DE".to_owned()), (10, 55.0)),
        ((rfc3339(w0), "FR".to_owned()), (5, 10.0)),
        ((rfc3339(w1), "DE".to_owned()), (3, 300.0)),
    ]);
    assert_eq!(by_window, want);
    let delivered: HashSet<String> = received_ids(&record).into_keys().collect();
    let written: HashSet<String> = rows.into_iter().map(|(id, _)| id).collect();
    assert_eq!(delivered, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_dead_lettered_whole_and_a_late_one_revises_its_window() {
    // 10-minute windows; the test needs the previous one kept for updates (until the end
    // of the current one), so it does not start in the current one's last minute.
    let size = 600_000;
    let into = chrono::Utc::now().timestamp_millis() % size;
    if into > size - 60_000 {
        tokio::time::sleep(Duration::from_millis((size - into + 500) as u64)).await;
    }
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    // CAST fails on an id that is not a number: that event alone is refused.
    let file = pipeline_with(
        dir.path(),
        receiver.addr("receiver"),
        "{ size = \"10m\", allowed_lateness = \"0s\", idle_timeout = \"1s\", late = \"update\" }",
        "SELECT country, count(*) AS orders, sum(CAST(id AS BIGINT)) AS total FROM input GROUP BY country",
    );
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();
    let w0 = (chrono::Utc::now().timestamp_millis() / size - 1) * size;
    let event = |id: &str, at: i64| json!({"id": id, "ts": rfc3339(w0 + at), "amount": 1.0, "country": "DE"});
    let first = json!([event("1", 1), event("bad", 2), event("2", 3)]);
    let r = client.post(&url).json(&first).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len() == 1),
        "rows delivered: {:?}",
        received_ids(&record)
    );
    // The refused event's dead letter is the event itself, with the query's reason.
    let dlq = format!("http://{admin}/v1/sinks/per_minute/dlq");
    let letters = poll_json(&dlq, Duration::from_secs(20), |v| v["total"] == 1).await;
    assert_eq!(letters["total"], 1, "{letters}");
    let letter = &letters["dead_letters"][0];
    assert_eq!(
        (&letter["id"], &letter["reason"]["class"]),
        (&json!("bad"), &json!("sql")),
        "{letter}"
    );
    assert!(
        letter["reason"]["body"]
            .as_str()
            .unwrap()
            .contains("Cannot cast"),
        "{letter}"
    );

    // A late event for the emitted window: its next revision, with the same id stem.
    let late = json!([event("4", 4)]);
    assert_eq!(
        client.post(&url).json(&late).send().await.unwrap().status(),
        200
    );
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len() == 2),
        "rows delivered: {:?}",
        received_ids(&record)
    );
    // The revision ran without the refused event (not dead-lettered twice).
    let letters = get_json(&dlq).await;
    assert_eq!(letters["total"], 1, "{letters}");
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    receiver.sigterm(Duration::from_secs(10));
    let mut rows = dump_topic(dir.path(), "per-minute", 2);
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<(String, u64, i64)> = rows
        .iter()
        .map(|(id, v)| {
            let rev = id.rsplit('-').next().unwrap().to_owned();
            (
                rev,
                v["orders"].as_u64().unwrap(),
                v["total"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("r0".to_owned(), 2, 3), ("r1".to_owned(), 3, 7)],
        "{rows:?}"
    );
    let stem = |id: &str| id.rsplit_once('-').unwrap().0.to_owned();
    assert_eq!(stem(&rows[0].0), stem(&rows[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_results_stay_exact_through_sigkills_under_load() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = pipeline(
        dir.path(),
        receiver.addr("receiver"),
        "{ size = \"2s\", allowed_lateness = \"1s\", idle_timeout = \"1s\" }",
    );
    let first = run_pipeline(dir.path(), &file);
    let target = Arc::new(RwLock::new(format!(
        "http://{}/v1/events",
        first.addr("source api")
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(0usize));
    let mut producers = Vec::new();
    for task in 0..4 {
        let (target, stop, acked) = (target.clone(), stop.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = chrono::Utc::now().timestamp_millis();
                let body: Vec<Value> = (0..20)
                    .map(|i| {
                        let country = ["DE", "FR", "IT"][(seq as usize + i) % 3];
                        json!({"id": format!("p{task}-{seq}-{i}"), "ts": rfc3339(now), "amount": 1.0, "country": country})
                    })
                    .collect();
                let url = target.read().unwrap().clone();
                if let Ok(r) = client.post(&url).json(&body).send().await {
                    if r.status().is_success() {
                        *acked.lock().unwrap() += body.len();
                    }
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let kills = {
        let (dir, file, target) = (dir.path().to_path_buf(), file.clone(), target.clone());
        tokio::task::spawn_blocking(move || {
            let mut proc = first;
            for i in 0..4u64 {
                std::thread::sleep(Duration::from_millis(1500 + 400 * i));
                proc.sigkill();
                proc = run_pipeline(&dir, &file);
                *target.write().unwrap() = format!("http://{}/v1/events", proc.addr("source api"));
            }
            std::thread::sleep(Duration::from_millis(1500));
            proc
        })
    };
    let proc = kills.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    assert!(
        *acked.lock().unwrap() > 1000,
        "too little load to mean anything"
    );
    // Every window closes by the wall clock once the input is idle; wait for the
    // stage to commit all of its input, then stop.
    let admin = proc.addr("admin");
    let caught_up = |v: &Value| {
        v["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node"] == "per_minute" && n["backlog_records"] == 0)
        })
    };
    let url = format!("http://{admin}/v1/stats");
    let stats = poll_json(&url, Duration::from_secs(30), caught_up).await;
    assert!(caught_up(&stats), "{stats}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    receiver.sigterm(Duration::from_secs(10));

    // What was stored at ingest (acknowledged or not), by window and country.
    let stored = dump_topic(dir.path(), "orders", 2);
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    // An event's 2-second window and country.
    let window_of = |v: &Value| {
        let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        (
            ts.div_euclid(2000) * 2000,
            v["country"].as_str().unwrap().to_owned(),
        )
    };
    for (_, v) in &stored {
        *expected.entry(window_of(v)).or_default() += 1;
    }
    // Late events (none expected with 1 s of lateness, but allowed) are in the dead
    // letters (once or, re-read after a crash, more) and subtracted from their windows.
    let mut late = HashSet::new();
    for (_, v) in dump_topic(dir.path(), "__dlq.per_minute", 1) {
        if !late.insert(v["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        *expected.get_mut(&window_of(&v)).unwrap() -= 1;
    }
    expected.retain(|_, n| *n > 0);
    // What the stage wrote: each id with one content; one row per window and country.
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for (id, v) in dump_topic(dir.path(), "per-minute", 2) {
        if let Some(before) = by_id.get(&id) {
            assert_eq!(before, &v, "row {id} written twice with different contents");
        }
        by_id.insert(id, v);
    }
    let mut got: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for v in by_id.values() {
        let start = chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let key = (start, v["country"].as_str().unwrap().to_owned());
        assert!(
            got.insert(key.clone(), v["orders"].as_u64().unwrap())
                .is_none(),
            "two ids for {key:?}"
        );
    }
    eprintln!(
        "{} events stored ({} acknowledged), {} late, {} rows in {} windows",
        stored.len(),
        acked.lock().unwrap(),
        late.len(),
        by_id.len(),
        got.keys().map(|(w, _)| w).collect::<HashSet<_>>().len()
    );
    assert_eq!(got, expected);
    // Every row reached the destination.
    let delivered: HashSet<String> = received_ids(&record).into_keys().collect();
    let missing: Vec<&String> = by_id.keys().filter(|id| !delivered.contains(*id)).collect();
    assert!(missing.is_empty(), "rows not delivered: {missing:?}");
}
