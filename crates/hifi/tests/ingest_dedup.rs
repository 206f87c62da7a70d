//! De-duplication survives a restart (the window is rebuilt from the log), health
//! endpoints answer, and tokens can come from a file.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_before_a_restart_is_not_stored_again_after_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens.txt"),
        "# producers\nt-one\n\nt-two\n",
    )
    .unwrap();
    let extra = "[sources.api.auth]\ntokens_file = \"tokens.txt\"\n";
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/never", extra, false);
    let client = reqwest::Client::new();
    let post = |url: String, token: &'static str, ids: &'static [&'static str]| {
        let client = client.clone();
        async move {
            let body: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };

    let proc = run_pipeline(dir.path(), &file);
    let admin = format!("http://{}", proc.addr("admin"));
    let ingest = format!("http://{}", proc.addr("source api"));
    for url in [
        format!("{admin}/healthz"),
        format!("{admin}/readyz"),
        format!("{ingest}/readyz"),
    ] {
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    let (status, v) = post(format!("{ingest}/v1/events"), "t-one", &["a", "b"]).await;
    assert_eq!((status, v["duplicates"].as_u64()), (200, Some(0)), "{v}");
    let (status, _) = post(format!("{ingest}/v1/events"), "nope", &["c"]).await;
    assert_eq!(status, 401);
    proc.sigkill();

    let proc = run_pipeline(dir.path(), &file);
    let ingest = format!("http://{}", proc.addr("source api"));
    let (status, v) = post(
        format!("{ingest}/v1/events"),
        "t-two",
        &["a", "b", "c", "c"],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 4);
    assert_eq!(
        v["duplicates"], 3,
        "a and b were accepted before the crash, c twice in one request: {v}"
    );
    assert_eq!(v["ids"], serde_json::json!(["a", "b", "c", "c"]));
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());

    let out = std::process::Command::new(HIFI)
        .args(["log", "verify", "data"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stored: u64 = text
        .lines()
        .filter(|l| l.starts_with("events/"))
        .map(|l| {
            l.split(": ")
                .nth(2)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(stored, 3, "a, b and c stored once each:\n{text}");
}

/// Across a restart the window holds the newest `dedup_max_ids` ids (only the newest
/// part of each partition is read back): a retry of a recent event is not stored again,
/// an event older than the bound is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_newest_ids_up_to_the_bound_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "dedup_max_ids = 100\nmax_events_per_request = 10\n";
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/never", extra, false);
    let client = reqwest::Client::new();
    let post = |url: String, ids: std::ops::Range<u32>| {
        let client = client.clone();
        async move {
            let body: Vec<_> = ids
                .map(|i| serde_json::json!({"id": format!("e-{i}")}))
                .collect();
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()["duplicates"]
                .as_u64()
                .unwrap()
        }
    };
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    // 20 requests of 10 (round-robin over 4 partitions), a few ms apart so that each
    // request's time differs from the next.
    for r in 0..20 {
        assert_eq!(post(url.clone(), r * 10..r * 10 + 10).await, 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proc.sigkill();

    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    // The newest 100 are the last 10 requests: 3, 3, 2 and 2 of them per partition, so
    // reading only 100 / 4 per partition would not do.
    for r in 10..20 {
        assert_eq!(
            post(url.clone(), r * 10..r * 10 + 10).await,
            10,
            "ids {}.. are among the newest 100: remembered",
            r * 10
        );
    }
    for r in 0..5 {
        assert_eq!(
            post(url.clone(), r * 10..r * 10 + 10).await,
            0,
            "ids {}.. are older than the newest 100: forgotten (stored again)",
            r * 10
        );
    }
    proc.sigterm(Duration::from_secs(20));
}
