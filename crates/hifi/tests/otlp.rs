//! OpenTelemetry spans over OTLP/HTTP, read by a receiver that decodes the protobuf with
//! the `opentelemetry-proto` package from PyPI: an ingest request's W3C trace context
//! becomes the parent of hifi's `ingest` span (with `append` under it), and the stage
//! batch and delivery that carried its event link back to that trace. CI installs the
//! package and sets `HIFI_REQUIRE_TOOLS=1`, so the test cannot pass there by skipping.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_producers_trace() {
    let ok = tool_present(
        "python3",
        &[
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ],
        "HIFI_REQUIRE_TOOLS",
        "pip install opentelemetry-proto",
    );
    if !ok {
        return;
    }
    let dir = test_dir();
    let spans = dir.path().join("spans.jsonl");
    let mut child = Command::new("python3")
        .args([SCRIPT, spans.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let collector = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = pipeline_file(
        dir.path(),
        &format!("http://{}/ingest", receiver.addr("receiver")),
        "",
        true,
    );
    let text = std::fs::read_to_string(&file).unwrap()
        + &format!(
            "\n[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"hifi-test\"\n"
        );
    std::fs::write(&file, text).unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", proc.addr("source api")))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .json(&serde_json::json!([{"id": "t-1"}, {"id": "t-2"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(wait_until(Duration::from_secs(20), || received_ids(
        &record
    )
    .len()
        == 2));
    // Spans are exported in batches (every 5 s) and at shutdown.
    let (status, _) = proc.sigterm(Duration::from_secs(30));
    assert!(status.success());
    let got = received_records(&spans);
    let _ = child.kill();
    let _ = child.wait();
    let named = |name: &str| -> Vec<&serde_json::Value> {
        got.iter().filter(|s| s["name"] == name).collect()
    };
    let ingest = named("ingest");
    assert_eq!(ingest.len(), 1, "{got:#?}");
    let ingest = ingest[0];
    assert_eq!(ingest["path"], "/v1/traces");
    assert_eq!(ingest["service"], "hifi-test");
    assert_eq!(ingest["trace_id"], trace_id, "the producer's trace");
    assert_eq!(
        ingest["parent_span_id"], parent,
        "a child of the producer's span"
    );
    assert_eq!(ingest["attributes"]["http.response.status_code"], 200);
    let append = named("append");
    assert!(
        append
            .iter()
            .any(|a| a["trace_id"] == trace_id && a["parent_span_id"] == ingest["span_id"]),
        "append under ingest: {got:#?}"
    );
    for name in ["stage", "deliver"] {
        assert!(
            named(name).iter().any(|s| s["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == trace_id)),
            "a {name} span links to the producer's trace: {got:#?}"
        );
    }
    let deliver = named("deliver");
    assert!(
        deliver
            .iter()
            .any(|d| d["attributes"]["outcome"] == "success"),
        "{got:#?}"
    );
    receiver.sigterm(Duration::from_secs(10));
}
