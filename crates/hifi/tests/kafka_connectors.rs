//! The Kafka sink (`[sinks.X] type = "kafka"`) delivering into a topic of the user's on a
//! real 3-node Apache Kafka cluster (`KAFKA_BROKERS`, started by `scripts/test-broker`),
//! read back by an independent client (Python `confluent-kafka`). hifi itself runs on the
//! embedded engine here: the connector works with either engine.
//!
//! Without `KAFKA_BROKERS` the test says so and passes, unless `HIFI_REQUIRE_KAFKA=1` (as
//! in CI). Without Python's `confluent_kafka` it fails when `HIFI_REQUIRE_TOOLS=1`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

/// The brokers, when the cluster and the Python reader are both there.
fn ready() -> Option<String> {
    let brokers = required("KAFKA_BROKERS")?;
    tool_present(
        "python3",
        &["-c", "import confluent_kafka"],
        "HIFI_REQUIRE_TOOLS",
        "pip install confluent-kafka",
    )
    .then_some(brokers)
}

/// Creates `topic` (3 partitions, replication factor 3) on the cluster, with topic
/// settings.
fn create_topic(brokers: &str, topic: &str, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let made = rt
        .block_on(admin.create_topics(
            &[settings.iter().fold(
                NewTopic::new(topic, 3, TopicReplication::Fixed(3)),
                |t, (k, v)| t.set(k, v),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    for r in made {
        r.unwrap();
    }
}

/// Every record of `topic`, as `kafka_read.py` prints them.
fn read_topic(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_read.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([brokers, topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A unique topic name for this test run.
fn unique_topic(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

/// A pipeline file: source `api` → `events` → Kafka sink `orders` (`extra` added to it).
fn kafka_sink_pipeline(
    dir: &Path,
    listen: &str,
    brokers: &str,
    topic: &str,
    extra: &str,
) -> std::path::PathBuf {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [sources.api]\ntype = \"http\"\nlisten = \"{listen}\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
             [sinks.orders]\ntype = \"kafka\"\ninput = \"events\"\nbrokers = \"{brokers}\"\n\
             topic = \"{topic}\"\n{extra}"
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_topic_refuses_is_dead_lettered_and_the_rest_delivered() {
    let Some(brokers) = ready() else {
        return;
    };
    let topic = unique_topic("small");
    tokio::task::block_in_place(|| {
        create_topic(&brokers, &topic, &[("max.message.bytes", "4000")])
    });
    let dir = test_dir();
    let file = kafka_sink_pipeline(
        dir.path(),
        "127.0.0.1:0",
        &brokers,
        &topic,
        "[sinks.orders.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n",
    );
    let hifi = run_pipeline(dir.path(), &file);
    let big = "x".repeat(20_000);
    let events = serde_json::json!([
        {"id": "small-1", "n": 1},
        {"id": "big-1", "blob": big},
        {"id": "small-2", "n": 2},
    ]);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", hifi.addr("source api")))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let admin = hifi.addr("admin");
    let deadline = Instant::now() + Duration::from_secs(60);
    let dlq = loop {
        let v = get_json(&format!("http://{admin}/v1/sinks/orders/dlq")).await;
        if v["total"] == 1 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dlq["total"], 1, "{dlq}");
    let dead = &dlq["dead_letters"][0];
    assert_eq!(dead["id"], "big-1", "{dlq}");
    assert_eq!(dead["reason"]["class"], "non_recoverable", "{dlq}");
    assert!(
        dead.to_string().contains("too large"),
        "the broker's reason is kept: {dead}"
    );
    let records = tokio::task::block_in_place(|| read_topic(&brokers, &topic));
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["value"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["small-1", "small-2"], "{records:?}");
    hifi.sigterm(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_delivers_every_acknowledged_event_through_a_sigkill() {
    let Some(brokers) = ready() else {
        return;
    };
    let topic = unique_topic("orders");
    tokio::task::block_in_place(|| create_topic(&brokers, &topic, &[]));
    let dir = test_dir();
    let listen = free_addr().to_string();
    let file = kafka_sink_pipeline(
        dir.path(),
        &listen,
        &brokers,
        &topic,
        "key = \"/data/user\"\n",
    );
    let hifi = run_pipeline(dir.path(), &file);
    let producers = Producers::start(4, format!("http://{listen}/v1/events"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let acked_at_kill = producers.acked();
    hifi.sigkill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hifi = run_pipeline(dir.path(), &file);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (acked, failed) = producers.stop().await;
    assert!(
        acked.len() > acked_at_kill,
        "ingest resumed after the restart"
    );

    // Every acknowledged event reaches the topic (read by another client).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (records, counts) = loop {
        let records = tokio::task::block_in_place(|| read_topic(&brokers, &topic));
        let mut counts: HashMap<String, u32> = HashMap::new();
        for r in &records {
            *counts
                .entry(r["value"]["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        if acked.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            break (records, counts);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates: u32 = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{} acknowledged ({acked_at_kill} before the SIGKILL), {} records in {topic}, \
         {duplicates} duplicates, {failed} producer requests failed",
        acked.len(),
        records.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged events never reached the topic, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Each record is the structured CloudEvent, keyed by the pointer's value.
    for r in records.iter().take(50) {
        let v = &r["value"];
        assert_eq!(v["specversion"], "1.0", "{r}");
        assert_eq!(r["key"], v["data"]["user"], "{r}");
        assert_eq!(r["headers"]["content-type"], "application/cloudevents+json");
    }
    // One key, one partition: the records of one producer all sit in one partition.
    let mut partitions: HashMap<String, std::collections::BTreeSet<u64>> = HashMap::new();
    for r in &records {
        partitions
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .insert(r["partition"].as_u64().unwrap());
    }
    assert!(partitions.values().all(|p| p.len() == 1), "{partitions:?}");
    hifi.sigterm(Duration::from_secs(30));
}

/// A producer like a user's: acks=all.
fn producer(brokers: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `{"id": "<prefix>-<i>", "user": ...}` for `range` to `topic`, returning once
/// every record is acknowledged.
async fn produce_events(brokers: &str, topic: &str, prefix: &str, range: std::ops::Range<u32>) {
    let producer = producer(brokers);
    let mut waiting = Vec::new();
    for i in range {
        let value =
            serde_json::json!({"id": format!("{prefix}-{i}"), "user": format!("u{}", i % 5)})
                .to_string();
        let key = format!("u{}", i % 5);
        let f = producer
            .send_result(
                rdkafka::producer::FutureRecord::to(topic)
                    .payload(&value)
                    .key(&key),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        waiting.push(f);
    }
    for f in waiting {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Produces one record with this value (a record that is not a valid event).
async fn produce_raw(brokers: &str, topic: &str, value: &[u8]) {
    producer(brokers)
        .send(
            rdkafka::producer::FutureRecord::<(), [u8]>::to(topic).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_topic_flows_through_hifi_with_nothing_lost_through_a_sigkill() {
    let Some(brokers) = required("KAFKA_BROKERS") else {
        return;
    };
    let input = unique_topic("feed");
    tokio::task::block_in_place(|| create_topic(&brokers, &input, &[]));
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [sources.feed]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{input}\"]\n\
             topic = \"events\"\nid_field = \"/id\"\n\n\
             [ledger]\nsettle_after = \"10m\"\n\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    // Written before hifi starts: a new group reads from the beginning.
    produce_events(&brokers, &input, "e", 0..3000).await;
    produce_raw(&brokers, &input, b"this is not JSON").await;
    let hifi = run_pipeline(dir.path(), &file);
    produce_events(&brokers, &input, "e", 3000..6000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hifi.sigkill();
    // Written while hifi is down.
    produce_events(&brokers, &input, "e", 6000..9000).await;
    let hifi = run_pipeline(dir.path(), &file);
    produce_events(&brokers, &input, "e", 9000..12000).await;

    let all = wait_until(Duration::from_secs(120), || {
        received_ids(&record).len() >= 12_000
    });
    let got = received_ids(&record);
    let missing: Vec<String> = (0..12_000)
        .map(|i| format!("e-{i}"))
        .filter(|id| !got.contains_key(id))
        .collect();
    let duplicates: u32 = got.values().map(|n| n - 1).sum();
    let dlq = get_json(&format!("http://{}/v1/sinks/feed/dlq", hifi.addr("admin"))).await;
    eprintln!(
        "{} of 12 000 records delivered, {duplicates} duplicate deliveries; dead letters: {dlq}",
        got.len()
    );
    assert!(
        all && missing.is_empty(),
        "{} records never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.len(), 12_000, "only the topic's events arrive");
    // The record that is not JSON is kept aside with its place and reason; it blocked
    // nothing.
    assert_eq!(dlq["total"], 1, "{dlq}");
    let dead = &dlq["dead_letters"][0];
    let id = dead["id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("{input}/")) && id.split('/').count() == 3,
        "the dead letter is named by topic/partition/offset: {dlq}"
    );
    assert_eq!(dead["reason"]["class"], "invalid", "{dlq}");
    let retained = metric(hifi.addr("admin"), "hifi_dlq_records{node=\"feed\"}").await;
    assert_eq!(
        retained, 1.0,
        "the source's dead letters are counted in /metrics"
    );
    assert!(
        dead["origin"]
            .as_str()
            .unwrap()
            .starts_with(&format!("kafka:{input}/")),
        "{dlq}"
    );
    // The ledger names each event by its record in the user's cluster: found by id, by
    // that place, and every event accounted for once the buckets settle.
    let admin = hifi.addr("admin");
    let by_id = get_json(&format!("http://{admin}/v1/trace?id=e-42")).await;
    let origin = by_id["origin"].as_str().unwrap().to_owned();
    assert!(
        origin.starts_with(&format!("kafka:{input}/")) && origin.split('/').count() == 3,
        "{by_id}"
    );
    let by_origin = get_json(&format!("http://{admin}/v1/events/{origin}/trace")).await;
    assert_eq!(by_origin["id"], "e-42", "{by_origin}");
    // Delivered at the sink (its bucket open) or not lost (settled).
    let delivered = by_origin["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["node"] == "out" && n["outcomes"].to_string().contains("delivered"));
    let not_lost = by_origin["note"]
        .as_str()
        .is_some_and(|n| n.starts_with("not lost"));
    assert!(delivered || not_lost, "{by_origin}");
    // Every event is in the ledger under that name at the source and at the sink. (The
    // buckets stay open: a restarted member waits out the killed one's Kafka session, 45
    // s, before it reads on, and a bucket that settled meanwhile would not count the
    // events it never saw — a known gap of re-settling, see the issue notes.)
    let mut buckets = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let v = get_json(&format!("http://{admin}/v1/loss")).await;
        buckets = v["buckets"].as_array().cloned().unwrap_or_default();
        if node_sum(&buckets, "out", "delivered") >= 12_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("buckets: {buckets:?}");
    assert_eq!(node_sum(&buckets, "feed", "passed"), 12_000);
    assert_eq!(node_sum(&buckets, "feed", "dead_lettered"), 1);
    assert_eq!(node_sum(&buckets, "out", "delivered"), 12_000);
    hifi.sigterm(Duration::from_secs(30));
}
