//! A node that cannot run stops `hifi run` with a non-zero exit and the reason: ingest
//! must never go on acknowledging events that a dead stage or sink would never move.
//! (A node failing later, while running, also stops the process: `health.rs`.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_sink_that_cannot_start_stops_the_process_with_the_reason() {
    let dir = test_dir();
    // The sink's dead-letter topic exists with 3 partitions (it must have 1): the sink
    // cannot create its topics and cannot run.
    let mut append = Command::new(HIFI)
        .args([
            "log",
            "append",
            "data",
            "--topic",
            "__dlq.out",
            "--partitions",
            "3",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    append.stdin.take().unwrap().write_all(b"x\n").unwrap();
    assert!(append.wait().unwrap().success());
    let file = pipeline_file(dir.path(), "http://127.0.0.1:9/", "", false);
    let mut child = Command::new(HIFI)
        .args(["run", file.to_str().unwrap(), "--drain", "1s"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hifi run kept running with a sink that cannot run");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("sinks.out: cannot create its topics"), "{err}");
    assert!(err.contains("__dlq.out"), "{err}");
    assert!(!err.contains("hifi is running"), "{err}");
}
