//! Versions of a window stage with real processes: a new version backfills its windows
//! beside the published one, and a publish hands the readers over at the previous
//! version's last emitted window — every window's result delivered once (the earlier
//! ones by the previous version, the later ones by the new one, with the same ids), the
//! ledger counting nothing lost.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::versions::{
    big, candidate_live, kafka_engine, kill_during_publish, post_events, publish_cli,
    start_receiver, wait_for, wait_results, EMBEDDED,
};
use support::*;

const WINDOW: i64 = 2_000;

/// Source `api` → window stage `big` (2-s windows, one row per country, `stage`
/// saying which version computed it) → sink `out`.
fn write_file(
    engine: &str,
    dir: &Path,
    receiver: &str,
    stage: &str,
    extra: &str,
) -> std::path::PathBuf {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{engine}\
             [admin]\nlisten = \"127.0.0.1:0\"\n[ledger]\nsettle_after = \"1s\"\n\
             [topics.events]\nschema = {{ id = \"string\", ts = \"timestamp\", country = \"string\" }}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             [stages.big]\ninput = \"events\"\noutput = \"big-orders\"\n\
             versions = {{ publish = \"manual\", backfill_from = \"retention\" }}\n\
             window = {{ size = \"2s\", allowed_lateness = \"500ms\", idle_timeout = \"500ms\" }}\n\
             sql = \"SELECT country, count(*) AS orders, '{stage}' AS stage FROM input GROUP BY country\"\n{extra}\n\
             [sinks.out]\ntype = \"http\"\ninput = \"big-orders\"\nurl = \"http://{receiver}/ingest\"\n\
             [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n"
        ),
    )
    .unwrap();
    file
}

