//! `hifi versions gc` with real processes: a retired version's topic and consumer group
//! are deleted (a dry run first, which deletes nothing), the pipeline goes on
//! delivering, and the collected version, named again by the file, starts anew in a
//! topic of a new name, backfills every retained event, and can be published.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::versions::*;
use support::*;

fn hifi(dir: &Path, args: &[&str], admin: SocketAddr) -> (bool, String) {
    let out = std::process::Command::new(HIFI)
        .args(args)
        .args(["--admin", &admin.to_string()])
        .current_dir(dir)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

async fn post(ingest: SocketAddr, ids: &[String]) {
    let body: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
    post_events(ingest, &body).await;
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn state_of(v: &Value, version: &str) -> Value {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == version)
        .cloned()
        .unwrap_or_default()
}

/// Publishes the candidate once it is live; returns its version.
async fn publish_candidate(dir: &Path, admin: SocketAddr) -> String {
    let v = candidate_live(admin, "the candidate catches up").await;
    let cand = v["candidate"].as_str().unwrap().to_owned();
    let (ok, said) = hifi(dir, &["publish", "big", &cand], admin);
    assert!(ok, "{said}");
    wait_for(admin, Duration::from_secs(60), "the publish", |v| {
        v["published"] == cand.as_str() && v["candidate"].is_null()
    })
    .await;
    cand
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_versions_are_collected_and_come_back_anew() {
    collect_and_revive(EMBEDDED).await;
}

/// The same on Apache Kafka (3 brokers): topics and groups deleted in the cluster (a
/// second `gc` finds nothing left: every topic it would delete is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_retired_versions_are_collected_and_come_back_anew() {
    if let Some(engine) = kafka_engine("versions-gc") {
        collect_and_revive(&engine).await;
    }
}

async fn collect_and_revive(engine: &str) {
    let embedded = engine == EMBEDDED;
    let dir = test_dir();
    let data = dir.path().join("data");
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let versions = "versions = { publish = \"manual\", backfill_from = \"retention\" }";
    let mut every: HashSet<String> = HashSet::new();

    // Version one, then version two published beside it: version one is retired.
    let file = write_file_on(engine, dir.path(), &rx, "one", versions, false);
    let proc = run_pipeline(dir.path(), &file);
    let a = ids("a", 60);
    post(proc.addr("source api"), &a).await;
    every.extend(a);
    all_arrive(&record, &every).await;
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(30));
    let file = write_file_on(engine, dir.path(), &rx, "two", versions, false);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v2 = publish_candidate(dir.path(), admin).await;
    let v1_topic = format!("big-orders.v{v1}");
    assert_eq!(state_of(&big(admin).await, &v1)["state"], "retired");
    if embedded {
        assert!(data.join("topics").join(&v1_topic).is_dir());
        assert!(data.join("groups/stage.big.offsets").is_file());
    }

    // A body it does not know is refused, naming what it takes.
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/v1/versions/gc"))
        .body(r#"{"dry": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("dry_run"));
    // So is a query string: a dry run asked there would otherwise delete.
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/v1/versions/gc?dry_run=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("JSON body"));

    // A dry run says what would go and deletes nothing.
    let (ok, said) = hifi(dir.path(), &["versions", "gc", "--dry-run"], admin);
    assert!(ok, "{said}");
    let records: u64 = said
        .split_once(&format!("stages.big@{v1}: would delete {v1_topic} ("))
        .and_then(|(_, rest)| rest.split_once(" records"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        records >= 60,
        "every event of version one (duplicates allowed): {said}"
    );
    assert!(!embedded || data.join("topics").join(&v1_topic).is_dir());

    // gc: version one's topic and group are gone, the pipeline goes on.
    let (ok, said) = hifi(dir.path(), &["versions", "gc"], admin);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("stages.big@{v1}: deleted {v1_topic}")),
        "{said}"
    );
    if embedded {
        assert!(!data.join("topics").join(&v1_topic).exists());
        assert!(!data.join("groups/stage.big.offsets").exists());
    }
    let v = big(admin).await;
    assert_eq!(state_of(&v, &v1)["state"], "collected", "{v:#}");
    assert!(state_of(&v, &v1)["collected_at"].is_string());
    assert_eq!(state_of(&v, &v2)["state"], "published");
    let (ok, said) = hifi(dir.path(), &["versions", "gc"], admin);
    assert!(ok && said.contains("no retired versions"), "{said}");
    let b = ids("b", 40);
    post(proc.addr("source api"), &b).await;
    every.extend(b.clone());
    all_arrive(&record, &b.into_iter().collect()).await;
    let two = received_records(&record)
        .into_iter()
        .filter(|r| r["id"] == "b0")
        .collect::<Vec<_>>();
    assert_eq!(two[0]["data"]["stage"], "two");
    proc.sigterm(Duration::from_secs(30));

    // The file goes back to version one: it starts anew in a topic of a new name,
    // backfills every retained event, and is published again.
    let file = write_file_on(engine, dir.path(), &rx, "one", versions, false);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = big(admin).await;
    assert_eq!(v["candidate"], v1.as_str(), "{v:#}");
    let revived = format!("{v1_topic}.r1");
    assert_eq!(state_of(&v, &v1)["topic"], revived.as_str(), "{v:#}");
    assert_eq!(publish_candidate(dir.path(), admin).await, v1);
    let c = ids("c", 30);
    post(proc.addr("source api"), &c).await;
    every.extend(c.clone());
    all_arrive(&record, &c.into_iter().collect()).await;
    let one = received_records(&record)
        .into_iter()
        .filter(|r| r["id"] == "c0")
        .collect::<Vec<_>>();
    assert_eq!(one[0]["data"]["stage"], "one");
    let (ok, said) = hifi(dir.path(), &["versions", "gc"], admin);
    assert!(
        ok && said.contains(&format!("stages.big@{v2}: deleted big-orders.v{v2}")),
        "{said}"
    );
    let (ok, said) = hifi(dir.path(), &["versions", "gc"], admin);
    assert!(ok && said.contains("no retired versions"), "{said}");
    proc.sigterm(Duration::from_secs(30));
    if !embedded {
        return; // `hifi log dump` reads the embedded log only
    }

    let (in_revived, records) = topic_records(dir.path(), &revived);
    assert_eq!(
        every.difference(&in_revived).count(),
        0,
        "the version run again holds every event"
    );
    assert!(records >= every.len());
    for gone in [
        format!("big-orders.v{v2}"),
        format!("__dlq.big-v{v2}"),
        format!("__redrive.big-v{v2}"),
    ] {
        assert!(!data.join("topics").join(&gone).exists(), "{gone}");
    }
    assert!(!data
        .join(format!("groups/stage.big-v{v2}.offsets"))
        .exists());
}
