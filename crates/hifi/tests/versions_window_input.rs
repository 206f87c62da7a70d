//! A window stage reading a versioned stage's output, with real processes: when a new
//! version of its input is published while its open windows hold events of the
//! previous one, it reads the previous version's topic to its end, then the new one
//! from the cut — every window's result computed once, from every event once.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::versions::{
    big, candidate_live, kafka_engine, post_events, publish_cli, start_receiver, wait_for,
    wait_results, EMBEDDED,
};
use support::*;

const WINDOW: i64 = 2_000;

/// Source `api` → row stage `big` (versioned, setting `/via`) → window stage `per`
/// (2-s windows, orders per country) → sink `out`.
///
/// `allowed_lateness` is a whole window: the tests post a window's events and the next
/// window's right after, and `big` (2 partitions) may pass the later ones on first — an
/// event of the next window read while a partition of `per`'s input is idle (500 ms)
/// moves the watermark past the window before. Any lateness under the 2 s between them
/// made those events late (dead-lettered, rightly) once in about 20 runs under load.
fn write_file(engine: &str, dir: &Path, receiver: &str, via: &str) -> std::path::PathBuf {
    write_file_with(engine, dir, receiver, via, "")
}

/// [`write_file`] with `per_extra` lines in `[stages.per]`.
fn write_file_with(
    engine: &str,
    dir: &Path,
    receiver: &str,
    via: &str,
    per_extra: &str,
) -> std::path::PathBuf {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{engine}\
             [admin]\nlisten = \"127.0.0.1:0\"\n[ledger]\nsettle_after = \"1s\"\n\
             [topics.big-orders]\nschema = {{ id = \"string\", ts = \"timestamp\", country = \"string\", via = \"string\" }}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\nevent_time = \"/ts\"\n\
             [stages.big]\ninput = \"events\"\noutput = \"big-orders\"\n\
             versions = {{ publish = \"manual\", backfill_from = \"retention\" }}\n\
             [[stages.big.transforms]]\ntype = \"set\"\nfield = \"/via\"\nvalue = \"{via}\"\n\
             [stages.per]\ninput = \"big-orders\"\noutput = \"per-country\"\n\
             window = {{ size = \"2s\", allowed_lateness = \"2s\", idle_timeout = \"500ms\" }}\n\
             sql = \"SELECT country, count(*) AS orders FROM input GROUP BY country\"\n{per_extra}\n\
             [sinks.out]\ntype = \"http\"\ninput = \"per-country\"\nurl = \"http://{receiver}/ingest\"\n\
             [sinks.out.retry.local]\nbackoff_min = \"20ms\"\nbackoff_max = \"300ms\"\n"
        ),
    )
    .unwrap();
    file
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Posts two events per country (DE, FR) stamped `at_ms`, ids `TAG-0…3`; counts them
/// into `want` by (window start, country).
async fn post_window(
    ingest: SocketAddr,
    tag: &str,
    at_ms: i64,
    want: &mut BTreeMap<(String, String), u64>,
) {
    let events: Vec<Value> = ["DE", "DE", "FR", "FR"]
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"id": format!("{tag}-{i}"), "ts": rfc3339(at_ms), "country": c}))
        .collect();
    post_events(ingest, &events).await;
    let start = rfc3339(at_ms.div_euclid(WINDOW) * WINDOW);
    for c in ["DE", "FR"] {
        *want.entry((start.clone(), c.to_owned())).or_default() += 2;
    }
}

