//! Zero loss through crashes, with real processes over loopback: producers post batches
//! to `hifi run` (source → stage → sink → `hifi receiver`), retrying unacknowledged
//! requests like real producers, while the test SIGKILLs `hifi run` at random moments
//! and restarts it. Every event id that ever got a 2xx must reach the receiver.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use support::*;

const PRODUCERS: usize = 8;
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_when_hifi_is_killed_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let file = pipeline_file(dir.path(), &sink_url, "", true);
    let first = run_pipeline(dir.path(), &file);
    let target = Arc::new(RwLock::new(format!(
        "http://{}/v1/events",
        first.addr("source api")
    )));

    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let failed_requests = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for task in 0..PRODUCERS {
        let (target, acked, failed, stop) = (
            target.clone(),
            acked.clone(),
            failed_requests.clone(),
            stop.clone(),
        );
        producers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..20).map(|i| format!("p{task}-{seq}-{i}")).collect();
                let body: Vec<_> = ids
                    .iter()
                    .map(|id| serde_json::json!({"id": id, "n": seq}))
                    .collect();
                // Retry the same batch (same ids) until acknowledged, like a real producer.
                loop {
                    let url = target.read().unwrap().clone();
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().unwrap().extend(ids.iter().cloned());
                            break;
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if stop.load(Ordering::Relaxed) {
                                break; // never acknowledged: not counted
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                seq += 1;
            }
        }));
    }

    let kills = {
        let (dir, file, target, acked) = (
            dir.path().to_path_buf(),
            file.clone(),
            target.clone(),
            acked.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut rng = rand::thread_rng();
            let mut proc = first;
            let mut acked_between = Vec::new();
            for _ in 0..KILLS {
                let before = acked.lock().unwrap().len();
                std::thread::sleep(Duration::from_millis(rng.gen_range(400..1200)));
                acked_between.push(acked.lock().unwrap().len() - before);
                proc.sigkill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
                proc = run_pipeline(&dir, &file);
                *target.write().unwrap() = format!("http://{}/v1/events", proc.addr("source api"));
            }
            std::thread::sleep(Duration::from_millis(500));
            (proc, acked_between)
        })
    };
    let (proc, acked_between) = kills.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();

    let all_arrived = wait_until(Duration::from_secs(90), || {
        let got = received_ids(&record);
        acked.iter().all(|id| got.contains_key(id))
    });
    let got = received_ids(&record);
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !got.contains_key(*id))
        .take(10)
        .collect();
    let duplicates: u32 = got.values().map(|n| n - 1).sum();
    // The ledger agrees: after settling, no loss, and re-sends did not double the counts.
    let buckets = settled_buckets(proc.addr("admin"), Duration::from_secs(60)).await;
    let stored: u64 = buckets.iter().map(|b| b["events"].as_u64().unwrap()).sum();
    let e2e_lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    let delivered = node_sum(&buckets, "out", "delivered");
    let (status, out) = proc.sigterm(Duration::from_secs(30));
    receiver.sigterm(Duration::from_secs(10));
    eprintln!(
        "{KILLS} kills; {} events acknowledged; {} distinct received, {duplicates} duplicate deliveries; \
         {} producer requests failed during restarts; acks between kills: {acked_between:?}",
        acked.len(),
        got.len(),
        failed_requests.load(Ordering::Relaxed)
    );
    assert!(
        all_arrived && missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    eprintln!("ledger: {stored} events stored, {delivered} delivered, {e2e_lost} lost in {} settled buckets", buckets.len());
    assert_eq!(
        e2e_lost, 0,
        "the ledger reports loss where there was none: {buckets:?}"
    );
    assert_eq!(
        delivered, stored,
        "every stored event delivered once in the ledger; re-sends not counted twice"
    );
    assert!(
        stored >= acked.len() as u64,
        "stored {stored} < acked {}",
        acked.len()
    );
    // The scenario really happened: load flowed between every kill and the kills hurt.
    assert!(
        acked_between.iter().all(|&n| n > 0),
        "a kill landed with no load flowing: {acked_between:?}"
    );
    assert!(
        failed_requests.load(Ordering::Relaxed) > 0,
        "no producer ever saw a failure: were the kills real?"
    );
    assert!(
        status.success(),
        "SIGTERM should stop cleanly: {status:?} {out:?}"
    );
    assert!(out.iter().any(|l| l.contains("stopped cleanly")), "{out:?}");
}
