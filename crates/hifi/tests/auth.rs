//! Authentication cannot be switched off by accident: an `auth` section without tokens
//! refuses to start, and the admin API's state-changing routes take their own tokens.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// `hifi validate` and `hifi run` both refuse the file, naming the key.
fn refused(dir: &std::path::Path, file: &std::path::Path, expect: &str) {
    for cmd in ["validate", "run"] {
        let out = Command::new(HIFI)
            .args([cmd, file.to_str().unwrap()])
            .current_dir(dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(err.contains(expect), "{cmd}: expected {expect:?} in {err}");
    }
}

#[test]
fn an_auth_section_without_tokens_is_an_error_not_auth_off() {
    let dir = test_dir();
    let file = pipeline_file(
        dir.path(),
        "http://127.0.0.1:9/",
        "[sources.api.auth]\ntokens = []\n",
        false,
    );
    refused(dir.path(), &file, "sources.api.auth: no token configured");

    std::fs::write(dir.path().join("tokens.txt"), "# nobody yet\n\n").unwrap();
    let file = pipeline_file(
        dir.path(),
        "http://127.0.0.1:9/",
        "[sources.api.auth]\ntokens_file = \"tokens.txt\"\n",
        false,
    );
    refused(dir.path(), &file, "tokens_file has none");

    let file = pipeline_file_full(
        dir.path(),
        "http://127.0.0.1:9/",
        "",
        None,
        "\n[admin.auth]\ntokens = [\"\"]\n",
    );
    refused(dir.path(), &file, "admin.auth: no token configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_drive_needs_an_admin_token_when_one_is_configured() {
    let dir = test_dir();
    let file = pipeline_file_full(
        dir.path(),
        "http://127.0.0.1:9/",
        "",
        None,
        "\n[admin.auth]\ntokens = [\"ops-token\"]\n",
    );
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin").to_string();
    let redrive = |token: Option<&str>| {
        let mut c = Command::new(HIFI);
        c.args(["dlq", "redrive", "out", "--dry-run", "--admin", &admin]);
        c.env_remove("HIFI_ADMIN_TOKEN");
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.output().unwrap()
    };
    let none = redrive(None);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("401") && err.contains("bearer token"), "{err}");
    let wrong = redrive(Some("ops-tokenx"));
    assert!(!wrong.status.success());
    let ok = redrive(Some("ops-token"));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("would re-drive 0"), "{out}");
    // Reads need no token.
    let lag = get_json(&format!("http://{admin}/v1/lag")).await;
    assert!(lag["nodes"].is_array(), "{lag}");
}

/// A tokens file is followed while hifi runs: new tokens replace the old ones without a
/// restart, and a file that becomes empty keeps the tokens in force (never auth off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tokens_file_is_followed_and_an_emptied_one_changes_nothing() {
    let dir = test_dir();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "old-token\n").unwrap();
    let file = pipeline_file(
        dir.path(),
        "http://127.0.0.1:9/",
        "[sources.api.auth]\ntokens_file = \"tokens.txt\"\n",
        false,
    );
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let status = |token: &'static str| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"id": token}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("old-token").await, 200);
    std::fs::write(&tokens, "# rotated\nnew-token\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status("new-token").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "new token never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("old-token").await, 401);
    // Emptied: the tokens in force stay, and nobody gets in without one.
    std::fs::write(&tokens, "# nobody\n").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status("new-token").await, 200);
    let none = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"id": "anon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let log = std::fs::read_to_string(&proc.log).unwrap();
    assert!(log.contains("yields no usable token"), "{log}");
}
