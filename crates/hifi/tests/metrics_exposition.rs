//! `/metrics` as Prometheus tools read it: text format 0.0.4 by default, accepted by
//! `promtool check metrics` without a single complaint; OpenMetrics when the scraper's
//! `Accept` asks, accepted by the strict parser of the Python `prometheus-client`. Lag
//! is a histogram whose count is the events delivered. CI installs both tools and sets
//! `HIFI_REQUIRE_TOOLS=1`, so the test cannot pass there by skipping.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Runs `cmd args` with `input` on stdin: (success, stdout + stderr).
fn pipe(cmd: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_openmetrics_parser() {
    let promtool = tool_present(
        "promtool",
        &["--version"],
        "HIFI_REQUIRE_TOOLS",
        "apt-get install prometheus (for promtool)",
    );
    let python_client = tool_present(
        "python3",
        &["-c", "import prometheus_client.openmetrics.parser"],
        "HIFI_REQUIRE_TOOLS",
        "pip install prometheus-client",
    );
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = pipeline_file(
        dir.path(),
        &format!("http://{}/ingest", receiver.addr("receiver")),
        "",
        true,
    );
    let proc = run_pipeline(dir.path(), &file);
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = client
            .post(&ingest)
            .json(&serde_json::json!({"id": format!("m-{i}"), "note": "a \"quoted\" value"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client.post(&ingest).body("{nope").send().await.unwrap();
    assert_eq!(r.status(), 415);
    assert!(wait_until(Duration::from_secs(20), || received_ids(
        &record
    )
    .len()
        == 20));
    let url = format!("http://{}/metrics", proc.addr("admin"));
    // Sinks record lag as they commit; give the last batch a moment.
    let mut text = String::new();
    for _ in 0..100 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        text = r.text().await.unwrap();
        // The backlog gauges come from the ledger's tick (every second).
        if text.contains("hifi_e2e_lag_seconds_count 20\n")
            && text.contains("hifi_node_backlog_records{node=\"out\"}")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("hifi_e2e_lag_seconds_count 20\n"),
        "the E2E lag histogram counts every delivered event:\n{text}"
    );
    assert!(text.contains("hifi_e2e_lag_seconds_bucket{le=\"+Inf\"} 20\n"));
    assert!(text.contains("hifi_node_lag_seconds_count{node=\"clean\",lag=\"lag_out\"} 20\n"));
    assert!(text
        .contains("hifi_source_request_duration_seconds_count{source=\"api\",code=\"200\"} 20\n"));
    assert!(text
        .contains("hifi_source_request_duration_seconds_count{source=\"api\",code=\"415\"} 1\n"));
    assert!(text.contains("hifi_sink_requests_total{sink=\"out\",outcome=\"success\"}"));
    assert!(text.contains("hifi_build_info{version="));
    assert!(
        text.contains("hifi_dlq_records{node=\"out\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("hifi_node_backlog_records{node=\"out\"}"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "));
    assert!(
        !text.contains("quantile="),
        "lag is a histogram, not gauges of quantiles"
    );
    if promtool {
        let (ok, said) = pipe("promtool", &["check", "metrics"], &text);
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    }

    let r = client
        .get(&url)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = r.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE hifi_source_accepted_events counter\n"));
    if python_client {
        let parse = "import sys\n\
            from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
            fams = list(p(sys.stdin.read()))\n\
            print(len(fams))";
        let (ok, said) = pipe("python3", &["-c", parse], &om);
        assert!(ok, "the OpenMetrics parser refused it: {said}\n{om}");
        let text_families = text.matches("# TYPE ").count();
        assert_eq!(said.trim(), text_families.to_string(), "{said}");
    }
    // The operator commands on the same instance: units that fit, and a closed
    // stdout (`hifi lag | head -1`) ends them quietly.
    let admin = proc.addr("admin").to_string();
    let out = Command::new(HIFI)
        .args(["lag", "--admin", &admin])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains(" ms") && table.contains("E2E"), "{table}");
    for cmd in ["lag", "loss", "dlq list out"] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.extend(["--admin", &admin]);
        let mut child = Command::new(HIFI)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command has its answer to print.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "hifi {cmd} with its stdout closed: {:?} {err}",
            out.status
        );
    }
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}
