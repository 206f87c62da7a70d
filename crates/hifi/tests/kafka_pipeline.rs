//! Zero loss in Kafka mode, with real processes and a real Kafka cluster
//! (`KAFKA_BROKERS`: 3 Apache Kafka nodes on loopback, started by `scripts/test-broker`):
//! ingest in one `hifi run --only` process, the sink in two processes sharing its
//! partitions; one sink process is SIGKILLed under load and the other takes over; a second
//! live process under an `--instance` name already in use is refused. And brokers
//! SIGKILLed under load — the partition leader's node, then (another test) the whole
//! cluster: those tests start a cluster of their own through the script
//! (`HIFI_TEST_BROKER`), one at a time, so the other tests' cluster is left alone.
//!
//! Topics have replication factor 3 and the cluster `min.insync.replicas=2`, as in
//! production (docs/deploy-kafka.md).
//!
//! Without `KAFKA_BROKERS` (or `HIFI_TEST_BROKER`) a test says so and passes, unless
//! `HIFI_REQUIRE_KAFKA=1` (as in CI) makes that a failure.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// source api → events (4 partitions) → sink out → `sink_url`, on Kafka. The group
/// session timeout is 6 s (a dead member is noticed sooner), or hifi's defaults with
/// `HIFI_TEST_KAFKA_DEFAULTS=1`.
fn kafka_pipeline(dir: &Path, brokers: &str, prefix: &str, sink_url: &str) -> std::path::PathBuf {
    let client = if std::env::var("HIFI_TEST_KAFKA_DEFAULTS").as_deref() == Ok("1") {
        ""
    } else {
        "[engine.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n"
    };
    let text = format!(
        "[engine]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\n\
         replication_factor = 3\npartitions = 4\n{client}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [ledger]\nsettle_after = \"60s\"\n\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
         [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"{sink_url}\"\n\
         [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_only(dir: &Path, file: &Path, only: &str) -> Proc {
    Proc::start(
        &[
            "run",
            file.to_str().unwrap(),
            "--drain",
            "5s",
            "--only",
            only,
            "--admin",
            "127.0.0.1:0",
        ],
        "hifi is running",
        dir,
    )
}

async fn sink_delivered(admin: SocketAddr) -> u64 {
    let v = get_json(&format!("http://{admin}/v1/stats")).await;
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "sink")
        .map(|n| n["delivered_total"].as_u64().unwrap())
        .sum()
}

/// Waits until every given sink process has delivered something new.
fn wait_for_delivery(admins: &[SocketAddr], within: Duration) -> bool {
    let rt = tokio::runtime::Handle::current();
    let delivered = |rt: &tokio::runtime::Handle| -> Vec<u64> {
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(async { delivered_by(admins).await }))
                .join()
                .unwrap()
        })
    };
    let before = delivered(&rt);
    wait_until(within, || {
        delivered(&rt)
            .iter()
            .zip(&before)
            .all(|(now, then)| now > then)
    })
}