/// The window results received: (window start, country) → the `orders` of each
/// delivery, and the ids they came under.
fn results(record: &Path) -> BTreeMap<(String, String), (Vec<u64>, Vec<String>)> {
    let mut out: BTreeMap<(String, String), (Vec<u64>, Vec<String>)> = BTreeMap::new();
    for r in received_records(record) {
        let d = &r["data"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let e = out
            .entry((s(&d["window_start"]), s(&d["country"])))
            .or_default();
        e.0.push(d["orders"].as_u64().unwrap());
        e.1.push(s(&r["id"]));
    }
    out
}

/// The ledger's buckets up to `to_ms` (events stamped ahead are in buckets after now),
/// once every one is settled with `passed` events passed by the source (a bucket that
/// settled before later events re-opens it, and is shown as it settled until it settles
/// again).
async fn settled_with(admin: SocketAddr, to_ms: i64, passed: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = get_json(&format!("http://{admin}/v1/loss?lost=true&to={to_ms}")).await;
        let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
        // (`per`'s outcomes too: a table shown as settled may be re-opening — a wrong
        // count fails the checks after, a bucket settled early the loss alarm check.)
        let per =
            node_sum(&buckets, "per", "aggregated") + node_sum(&buckets, "per", "dead_lettered");
        if buckets.iter().all(|b| b["settled"] == true)
            && node_sum(&buckets, "api", "passed") == passed
            && per >= passed
        {
            return buckets;
        }
        assert!(Instant::now() < deadline, "settled buckets: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_follows_a_publish_of_its_input_with_every_event_once() {
    follows_a_publish(EMBEDDED, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_window_stage_follows_a_publish_of_its_input_with_every_event_once() {
    let Some(engine) = kafka_engine("vwi") else {
        return;
    };
    follows_a_publish(&engine, false).await;
}

/// SIGKILLed while it reads the previous version's topic to its end; then a third
/// version of its input waits (refused, saying why) until it has, and is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_stage_reading_a_previous_version_survives_a_sigkill_and_holds_the_next_publish() {
    follows_a_publish(EMBEDDED, true).await;
}

async fn follows_a_publish(engine: &str, killed: bool) {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let mut want = BTreeMap::new();

    // Version one of `big`; two windows counted from it.
    let file = write_file(engine, dir.path(), &rx, "one");
    let proc = run_pipeline(dir.path(), &file);
    let now = chrono::Utc::now().timestamp_millis();
    post_window(proc.addr("source api"), "a0", now, &mut want).await;
    post_window(proc.addr("source api"), "a1", now + WINDOW, &mut want).await;
    wait_results(
        || results(&record),
        want.len(),
        "the windows of version one",
    )
    .await;
    proc.sigterm(Duration::from_secs(30));

    // Version two backfills beside it.
    let file = write_file(engine, dir.path(), &rx, "two");
    let proc = run_pipeline(dir.path(), &file);
    let (admin, ingest) = (proc.addr("admin"), proc.addr("source api"));
    let v2 = candidate_live(admin, "version two catches up").await["candidate"]
        .as_str()
        .unwrap()
        .to_owned();
    // A window open across the publish (stamped ahead, it closes by the wall clock):
    // half its events come through version one, half through version two.
    let ahead = if killed { 30_000 } else { 15_000 };
    let open = chrono::Utc::now().timestamp_millis() + ahead;
    post_window(ingest, "b0", open, &mut want).await;
    read_by_per(admin, 4).await; // through version one, into the open window
    let out = publish_cli(admin, &v2, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(admin, Duration::from_secs(60), "the publish", |v| {
        v["published"] == v2.as_str() && v["candidate"].is_null()
    })
    .await;
    let (proc, admin, ingest) = if killed {
        // Killed while its open window holds events of version one's topic; started
        // again with a third version of `big`, which cannot be published before the
        // window stage has read version one's topic to its end.
        proc.sigkill();
        let file = write_file(engine, dir.path(), &rx, "three");
        let proc = run_pipeline(dir.path(), &file);
        let (admin, ingest) = (proc.addr("admin"), proc.addr("source api"));
        let v3 = candidate_live(admin, "version three catches up").await["candidate"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = publish_cli(admin, &v3, &[]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("still to read or in open windows"),
            "{said}"
        );
        post_window(ingest, "b1", open, &mut want).await;
        post_window(ingest, "c0", open + WINDOW, &mut want).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = publish_cli(admin, &v3, &[]);
            if out.status.success() {
                break;
            }
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                said.contains("still to read") && Instant::now() < deadline,
                "{said}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        wait_for(admin, Duration::from_secs(60), "the publish", |v| {
            v["published"] == v3.as_str() && v["candidate"].is_null()
        })
        .await;
        post_window(ingest, "c1", open + 2 * WINDOW, &mut want).await;
        (proc, admin, ingest)
    } else {
        post_window(ingest, "b1", open, &mut want).await;
        post_window(ingest, "c0", open + WINDOW, &mut want).await;
        (proc, admin, ingest)
    };
    let _ = ingest;
    if !killed {
        assert_eq!(big(admin).await["published"], v2.as_str());
    }
    each_event_once(proc, &record, &want, open, killed).await;
    drop(receiver);
}

/// Once every window's result arrived: the ledger settles with every posted event
/// passed by the source and aggregated once by `per` (none dead-lettered, none lost);
/// stopped, no loss alarm was raised; each window's result counts every event posted
/// for it, delivered once (after a kill, maybe again, the same under the same id).
async fn each_event_once(
    proc: Proc,
    record: &Path,
    want: &BTreeMap<(String, String), u64>,
    open: i64,
    killed: bool,
) {
    wait_results(|| results(record), want.len(), "every window").await;
    let admin = proc.addr("admin");
    let posted = want.values().sum::<u64>();
    let buckets = settled_with(admin, open + 120_000, posted).await;
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "the ledger counts loss: {buckets:#?}");
    assert_eq!(
        node_sum(&buckets, "per", "aggregated"),
        posted,
        "every event aggregated once by the published version: {buckets:#?}"
    );
    assert_eq!(
        node_sum(&buckets, "per", "dead_lettered"),
        0,
        "{buckets:#?}"
    );
    no_loss_alarm(proc);

    let got = results(record);
    let counted: BTreeMap<(String, String), u64> = got
        .iter()
        .map(|(w, (orders, ids))| {
            if killed {
                assert!(orders.iter().all(|o| *o == orders[0]), "{w:?}: {got:#?}");
                assert!(ids.iter().all(|i| *i == ids[0]), "{w:?}: {got:#?}");
            } else {
                assert_eq!(orders.len(), 1, "window {w:?} delivered again: {got:#?}");
            }
            (w.clone(), orders[0])
        })
        .collect();
    assert_eq!(&counted, want, "{got:#?}");
}

/// Stops the pipeline; no bucket settled with events still held (a loss alarm, even
/// one corrected later, is a false alarm here).
fn no_loss_alarm(proc: Proc) {
    let log = proc.log.clone();
    proc.sigterm(Duration::from_secs(30));
    let said = std::fs::read_to_string(log).unwrap();
    assert!(!said.contains("LOSS ALARM"), "{said}");
}

/// Waits until the window stage `per` has read `n` events since its process started
/// (they came through the version of `big` published then).
async fn read_by_per(admin: SocketAddr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = get_json(&format!("http://{admin}/v1/stats")).await;
        let read = stats["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["node"] == "per")
            .and_then(|x| x["events_in_total"].as_u64())
            .unwrap_or(0);
        if read >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "per read {read} of {n}: {stats:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/v1/versions` of stage `per`.
async fn per(admin: SocketAddr) -> Value {
    let url = format!("http://{admin}/v1/versions?stage=per");
    match reqwest::get(&url).await {
        Ok(r) => r
            .json::<Value>()
            .await
            .map(|v| v["stages"][0].clone())
            .unwrap_or_default(),
        Err(_) => Value::Null, // restarting for a publish
    }
}

/// A versioned window stage reading a versioned stage: a publish of its input starts a
/// new version of it (its input's version is part of its definition), which recomputes
/// its windows from the new version's topic beside the published one and, published
/// in turn, takes over — every window's result delivered once, counting every event
/// once, the ledger exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_window_stage_recomputes_itself_after_a_publish_of_its_input() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = start_receiver(dir.path(), &record, &["--record-data"]);
    let rx = receiver.addr("receiver").to_string();
    let mut want = BTreeMap::new();
    let versioned = "versions = { publish = \"manual\", backfill_from = \"retention\" }";

    let file = write_file_with(EMBEDDED, dir.path(), &rx, "one", versioned);
    let proc = run_pipeline(dir.path(), &file);
    let now = chrono::Utc::now().timestamp_millis();
    post_window(proc.addr("source api"), "a0", now, &mut want).await;
    post_window(proc.addr("source api"), "a1", now + WINDOW, &mut want).await;
    wait_results(
        || results(&record),
        want.len(),
        "the windows of version one",
    )
    .await;
    let w1 = per(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(30));

    let file = write_file_with(EMBEDDED, dir.path(), &rx, "two", versioned);
    let proc = run_pipeline(dir.path(), &file);
    let (admin, ingest) = (proc.addr("admin"), proc.addr("source api"));
    let v2 = candidate_live(admin, "version two of big").await["candidate"]
        .as_str()
        .unwrap()
        .to_owned();
    // Stamped ahead: it closes by the wall clock, after the events posted below.
    let open = chrono::Utc::now().timestamp_millis() + 10_000;
    post_window(ingest, "b0", open, &mut want).await;
    read_by_per(admin, 4).await;
    let out = publish_cli(admin, &v2, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The nodes start again on the same addresses.)
    post_window(ingest, "b1", open, &mut want).await;
    post_window(ingest, "c0", open + WINDOW, &mut want).await;
    // `per` re-versions itself: a candidate computed from big's new version.
    let deadline = Instant::now() + Duration::from_secs(60);
    let w2 = loop {
        let v = per(admin).await;
        if v["published"] == w1.as_str() && v["candidate"].is_string() {
            break v["candidate"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "per's new version: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Published once the published version has read big's previous version to its end
    // and the candidate has emitted every window it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hifi"))
            .args(["publish", "per", &w2, "--admin", &admin.to_string()])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            (said.contains("still to read") || said.contains("caught up"))
                && Instant::now() < deadline,
            "publish per: {said}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while per(admin).await["published"] != w2.as_str() {
        assert!(Instant::now() < deadline, "per's new version published");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    post_window(ingest, "c1", open + 2 * WINDOW, &mut want).await;
    each_event_once(proc, &record, &want, open, false).await;
    drop(receiver);
}