/// Posts two events per country (DE, FR) stamped now, `windows` times a window apart;
/// returns the (window start, country) pairs they fall in.
async fn post_windows(ingest: SocketAddr, tag: &str, windows: usize) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for w in 0..windows {
        let now = chrono::Utc::now().timestamp_millis();
        let ts = rfc3339(now);
        let events: Vec<Value> = ["DE", "DE", "FR", "FR"]
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"id": format!("{tag}{w}-{i}"), "ts": ts, "country": c}))
            .collect();
        post_events(ingest, &events).await;
        for c in ["DE", "FR"] {
            pairs.insert((rfc3339(now.div_euclid(WINDOW) * WINDOW), c.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(WINDOW as u64)).await;
    }
    pairs
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The window results received, by id: (window start, country, the `stage` of each
/// delivery in order).
fn results(record: &Path) -> BTreeMap<String, (String, String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, String, Vec<String>)> = BTreeMap::new();
    for r in received_records(record) {
        let d = &r["data"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        out.entry(s(&r["id"]))
            .or_insert_with(|| (s(&d["window_start"]), s(&d["country"]), Vec::new()))
            .2
            .push(s(&d["stage"]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_version_takes_over_at_the_last_window_of_the_one_before() {
    take_over(EMBEDDED, Mode::Plain).await;
}

/// The same on Apache Kafka (3 brokers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_window_stage_version_takes_over_at_the_last_window_of_the_one_before() {
    if let Some(engine) = kafka_engine("vwin") {
        take_over(&engine, Mode::Plain).await;
    }
}

/// With `--redeliver-from` (the first window computed while both ran): those windows
/// come again, from the new version, under the same ids; the earlier ones do not, nor
/// do the later ones twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_version_redelivers_the_windows_asked_for_under_the_same_ids() {
    take_over(EMBEDDED, Mode::Redeliver).await;
}

/// SIGKILLed during the publish (after the readers' positions and the new version's
/// input positions were written, before the publish was recorded), then again right
/// after a publish: every window's result arrives (at least once), under one id, and
/// the ledger counts nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_version_publish_survives_sigkills() {
    take_over(EMBEDDED, Mode::Killed).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Redeliver,
    Killed,
}

async fn take_over(engine: &str, mode: Mode) {
    let redeliver = mode == Mode::Redeliver;
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let mut expected = BTreeSet::new();

    // Version one computes three windows.
    let file = write_file(engine, dir.path(), &rx, "one", "");
    let proc = run_pipeline(dir.path(), &file);
    expected.extend(post_windows(proc.addr("source api"), "a", 3).await);
    wait_results(|| results(&record), expected.len(), "version one's results").await;
    proc.sigterm(Duration::from_secs(30));

    // Version two backfills beside it; three more windows while both run.
    let paused = match mode {
        Mode::Killed => "test_publish_pause_ms = 2000",
        _ => "",
    };
    let file = write_file(engine, dir.path(), &rx, "two", paused);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = candidate_live(admin, "the candidate catches up").await;
    let v2 = v["candidate"].as_str().unwrap().to_owned();
    let both = post_windows(proc.addr("source api"), "b", 3).await;
    expected.extend(both.iter().cloned());
    wait_results(
        || results(&record),
        expected.len(),
        "version one's later results",
    )
    .await;
    // A window's result has the window's end as its event time: from just after the
    // start of the first of them, the windows before it are not re-delivered.
    let first = chrono::DateTime::parse_from_rfc3339(&both.first().unwrap().0).unwrap();
    let from = rfc3339(first.timestamp_millis() + 1);
    let extra: Vec<&str> = match redeliver {
        true => vec!["--redeliver-from", &from],
        false => vec![],
    };

    let (proc, admin) = if mode == Mode::Killed {
        let proc = kill_during_publish(proc, &v2, dir.path(), &file).await;
        let admin = proc.addr("admin");
        (proc, admin)
    } else {
        (proc, admin)
    };

    // Published once it has emitted every window version one has (asked again until).
    publish_cli_until_accepted(admin, &v2, &extra).await;
    let (proc, admin) = if mode == Mode::Killed {
        proc.sigkill();
        let proc = run_pipeline(dir.path(), &file);
        let admin = proc.addr("admin");
        (proc, admin)
    } else {
        (proc, admin)
    };
    wait_for(admin, Duration::from_secs(60), "the publish", |v| {
        v["published"] == v2.as_str() && v["candidate"].is_null()
    })
    .await;

    // Three windows after the publish: computed by version two.
    let after = post_windows(proc.addr("source api"), "c", 3).await;
    expected.extend(after.iter().cloned());
    wait_results(|| results(&record), expected.len(), "version two's results").await;
    let buckets = settled_buckets(admin, Duration::from_secs(60)).await;
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "the ledger counts loss: {buckets:#?}");
    // Every event the source passed is aggregated once (by version one before the
    // publish, by version two after), and every window result passed is delivered;
    // the re-deliveries are counted as such.
    let passed = node_sum(&buckets, "api", "passed");
    assert!(passed > 0, "{buckets:#?}");
    assert_eq!(
        node_sum(&buckets, "big", "aggregated"),
        passed,
        "every input event aggregated once by the published version: {buckets:#?}"
    );
    let redelivered = node_sum(&buckets, "out", "redelivered");
    assert_eq!(
        node_sum(&buckets, "out", "delivered"),
        node_sum(&buckets, "big", "passed") + redelivered,
        "{buckets:#?}"
    );
    // (The buckets holding the re-deliveries may settle later than the others: at most.)
    let asked = if redeliver { both.len() as u64 } else { 0 };
    assert!(redelivered <= asked, "re-deliveries counted: {buckets:#?}");
    assert_eq!(big(admin).await["published"], v2.as_str());
    proc.sigterm(Duration::from_secs(30));

    // Every window's result under one id: version one's up to where version two took
    // over, version two's after (those of the windows after the publish among them);
    // once, but for the windows re-delivered: version one's, then version two's.
    let got = results(&record);
    let windows: BTreeSet<(String, String)> = got
        .values()
        .map(|(s, c, _)| (s.clone(), c.clone()))
        .collect();
    assert_eq!(
        windows.len(),
        got.len(),
        "a window under several ids: {got:#?}"
    );
    assert_eq!(windows, expected, "{got:#?}");
    let mut took_over = false;
    for (start, country, stages) in got.values() {
        let window = (start.clone(), country.clone());
        if redeliver && both.contains(&window) {
            assert_eq!(stages, &["one", "two"], "window {window:?}: {got:#?}");
            continue;
        }
        if mode == Mode::Killed {
            // Delivered again after a kill (at least once), with the same content.
            assert!(
                stages.iter().all(|s| *s == stages[0]),
                "window {window:?}: {got:#?}"
            );
        } else {
            assert_eq!(
                stages.len(),
                1,
                "window {window:?} delivered again: {got:#?}"
            );
        }
        took_over |= stages[0] == "two";
        let want = if took_over { "two" } else { "one" };
        assert_eq!(stages[0], want, "window {window:?}: {got:#?}");
        if after.contains(&window) {
            assert_eq!(
                stages[0], "two",
                "window {window:?} after the publish: {got:#?}"
            );
        }
    }
    drop(receiver);
}

/// `hifi publish big VERSION EXTRA…`, asked again while the refusal says to wait (the
/// candidate catching up, a reader finishing the last results).
async fn publish_cli_until_accepted(admin: SocketAddr, version: &str, extra: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = publish_cli(admin, version, extra);
        if out.status.success() {
            return;
        }
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            (said.contains("caught up") || said.contains("still to read"))
                && Instant::now() < deadline,
            "publish: {said}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// [`publish_cli_until_accepted`], then waits until `/v1/versions` says it is published.
async fn publish_when_ready(admin: SocketAddr, version: &str) {
    publish_cli_until_accepted(admin, version, &[]).await;
    wait_for(admin, Duration::from_secs(60), "the publish", |v| {
        v["published"] == version && v["candidate"].is_null()
    })
    .await;
}

/// A version published before, retired, then named by the file again: it runs as a
/// candidate from a clean window state, recomputing every retained window (its topic
/// then holds each earlier window twice: its first life's result and the recomputed
/// one, same id), and is published again — every window delivered once, by the version
/// published when it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_version_that_returns_recomputes_its_windows() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let mut want: BTreeMap<(String, String), &str> = BTreeMap::new();
    let mut expect = |pairs: BTreeSet<(String, String)>, stage: &'static str| {
        for p in pairs {
            want.insert(p, stage);
        }
    };

    let one = write_file(EMBEDDED, dir.path(), &rx, "one", "");
    let proc = run_pipeline(dir.path(), &one);
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(post_windows(proc.addr("source api"), "a", 2).await, "one");
    wait_results(|| results(&record), 4, "version one's results").await;
    proc.sigterm(Duration::from_secs(30));

    let two = write_file(EMBEDDED, dir.path(), &rx, "two", "");
    let proc = run_pipeline(dir.path(), &two);
    let admin = proc.addr("admin");
    let v2 = candidate_live(admin, "version two catches up").await["candidate"]
        .as_str()
        .unwrap()
        .to_owned();
    publish_when_ready(admin, &v2).await;
    expect(post_windows(proc.addr("source api"), "b", 2).await, "two");
    wait_results(|| results(&record), 8, "version two's results").await;
    proc.sigterm(Duration::from_secs(30));

    // Back to version one: a candidate again, from a clean window state.
    let one = write_file(EMBEDDED, dir.path(), &rx, "one", "");
    let proc = run_pipeline(dir.path(), &one);
    let admin = proc.addr("admin");
    let v = candidate_live(admin, "version one catches up again").await;
    assert_eq!(v["candidate"], v1.as_str(), "{v:#}");
    // A restart does not make it backfill once more (the registry says it has).
    proc.sigterm(Duration::from_secs(30));
    let proc = run_pipeline(dir.path(), &one);
    let admin = proc.addr("admin");
    candidate_live(admin, "version one after a restart").await;
    publish_when_ready(admin, &v1).await;
    expect(post_windows(proc.addr("source api"), "c", 2).await, "one");
    wait_results(|| results(&record), 12, "version one's results again").await;
    let buckets = settled_buckets(admin, Duration::from_secs(60)).await;
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "the ledger counts loss: {buckets:#?}");
    proc.sigterm(Duration::from_secs(30));

    let got = results(&record);
    let by_window: BTreeMap<(String, String), Vec<String>> = got
        .values()
        .map(|(s, c, stages)| ((s.clone(), c.clone()), stages.clone()))
        .collect();
    assert_eq!(
        by_window.len(),
        got.len(),
        "a window under several ids: {got:#?}"
    );
    let delivered: BTreeMap<(String, String), Vec<String>> = want
        .iter()
        .map(|(w, s)| (w.clone(), vec![s.to_string()]))
        .collect();
    assert_eq!(by_window, delivered, "{got:#?}");

    // Version one's topic: its first life's two windows ×2 countries, recomputed once
    // more by its return, then the windows after it was published again.
    let topic = format!("big-orders.v{v1}");
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    for (id, _) in dump_topic(dir.path(), &topic, 2) {
        *ids.entry(id).or_default() += 1;
    }
    let first_life: Vec<&String> = got
        .iter()
        .filter(|(_, (_, _, stages))| stages == &["one"])
        .map(|(id, _)| id)
        .take(4)
        .collect();
    for id in first_life {
        assert!(
            ids.get(id).copied().unwrap_or(0) >= 1,
            "{id} missing from {topic}: {ids:#?}"
        );
    }
    assert!(
        ids.values().all(|n| *n <= 2),
        "recomputed more than once (a restart backfilled again): {ids:#?}"
    );
    let twice = ids.values().filter(|n| **n >= 2).count();
    assert!(
        twice >= 4,
        "the returning version recomputed its first life's windows: {ids:#?}"
    );
    drop(receiver);
}