async fn delivered_by(admins: &[SocketAddr]) -> Vec<u64> {
    let mut out = Vec::with_capacity(admins.len());
    for a in admins {
        out.push(sink_delivered(*a).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_processes_share_partitions_and_one_takes_over_when_the_other_is_killed() {
    take_over(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_processes_share_partitions_and_one_takes_over_when_the_other_leaves() {
    take_over(Stop::Leave).await;
}

/// How the second sink process ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: it vanishes; the group notices when its session times out.
    Kill,
    /// SIGTERM: it drains, commits and leaves the group.
    Leave,
}

/// A test's directory, a receiver and the Kafka pipeline file pointing its sink there.
struct Setup {
    dir: tempfile::TempDir,
    record: std::path::PathBuf,
    receiver: Proc,
    file: std::path::PathBuf,
}

/// `None` (the test is skipped) without a broker.
fn setup(test: &str) -> Option<Setup> {
    let brokers = required("KAFKA_BROKERS")?;
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let file = kafka_pipeline(dir.path(), &brokers, &unique_prefix(test), &sink_url);
    Some(Setup {
        dir,
        record,
        receiver,
        file,
    })
}

async fn take_over(stop: Stop) {
    let Some(Setup {
        dir,
        record,
        receiver: _receiver, // kept running until the test ends
        file,
    }) = setup("e2e")
    else {
        return;
    };

    let ingest = run_only(dir.path(), &file, "sources.api");
    let producers = Producers::start(4, format!("http://{}/v1/events", ingest.addr("source api")));
    let s1 = run_only(dir.path(), &file, "sinks.out");
    let s1_admin = s1.addr("admin");
    assert!(
        wait_for_delivery(&[s1_admin], Duration::from_secs(60)),
        "the first sink process delivers"
    );
    let s2 = run_only(dir.path(), &file, "sinks.out");
    assert!(
        wait_for_delivery(&[s1_admin, s2.addr("admin")], Duration::from_secs(60)),
        "both sink processes deliver (partitions shared)"
    );
    let acked_before_kill = producers.acked();
    match stop {
        Stop::Kill => s2.sigkill(),
        Stop::Leave => {
            s2.sigterm(Duration::from_secs(30));
        }
    }
    // Keep posting through the rebalance and after it.
    let went_on = producers
        .run_past(
            Duration::from_secs(12),
            acked_before_kill,
            100,
            Duration::from_secs(60),
        )
        .await;
    let (acked, failed) = producers.stop().await;
    assert!(went_on, "ingest went on during the take-over");

    let (missing, duplicates) = check_delivered(&record, &acked);
    let buckets = settled_buckets(ingest.addr("admin"), Duration::from_secs(180)).await;
    let e2e_lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    let delivered = node_sum(&buckets, "out", "delivered");
    let passed = node_sum(&buckets, "api", "passed");
    eprintln!(
        "{stop:?}: {} events acknowledged ({acked_before_kill} before the stop), {duplicates} duplicate deliveries, \
         {failed} producer requests failed; ledger (ingest process): passed {passed}, delivered {delivered}, e2e lost {e2e_lost}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert_eq!(e2e_lost, 0, "the ledger reports loss: {buckets:?}");
    if stop == Stop::Leave {
        // A graceful hand-over: the leaving process drained and committed before it
        // left the group, so the other one resumes exactly after its last delivery.
        assert_eq!(duplicates, 0, "a graceful hand-over re-delivered events");
    }
    assert_eq!(
        passed,
        acked.len() as u64,
        "the ledger counts every stored event once"
    );
    assert_eq!(
        delivered, passed,
        "the ledger (across processes) saw every delivery"
    );
    s1.sigterm(Duration::from_secs(30));
    ingest.sigterm(Duration::from_secs(30));
}

fn run_ingest_instance(dir: &Path, file: &Path, instance: &str, log: &str) -> Proc {
    Proc::start_logging(
        &[
            "run",
            file.to_str().unwrap(),
            "--drain",
            "5s",
            "--only",
            "sources.api",
            "--instance",
            instance,
            "--admin",
            "127.0.0.1:0",
        ],
        "hifi is running",
        dir,
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_process_with_the_same_instance_name_refuses_to_start() {
    let Some(Setup {
        dir,
        receiver: _receiver,
        file,
        ..
    }) = setup("instance")
    else {
        return;
    };
    let a = run_ingest_instance(dir.path(), &file, "a1", "info");
    let started = Instant::now();
    let mut twin = Command::new(HIFI)
        .args([
            "run",
            file.to_str().unwrap(),
            "--only",
            "sources.api",
            "--instance",
            "a1",
            "--admin",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It waits out a session timeout (6 s here) in case the holder is a dead process.
    let exited = wait_until(Duration::from_secs(60), || {
        twin.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = twin.kill();
    }
    let out = twin.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the twin stopped after {:?}: {stderr}", started.elapsed());
    assert!(exited, "a second process as --instance a1 kept running");
    assert!(!out.status.success());
    assert!(
        stderr.contains("source api as --instance a1 is held by another live process")
            && stderr.contains("needs its own --instance"),
        "unclear refusal: {stderr}"
    );
    // The holder was not disturbed, and another name is welcome.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", a.addr("source api")))
        .json(&serde_json::json!([{"id": "after-the-twin"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b = run_ingest_instance(dir.path(), &file, "a2", "info");
    b.sigterm(Duration::from_secs(30));
    a.sigterm(Duration::from_secs(30));
}

/// The `events` count of the "recorded outcomes lost in a crash" line (0 without one).
fn caught_up_after_crash(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text
        .lines()
        .find(|l| l.contains("recorded outcomes lost in a crash"))
    else {
        return 0;
    };
    // Without the terminal colours (their escapes hold digits too).
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let after = &plain[plain.find("events=").unwrap() + "events=".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// Two processes ingest the same source (`--instance a` and `b`) into the same
/// partitions; `a` is SIGKILLed under load and restarted as `a`. Every acknowledged event
/// arrives, the ledger's `passed` is exact (each process tallies its own records, under
/// its own tally position), and the restarted process re-counts only what was written
/// since its last tally flush, not everything since the other process's first record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_ingest_one_source_and_one_is_killed_and_restarted() {
    let Some(Setup {
        dir,
        record,
        receiver: _receiver, // kept running until the test ends
        file,
    }) = setup("ingest2")
    else {
        return;
    };

    let a = run_ingest_instance(dir.path(), &file, "a", "warn");
    let b = run_ingest_instance(dir.path(), &file, "b", "warn");
    let sink = run_only(dir.path(), &file, "sinks.out");
    let url = |p: &Proc| format!("http://{}/v1/events", p.addr("source api"));
    let to_a = Producers::named("a", 2, url(&a));
    let to_b = Producers::named("b", 2, url(&b));
    tokio::time::sleep(Duration::from_secs(8)).await;

    a.sigkill();
    let acked_at_kill = to_a.acked() + to_b.acked();
    let (acked_a, _) = to_a.stop().await;
    let a2 = run_ingest_instance(dir.path(), &file, "a", "info");
    let written_meanwhile = (to_b.acked() + acked_a.len()).saturating_sub(acked_at_kill);
    let to_a2 = Producers::named("c", 2, url(&a2));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (acked_a2, _) = to_a2.stop().await;
    let (acked_b, failed) = to_b.stop().await;
    let acked: HashSet<String> = acked_a.into_iter().chain(acked_a2).chain(acked_b).collect();

    let (missing, duplicates) = check_delivered(&record, &acked);
    let buckets = settled_buckets(b.addr("admin"), Duration::from_secs(180)).await;
    let passed = node_sum(&buckets, "api", "passed");
    let delivered = node_sum(&buckets, "out", "delivered");
    let e2e_lost: u64 = buckets
        .iter()
        .map(|bk| bk["e2e_lost"].as_u64().unwrap())
        .sum();
    let caught_up = caught_up_after_crash(&a2.log);
    eprintln!(
        "two ingest processes: {} events acknowledged ({acked_at_kill} at the kill), {duplicates} duplicate deliveries, \
         {failed} producer requests failed; restarted process re-counted {caught_up} (b wrote ~{written_meanwhile} meanwhile); \
         ledger: passed {passed}, delivered {delivered}, e2e lost {e2e_lost}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    // Stored = arrived: what `a` stored but could not acknowledge before it died arrives
    // too (its producers gave up on those requests).
    let stored = received_ids(&record).len() as u64;
    assert_eq!(passed, stored, "the ledger counts every stored event once");
    assert_eq!(delivered, passed, "the ledger saw every delivery");
    assert_eq!(e2e_lost, 0, "the ledger reports loss: {buckets:?}");
    assert!(
        caught_up <= written_meanwhile as u64 + 500,
        "the restarted process re-counted {caught_up} records: its tally position was stuck \
         behind the other process's records (only ~{written_meanwhile} were written while it was down)"
    );
    sink.sigterm(Duration::from_secs(30));
    a2.sigterm(Duration::from_secs(30));
    b.sigterm(Duration::from_secs(30));
}

/// A cluster of the test's own, and the pipeline on it with its receiver.
struct OwnCluster {
    _one: tokio::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    cluster: Cluster,
    brokers: String,
    record: std::path::PathBuf,
    _receiver: Proc,
    prefix: String,
    hifi: Proc,
    /// The source's ingest URL.
    target: String,
}

impl OwnCluster {
    /// `None` (the test is skipped) without the script.
    async fn start(test: &str) -> Option<OwnCluster> {
        let script = required("HIFI_TEST_BROKER")?;
        let one = OWN_CLUSTER.lock().await;
        let dir = test_dir();
        let cluster = Cluster::start(&script, &dir.path().join("kafka"));
        let brokers = cluster.brokers.clone();
        let record = dir.path().join("received.jsonl");
        let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
        let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
        let prefix = unique_prefix(test);
        let file = kafka_pipeline(dir.path(), &brokers, &prefix, &sink_url);
        let hifi = run_pipeline(dir.path(), &file);
        let target = format!("http://{}/v1/events", hifi.addr("source api"));
        Some(OwnCluster {
            _one: one,
            dir,
            cluster,
            brokers,
            record,
            _receiver: receiver,
            prefix,
            hifi,
            target,
        })
    }
}

/// The node (1, 2 or 3: Kafka's `node.id`, the script's numbering) that leads a
/// partition, from the cluster's metadata.
fn leader_of(brokers: &str, topic: &str, partition: i32) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).unwrap();
    t.partitions()
        .iter()
        .find(|p| p.id() == partition)
        .unwrap()
        .leader()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_leaders_broker_killed_under_load_loses_nothing_acknowledged() {
    let Some(OwnCluster {
        _one,
        dir: _dir,
        cluster,
        brokers,
        record,
        _receiver,
        prefix,
        hifi,
        target,
    }) = OwnCluster::start("leader").await
    else {
        return;
    };
    let producers = Producers::start(4, target);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let topic = format!("{prefix}events");
    let leader = tokio::task::block_in_place(|| leader_of(&brokers, &topic, 0));
    tokio::task::block_in_place(|| cluster.run(&format!("kill {leader}")));
    let acked_at_kill = producers.acked();
    // The controller elects a new leader from the in-sync replicas; appends to the
    // partition go on (2 of 3 replicas are still min.insync.replicas).
    let remaining = brokers
        .split(',')
        .enumerate()
        .filter(|(i, _)| *i as i32 + 1 != leader)
        .map(|(_, b)| b)
        .collect::<Vec<_>>()
        .join(",");
    let new_leader = wait_until(Duration::from_secs(60), || {
        let l = leader_of(&remaining, &topic, 0);
        l != leader && l >= 1
    });
    assert!(new_leader, "no new leader for {topic}/0 within 60 s");
    let elected_at = producers.acked();
    let went_on = producers
        .run_past(
            Duration::from_secs(8),
            elected_at,
            100,
            Duration::from_secs(60),
        )
        .await;
    let (acked, failed) = producers.stop().await;
    assert!(
        went_on,
        "ingest kept acknowledging after the election ({elected_at} then {})",
        acked.len()
    );

    let (missing, duplicates) = check_delivered(&record, &acked);
    let buckets = settled_buckets(hifi.addr("admin"), Duration::from_secs(180)).await;
    let e2e_lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    let passed = node_sum(&buckets, "api", "passed");
    eprintln!(
        "leader node {leader} of {topic}/0 killed: {} events acknowledged ({acked_at_kill} before the kill), \
         {duplicates} duplicate deliveries, {failed} producer requests failed; ledger: passed {passed}, e2e lost {e2e_lost}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert_eq!(e2e_lost, 0, "the ledger reports loss: {buckets:?}");
    assert!(
        passed >= acked.len() as u64,
        "the ledger counted {passed} stored events, fewer than the {} acknowledged",
        acked.len()
    );
    hifi.sigterm(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_under_load_loses_nothing_acknowledged() {
    let Some(OwnCluster {
        _one,
        dir: _dir,
        cluster,
        record,
        _receiver,
        hifi,
        target,
        ..
    }) = OwnCluster::start("broker").await
    else {
        return;
    };
    let producers = Producers::start(4, target.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every node, SIGKILL (the script blocks: off the runtime's workers).
    tokio::task::block_in_place(|| cluster.run("kill"));
    let killed_at = Instant::now();
    let acked_at_kill = producers.acked();
    // While the cluster is away, ingest refuses (503) instead of acknowledging, and
    // says so within `ack_timeout` (2 s by default), not after librdkafka's
    // `message.timeout.ms` (10 s).
    let (status, answered_in) = post_one(&target, "while-down").await;
    assert_eq!(status, 503, "ingest while the cluster is down");
    assert!(
        answered_in < Duration::from_millis(3500),
        "the 503 took {answered_in:?}; ack_timeout is 2 s"
    );
    let acked_while_down = producers.acked() - acked_at_kill;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Returns once the cluster takes acks=all produces again.
    tokio::task::block_in_place(|| cluster.run("restart"));
    let down_for = killed_at.elapsed();
    let resumed_from = producers.acked();
    let resumed = producers
        .run_past(
            Duration::from_secs(8),
            resumed_from,
            100,
            Duration::from_secs(60),
        )
        .await;
    let (acked, failed) = producers.stop().await;
    assert!(resumed, "ingest resumed after the cluster came back");

    let (missing, duplicates) = check_delivered(&record, &acked);
    eprintln!(
        "cluster down {down_for:?}, 503 in {answered_in:?}; {} events acknowledged ({acked_while_down} acked in flight as it died), \
         {duplicates} duplicate deliveries, {failed} producer requests failed",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    hifi.sigterm(Duration::from_secs(30));
}
