//! Fingerprints of a source's topic and a stage's output (`fingerprint = {…}`): the
//! figures per event-time bucket are exact (counts, nulls, numbers, entropy), served by
//! `/v1/fingerprints`, and stay exact through a SIGKILL (no event counted twice or
//! missed: the counts equal the records read, and every acknowledged event is counted).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// A minute boundary ten minutes ago (event times far from now are refused at ingest).
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now / 60_000 * 60_000 - 600_000
}

fn pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
         fingerprint = { bucket = \"1m\", entropy = [\"country\"], checkpoint_every = \"1s\" }\n\
         [stages.big]\ninput = \"orders\"\noutput = \"big\"\n\
         fingerprint = { bucket = \"1m\", entropy = [\"country\"], checkpoint_every = \"1s\" }\n\
         [[stages.big.transforms]]\ntype = \"filter\"\ncondition = 'has(event.amount) && event.amount >= 10'\n",
    )
    .unwrap();
    file
}

async fn fingerprints(admin: std::net::SocketAddr, node: &str) -> Value {
    let t0 = t0();
    get_json(&format!(
        "http://{admin}/v1/fingerprints?node={node}&from={}&to={}",
        t0 - 3_600_000,
        t0 + 3_600_000
    ))
    .await
}

/// Waits until the node's fingerprint has read `records` events.
async fn counted(admin: std::net::SocketAddr, node: &str, records: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = fingerprints(admin, node).await;
        let read: u64 = f["nodes"][0]["read_to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        if read >= records {
            return f["nodes"][0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} read {read} of {records}: {f}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_per_bucket_are_exact_for_a_source_and_a_stage() {
    let dir = test_dir();
    let proc = run_pipeline(dir.path(), &pipeline(dir.path()));
    let (ingest, admin) = (proc.addr("source api"), proc.addr("admin"));
    let t0 = t0();
    // First minute: 8 events, countries de×4 fr×2 us×2 (entropy 1.5 bits), amounts
    // 0..70 step 10, email missing on 3. Second minute: 2 events, one country.
    let countries = ["de", "de", "fr", "us", "de", "fr", "us", "de"];
    let mut events: Vec<Value> = (0..8)
        .map(|i| {
            let mut e = json!({"id": format!("a{i}"), "ts": t0 + i * 1000,
                "country": countries[i as usize], "amount": i * 10});
            if i % 3 != 0 {
                e["email"] = json!(format!("u{i}@example.com"));
            }
            e
        })
        .collect();
    events.push(json!({"id": "b0", "ts": t0 + 60_000, "country": "se", "amount": 5.5}));
    events.push(json!({"id": "b1", "ts": t0 + 61_000, "country": "se", "amount": null}));
    let r = reqwest::Client::new()
        .post(format!("http://{ingest}/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let api = counted(admin, "sources.api", 10).await;
    assert_eq!(api["topic"], "orders");
    assert_eq!(api["bucket_ms"], 60_000);
    let b = api["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{api}");
    assert_eq!(
        (b[0]["start_ms"].as_i64(), b[0]["count"].as_u64()),
        (Some(t0), Some(8))
    );
    let f = &b[0]["fields"];
    assert_eq!(f["email"]["nulls"], 3, "{f}");
    assert_eq!(f["country"]["distinct"], 3);
    assert_eq!(f["country"]["entropy"]["exact"], true);
    assert!(
        (f["country"]["entropy"]["bits"].as_f64().unwrap() - 1.5).abs() < 1e-9,
        "{f}"
    );
    assert_eq!(
        (
            f["amount"]["min"].as_f64(),
            f["amount"]["max"].as_f64(),
            f["amount"]["mean"].as_f64()
        ),
        (Some(0.0), Some(70.0), Some(35.0))
    );
    assert_eq!(f["id"]["distinct"], 8);
    let f1 = &b[1]["fields"];
    assert_eq!(
        (b[1]["count"].as_u64(), f1["amount"]["nulls"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(f1["country"]["entropy"]["bits"], 0.0);
    assert_eq!(
        f1["email"],
        Value::Null,
        "a field never seen in a bucket is not listed"
    );

    // The stage kept amounts >= 10: 7 of the first minute; of the second, the event
    // whose amount is null (the filter cannot compare it, and errors never drop data).
    let big = counted(admin, "stages.big", 8).await;
    let b = big["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{big}");
    assert_eq!(b[0]["count"], 7);
    assert_eq!(b[0]["fields"]["amount"]["min"], 10.0);
    assert_eq!(b[1]["count"], 1);
    assert_eq!(b[1]["fields"]["amount"], Value::Null, "{big}");

    // The command line: a node's figures, and two nodes compared.
    let hifi = |args: &[&str]| {
        let out = std::process::Command::new(HIFI)
            .args(args)
            .args([
                "--admin",
                &admin.to_string(),
                "--from",
                &(t0 - 60_000).to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = off_workers(|| hifi(&["fingerprint", "show", "sources.api"]));
    assert!(shown.contains("8 events"), "{shown}");
    assert!(shown.contains("entropy 1.5000 bits"), "{shown}");
    let diff =
        off_workers(|| hifi(&["fingerprint", "diff", "sources.api", "stages.big", "--json"]));
    let diff: Value = serde_json::from_str(&diff).unwrap();
    let row = |metric: &str| {
        diff["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == metric && r["bucket"] == b[0]["start"])
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (row("count")["a"].as_f64(), row("count")["b"].as_f64()),
        (Some(8.0), Some(7.0))
    );
    assert_eq!(row("count")["change"], -0.125);
    assert_eq!(row("amount.min")["b"], 10.0);
    let table = off_workers(|| hifi(&["fingerprint", "diff", "sources.api", "stages.big"]));
    assert!(table.contains("-12.5 %"), "{table}");

    // Every fingerprinted node, and the errors.
    let all = get_json(&format!(
        "http://{admin}/v1/fingerprints?from={}",
        t0 - 60_000
    ))
    .await;
    assert_eq!(all["nodes"].as_array().unwrap().len(), 2, "{all}");
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{admin}/v1/fingerprints?node=sinks.nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("sources.api, stages.big"));
    let r = client
        .get(format!("http://{admin}/v1/fingerprints?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    proc.sigterm(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_neither_double_counts_nor_misses_an_event() {
    sigkill_exactness("[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n").await;
}

/// The same on Apache Kafka: checkpoints and positions in Kafka topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_sigkill_neither_double_counts_nor_misses_an_event() {
    let Some(brokers) = required("KAFKA_BROKERS") else {
        return;
    };
    let prefix = unique_prefix("fingerprints");
    sigkill_exactness(&format!(
        "[engine]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\npartitions = 2\n"
    ))
    .await;
}

async fn sigkill_exactness(engine: &str) {
    let dir = test_dir();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{engine}[admin]\nlisten = \"127.0.0.1:0\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             fingerprint = {{ bucket = \"1h\", checkpoint_every = \"1s\" }}\n"
        ),
    )
    .unwrap();
    let mut acked = std::collections::HashSet::new();
    for round in 0..3 {
        let proc = run_pipeline(dir.path(), &file);
        let ingest = format!("http://{}/v1/events", proc.addr("source api"));
        let producers = Producers::named(&format!("r{round}-"), 4, ingest);
        assert!(
            producers
                .run_past(Duration::from_millis(1500), 0, 200, Duration::from_secs(20))
                .await,
            "producers got too few acknowledgements"
        );
        // Killed between two checkpoints: what was counted since the last is counted
        // again after the restart, from the checkpoint's positions.
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        proc.sigkill();
        let (ids, _) = producers.stop().await;
        acked.extend(ids);
    }
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let node = counted(admin, "sources.api", acked.len() as u64).await;
    // Let it read whatever else was stored (unacknowledged but durable).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = {
        let f = get_json(&format!("http://{admin}/v1/fingerprints?node=sources.api")).await;
        let _ = node;
        f["nodes"][0].clone()
    };
    let read: u64 = node["read_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let counted: u64 = node["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum::<u64>()
        + node["too_old"].as_u64().unwrap();
    assert_eq!(
        counted, read,
        "every record read counted exactly once: {node}"
    );
    assert!(
        counted >= acked.len() as u64,
        "{counted} counted, {} acknowledged",
        acked.len()
    );
    let distinct: u64 = node["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["fields"]["id"]["distinct"].as_u64().unwrap())
        .sum();
    // 2.3 % standard error: 10 % is past four of them.
    assert!(
        (distinct as f64 - counted as f64).abs() <= counted as f64 * 0.1,
        "ids are distinct: {distinct} estimated of {counted}"
    );
    proc.sigterm(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_bucket_is_signalled_and_a_late_event_updates_it() {
    let dir = test_dir();
    let record = dir.path().join("webhook.jsonl");
    let webhook = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"1s\"\n\
             [signals]\nwebhook = \"http://{}/signals\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             fingerprint = {{ bucket = \"1m\", lateness = \"0s\", checkpoint_every = \"1s\" }}\n\
             [[sources.api.audits]]\nname = \"emails\"\ncheck = \"v.null_rate.email < 0.5\"\n\
             [[sources.api.audits]]\ncheck = \"v.count >= 5\"\n\
             [stages.copy]\ninput = \"orders\"\noutput = \"copied\"\n\
             fingerprint = {{ bucket = \"1m\", lateness = \"0s\", checkpoint_every = \"1s\" }}\n\
             [[stages.copy.audits]]\nname = \"all copied\"\ncheck = \"v.count == input.count\"\n\
             [[stages.copy.audits]]\nname = \"more than in\"\ncheck = \"v.count > input.count\"\n",
            webhook.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (ingest, admin) = (proc.addr("source api"), proc.addr("admin"));
    let t0 = t0();
    let post = |events: Value| {
        let url = format!("http://{ingest}/v1/events");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&events)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    // Five events in the bucket of t0, and one now: event time is past its end.
    post(json!((0..5)
        .map(|i| json!({"id": format!("a{i}"), "ts": t0 + i}))
        .collect::<Vec<_>>()))
    .await;
    post(json!([{"id": "now", "ts": t0 + 600_000}])).await;
    let signals = |kind: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = get_json(&format!("http://{admin}/v1/signals?type={kind}")).await;
            let list = v["signals"].as_array().unwrap().clone();
            if !list.is_empty() {
                return list;
            }
            assert!(std::time::Instant::now() < deadline, "no {kind} signal");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let complete = signals("complete").await;
    let c = complete
        .iter()
        .find(|c| c["source"] == "hifi/sources.api")
        .unwrap();
    assert_eq!(c["type"], "hifi.bucket.complete");
    assert_eq!(c["specversion"], "1.0");
    assert_eq!(c["source"], "hifi/sources.api");
    assert_eq!(c["id"], format!("orders/{t0}/complete"));
    assert_eq!(
        (
            c["data"]["count"].as_u64(),
            c["data"]["bucket_start_ms"].as_i64()
        ),
        (Some(5), Some(t0))
    );
    assert_eq!(c["data"]["fingerprint"]["count"], 5);
    // Its audits: no email at all (the check cannot be decided: failed), 5 events.
    let verdicts = c["data"]["audits"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2);
    assert_eq!(
        (
            verdicts[0]["audit"].as_str(),
            verdicts[0]["passed"].as_bool()
        ),
        (Some("emails"), Some(false))
    );
    assert!(verdicts[0]["error"].is_string(), "{verdicts:?}");
    assert_eq!(
        (
            verdicts[1]["audit"].as_str(),
            verdicts[1]["passed"].as_bool()
        ),
        (Some("audits[1]"), Some(true))
    );
    // The stage's bucket completes after its input's; its audits compare with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stage = loop {
        let all = signals("complete").await;
        if let Some(s) = all.iter().find(|c| c["source"] == "hifi/stages.copy") {
            break s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stage's bucket never completed: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let passed: Vec<_> = stage["data"]["audits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["audit"].as_str().unwrap().to_owned(),
                v["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        passed,
        [
            ("all copied".to_owned(), true),
            ("more than in".to_owned(), false)
        ]
    );
    let failed = get_json(&format!("http://{admin}/v1/signals?type=hifi.audit.failed")).await;
    let failed = failed["signals"].as_array().unwrap();
    let ids: Vec<&str> = failed.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&format!("orders/{t0}/audit/emails/5").as_str()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("copied/{t0}/audit/more than in/5").as_str()),
        "{ids:?}"
    );
    let f = failed
        .iter()
        .find(|f| f["data"]["audit"] == "more than in")
        .unwrap();
    assert_eq!(
        (
            f["data"]["v"]["count"].as_f64(),
            f["data"]["input"]["count"].as_f64()
        ),
        (Some(5.0), Some(5.0))
    );
    let fp = fingerprints(admin, "sources.api").await;
    let b0 = &fp["nodes"][0]["buckets"][0];
    assert_eq!(
        (
            b0["complete"].as_bool(),
            b0["audits"][0]["passed"].as_bool()
        ),
        (Some(true), Some(false))
    );

    // A late event into the complete bucket.
    post(json!([{"id": "late", "ts": t0 + 30_000}])).await;
    let updated = signals("updated").await;
    let u = updated
        .iter()
        .find(|u| u["source"] == "hifi/sources.api")
        .unwrap();
    assert_eq!(u["id"], format!("orders/{t0}/updated/6"));
    assert_eq!(u["data"]["late_events"], 1);
    assert_eq!(u["data"]["before"]["count"], 5);
    assert_eq!(u["data"]["after"]["count"], 6);

    // Both reached the webhook, as CloudEvents.
    let got = off_workers(|| {
        wait_until(Duration::from_secs(20), || {
            let ids = received_ids(&record);
            ids.contains_key(&format!("orders/{t0}/complete"))
                && ids.contains_key(&format!("orders/{t0}/updated/6"))
        })
    });
    assert!(got, "webhook got {:?}", received_ids(&record));
    let out = off_workers(|| {
        std::process::Command::new(HIFI)
            .args(["signals", "--admin", &admin.to_string()])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("complete: 5 events") && text.contains("updated: 1 late events, 6 in all"),
        "{text}"
    );
    // A failed audit says so (it was printed as a completion), with its error.
    assert!(
        text.contains("audit failed: \"more than in\" (v.count > input.count), 5 events")
            && text.contains("audit failed: \"emails\" (v.null_rate.email < 0.5): No such key"),
        "{text}"
    );
    proc.sigterm(Duration::from_secs(20));
    webhook.sigterm(Duration::from_secs(10));
}

/// A burst and then nothing: the quiet topics (read to their end, nothing new for
/// `idle_timeout`, the source's events acknowledged, the stage's input committed)
/// complete their last bucket by the wall clock, without waiting for a later event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_bucket_of_a_quiet_input_completes_without_a_later_event() {
    let dir = test_dir();
    let file = dir.path().join("pipeline.toml");
    let fingerprint = "fingerprint = { bucket = \"1m\", lateness = \"0s\", idle_timeout = \"1s\", checkpoint_every = \"1s\" }";
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"1s\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             {fingerprint}\n\
             [stages.copy]\ninput = \"orders\"\noutput = \"copied\"\n{fingerprint}\n"
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let (ingest, admin) = (proc.addr("source api"), proc.addr("admin"));
    let t0 = t0();
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("q{i}"), "ts": t0 + i}))
        .collect();
    support::versions::post_events(ingest, &events).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(&format!("http://{admin}/v1/signals?type=complete")).await;
        let list = v["signals"].as_array().unwrap();
        let of = |node: &str| {
            list.iter()
                .find(|c| c["source"] == format!("hifi/{node}"))
                .map(|c| {
                    (
                        c["data"]["bucket_start_ms"].as_i64(),
                        c["data"]["count"].as_u64(),
                    )
                })
        };
        if let (Some(source), Some(stage)) = (of("sources.api"), of("stages.copy")) {
            assert_eq!(source, (Some(t0), Some(5)));
            assert_eq!(stage, (Some(t0), Some(5)));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the last bucket never completed: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proc.sigterm(Duration::from_secs(20));
}

/// The webhook is fed from `__signals` at a committed position: signals emitted while
/// it is down — longer than a few attempts, and across a SIGKILL of hifi — reach it once
/// it is back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_a_webhook_that_was_down_across_a_sigkill() {
    webhook_outage("[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n").await;
}

/// The same on Apache Kafka: the webhook's position is a Kafka group's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_signals_reach_a_webhook_that_was_down_across_a_sigkill() {
    if let Some(engine) = support::versions::kafka_engine("signals") {
        webhook_outage(&engine).await;
    }
}

async fn webhook_outage(engine: &str) {
    let dir = test_dir();
    let record = dir.path().join("webhook.jsonl");
    let webhook = free_addr();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{engine}\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"1s\"\n\
             [signals]\nwebhook = \"http://{webhook}/signals\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             fingerprint = {{ bucket = \"1m\", lateness = \"0s\", idle_timeout = \"1s\", checkpoint_every = \"1s\" }}\n"
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let t0 = t0();
    let post = support::versions::post_events;
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("a{i}"), "ts": t0 + i}))
        .collect();
    post(proc.addr("source api"), &events).await;
    let signalled = |admin: std::net::SocketAddr, id: String| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = get_json(&format!("http://{admin}/v1/signals")).await;
            if v["signals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == id)
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no signal {id}: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let complete = format!("orders/{t0}/complete");
    signalled(proc.addr("admin"), complete.clone()).await;
    // Longer than the few attempts the webhook used to get, then a crash.
    tokio::time::sleep(Duration::from_secs(4)).await;
    proc.sigkill();
    let proc = run_pipeline(dir.path(), &file);
    post(
        proc.addr("source api"),
        &[json!({"id": "late", "ts": t0 + 30_000})],
    )
    .await;
    let updated = format!("orders/{t0}/updated/6");
    signalled(proc.addr("admin"), updated.clone()).await;
    assert!(received_records(&record).is_empty());

    let receiver = run_receiver(dir.path(), &webhook.to_string(), &record);
    let got = off_workers(|| {
        wait_until(Duration::from_secs(60), || {
            let ids = received_ids(&record);
            ids.contains_key(&complete) && ids.contains_key(&updated)
        })
    });
    assert!(got, "the webhook got {:?}", received_ids(&record));
    let order: Vec<String> = received_records(&record)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let at = |id: &str| order.iter().position(|x| x == id).unwrap();
    assert!(at(&complete) < at(&updated), "in order: {order:?}");
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// Two processes (`--only`) each fingerprint a node and signal its buckets; one of them
/// feeds the webhook (the owner of `__signals` in its group): each signal reaches it
/// once, not once per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_two_processes_send_each_signal_to_the_webhook_once() {
    let Some(engine) = support::versions::kafka_engine("signals-two") else {
        return;
    };
    let dir = test_dir();
    let record = dir.path().join("webhook.jsonl");
    let webhook = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("pipeline.toml");
    let fingerprint =
        "fingerprint = { bucket = \"1m\", lateness = \"0s\", checkpoint_every = \"1s\" }";
    std::fs::write(
        &file,
        format!(
            "{engine}[admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"1s\"\n\
             [signals]\nwebhook = \"http://{}/signals\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             {fingerprint}\n\
             [stages.copy]\ninput = \"orders\"\noutput = \"copied\"\n{fingerprint}\n",
            webhook.addr("receiver")
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let run = |only: &str| {
        Proc::start(
            &["run", f, "--only", only, "--admin", "127.0.0.1:0"],
            "hifi is running",
            dir.path(),
        )
    };
    let (ingest, copier) = (
        run("sources.api,fingerprints.sources.api"),
        run("stages.copy,fingerprints.stages.copy"),
    );
    // The webhook's group settles first: a rebalance during a POST sends it again (as
    // documented), which this test is not about.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t0 = t0();
    let mut events: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("a{i}"), "ts": t0 + i}))
        .collect();
    events.push(json!({"id": "now", "ts": t0 + 600_000}));
    support::versions::post_events(ingest.addr("source api"), &events).await;
    let ids = [
        format!("orders/{t0}/complete"),
        format!("copied/{t0}/complete"),
    ];
    let got = off_workers(|| {
        wait_until(Duration::from_secs(60), || {
            let got = received_ids(&record);
            ids.iter().all(|id| got.contains_key(id))
        })
    });
    assert!(got, "the webhook got {:?}", received_ids(&record));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = received_ids(&record);
    for id in &ids {
        assert_eq!(got[id], 1, "{id} sent more than once: {got:?}");
    }
    ingest.sigterm(Duration::from_secs(20));
    copier.sigterm(Duration::from_secs(20));
    webhook.sigterm(Duration::from_secs(10));
}
