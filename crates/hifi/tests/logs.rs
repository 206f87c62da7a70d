//! Log lines as log shippers read them: `--log-format json` writes one JSON object per
//! line; text logs carry no colour codes when stderr is not a terminal.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_have_no_colour_codes_in_a_file() {
    let dir = test_dir();
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/ingest", "", false);
    let json = Proc::start_logging(
        &["--log-format", "json", "run", file.to_str().unwrap()],
        "hifi is running",
        dir.path(),
        "info",
    );
    let log = json.log.clone();
    json.sigterm(Duration::from_secs(20));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
    }

    let dir = test_dir();
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/ingest", "", false);
    let plain = Proc::start_logging(
        &["run", file.to_str().unwrap()],
        "hifi is running",
        dir.path(),
        "info",
    );
    let log = plain.log.clone();
    plain.sigterm(Duration::from_secs(20));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
