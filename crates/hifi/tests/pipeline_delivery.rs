//! Delivery through a destination outage: the receiver is down (connection refused)
//! while events are ingested, then comes up; everything arrives.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_through_a_receiver_outage_then_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    // A port with nothing listening (yet).
    let addr = free_addr();
    let retry = "[sinks.out.retry.global]\nschedule = [\"1s\", \"2s\"]\n[sinks.out.breaker]\nprobe = \"500ms\"\n";
    let file = pipeline_file_full(
        dir.path(),
        &format!("http://{addr}/ingest"),
        "",
        None,
        retry,
    );
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for b in 0..10 {
        let batch: Vec<_> = (0..10).map(|i| format!("out-{b}-{i}")).collect();
        let body: Vec<_> = batch
            .iter()
            .map(|id| serde_json::json!({"id": id}))
            .collect();
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "ingest does not depend on the destination");
        ids.extend(batch);
    }
    // The sink is failing now: the scenario is real.
    let stderr = proc.log.clone();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("circuit breaker open")),
        "the sink never reported a failed delivery"
    );
    assert!(received_ids(&record).is_empty());

    let receiver = run_receiver(dir.path(), &addr.to_string(), &record);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got = received_ids(&record);
            ids.iter().all(|id| got.contains_key(id))
        }),
        "not everything arrived after the receiver came up"
    );
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    receiver.sigterm(Duration::from_secs(10));
}
