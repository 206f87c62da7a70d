//! README.md's five-minute tour, run command by command as a new user would: the
//! tour's shell block is read from README.md and run by bash in a scratch copy of
//! `examples/`, with only these changes — `$hifi` is this build's binary, a command
//! started in the background is waited for (a person reads before typing on), load
//! tests run for 2 s instead of 10, and `open URL` fetches the URL. Every command must
//! succeed, and what the README promises in its comments is checked.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::*;

/// The tour's shell block, from README.md.
fn tour() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("## A five-minute tour")
        .expect("README has a tour");
    let block = &readme[start..];
    let open = block.find("```sh\n").unwrap() + "```sh\n".len();
    let close = block[open..].find("```").unwrap();
    block[open..open + close].to_owned()
}

/// The tour as a script for bash: see the module's notes.
fn script(tour: &str) -> String {
    let mut out = String::from(
        "set -euo pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
         wait_for() { for _ in $(seq 1 150); do curl -sf \"$1\" >/dev/null && return 0; sleep 0.2; done; echo \"$1 never answered\" >&2; return 1; }\n\
         wait_port() { for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.2; done; echo \"port $1 never opened\" >&2; return 1; }\n\
         hifi=\"$HIFI\"\n",
    );
    let mut lines = tour.lines().peekable();
    while let Some(line) = lines.next() {
        let mut cmd = line.to_owned();
        // Continuation lines belong to the command.
        while cmd.ends_with('\\') {
            cmd.pop();
            cmd.push_str(lines.next().unwrap_or("").trim_start());
        }
        if cmd.starts_with("cargo build") {
            continue; // $hifi is set above
        }
        if let Some(url) = cmd.strip_prefix("open ") {
            let url = url.split_whitespace().next().unwrap();
            out += &format!("curl -sf {url} >/dev/null\n");
            continue;
        }
        let cmd = cmd.replace("--duration 10s", "--duration 2s");
        out += &cmd;
        out.push('\n');
        let trimmed = cmd.split('#').next().unwrap().trim_end();
        if trimmed.ends_with('&') {
            if trimmed.contains("receiver") {
                out += "wait_port 9000\n";
            } else {
                out += "wait_for http://127.0.0.1:8080/readyz\nwait_for http://127.0.0.1:8081/readyz\n";
            }
        }
    }
    out
}

#[test]
fn the_readme_tour_runs_as_written() {
    let tour = tour();
    let dir = test_dir();
    let copy = Command::new("cp")
        .args([
            "-r",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"),
            dir.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(copy.success());
    let script = script(&tour);
    std::fs::write(dir.path().join("tour.sh"), &script).unwrap();
    let out = Command::new("bash")
        .arg("tour.sh")
        .current_dir(dir.path())
        .env("HIFI", HIFI)
        .env("HIFI_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed ({:?})\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{stdout}");
    let expect = |what: &str| {
        assert!(
            stdout.contains(what),
            "the tour's output lacks {what:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    };
    expect(r#"{"accepted":2,"duplicates":0,"ids":["o-1","o-2"]}"#);
    expect("missing event time at /ts");
    expect(", LOST 0,");
    expect("traffic rating: sustains");
    expect("E2E");
    // o-1 arrived, masked; o-2 was filtered.
    let received = std::fs::read_to_string(dir.path().join("received.jsonl")).unwrap();
    assert!(received.contains("\"o-1\""), "{received}");
    assert!(!received.contains("\"o-2\""), "{received}");
    assert!(!received.contains("4111111111111111"), "{received}");
    assert!(dir.path().join("rating.html").exists());
}
