//! OpenLineage export as a backend sees it: a running pipeline sends a START RunEvent per
//! node (with column lineage: selected = DIRECT, non-selected = INDIRECT, redacted =
//! masking) and a COMPLETE one with the same run id when it stops; every event is
//! rebuilt and re-serialised by the OpenLineage Python client (PyPI `openlineage-python`)
//! and must come out unchanged. A backend that is down delays nothing. CI installs the
//! client and sets `HIFI_REQUIRE_TOOLS=1`, so the test cannot pass there by skipping.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openlineage_check.py");

fn have_client() -> bool {
    tool_present(
        "python3",
        &["-c", "import openlineage.client.event_v2"],
        "HIFI_REQUIRE_TOOLS",
        "pip install 'openlineage-python==1.54.0' to run this test",
    )
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pipeline(dir: &Path, backend: &str) -> std::path::PathBuf {
    let file = dir.join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [lineage]\nopenlineage_url = \"http://{backend}\"\napi_key = \"secret-key\"\nnamespace = \"shop\"\n\
             [topics.orders]\nschema = {{ id = \"string\", amount = \"float64\", email = \"string\" }}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\npii = [\"email\"]\n\
             [stages.big]\ninput = \"orders\"\noutput = \"big\"\n\
             sql = \"SELECT id, amount * 0.2 AS vat, email AS contact FROM input WHERE amount >= 10\"\n\
             [stages.mask]\ninput = \"big\"\noutput = \"masked\"\n\
             [[stages.mask.transforms]]\ntype = \"redact\"\nfield = \"/contact\"\nmode = \"mask\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"masked\"\nurl = \"http://127.0.0.1:9/in\"\n"
        ),
    )
    .unwrap();
    file
}

fn recorded(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The input field entries of `field` in an output's column lineage: (field, type,
/// subtype, masking).
fn inputs_of(event: &Value, field: &str) -> Vec<(String, String, String, bool)> {
    let f = &event["outputs"][0]["facets"]["columnLineage"]["fields"][field]["inputFields"];
    let mut out: Vec<_> = f
        .as_array()
        .unwrap_or_else(|| panic!("no lineage for {field}: {event:#}"))
        .iter()
        .map(|i| {
            let t = &i["transformations"][0];
            (
                i["field"].as_str().unwrap().to_owned(),
                t["type"].as_str().unwrap().to_owned(),
                t["subtype"].as_str().unwrap_or("").to_owned(),
                t["masking"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(f: &str, t: &str, sub: &str, masking: bool) -> (String, String, String, bool) {
    (f.into(), t.into(), sub.into(), masking)
}

#[test]
fn a_backend_gets_start_and_complete_with_column_lineage_the_client_accepts() {
    if !have_client() {
        return;
    }
    let dir = test_dir();
    let record = dir.path().join("lineage.jsonl");
    let mut server = Command::new("python3")
        .args([SCRIPT, "serve", record.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(server);
    let backend = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let file = pipeline(dir.path(), &backend);
    let proc = run_pipeline(dir.path(), &file);

    assert!(
        wait_until(Duration::from_secs(20), || recorded(&record).len() == 4),
        "{:?}",
        recorded(&record)
    );
    let started = recorded(&record);
    for r in &started {
        assert_eq!(r["path"], "/api/v1/lineage");
        assert_eq!(r["authorization"], "Bearer secret-key");
        assert_eq!(r["event"]["eventType"], "START");
        assert_eq!(r["event"]["job"]["namespace"], "shop");
    }
    let job = |name: &str| {
        started
            .iter()
            .map(|r| &r["event"])
            .find(|e| e["job"]["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))
            .clone()
    };
    let big = job("stages.big");
    assert_eq!(big["inputs"][0]["name"], "orders");
    assert_eq!(big["outputs"][0]["name"], "big");
    let ns = big["inputs"][0]["namespace"].as_str().unwrap();
    assert!(ns.starts_with("hifi:///") && ns.ends_with("/data"), "{ns}");
    assert_eq!(
        big["job"]["facets"]["sql"]["query"],
        "SELECT id, amount * 0.2 AS vat, email AS contact FROM input WHERE amount >= 10"
    );
    assert_eq!(
        big["job"]["facets"]["jobType"]["processingType"],
        "STREAMING"
    );
    // vat is computed from amount; every field's rows are decided by amount (WHERE).
    assert_eq!(
        inputs_of(&big, "vat"),
        vec![row("amount", "DIRECT", "TRANSFORMATION", false)]
    );
    assert_eq!(
        inputs_of(&big, "id"),
        vec![
            row("amount", "INDIRECT", "", false),
            row("id", "DIRECT", "TRANSFORMATION", false),
        ]
    );
    let schema = &big["inputs"][0]["facets"]["schema"]["fields"];
    assert_eq!(schema.as_array().unwrap().len(), 3, "{schema}");
    // The redact stage masks contact; the sink passes fields as they are.
    let mask = job("stages.mask");
    assert_eq!(
        inputs_of(&mask, "contact"),
        vec![row("contact", "DIRECT", "TRANSFORMATION", true)]
    );
    let partner = job("sinks.partner");
    assert_eq!(partner["outputs"][0]["namespace"], "http://127.0.0.1:9");
    assert_eq!(
        partner["outputs"][0]["name"], "sinks.partner",
        "not the URL path"
    );
    assert_eq!(
        inputs_of(&partner, "vat"),
        vec![row("vat", "DIRECT", "IDENTITY", false)]
    );
    let api = job("sources.api");
    assert_eq!(api["outputs"][0]["name"], "orders");

    // Stopping sends COMPLETE for every run.
    let (status, _) = proc.sigterm(Duration::from_secs(30));
    assert!(status.success());
    let all = recorded(&record);
    assert_eq!(all.len(), 8, "{all:?}");
    for r in &started {
        let run = &r["event"]["run"]["runId"];
        let done = all
            .iter()
            .filter(|x| x["event"]["run"]["runId"] == *run && x["event"]["eventType"] == "COMPLETE")
            .count();
        assert_eq!(done, 1, "run {run} completed once");
    }

    let out = Command::new("python3")
        .args([SCRIPT, "check", record.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "ok 8");
}

#[test]
fn a_backend_that_is_down_delays_neither_start_nor_stop() {
    let dir = test_dir();
    // Nothing listens on the backend's address.
    let file = pipeline(dir.path(), &free_addr().to_string());
    let started = Instant::now();
    let proc = run_pipeline(dir.path(), &file);
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = proc.log.clone();
    let stopping = Instant::now();
    let (status, _) = proc.sigterm(Duration::from_secs(30));
    assert!(status.success());
    let took = stopping.elapsed();
    // The drain of 5 s plus at most COMPLETE_WITHIN for the backend.
    assert!(
        took < Duration::from_secs(5)
            + hifi_pipeline::openlineage::COMPLETE_WITHIN
            + Duration::from_secs(3),
        "stopping took {took:?}"
    );
    let _ = std::fs::read_to_string(log).unwrap();
}
