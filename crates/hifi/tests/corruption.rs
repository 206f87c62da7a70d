//! A damaged record costs only itself: with a flipped byte in an undelivered,
//! acknowledged record, `hifi run` starts, quarantines it, delivers every other event,
//! and the ledger reports exactly that one event lost where it was lost.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_stored_event_is_quarantined_and_everything_else_flows() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    // The destination is down for the first run: the events stay in the topic.
    let addr = free_addr();
    let file = pipeline_file_holding(dir.path(), addr);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    for b in 0..8 {
        let body: Vec<_> = (0..5)
            .map(|i| serde_json::json!({"id": format!("c-{b}-{i}"), "n": b * 5 + i}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
    }
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());

    // Flip one byte inside the first record of partition 0 (acknowledged, undelivered).
    let part = dir.path().join("data/topics/events/0");
    let seg = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = hifi_log::segment::SEGMENT_HEADER_BYTES as usize + 40;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    // And one inside the last record of partition 1: nothing follows it for the sink
    // to commit past, yet its bucket must settle (the hole counts as read).
    let part1 = dir.path().join("data/topics/events/1");
    let seg1 = std::fs::read_dir(&part1)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let durable = std::fs::read(part1.join("durable")).unwrap();
    let end = u64::from_le_bytes(durable[8..16].try_into().unwrap()) as usize;
    let last = u64::from_le_bytes(durable[16..24].try_into().unwrap()) - 1;
    let mut bytes = std::fs::read(&seg1).unwrap();
    bytes[end - 20] ^= 0x20;
    std::fs::write(&seg1, bytes).unwrap();

    // It starts (before: exit 2), delivers the 38 others, and says what it skipped.
    let receiver = run_receiver(dir.path(), &addr.to_string(), &record);
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&record).len()
            == 38),
        "delivered: {}",
        received_ids(&record).len()
    );
    let buckets = settled_buckets(admin, Duration::from_secs(30)).await;
    assert_eq!(node_sum(&buckets, "out", "lost"), 2, "{buckets:?}");
    assert_eq!(node_sum(&buckets, "out", "delivered"), 38, "{buckets:?}");
    let mut lost: Vec<(String, String)> = buckets
        .iter()
        .flat_map(|b| b["lost"].as_array().cloned().unwrap_or_default())
        .map(|l| {
            let reason = l["reason"].as_str().unwrap_or("none").to_owned();
            (l["origin"].as_str().unwrap().to_owned(), reason)
        })
        .collect();
    lost.sort();
    let corrupt = |o: String| (o, "corrupt".to_owned());
    assert_eq!(
        lost,
        [
            corrupt("events/0/0".into()),
            corrupt(format!("events/1/{last}"))
        ]
    );
    assert_eq!(metric(admin, "hifi_log_quarantined_regions").await, 2.0);
    let out = std::process::Command::new(HIFI)
        .args(["log", "quarantine", "list", "data"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("events/0") && text.contains("0..1"), "{text}");
    assert!(text.contains("events/1"), "{text}");
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}
