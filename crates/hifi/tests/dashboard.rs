//! The dashboard in a real headless browser against a running pipeline: every chart
//! rendered with real numbers, the loss table has rows, and a screenshot is saved
//! (`target/dashboard.png`). Needs Debian's `chromium`; CI installs it and sets
//! `HIFI_REQUIRE_CHROMIUM=1` so that the test cannot pass by skipping there.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_real_figures_in_a_headless_browser() {
    let have_chromium = std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_chromium {
        assert!(
            std::env::var("HIFI_REQUIRE_CHROMIUM").is_err(),
            "HIFI_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium); the dashboard was not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let file = pipeline_file(dir.path(), &sink_url, "", true);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    // Traffic for a little over one 10-second lag window, so history has points.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let body: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"id": format!("d-{n}-{i}")}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let out = tokio::task::spawn_blocking({
        let admin = format!("http://{}", proc.addr("admin"));
        let shot = shot.clone();
        move || {
            std::process::Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/check-dashboard"
            ))
            .args([admin.as_str(), shot.to_str().unwrap()])
            .output()
            .unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "dashboard check failed:\n{text}");
    assert!(shot.exists());
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}
