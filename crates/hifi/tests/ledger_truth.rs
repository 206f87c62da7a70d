//! The stream's own loss figures agree with the truth: injected loss is found exactly,
//! at exactly the node that lost it, by the loss tables, trace, `hifi loss` and alarms.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_loss_is_found_exactly_at_the_node_that_lost_it() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let file = pipeline_file_with(
        dir.path(),
        &sink_url,
        "",
        Some("test_drop_ids_matching = \"^drop-\""),
    );
    // The loss alarm webhook is down when the alarms come: started later, below.
    let hook = free_addr();
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[ledger]\n",
        &format!("[ledger]\nalarm_webhook = \"http://{hook}/alarms\"\n"),
    );
    std::fs::write(&file, text).unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();
    let mut dropped = BTreeSet::new();
    for b in 0..20 {
        let ids: Vec<String> = (0..10)
            .map(|i| {
                if (b * 10 + i) % 29 == 0 {
                    format!("drop-{b}-{i}")
                } else {
                    format!("keep-{b}-{i}")
                }
            })
            .collect();
        dropped.extend(ids.iter().filter(|id| id.starts_with("drop-")).cloned());
        let body: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(dropped.len(), 7);

    let buckets = settled_buckets(admin, Duration::from_secs(30)).await;
    assert_eq!(node_sum(&buckets, "clean", "lost"), 7, "{buckets:?}");
    assert_eq!(node_sum(&buckets, "api", "lost"), 0);
    assert_eq!(node_sum(&buckets, "out", "lost"), 0);
    assert_eq!(node_sum(&buckets, "out", "delivered"), 193);
    let e2e: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(e2e, 7);
    // The lost list names exactly the dropped events, and trace says where they stopped.
    let mut lost_ids = BTreeSet::new();
    for l in buckets
        .iter()
        .flat_map(|b| b["lost"].as_array().cloned().unwrap_or_default())
    {
        assert_eq!(l["node"], "clean");
        let t = get_json(&format!(
            "http://{admin}/v1/events/{}/trace",
            l["origin"].as_str().unwrap()
        ))
        .await;
        lost_ids.insert(t["id"].as_str().unwrap().to_owned());
        assert!(t["note"].as_str().unwrap().contains("lost at clean"), "{t}");
    }
    assert_eq!(lost_ids, dropped);
    let out = std::process::Command::new(HIFI)
        .args(["trace", "--admin", &admin.to_string(), "--id", "drop-0-0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("lost at clean"),
        "{text}"
    );
    let out = std::process::Command::new(HIFI)
        .args(["loss", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "hifi loss exits 1 when a settled bucket lost events"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("lost:"));
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hifi_ledger_loss_alarms_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(std::fs::read_to_string(&proc.log)
        .unwrap()
        .contains("LOSS ALARM"));
    // Down when the alarms came, and hifi killed since: the webhook still gets each
    // alarm once, tables that name the 7 lost events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proc.sigkill();
    let proc = run_pipeline(dir.path(), &file);
    let tables = alarm_webhook(hook).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let got = tables.lock().unwrap().clone();
        let lost: std::collections::BTreeMap<String, u64> = got
            .iter()
            .map(|t| (t["start"].to_string(), t["e2e_lost"].as_u64().unwrap()))
            .collect();
        if lost.values().sum::<u64>() == 7 {
            // Give a second alarm of a bucket the time to come, then none must have.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                tables.lock().unwrap().len(),
                lost.len(),
                "one alarm per bucket: {lost:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alarm webhook got {lost:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_transform_grows_past_the_record_limit_is_dead_lettered_and_re_drivable() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    // Limit 8 KiB; ingest accepts up to 4 KiB (headroom). The stage adds a 5 000-byte
    // field: small events stay under 8 KiB, 3 000-byte ones grow past it.
    let stage = format!(
        "[[stages.clean.transforms]]\ntype = \"set\"\nfield = \"/extra\"\nvalue = \"{}\"\n",
        "z".repeat(5000)
    );
    let file = pipeline_file_with(dir.path(), &sink_url, "", Some(&stage));
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nrecord_bytes_max = \"8KiB\"",
    );
    std::fs::write(&file, &text).unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    let client = reqwest::Client::new();
    let huge = serde_json::json!([{"id": "huge", "pad": "x".repeat(5000)}]);
    assert_eq!(
        client.post(&url).json(&huge).send().await.unwrap().status(),
        413,
        "over the ingest limit"
    );
    let mut body: Vec<_> = (0..5)
        .map(|i| serde_json::json!({"id": format!("small-{i}"), "pad": "y".repeat(100)}))
        .collect();
    body.extend(
        (0..3).map(|i| serde_json::json!({"id": format!("big-{i}"), "pad": "y".repeat(3000)})),
    );
    assert_eq!(
        client.post(&url).json(&body).send().await.unwrap().status(),
        200
    );
    assert!(wait_until(Duration::from_secs(20), || received_ids(
        &record
    )
    .len()
        == 5));
    let buckets = settled_buckets(admin, Duration::from_secs(30)).await;
    assert_eq!(
        node_sum(&buckets, "clean", "dead_lettered"),
        3,
        "{buckets:?}"
    );
    assert_eq!(node_sum(&buckets, "clean", "lost"), 0, "{buckets:?}");
    assert_eq!(node_sum(&buckets, "out", "delivered"), 5);
    let e2e: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(e2e, 0, "dead letters are not loss");
    let letters = get_json(&format!("http://{admin}/v1/sinks/clean/dlq")).await;
    let ids: BTreeSet<String> = letters["dead_letters"]
        .as_array()
        .unwrap_or_else(|| panic!("{letters}"))
        .iter()
        .map(|d| {
            assert_eq!(d["reason"]["class"], "oversize", "{d}");
            d["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, (0..3).map(|i| format!("big-{i}")).collect());
    assert!(received_ids(&record)
        .keys()
        .all(|id| id.starts_with("small-")));
    proc.sigterm(Duration::from_secs(20));

    // The stage is fixed (no more padding); a re-drive sends the letters through it.
    let fixed = text.replace(&stage, "");
    std::fs::write(&file, fixed).unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let out = std::process::Command::new(HIFI)
        .args(["dlq", "redrive", "clean", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-drove 3"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(20), || received_ids(&record).len() == 8),
        "re-driven events did not arrive: {:?}",
        received_ids(&record)
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// A stored value no stage can read (here written to the topic by hand, as an event
/// stored before ingest checked the JSON limits) is dead-lettered by a stage that
/// redacts, never passed on unredacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_stage_cannot_read_is_dead_lettered_never_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let poisoned = r#"{"id":"poison","card":"4111111111111111","x":"\ud800"}"#;
    let mut append = std::process::Command::new(HIFI)
        .args([
            "log",
            "append",
            "data",
            "--topic",
            "events",
            "--partitions",
            "4",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(append.stdin.take().unwrap(), "{poisoned}").unwrap();
    assert!(append.wait().unwrap().success());
    let stage =
        "[[stages.clean.transforms]]\ntype = \"redact\"\nfield = \"/card\"\nmode = \"mask\"\n";
    let file = pipeline_file_with(dir.path(), &sink_url, "", Some(stage));
    let proc = run_pipeline(dir.path(), &file);
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    // Ingest refuses such a value outright now.
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(poisoned.replace("poison", "poison-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("lone UTF-16 surrogate"));
    let ok = serde_json::json!([{"id": "fine", "card": "4111111111111111"}]);
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(Duration::from_secs(20), || received_ids(
        &record
    )
    .len()
        == 1));
    let letters = get_json(&format!("http://{admin}/v1/sinks/clean/dlq")).await;
    let list = letters["dead_letters"]
        .as_array()
        .unwrap_or_else(|| panic!("{letters}"));
    assert_eq!(list.len(), 1, "{letters}");
    assert_eq!(list[0]["reason"]["class"], "unreadable", "{letters}");
    let received = std::fs::read_to_string(&record).unwrap();
    assert!(!received.contains("4111111111111111"), "{received}");
    assert!(!received.contains("poison"), "{received}");
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// Events waiting behind a destination outage are not loss: a bucket does not settle
/// while the sink has not committed past them (however long past `settle_after`), and
/// once the destination is back everything is delivered and the tables are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_in_a_backlog_are_never_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    // The destination is down: nothing listens on its port yet.
    let addr = free_addr();
    let file = pipeline_file(dir.path(), &format!("http://{addr}/ingest"), "", true);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();
    for b in 0..10 {
        let body: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"id": format!("w-{b}-{i}")}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
    }
    // Well past settle_after (2 s): the buckets stay open, nothing is called lost.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let v = get_json(&format!("http://{admin}/v1/loss?lost=true")).await;
    let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
    assert!(!buckets.is_empty(), "{v}");
    for b in &buckets {
        assert_eq!(b["settled"], false, "settled during the outage: {b}");
    }
    // The destination comes back (on the same address); everything arrives.
    let receiver = run_receiver(dir.path(), &addr.to_string(), &record);
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len()
            == 200),
        "not all arrived: {}",
        received_ids(&record).len()
    );
    let buckets = settled_buckets(admin, Duration::from_secs(30)).await;
    assert_eq!(node_sum(&buckets, "out", "delivered"), 200, "{buckets:?}");
    let e2e: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(e2e, 0, "{buckets:?}");
    for name in ["hifi_ledger_loss_alarms", "hifi_ledger_lost_events"] {
        assert_eq!(metric(admin, name).await, 0.0, "{name}");
    }
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// A sink down for longer than the topic's retention loses nothing: retention keeps the
/// segments it has not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_past_retention_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let addr = free_addr();
    // The sink holds the events: moved to its retry topic, they would let it commit
    // past them.
    let file = pipeline_file_holding(dir.path(), addr);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\npartitions = 1\nsegment_bytes = \"4KiB\"\nretention = \"1s\"\n\
         retention_check_interval = \"1s\"\npreallocate_bytes = \"0\"",
    );
    std::fs::write(&file, text).unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    for b in 0..20 {
        let body: Vec<_> = (0..10)
            .map(|i| serde_json::json!({"id": format!("r-{b}-{i}"), "pad": "p".repeat(60)}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
    }
    // Several segments, all older than the retention, several retention runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let segments = std::fs::read_dir(dir.path().join("data/topics/events/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments > 3, "the test needs several segments: {segments}");
    let receiver = run_receiver(dir.path(), &addr.to_string(), &record);
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len()
            == 200),
        "delivered {} of 200",
        received_ids(&record).len()
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// A webhook at `addr` keeping every JSON body POSTed to `/alarms`.
async fn alarm_webhook(
    addr: std::net::SocketAddr,
) -> std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/alarms",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}
