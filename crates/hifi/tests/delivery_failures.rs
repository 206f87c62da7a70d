//! Delivery that never gives up wrongly: recoverable failures are retried (locally, then
//! through the retry topic) until delivered; non-recoverable ones are isolated by
//! bisection and dead-lettered without blocking the rest; Retry-After is honoured; events
//! waiting in the retry topic survive a SIGKILL.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

/// Short delays so the tests take seconds, not minutes.
const FAST_RETRY: &str = "[sinks.out.retry.global]\nschedule = [\"1s\", \"1s\"]\n";

async fn post_ids(url: &str, ids: &[String]) {
    let body: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn sink_stats(admin: std::net::SocketAddr) -> serde_json::Value {
    node_stats(admin, "out").await
}

fn receiver_with(
    dir: &std::path::Path,
    listen: &str,
    record: &std::path::Path,
    flags: &[&str],
) -> Proc {
    let mut args = vec![
        "receiver",
        "--listen",
        listen,
        "--record",
        record.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    Proc::start(&args, "receiver:", dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failing_for_a_while_gets_everything_and_nothing_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = receiver_with(
        dir.path(),
        "127.0.0.1:0",
        &record,
        &["--fail-first", "21", "--fail-status", "503"],
    );
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    // Two attempts per batch and 21 failures: however the 20 events are batched (at most
    // 20 batches, retrying concurrently), some batch fails twice and goes to the retry
    // topic, so both tiers of retries are seen whatever the timing.
    let extra = format!("attempts = 2\n{FAST_RETRY}[sinks.out.breaker]\nfailures = 1000\n");
    let proc = run_pipeline(
        dir.path(),
        &pipeline_file_full(dir.path(), &sink_url, "", None, &extra),
    );
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let ids: Vec<String> = (0..20).map(|i| format!("e-{i}")).collect();
    post_ids(&url, &ids[..10]).await;
    post_ids(&url, &ids[10..]).await;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got = received_ids(&record);
            ids.iter().all(|id| got.contains_key(id))
        }),
        "not everything arrived"
    );
    let s = sink_stats(proc.addr("admin")).await;
    assert!(
        s["local_retries_total"].as_u64().unwrap() > 0,
        "local retries happened: {s}"
    );
    assert!(
        s["retried_events_total"].as_u64().unwrap() > 0,
        "global retries happened: {s}"
    );
    assert_eq!(s["dead_lettered_total"], 0, "{s}");
    let dlq = get_json(&format!("http://{}/v1/sinks/out/dlq", proc.addr("admin"))).await;
    assert_eq!(dlq["total"], 0);
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_dead_lettered_the_rest_flows_and_redrive_delivers_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let addr = free_addr().to_string();
    let receiver = receiver_with(
        dir.path(),
        &addr,
        &record,
        &["--reject-ids-matching", "^bad-", "--reject-status", "422"],
    );
    let proc = run_pipeline(
        dir.path(),
        &pipeline_file_full(
            dir.path(),
            &format!("http://{addr}/ingest"),
            "",
            None,
            FAST_RETRY,
        ),
    );
    let (url, admin) = (
        format!("http://{}/v1/events", proc.addr("source api")),
        proc.addr("admin"),
    );
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for b in 0..10 {
        let ids: Vec<String> = (0..10)
            .map(|i| {
                if (b * 10 + i) % 21 == 3 {
                    format!("bad-{b}-{i}")
                } else {
                    format!("good-{b}-{i}")
                }
            })
            .collect();
        good.extend(ids.iter().filter(|i| i.starts_with("good")).cloned());
        bad.extend(ids.iter().filter(|i| i.starts_with("bad")).cloned());
        post_ids(&url, &ids).await;
    }
    assert_eq!(bad.len(), 5);
    // Every good event arrives promptly: the bad ones do not block them.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let got = received_ids(&record);
            good.iter().all(|id| got.contains_key(id))
        }),
        "good events were blocked"
    );
    // Exactly the bad ones end in the DLQ, with the reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let dlq = loop {
        let v = get_json(&format!("http://{admin}/v1/sinks/out/dlq")).await;
        if v["total"] == 5 || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut dead: Vec<String> = dlq["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    dead.sort();
    let mut expected = bad.clone();
    expected.sort();
    assert_eq!(dead, expected, "{dlq}");
    for d in dlq["dead_letters"].as_array().unwrap() {
        assert_eq!(d["reason"]["class"], "non_recoverable");
        assert_eq!(d["reason"]["status"], 422);
        assert!(
            d["reason"]["body"].as_str().unwrap().contains("rejected"),
            "{d}"
        );
    }
    assert!(received_ids(&record)
        .keys()
        .all(|id| !id.starts_with("bad")));
    let out = std::process::Command::new(HIFI)
        .args(["dlq", "list", "out", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        bad.iter().all(|id| text.contains(id.as_str())) && text.contains("5 dead letter(s)"),
        "{text}"
    );
    let s = sink_stats(admin).await;
    assert_eq!(s["dead_lettered_total"], 5, "{s}");

    // The destination is fixed; re-drive delivers them; a second re-drive sends nothing.
    receiver.sigterm(Duration::from_secs(10));
    let receiver = receiver_with(dir.path(), &addr, &record, &[]);
    let dry = std::process::Command::new(HIFI)
        .args([
            "dlq",
            "redrive",
            "out",
            "--dry-run",
            "--admin",
            &admin.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would re-drive 5"),
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
    let first = std::process::Command::new(HIFI)
        .args(["dlq", "redrive", "out", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("re-drove 5"),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            let got = received_ids(&record);
            bad.iter().all(|id| got.contains_key(id))
        }),
        "re-driven events did not arrive"
    );
    let second = std::process::Command::new(HIFI)
        .args(["dlq", "redrive", "out", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("re-drove 0"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    // A duplicate would come from the first re-drive's retry tier, already drained: a
    // quiet period is the only way to see one does not (a slower machine makes it a
    // weaker check, never a failing one).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received_ids(&record);
    assert!(
        bad.iter().all(|id| got[id] == 1),
        "each re-driven event arrived once: {got:?}"
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let flags = [
        "--fail-first",
        "1",
        "--fail-status",
        "429",
        "--retry-after",
        "2s",
    ];
    let receiver = receiver_with(dir.path(), "127.0.0.1:0", &record, &flags);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let proc = run_pipeline(dir.path(), &pipeline_file(dir.path(), &sink_url, "", false));
    let sent_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    post_ids(
        &format!("http://{}/v1/events", proc.addr("source api")),
        &["slow-1".to_owned()],
    )
    .await;
    assert!(wait_until(Duration::from_secs(20), || received_ids(
        &record
    )
    .contains_key("slow-1")));
    let line = std::fs::read_to_string(&record).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let waited_ms = (v["received_at_us"].as_i64().unwrap() - sent_us) / 1000;
    assert!(
        waited_ms >= 2000,
        "the second attempt came {waited_ms} ms after the post; Retry-After said 2 s"
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_in_the_retry_topic_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let addr = free_addr().to_string();
    let failing = receiver_with(
        dir.path(),
        &addr,
        &record,
        &["--fail-rate", "1.0", "--fail-status", "503"],
    );
    let extra =
        "[sinks.out.retry.global]\nschedule = [\"2s\"]\n[sinks.out.breaker]\nfailures = 1000\n";
    let file = pipeline_file_full(
        dir.path(),
        &format!("http://{addr}/ingest"),
        "",
        None,
        extra,
    );
    let proc = run_pipeline(dir.path(), &file);
    let ids: Vec<String> = (0..30).map(|i| format!("r-{i}")).collect();
    post_ids(
        &format!("http://{}/v1/events", proc.addr("source api")),
        &ids,
    )
    .await;
    let admin = proc.addr("admin");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = sink_stats(admin).await;
        if s["retried_events_total"].as_u64().unwrap() >= 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events never reached the retry topic: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proc.sigkill();
    failing.sigterm(Duration::from_secs(10));
    let receiver = receiver_with(dir.path(), &addr, &record, &[]);
    let proc = run_pipeline(dir.path(), &file);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got = received_ids(&record);
            ids.iter().all(|id| got.contains_key(id))
        }),
        "events in the retry topic were lost"
    );
    let s = sink_stats(proc.addr("admin")).await;
    assert_eq!(s["dead_lettered_total"], 0, "{s}");
    let dlq = get_json(&format!("http://{}/v1/sinks/out/dlq", proc.addr("admin"))).await;
    assert_eq!(dlq["total"], 0, "nothing dead-lettered by mistake");
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// Receive times (µs) by event id, from a receiver's record file.
fn received_at(record: &std::path::Path) -> std::collections::HashMap<String, i64> {
    received_records(record)
        .into_iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["received_at_us"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Head-of-line blocking: with a single request slot, a batch being split to isolate a
/// refused event (one among 64; three or four rounds at 100 ms each, however the events
/// were batched) must not hold up an event posted after it. The failing batch gives its
/// slot back and is split in the recovery lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_being_bisected_does_not_hold_up_the_events_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let failures = record.with_extension("failures.jsonl");
    let flags = [
        "--latency",
        "100ms",
        "--reject-ids-matching",
        "^bad-",
        "--reject-status",
        "422",
    ];
    let receiver = receiver_with(dir.path(), "127.0.0.1:0", &record, &flags);
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://{}/ingest\"\nconcurrency = 1\n\
             batch.max_events = 64\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let mut first: Vec<String> = (0..63).map(|i| format!("first-{i}")).collect();
    first.insert(40, "bad-0".to_owned());
    post_ids(&url, &first).await;
    // Once the batch has been refused, post one more event.
    assert!(
        wait_until(Duration::from_secs(10), || failures.exists()
            && std::fs::read_to_string(&failures)
                .unwrap_or_default()
                .contains("\"bad-0\"")),
        "the batch with the bad event was never refused"
    );
    post_ids(&url, &["late-0".to_owned()]).await;
    let expected: Vec<&String> = first.iter().filter(|i| i.starts_with("first-")).collect();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let got = received_at(&record);
            got.contains_key("late-0") && expected.iter().all(|id| got.contains_key(*id))
        }),
        "not everything arrived"
    );
    let got = received_at(&record);
    let bisection_done = expected.iter().map(|id| got[*id]).max().unwrap();
    let refused_requests = std::fs::read_to_string(&failures)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"bad-0\""))
        .count();
    assert!(
        refused_requests >= 3,
        "the bad event was refused in {refused_requests} requests; the test needs a long bisection"
    );
    assert!(
        got["late-0"] < bisection_done,
        "the late event arrived {} ms after the bisection's last delivery: it waited behind it",
        (got["late-0"] - bisection_done) / 1000
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// When the circuit breaker closes, every delivery waiting behind it goes at once, not
/// one probe period later: otherwise fresh events overtake the waiting ones while the
/// destination is up, the committed position stays behind them, and a crash re-sends
/// everything delivered since (the chaos soak's duplicates, 2026-11-30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_behind_the_breaker_go_as_soon_as_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let addr = free_addr(); // nothing listens yet: connections are refused
    let sink_url = format!("http://{addr}/ingest");
    let probe = Duration::from_secs(3);
    let extra = format!(
        "{FAST_RETRY}[sinks.out.breaker]\nfailures = 1\nprobe = \"{0}s\"\nprobe_min = \"{0}s\"\n",
        probe.as_secs()
    );
    let proc = run_pipeline(
        dir.path(),
        &pipeline_file_full(dir.path(), &sink_url, "", None, &extra),
    );
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    // Separate requests a little apart: separate batches, all waiting behind the breaker
    // (the first one's failure opened it).
    let ids: Vec<String> = (0..4).map(|i| format!("w-{i}")).collect();
    for id in &ids {
        post_ids(&url, std::slice::from_ref(id)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Up between two probes: the next probe finds it and closes the breaker.
    tokio::time::sleep(probe / 2).await;
    let receiver = receiver_with(dir.path(), &addr.to_string(), &record, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let got = received_ids(&record);
            ids.iter().all(|id| got.contains_key(id))
        }),
        "not everything arrived"
    );
    let at = received_at(&record);
    let times: Vec<i64> = ids.iter().map(|id| at[id]).collect();
    let spread_ms = (times.iter().max().unwrap() - times.iter().min().unwrap()) / 1000;
    assert!(
        spread_ms < probe.as_millis() as i64 / 2,
        "the waiting deliveries arrived {spread_ms} ms apart (the probe period is {probe:?})"
    );
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}
