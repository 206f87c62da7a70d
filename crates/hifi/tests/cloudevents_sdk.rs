//! CloudEvents with the real Python SDK (PyPI `cloudevents` 1.x) on both sides: events
//! built by its `to_structured` and `to_binary` are posted to hifi, delivered by sinks in
//! `structured` and `binary` format, and parsed back by its `from_http` with every
//! attribute and the data equal; `raw` and `ndjson` sinks carry the same events. A plain
//! JSON event's W3C `traceparent` travels with it. Events delivered again after a
//! publish with `--redeliver-from` are read by the SDK too, with their ids and the
//! extension `hifiversion`. CI installs the SDK and sets
//! `HIFI_REQUIRE_TOOLS=1`, so the test cannot pass there by skipping.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloudevents_sdk.py");

fn have_sdk() -> bool {
    tool_present(
        "python3",
        &["-c", "import cloudevents.http, cloudevents.conversion"],
        "HIFI_REQUIRE_TOOLS",
        "pip install 'cloudevents>=1.9,<2' to run this test",
    )
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The SDK as a destination (`serve`), recording to `record`; with its base URL.
fn sdk_server(record: &std::path::Path) -> (Killed, String) {
    let mut server = Command::new("python3")
        .args([SCRIPT, "serve", record.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let dest = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    (Killed(server), dest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_cloudevents_sdk_are_read_back_by_it_unchanged() {
    if !have_sdk() {
        return;
    }
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let (server, dest) = sdk_server(&record);
    let mut sinks = String::new();
    for format in ["structured", "binary", "raw", "ndjson"] {
        sinks += &format!(
            "[sinks.{format}]\ntype = \"http\"\ninput = \"events\"\nurl = \"{dest}/{format}\"\nformat = \"{format}\"\n\n"
        );
    }
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\
             event_time_window = {{ past = \"3650d\", future = \"5m\" }}\n\n{sinks}"
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let expected_file = dir.path().join("expected.json");
    let sent = Command::new("python3")
        .args([SCRIPT, "send", &ingest, expected_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // A plain JSON event with a W3C trace context.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = reqwest::Client::new()
        .post(&ingest)
        .header("traceparent", traceparent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .json(&json!({"id": "plain-1", "x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&expected_file).unwrap()).unwrap();
    assert_eq!(expected.len(), 6);
    // 7 events: one request each in the single-event formats, ndjson batches them.
    let complete = || {
        let got = received_records(&record);
        let count = |path: &str| got.iter().filter(|r| r["path"] == path).count();
        let ndjson_lines: usize = got
            .iter()
            .filter(|r| r["path"] == "/ndjson")
            .map(|r| r["body"].as_str().unwrap().lines().count())
            .sum();
        count("/structured") == 7
            && count("/binary") == 7
            && count("/raw") == 7
            && ndjson_lines == 7
    };
    assert!(
        wait_until(Duration::from_secs(30), complete),
        "not everything arrived: {:#?}",
        received_records(&record)
    );
    let got = received_records(&record);
    let by_id = |path: &str| -> HashMap<String, Value> {
        got.iter()
            .filter(|r| r["path"] == path)
            .map(|r| {
                assert!(
                    r.get("error").is_none(),
                    "the SDK could not read {path}: {r}"
                );
                (
                    r["event"]["attributes"]["id"].as_str().unwrap().to_owned(),
                    r.clone(),
                )
            })
            .collect()
    };
    for path in ["/structured", "/binary"] {
        let received = by_id(path);
        for want in &expected {
            let id = want["attributes"]["id"].as_str().unwrap();
            let r = &received[id];
            let mut attrs = r["event"]["attributes"].as_object().unwrap().clone();
            // Binary mode always says what its body is; the SDK sent JSON without saying.
            if path == "/binary" {
                assert_eq!(
                    attrs.remove("datacontenttype"),
                    Some(json!("application/json"))
                );
            }
            assert_eq!(
                Value::Object(attrs),
                want["attributes"],
                "{path} {id}: attributes"
            );
            assert_eq!(r["event"]["data"], want["data"], "{path} {id}: data");
            assert_eq!(
                r["headers"]["traceparent"], want["attributes"]["traceparent"],
                "{path} {id}: the trace context is a W3C header too"
            );
        }
        let plain = &received["plain-1"];
        assert_eq!(plain["event"]["attributes"]["traceparent"], traceparent);
        assert_eq!(
            plain["event"]["attributes"]["tracestate"],
            "congo=t61rcWkgMzE"
        );
        assert_eq!(plain["headers"]["traceparent"], traceparent, "{path}");
        assert_eq!(plain["event"]["data"], json!({"x": 1, "id": "plain-1"}));
    }
    // raw: the data alone, as JSON; ndjson: one whole CloudEvent per line.
    let mut raw: Vec<Value> = got
        .iter()
        .filter(|r| r["path"] == "/raw")
        .map(|r| {
            assert_eq!(r["headers"]["content-type"], "application/json", "{r}");
            assert!(r["headers"].get("ce-id").is_none(), "{r}");
            serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
        })
        .collect();
    let mut want_raw: Vec<Value> = expected.iter().map(|e| e["data"].clone()).collect();
    want_raw.push(json!({"x": 1, "id": "plain-1"}));
    let key = |v: &Value| v.to_string();
    raw.sort_by_key(key);
    want_raw.sort_by_key(key);
    assert_eq!(raw, want_raw);
    let mut ndjson_ids: Vec<String> = got
        .iter()
        .filter(|r| r["path"] == "/ndjson")
        .flat_map(|r| {
            assert_eq!(r["headers"]["content-type"], "application/x-ndjson");
            r["body"]
                .as_str()
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ndjson_ids.sort_unstable();
    let mut want_ids: Vec<String> = expected
        .iter()
        .map(|e| e["attributes"]["id"].as_str().unwrap().to_owned())
        .chain(["plain-1".to_owned()])
        .collect();
    want_ids.sort_unstable();
    assert_eq!(ndjson_ids, want_ids);
    proc.sigterm(Duration::from_secs(20));
    drop(server);
}

/// Bad binary-mode requests are refused with the reason, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_binary_mode_request_is_refused_with_its_reason() {
    let dir = test_dir();
    let addr = free_addr();
    let file = pipeline_file_holding(dir.path(), addr);
    let proc = run_pipeline(dir.path(), &file);
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    let post = |headers: &[(&str, &str)], body: &'static str| {
        let mut req = client.post(&ingest).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let ce = [("ce-id", "1"), ("ce-source", "s"), ("ce-type", "t")];
    for (extra, body, says) in [
        (
            vec![("content-type", "application/json")],
            "{nope",
            "not JSON",
        ),
        (vec![("ce-specversion", "0.3")], "{}", "specversion"),
        (vec![("ce-time", "yesterday")], "{}", "time"),
        (vec![("ce-Bad_Name", "x")], "{}", "lower-case"),
    ] {
        let headers: Vec<_> = ce.iter().copied().chain(extra).collect();
        let r = post(&headers, body).await.unwrap();
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{says}: {text}");
    }
    let r = post(&[("ce-source", "s"), ("ce-type", "t")], "{}")
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no id");
    // A text body is data too, and a duplicate id (same source) is recognised.
    for _ in 0..2 {
        let r = post(
            &[ce[0], ce[1], ce[2], ("content-type", "text/plain")],
            "hello",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let admin = proc.addr("admin");
    assert_eq!(
        metric(admin, "hifi_source_accepted_events_total").await,
        1.0
    );
    proc.sigterm(Duration::from_secs(20));
}

/// A publish with `--redeliver-from` delivers the new version's events again in both
/// CloudEvents modes: the SDK reads them, with the ids they had and `hifiversion` naming
/// the version, so a destination can replace what the previous version sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_again_after_a_publish_carry_their_ids_and_version_to_the_sdk() {
    if !have_sdk() {
        return;
    }
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let (server, dest) = sdk_server(&record);
    let file = dir.path().join("pipeline.toml");
    let write = |stage: &str| {
        let mut sinks = String::new();
        for format in ["structured", "binary"] {
            sinks += &format!(
                "[sinks.{format}]\ntype = \"http\"\ninput = \"big-orders\"\nurl = \"{dest}/{format}\"\nformat = \"{format}\"\n\n"
            );
        }
        std::fs::write(
            &file,
            format!(
                "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
                 [stages.big]\ninput = \"events\"\noutput = \"big-orders\"\nversions = {{}}\n\
                 [[stages.big.transforms]]\ntype = \"set\"\nfield = \"/stage\"\nvalue = \"{stage}\"\n\n{sinks}"
            ),
        )
        .unwrap();
    };
    let from_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 60_000)
        .to_string();
    write("one");
    let proc = run_pipeline(dir.path(), &file);
    let ids: Vec<String> = (0..5).map(|i| format!("order-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "amount": 7}))
        .collect();
    support::versions::post_events(proc.addr("source api"), &events).await;
    // Per mode, the ids the SDK read with `data.stage` equal to `stage`, with each one's
    // `hifiversion` (the version that computed it).
    let read = |path: &str, stage: &str| -> HashMap<String, Value> {
        received_records(&record)
            .iter()
            .filter(|r| r["path"] == path)
            .filter_map(|r| {
                assert!(
                    r.get("error").is_none(),
                    "the SDK could not read {path}: {r}"
                );
                let e = &r["event"];
                (e["data"]["stage"] == stage).then(|| {
                    (
                        e["attributes"]["id"].as_str().unwrap().to_owned(),
                        e["attributes"]["hifiversion"].clone(),
                    )
                })
            })
            .collect()
    };
    let all = |stage: &'static str| {
        let read = &read;
        let ids = &ids;
        move || {
            ["/structured", "/binary"]
                .iter()
                .all(|path| ids.iter().all(|id| read(path, stage).contains_key(id)))
        }
    };
    assert!(
        wait_until(Duration::from_secs(30), all("one")),
        "version one never delivered"
    );
    let v1 = support::versions::big(proc.addr("admin")).await["published"]
        .as_str()
        .unwrap()
        .to_owned();
    proc.sigterm(Duration::from_secs(20));

    write("two");
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin");
    let v = support::versions::candidate_live(admin, "the candidate catches up").await;
    let v2 = v["candidate"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let out = support::versions::publish_cli(admin, &v2, &["--redeliver-from", &from_ms]);
    assert!(
        out.status.success(),
        "hifi publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(60), all("two")),
        "not delivered again: {:#?}",
        received_records(&record)
    );
    for path in ["/structured", "/binary"] {
        for (id, version) in read(path, "two") {
            assert_eq!(version, v2.as_str(), "{path} {id}: hifiversion");
        }
        for (id, version) in read(path, "one") {
            assert_eq!(version, v1.as_str(), "{path} {id}: hifiversion");
        }
    }
    proc.sigterm(Duration::from_secs(20));
    drop(server);
}
