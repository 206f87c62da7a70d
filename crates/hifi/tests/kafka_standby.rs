//! The standby for ingest (`[engine.standby]`), with real processes and a real 3-node
//! Kafka cluster of the test's own (`HIFI_TEST_BROKER`, `scripts/test-broker`): the whole
//! cluster is SIGKILLed under load for a minute; ingest keeps acknowledging into a local
//! spool, moves those records into the cluster once it is back, and every acknowledged
//! event is delivered — also when hifi itself is SIGKILLed while it moves them.
//!
//! Without `HIFI_TEST_BROKER` the test says so and passes, unless `HIFI_REQUIRE_KAFKA=1`
//! (as in CI) makes that a failure.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// source api → events (4 partitions) → sink out, on Kafka, with `standby` (the
/// `[engine.standby]` table); buckets settle 5 s after their last change.
fn standby_pipeline(
    dir: &Path,
    brokers: &str,
    prefix: &str,
    sink_url: &str,
    standby: &str,
) -> std::path::PathBuf {
    let text = format!(
        "[engine]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\n\
         replication_factor = 3\npartitions = 4\n\n\
         [engine.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\n\
         {standby}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [ledger]\nsettle_after = \"5s\"\n\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
         [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"{sink_url}\"\n\
         [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_acknowledges_into_a_spool_through_a_whole_cluster_outage_and_loses_nothing() {
    let Some(script) = required("HIFI_TEST_BROKER") else {
        return;
    };
    let spool = "[engine.standby]\nkind = \"embedded\"\ndata_dir = \"standby\"\n";
    outage(&script, spool, Duration::from_secs(60)).await;
}

/// The same with a second cluster as the standby (the shared test cluster,
/// `KAFKA_BROKERS`), and a shorter outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_acknowledges_into_a_second_cluster_through_an_outage_and_loses_nothing() {
    let (Some(script), Some(second)) = (required("HIFI_TEST_BROKER"), required("KAFKA_BROKERS"))
    else {
        return;
    };
    let standby = format!(
        "[engine.standby]\nkind = \"kafka\"\nbrokers = \"{second}\"\ntopic_prefix = \"{}\"\n",
        unique_prefix("second")
    );
    outage(&script, &standby, Duration::from_secs(20)).await;
}

/// Producers under load; the whole cluster SIGKILLed for `down`; back; hifi SIGKILLed
/// at once and restarted; checks that nothing acknowledged is missing.
async fn outage(script: &str, standby: &str, down: Duration) {
    let _one = OWN_CLUSTER.lock().await;
    let dir = test_dir();
    let cluster = Cluster::start(script, &dir.path().join("kafka"));
    let record = dir.path().join("received.jsonl");
    let _receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", _receiver.addr("receiver"));
    let file = standby_pipeline(
        dir.path(),
        &cluster.brokers,
        &unique_prefix("standby"),
        &sink_url,
        standby,
    );
    let hifi = run_pipeline(dir.path(), &file);
    let target = format!("http://{}/v1/events", hifi.addr("source api"));
    let admin = hifi.addr("admin");

    let producers = Producers::start(4, target.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_before = producers.acked();
    assert!(acked_before > 0, "nothing acknowledged before the outage");

    // Every node, SIGKILL (the script blocks: off the runtime's workers).
    tokio::task::block_in_place(|| cluster.run("kill"));
    let killed_at = Instant::now();
    let acked_at_kill = producers.acked();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Ingest has turned to the standby: a request is acknowledged, and at once.
    let (status, answered_in) = post_one(&target, "while-down").await;
    assert_eq!(status, 200, "ingest while the cluster is down");
    assert!(
        answered_in < Duration::from_secs(1),
        "ingest on the standby took {answered_in:?}"
    );
    // The metrics say so, and answer while the cluster is away (a scrape times out
    // after 10 s by default).
    let scraped = Instant::now();
    let on_standby = metric(admin, "hifi_source_on_standby").await;
    let scrape_took = scraped.elapsed();
    assert_eq!(on_standby, 1.0, "the source says it is on the standby");
    assert!(
        scrape_took < Duration::from_secs(5),
        "/metrics took {scrape_took:?} while the cluster was away"
    );
    let lag = off_workers(|| {
        std::process::Command::new(HIFI)
            .args(["lag", "--admin", &admin.to_string()])
            .output()
            .unwrap()
    });
    let lag_text = String::from_utf8_lossy(&lag.stdout);
    assert!(
        lag.status.success() && lag_text.contains("standby: api appends to the standby"),
        "hifi lag says where ingest appends: {lag_text} {}",
        String::from_utf8_lossy(&lag.stderr)
    );
    // The rest of the outage, under load.
    while killed_at.elapsed() < down {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acked_while_down = producers.acked() - acked_at_kill;
    assert!(
        acked_while_down as u64 > 10 * down.as_secs(),
        "only {acked_while_down} events acknowledged in {down:?} on the standby"
    );
    let (mut acked, failed) = producers.stop().await;
    acked.insert("while-down".to_owned());
    assert_eq!(
        failed, 0,
        "{failed} ingest requests were refused although the standby was there"
    );
    let standby_events = metric(admin, "hifi_source_standby_events_total").await;

    // The cluster comes back; hifi is SIGKILLed right away, while it moves the
    // standby's records (or before): the restarted process moves what is left.
    tokio::task::block_in_place(|| cluster.run("restart"));
    let down_for = killed_at.elapsed();
    let moved_before_kill = metric(admin, "hifi_source_standby_moved_events_total").await;
    hifi.sigkill();
    let hifi = run_pipeline(dir.path(), &file);
    let target = format!("http://{}/v1/events", hifi.addr("source api"));
    let admin = hifi.addr("admin");
    let after = Producers::named("q", 4, target);
    let resumed = after
        .run_past(Duration::from_secs(5), 0, 100, Duration::from_secs(60))
        .await;
    let (acked_after, failed_after) = after.stop().await;
    assert!(resumed, "ingest resumed after the restart");
    acked.extend(acked_after);

    let (missing, duplicates) = check_delivered(&record, &acked);
    eprintln!(
        "cluster down {down_for:?} (/metrics answered in {scrape_took:?} meanwhile); {acked_before} acked before, {acked_while_down} while down \
         ({standby_events} on the standby, {moved_before_kill} moved before hifi was killed), \
         {} in all; {duplicates} duplicate deliveries; {failed_after} requests failed after the restart",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert!(
        standby_events >= acked_while_down as f64,
        "{standby_events} events on the standby, {acked_while_down} acknowledged while the cluster was down"
    );
    assert_eq!(
        metric(admin, "hifi_source_standby_events_total").await,
        0.0,
        "after the restart, with the cluster up, ingest appends to it"
    );
    let moved_by = Instant::now() + Duration::from_secs(30);
    while metric(admin, "hifi_source_standby_waiting_events").await > 0.0 {
        assert!(
            Instant::now() < moved_by,
            "the standby's records were not all moved"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The ledger: nothing lost, and the events that went through the standby counted
    // under their own origins.
    let buckets = settled_buckets(admin, Duration::from_secs(120)).await;
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    let through_standby: u64 = buckets
        .iter()
        .filter_map(|b| b["origin_topics"]["standby:ingest.api"].as_u64())
        .sum();
    let events: u64 = buckets.iter().map(|b| b["events"].as_u64().unwrap()).sum();
    assert_eq!(lost, 0, "the ledger reports loss: {buckets:?}");
    assert_eq!(
        through_standby, standby_events as u64,
        "the ledger counts {through_standby} events through the standby; ingest put {standby_events} there"
    );
    assert!(
        events >= acked.len() as u64,
        "the ledger counted {events} events, fewer than the {} acknowledged",
        acked.len()
    );
    hifi.sigterm(Duration::from_secs(30));
}
