//! Stage versions with real processes: a changed definition backfills beside the
//! published version; publishing (manual, interrupted by SIGKILL, then again) loses no
//! acknowledged event; a version that fails a blocking audit stays unpublished and a
//! good one is published automatically.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::versions::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_backfills_beside_the_published_one_and_publishing_loses_nothing() {
    publish_without_loss(EMBEDDED).await;
}

/// The same on Apache Kafka (3 brokers): registry, positions and cuts in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_new_version_backfills_and_publishing_loses_nothing() {
    if let Some(engine) = kafka_engine("versions") {
        publish_without_loss(&engine).await;
    }
}

async fn publish_without_loss(engine: &str) {
    let embedded = engine == EMBEDDED;
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    // A slow destination (20 events per 40 ms request, one at a time): the sink is
    // behind when the publish comes, so the cut decides what it still gets.
    let receiver = start_receiver(dir.path(), &record, &["--record-data", "--latency", "40ms"]);
    let rx = receiver.addr("receiver").to_string();
    let versions = "versions = { backfill_from = \"retention\" }";
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 60_000;

    // Version one: published at once, delivers.
    let file = write_file_on(engine, dir.path(), &rx, "one", versions, false);
    let proc = run_pipeline(dir.path(), &file);
    let producers = Producers::named(
        "a",
        2,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(800), 0, 100, Duration::from_secs(20))
            .await
    );
    let (a, _) = producers.stop().await;
    all_arrive(&record, &a).await;
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(20));

    // Version two beside it, under live traffic: it backfills every retained event.
    let paused = format!("{versions}\ntest_publish_pause_ms = 2000");
    let file = write_file_on(engine, dir.path(), &rx, "two", &paused, false);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let producers = Producers::named("b", 2, ingest.clone());
    let v = candidate_live(admin, "the candidate catches up").await;
    assert_eq!(v["published"], v1.as_str(), "{v:#}");
    let v2 = v["candidate"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let cand = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == v2.as_str())
        .unwrap()
        .clone();
    assert!(
        cand["diff_against_published"]
            .as_str()
            .unwrap()
            .contains("+value = \"two\""),
        "{cand:#}"
    );
    assert_eq!(cand["topic"], format!("big-orders.v{v2}"));
    let stages: HashSet<String> = received_records(&record)
        .iter()
        .map(|r| r["data"]["stage"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        stages,
        HashSet::from(["one".to_owned()]),
        "the published version serves until published"
    );

    // A publish killed after its cuts and positions are written, before it is recorded
    // (the test hook holds it there 2 s): version one stays published.
    let proc = kill_during_publish(proc, &v2, dir.path(), &file).await;
    let admin = proc.addr("admin");
    let v = big(admin).await;
    assert_eq!(v["published"], v1.as_str(), "{v:#}");
    assert_eq!(v["candidate"], v2.as_str(), "{v:#}");
    // Published by `hifi publish`, then killed at once: it starts on version two.
    // With --redeliver-from before every event: all of them come again from version
    // two, with their ids and `hifiversion`.
    let out = publish_cli(admin, &v2, &["--redeliver-from", &started_ms.to_string()]);
    assert!(
        out.status.success(),
        "hifi publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    proc.sigkill();
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let v = big(admin).await;
    assert_eq!(v["published"], v2.as_str(), "{v:#}");
    assert!(v["candidate"].is_null(), "{v:#}");
    let (b, _) = producers.stop().await;
    let behind = b.len() + a.len() - received_ids(&record).len().min(a.len() + b.len());
    println!("the sink was about {behind} events behind after the publish");

    // After the publish: new events go through version two.
    let producers = Producers::named("c", 2, ingest);
    assert!(
        producers
            .run_past(Duration::from_millis(800), 0, 100, Duration::from_secs(20))
            .await
    );
    let (c, _) = producers.stop().await;
    let every: HashSet<String> = a.iter().chain(&b).chain(&c).cloned().collect();
    let got = all_arrive(&record, &every).await;
    let twice = got.values().filter(|&&n| n > 1).count();
    println!(
        "{} acknowledged, all delivered; {twice} delivered more than once",
        every.len()
    );
    let mut corrected = HashSet::new();
    for r in received_records(&record) {
        let id = r["id"].as_str().unwrap();
        if c.contains(id) {
            assert_eq!(r["data"]["stage"], "two", "{r}");
        }
        let version = match r["data"]["stage"].as_str() {
            Some("one") => &v1,
            _ => &v2,
        };
        assert_eq!(r["hifiversion"], version.as_str(), "{r}");
        if r["data"]["stage"] == "two" {
            corrected.insert(id.to_owned());
        }
    }
    let missing = every.difference(&corrected).count();
    assert_eq!(missing, 0, "events not delivered again from version two");
    // The ledger counts the re-deliveries apart: at most the events version one
    // delivered (those below the cut; one delivered but not committed before a kill
    // comes again as a first delivery), and nothing lost.
    let from_one: HashSet<String> = received_records(&record)
        .iter()
        .filter(|r| r["data"]["stage"] == "one")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let buckets = settled_buckets(admin, Duration::from_secs(90)).await;
    let redelivered = node_sum(&buckets, "out", "redelivered");
    println!(
        "the ledger counted {redelivered} re-deliveries; version one delivered {}",
        from_one.len()
    );
    assert!(
        redelivered > 0 && redelivered as usize <= from_one.len(),
        "{redelivered} re-deliveries counted, {} delivered by version one",
        from_one.len()
    );
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "{buckets:?}");
    proc.sigterm(Duration::from_secs(20));

    if !embedded {
        return; // `hifi log dump` reads the embedded log only
    }
    // Both versions hold every event of the range they cover.
    let t1 = topic_ids(dir.path(), &format!("big-orders.v{v1}"));
    let t2 = topic_ids(dir.path(), &format!("big-orders.v{v2}"));
    assert!(a.is_subset(&t1), "version one has every event of its time");
    assert!(
        every.is_subset(&t2),
        "version two backfilled and followed every event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_audit_keeps_a_bad_version_out_and_a_good_one_is_published_automatically() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let audited = "versions = { publish = \"auto\" }\n\
        fingerprint = { bucket = \"1m\", lateness = \"0s\", idle_timeout = \"2s\", entropy = [\"country\"], checkpoint_every = \"1s\" }\n\
        [[stages.big.audits]]\nname = \"country entropy\"\nblocking = true\n\
        check = \"!has(published.count) || abs(v.entropy.country - published.entropy.country) <= 0.1 * published.entropy.country\"\n";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now / 60_000 * 60_000 - 600_000;
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let country = ["de", "fr", "us", "jp"][i % 4];
            json!({"id": format!("e{i}"), "ts": t0 + i as i64, "country": country})
        })
        .chain([json!({"id": "now", "ts": now, "country": "de"})])
        .collect();

    let file = write_file(dir.path(), &rx, "one", audited, true);
    let proc = run_pipeline(dir.path(), &file);
    post_events(proc.addr("source api"), &events).await;
    let ids: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    all_arrive(&record, &ids).await;
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(20));

    // A bad version drops `country`: its entropy audit fails, it stays a candidate.
    let bad =
        format!("{audited}[[stages.big.transforms]]\ntype = \"remove\"\nfields = [\"/country\"]\n");
    let file = write_file(dir.path(), &rx, "bad", &bad, true);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = wait_for(
        admin,
        Duration::from_secs(60),
        "the bad version is blocked",
        |v| candidate_state(v) == "blocked",
    )
    .await;
    assert_eq!(v["published"], v1.as_str());
    let cand = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["state"] == "candidate")
        .unwrap()
        .clone();
    let blocked = &cand["status"]["blocked_by"][0];
    assert_eq!(blocked["audit"], "country entropy", "{cand:#}");
    assert_eq!(
        blocked["count"], 40,
        "the bucket of t0 with its count: {cand:#}"
    );
    let bad_version = cand["version"].as_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args(["versions", "big", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("(40 events) audit \"country entropy\"")
            && listed.contains("failed: No such key: country"),
        "the alarm names the bucket, its count and the error: {listed}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args([
            "fingerprint",
            "diff",
            &format!("big@{v1}"),
            &format!("big@{bad_version}"),
            "--json",
            "--admin",
            &admin.to_string(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("country.entropy"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `/v1/fingerprints?version=`: each version's own fingerprint.
    let fp = |q: String| async move {
        let r = reqwest::get(format!("http://{admin}/v1/fingerprints?{q}"))
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or_default(),
        )
    };
    let (status, body) = fp(format!("node=stages.big&version={bad_version}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["nodes"][0]["node"],
        format!("stages.big-v{bad_version}")
    );
    let (status, body) = fp(format!("node=big&version=v{v1}")).await;
    assert_eq!(
        (status, &body["nodes"][0]["node"]),
        (200, &json!("stages.big")),
        "{body}"
    );
    let (status, body) = fp("node=stages.big&version=0000".into()).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no version 0000"),
        "{body}"
    );
    let (status, _) = fp(format!("version={v1}")).await;
    assert_eq!(status, 400);
    post_events(
        proc.addr("source api"),
        &[json!({"id": "during-bad", "ts": now, "country": "fr"})],
    )
    .await;
    let got = all_arrive(&record, &HashSet::from(["during-bad".to_owned()])).await;
    assert!(got.contains_key("during-bad"));
    let served: Vec<Value> = received_records(&record)
        .into_iter()
        .filter(|r| r["id"] == "during-bad")
        .collect();
    assert_eq!(
        served[0]["data"]["stage"], "one",
        "the published version keeps serving"
    );
    proc.sigterm(Duration::from_secs(20));

    // A good version keeps the entropy: published automatically once its buckets pass,
    // and (`redeliver = true`) it delivers again every event it backfilled.
    let redelivering = audited.replace(
        "publish = \"auto\" }",
        "publish = \"auto\", redeliver = true }",
    );
    assert_ne!(redelivering, audited);
    let file = write_file(dir.path(), &rx, "good", &redelivering, true);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    // No event follows: the buckets complete on the quiet input by the wall clock
    // (`idle_timeout`), the last one too.
    let v = wait_for(
        admin,
        Duration::from_secs(60),
        "the good version is published",
        |v| v["published"].is_string() && v["candidate"].is_null() && v["published"] != v1.as_str(),
    )
    .await;
    let good = v["published"].as_str().unwrap().to_owned();
    post_events(
        proc.addr("source api"),
        &[json!({"id": "after-good", "ts": now, "country": "us"})],
    )
    .await;
    all_arrive(&record, &HashSet::from(["after-good".to_owned()])).await;
    let served: Vec<Value> = received_records(&record)
        .into_iter()
        .filter(|r| r["id"] == "after-good")
        .collect();
    assert_eq!(served[0]["data"]["stage"], "good");
    // Every event of version one comes again from the good version, same id.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut corrected = HashSet::new();
        for r in received_records(&record) {
            if r["data"]["stage"] == "good" {
                assert_eq!(r["hifiversion"], good.as_str(), "{r}");
                corrected.insert(r["id"].as_str().unwrap().to_owned());
            }
        }
        let missing: Vec<_> = ids.difference(&corrected).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered again by the automatic publish: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let states: Vec<(String, String)> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["version"].as_str().unwrap().to_owned(),
                x["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(good, "published".to_owned())),
        "{states:?}"
    );
    assert!(states.contains(&(v1, "retired".to_owned())), "{states:?}");
    proc.sigterm(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_gaining_versions_keeps_its_readers_backlog() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--latency", "40ms"]);
    let rx = receiver.addr("receiver").to_string();
    // Unversioned, with a slow destination: the sink is behind when it stops.
    let file = write_file(dir.path(), &rx, "one", "", false);
    let proc = run_pipeline(dir.path(), &file);
    let producers = Producers::named(
        "a",
        2,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(800), 0, 100, Duration::from_secs(20))
            .await
    );
    let (a, _) = producers.stop().await;
    proc.sigterm(Duration::from_secs(20));
    let behind = a.len() - received_ids(&record).len().min(a.len());
    println!(
        "{behind} of {} events not delivered yet when versions were added",
        a.len()
    );
    assert!(behind > 0, "the test needs a backlog");

    // The same definition with versions: its first version keeps writing big-orders.
    let file = write_file(dir.path(), &rx, "one", "versions = {}", false);
    let proc = run_pipeline(dir.path(), &file);
    let v = big(proc.addr("admin")).await;
    assert!(v["candidate"].is_null(), "{v:#}");
    assert_eq!(v["versions"][0]["topic"], "big-orders", "{v:#}");
    let producers = Producers::named(
        "b",
        2,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(500), 0, 50, Duration::from_secs(20))
            .await
    );
    let (b, _) = producers.stop().await;
    let every: HashSet<String> = a.iter().chain(&b).cloned().collect();
    all_arrive(&record, &every).await;
    proc.sigterm(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reading_a_republished_output_recomputes_itself() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let write = |stage: &str| {
        let file = dir.path().join("pipeline.toml");
        std::fs::write(
            &file,
            format!(
                "{EMBEDDED}[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
                 [stages.big]\ninput = \"events\"\noutput = \"big-orders\"\nversions = {{ backfill_from = \"1h\" }}\n\
                 [[stages.big.transforms]]\ntype = \"set\"\nfield = \"/stage\"\nvalue = \"{stage}\"\n\
                 [stages.tagged]\ninput = \"big-orders\"\noutput = \"tagged\"\nversions = {{ publish = \"auto\" }}\n\
                 [[stages.tagged.transforms]]\ntype = \"set\"\nfield = \"/tagged\"\nvalue = true\n\
                 [sinks.out]\ntype = \"http\"\ninput = \"tagged\"\nurl = \"http://{rx}/ingest\"\n"
            ),
        )
        .unwrap();
        file
    };
    let versions_of = |admin: std::net::SocketAddr, stage: &'static str| async move {
        get_json(&format!("http://{admin}/v1/versions?stage={stage}")).await["stages"][0].clone()
    };
    let file = write("one");
    let proc = run_pipeline(dir.path(), &file);
    let producers = Producers::named(
        "a",
        1,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(300), 0, 30, Duration::from_secs(20))
            .await
    );
    let (a, _) = producers.stop().await;
    all_arrive(&record, &a).await;
    let tagged_v1 = versions_of(proc.addr("admin"), "tagged").await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(20));

    // A new version of `big`, published by hand: `tagged` then reads a corrected input,
    // so it starts a version of its own, which backfills and is published by itself.
    let file = write("two");
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = candidate_live(admin, "big's candidate catches up").await;
    let big_v2 = v["candidate"].as_str().unwrap().to_owned();
    // A producer sends through both publishes (big's by hand, tagged's automatic): the
    // listeners stay bound, so every request is answered, none refused.
    let across = Producers::named(
        "m",
        1,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    let out = publish_cli(admin, &big_v2, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let tagged = loop {
        let v = match reqwest::get(format!("http://{admin}/v1/versions?stage=tagged")).await {
            Ok(r) => r.json::<Value>().await.unwrap_or_default()["stages"][0].clone(),
            Err(_) => Value::Null,
        };
        if v["published"].as_str().is_some_and(|p| p != tagged_v1) && v["candidate"].is_null() {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "tagged never re-versioned itself: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (m, refused) = across.stop().await;
    assert!(!m.is_empty());
    assert_eq!(refused, 0, "requests not answered 200 across two publishes");
    let newest = &tagged["versions"][0];
    assert_eq!(newest["input_version"], big_v2.as_str(), "{tagged:#}");
    assert_eq!(
        newest["diff_against_published"], "",
        "same definition, new input: {tagged:#}"
    );
    // Only its input changed: it recomputes from where big's new version began (an
    // hour back), not from its own `backfill_from` (all retained input).
    let big = versions_of(admin, "big").await;
    let big_from = big["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == big_v2.as_str())
        .unwrap()["backfill_from"]
        .clone();
    assert!(big_from.is_string(), "{big:#}");
    assert_eq!(newest["backfill_from"], big_from, "{tagged:#}");

    let producers = Producers::named(
        "b",
        1,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(300), 0, 30, Duration::from_secs(20))
            .await
    );
    let (b, _) = producers.stop().await;
    let every: HashSet<String> = a.iter().chain(&b).chain(&m).cloned().collect();
    all_arrive(&record, &every).await;
    for r in received_records(&record) {
        if b.contains(r["id"].as_str().unwrap()) {
            assert_eq!(r["data"]["stage"], "two", "{r}");
            assert_eq!(r["data"]["tagged"], true, "{r}");
            assert_eq!(r["hifiversion"], newest["version"], "{r}");
        }
    }
    proc.sigterm(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_backfill_resumes_it_and_its_fingerprint_stays_exact() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &[]);
    let rx = receiver.addr("receiver").to_string();
    let file = write_file(dir.path(), &rx, "one", "versions = {}", false);
    let proc = run_pipeline(dir.path(), &file);
    let producers = Producers::named(
        "a",
        2,
        format!("http://{}/v1/events", proc.addr("source api")),
    );
    assert!(
        producers
            .run_past(Duration::from_millis(500), 0, 1500, Duration::from_secs(20))
            .await
    );
    let (a, _) = producers.stop().await;
    proc.sigterm(Duration::from_secs(20));

    // A backfill of 400 events/s, killed halfway, then resumed.
    let slow = "versions = { backfill_max_rate = 400 }\nbatch_max_events = 100\n\
                fingerprint = { checkpoint_every = \"1s\" }";
    let file = write_file(dir.path(), &rx, "two", slow, false);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = wait_for(
        admin,
        Duration::from_secs(30),
        "the backfill is under way",
        |v| {
            v["versions"][0]["status"]["done"]
                .as_u64()
                .is_some_and(|d| d >= 300)
        },
    )
    .await;
    let v2 = v["candidate"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await; // a fingerprint checkpoint
    proc.sigkill();
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    candidate_live(admin, "the backfill resumes and ends").await;
    // Its fingerprint has counted all it wrote (a checkpoint after the last record).
    let node = format!("stages.big-v{v2}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        let f = get_json(&format!("http://{admin}/v1/fingerprints?node={node}")).await;
        let n: u64 = f["nodes"][0]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        if n as usize >= a.len() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await; // its checkpoint is written
    proc.sigterm(Duration::from_secs(20));
    let (ids, records) = topic_records(dir.path(), &format!("big-orders.v{v2}"));
    assert!(
        a.is_subset(&ids),
        "{} acknowledged events not in the new version",
        a.difference(&ids).count()
    );
    assert_eq!(
        counted as usize,
        records,
        "the fingerprint counted every record of the version's topic once ({} distinct ids)",
        ids.len()
    );
    println!(
        "{} events; the new version's topic holds {records} records after a SIGKILL mid-backfill",
        a.len()
    );

    // Taking `versions` off the stage is refused: its readers follow the published topic.
    let file = write_file(dir.path(), &rx, "two", "", false);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("has no `versions` any more"),
        "{said}"
    );
}

/// A version whose backfill began after events a reader has not read yet does not hold
/// them: publishing it would lose them, so the publish is refused (`hifi publish` says
/// why, the previous version goes on), and succeeds once the reader caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_would_skip_a_lagging_readers_events_is_refused() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    // 20 events per 200 ms request, one at a time: about 100 events/s.
    let receiver = start_receiver(dir.path(), &record, &["--latency", "200ms"]);
    let rx = receiver.addr("receiver").to_string();
    let post = |ingest: std::net::SocketAddr, prefix: &'static str| async move {
        let mut ids = HashSet::new();
        for k in 0..10 {
            let body: Vec<Value> = (0..200)
                .map(|i| json!({ "id": format!("{prefix}{k}-{i}") }))
                .collect();
            ids.extend(body.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
            post_events(ingest, &body).await;
        }
        ids
    };

    let manual = "versions = { publish = \"manual\" }";
    let file = write_file(dir.path(), &rx, "one", manual, false);
    let proc = run_pipeline(dir.path(), &file);
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = post(proc.addr("source api"), "a").await;
    tokio::time::sleep(Duration::from_secs(3)).await; // `a` is older than `1s` below
    proc.sigterm(Duration::from_secs(20));

    // Version two backfills only from a second before it started: the sink, ~20 s
    // behind, has not read most of `a` from version one.
    let late = "versions = { publish = \"manual\", backfill_from = \"1s\" }";
    let file = write_file(dir.path(), &rx, "two", late, false);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = candidate_live(admin, "the candidate is live").await;
    let v2 = v["candidate"].as_str().unwrap().to_owned();
    let out = publish_cli(admin, &v2, &[]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "published with a reader behind: {said}"
    );
    assert!(
        said.contains("sinks.out has") && said.contains("older than what its topic holds"),
        "{said}"
    );
    let v = big(admin).await;
    assert_eq!(v["published"], v1.as_str(), "{v:#}");
    assert_eq!(v["last_publish_failure"]["version"], v2.as_str(), "{v:#}");
    let out = std::process::Command::new(HIFI)
        .args(["versions", "big", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("last publish failed: v{v2}")),
        "{listed}"
    );

    // Caught up, it publishes; nothing is lost.
    all_arrive(&record, &a).await;
    let out = publish_cli(admin, &v2, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = post(proc.addr("source api"), "b").await;
    let every: HashSet<String> = a.union(&b).cloned().collect();
    all_arrive(&record, &every).await;
    let buckets = settled_buckets(admin, Duration::from_secs(90)).await;
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "{buckets:?}");
    proc.sigterm(Duration::from_secs(20));
}
