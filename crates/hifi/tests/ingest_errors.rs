//! Bad input gets a clear error and changes nothing: every rejected request below gets
//! its status and reason, and afterwards the log holds exactly the accepted events.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

struct Case {
    name: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    token: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    says: &'static str,
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn case(
    name: &'static str,
    ct: &'static str,
    body: &[u8],
    status: u16,
    says: &'static str,
) -> Case {
    Case {
        name,
        content_type: ct,
        encoding: None,
        token: Some("s3cret"),
        body: body.to_vec(),
        status,
        says,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_reason_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Event times here are small epoch milliseconds (1970): the window is widened to
    // take them (the default window is tested below).
    let extra = "event_time = \"/ts\"\nmax_body_bytes = \"64KiB\"\nmax_events_per_request = 50\n\
                 event_time_window = { past = \"100years\" }\n\
                 [sources.api.auth]\ntokens = [\"s3cret\"]\n";
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/never", extra, false);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let json = "application/json";
    let big = format!(
        "[{{\"id\":\"bad-big\",\"ts\":1,\"pad\":\"{}\"}}]",
        "x".repeat(70 * 1024)
    );
    let bomb = format!(
        "[{{\"id\":\"bad-bomb\",\"ts\":1,\"pad\":\"{}\"}}]",
        "0".repeat(2 << 20)
    );
    // Nesting far past serde_json's recursion limit (128) along the event-time pointer:
    // refused, never a stack overflow. (Nesting where hifi does not read is skipped
    // without recursion and kept byte for byte: see the accepted case below.)
    let deep_time = format!(
        "[{{\"id\":\"bad-deep-ts\",\"ts\":{}1{}}}]",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let many: Vec<_> = (0..51)
        .map(|i| serde_json::json!({"id": format!("bad-many-{i}"), "ts": 1}))
        .collect();
    let mut cases = vec![
        case(
            "broken JSON",
            json,
            br#"[{"id":"bad-1","ts":1}"#,
            400,
            "not a valid JSON array",
        ),
        case(
            "not an object",
            json,
            br#"[{"id":"bad-2","ts":1}, 42]"#,
            400,
            "must be a JSON object",
        ),
        case(
            "missing time",
            json,
            br#"{"id":"bad-3"}"#,
            400,
            "missing event time at /ts",
        ),
        case(
            "bad time",
            json,
            br#"{"id":"bad-4","ts":"yesterday"}"#,
            400,
            "RFC 3339",
        ),
        case(
            "wrong id type",
            json,
            br#"{"id":{"a":1},"ts":1}"#,
            400,
            "id at /id",
        ),
        case(
            "bad NDJSON line",
            "application/x-ndjson",
            b"{\"id\":\"bad-5\",\"ts\":1}\n{oops\n",
            400,
            "invalid JSON",
        ),
        case(
            "bad CloudEvent",
            "application/cloudevents+json",
            br#"{"specversion":"1.0","id":"bad-6","type":"t"}"#,
            400,
            "`source`",
        ),
        case("empty body", json, b"", 400, "not"),
        case(
            "deep nesting at the time pointer",
            json,
            deep_time.as_bytes(),
            400,
            "recursion limit",
        ),
        case(
            "oversized body",
            json,
            big.as_bytes(),
            413,
            "max_body_bytes",
        ),
        case(
            "too many events",
            json,
            serde_json::to_vec(&many).unwrap().as_slice(),
            413,
            "at most 50",
        ),
        case(
            "unknown content type",
            "text/plain",
            br#"{"id":"bad-7","ts":1}"#,
            415,
            "Content-Type",
        ),
        case(
            "no content type",
            "",
            br#"{"id":"bad-8","ts":1}"#,
            415,
            "Content-Type",
        ),
    ];
    cases.push(Case {
        encoding: Some("br"),
        ..case(
            "unknown encoding",
            json,
            br#"{"id":"bad-9","ts":1}"#,
            415,
            "Content-Encoding",
        )
    });
    cases.push(Case {
        encoding: Some("gzip"),
        ..case("broken gzip", json, b"not gzip at all", 400, "decompress")
    });
    cases.push(Case {
        encoding: Some("gzip"),
        ..case(
            "gzip bomb",
            json,
            &gzip(bomb.as_bytes()),
            413,
            "max_body_bytes",
        )
    });
    cases.push(Case {
        token: None,
        ..case(
            "no token",
            json,
            br#"{"id":"bad-10","ts":1}"#,
            401,
            "bearer token",
        )
    });
    cases.push(Case {
        token: Some("wrong"),
        ..case(
            "wrong token",
            json,
            br#"{"id":"bad-11","ts":1}"#,
            401,
            "bearer token",
        )
    });

    let client = reqwest::Client::new();
    for c in &cases {
        let mut req = client.post(&url).body(c.body.clone());
        if !c.content_type.is_empty() {
            req = req.header("content-type", c.content_type);
        }
        if let Some(e) = c.encoding {
            req = req.header("content-encoding", e);
        }
        if let Some(t) = c.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {body}", c.name);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {body}", c.name));
        assert!(v["error"].is_string(), "{}: no error field: {body}", c.name);
        assert!(
            body.contains(c.says),
            "{}: expected {:?} in {body}",
            c.name,
            c.says
        );
    }
    // One invalid event among valid ones: 400 naming exactly its index, nothing written.
    let mixed = br#"[{"id":"bad-12","ts":1},{"id":"bad-13"},{"id":"bad-14","ts":2}]"#;
    let resp = client
        .post(&url)
        .bearer_auth("s3cret")
        .header("content-type", json)
        .body(mixed.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    assert_eq!(v["errors"][0]["index"], 1);

    // Valid requests in every format and encoding, and a repeat that is de-duplicated.
    let good = br#"[{"id":"ok-1","ts":1},{"id":"ok-2","ts":"2026-11-22T00:00:00Z"}]"#;
    let ce = br#"[{"specversion":"1.0","id":"ok-3","source":"/test","type":"t","time":"2026-11-22T00:00:00Z","data":{"a":1}}]"#;
    let nd = b"{\"id\":\"ok-4\",\"ts\":4}\n{\"id\":\"ok-5\",\"ts\":5}\n";
    let zstd_body = zstd::encode_all(&br#"{"id":"ok-6","ts":6}"#[..], 3).unwrap();
    let posts: Vec<(&str, Option<&str>, Vec<u8>, u64)> = vec![
        (json, None, good.to_vec(), 0),
        (json, None, good.to_vec(), 2),
        ("application/cloudevents-batch+json", None, ce.to_vec(), 0),
        ("application/x-ndjson", Some("gzip"), gzip(nd), 0),
        (json, Some("zstd"), zstd_body, 0),
    ];
    for (ct, enc, body, dups) in posts {
        let mut req = client
            .post(&url)
            .bearer_auth("s3cret")
            .header("content-type", ct)
            .body(body);
        if let Some(e) = enc {
            req = req.header("content-encoding", e);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{ct} {enc:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["duplicates"], dups, "{v}");
    }
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());

    // The log holds exactly the six accepted events, once each.
    let mut stored = Vec::new();
    for p in 0..4 {
        let out = std::process::Command::new(HIFI)
            .args([
                "log",
                "dump",
                "data",
                "--topic",
                "events",
                "--partition",
                &p.to_string(),
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            stored.push(v["headers"]["hifi-id"].as_str().unwrap().to_owned());
        }
    }
    stored.sort();
    assert_eq!(stored, vec!["ok-1", "ok-2", "ok-3", "ok-4", "ok-5", "ok-6"]);
}

/// A producer cannot choose how many loss buckets the ledger opens: event times outside
/// the default window (7 days back, 5 minutes ahead) are refused with the reason, the
/// request writes nothing, and the ledger's open buckets stay few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_far_from_now_are_refused_and_open_no_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(
        dir.path(),
        "http://127.0.0.1:9/never",
        "event_time = \"/ts\"\n",
        false,
    );
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let minute = 60_000i64;
    // One request of 1 000 events, each in its own minute, all in the future or the
    // deep past, with i64's extremes among them: refused whole.
    for (name, base) in [
        ("future", now + 10 * minute),
        ("past", now - 8 * 24 * 60 * minute),
    ] {
        let mut body: Vec<_> = (0..1000)
            .map(|i| serde_json::json!({"id": format!("{name}-{i}"), "ts": base + i * minute}))
            .collect();
        body.push(serde_json::json!({"id": format!("{name}-max"), "ts": i64::MAX}));
        body.push(serde_json::json!({"id": format!("{name}-min"), "ts": i64::MIN}));
        let resp = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["errors"].as_array().unwrap().len(), 1002, "{name}");
        let reason = v["errors"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("sources.api.event_time_window") && reason.contains("too far"),
            "{reason}"
        );
    }
    // Times inside the window are taken.
    let body = serde_json::json!([{"id": "ok-now", "ts": now}, {"id": "ok-6d", "ts": now - 6 * 24 * 60 * minute}]);
    let resp = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let open = metric(admin, "hifi_ledger_open_buckets").await;
    assert!(open <= 2.0, "open buckets: {open}");
}