/// A stop signal while a publish waits, with the nodes running, for a reader to read the
/// published version's results (its destination is down: it never does) abandons the
/// publish and stops the process — it does not wait out the check first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_while_a_publish_waits_for_a_reader_abandons_it() {
    let dir = test_dir();
    let down = free_addr().to_string(); // nothing listens there
    let one = write_file(EMBEDDED, dir.path(), &down, "one", "");
    let proc = run_pipeline(dir.path(), &one);
    let v1 = big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    post_windows(proc.addr("source api"), "a", 2).await; // a window emitted, unread
    proc.sigterm(Duration::from_secs(30));

    let two = write_file(EMBEDDED, dir.path(), &down, "two", "");
    let args = ["run", two.to_str().unwrap(), "--drain", "5s"];
    let proc = Proc::start_logging(&args, "hifi is running", dir.path(), "info");
    let admin = proc.addr("admin");
    let v2 = candidate_live(admin, "version two catches up").await["candidate"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/v1/versions/big/{v2}/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let log = proc.log.clone();
    // In the check (it waits up to 10 s for the reader): the publish has begun and
    // has not stopped the nodes.
    let began = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("publishing: stopping the nodes"))
    });
    assert!(began, "the publish did not begin");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = proc.sigterm(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("received while checking a publish"),
        "the check was waited out: {said}"
    );

    let proc = run_pipeline(dir.path(), &two);
    let v = big(proc.addr("admin")).await;
    assert_eq!(v["published"], v1.as_str(), "not published: {v:#}");
    proc.sigterm(Duration::from_secs(30));
}
