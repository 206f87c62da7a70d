//! `hifi loadtest --chaos`: the load test supervises `hifi run`, SIGKILLs it at random
//! moments and makes its own receiver go down and up; every acknowledged event must still
//! be delivered, and the faults must really have happened.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

#[test]
fn zero_loss_while_the_pipeline_is_killed_and_the_receiver_flaps() {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, receiver) = (support::free_addr().port(), support::free_addr().port());
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:{ingest}\"\ntopic = \"events\"\n\
             [stages.clean]\ninput = \"events\"\noutput = \"clean\"\n\
             [sinks.out]\ntype = \"http\"\ninput = \"clean\"\nurl = \"http://127.0.0.1:{receiver}/ingest\"\n\
             [sinks.out.retry.global]\nschedule = [\"1s\", \"2s\"]\n[sinks.out.breaker]\nprobe = \"300ms\"\n"
        ),
    )
    .unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args([
            "loadtest",
            "--target",
            &format!("http://127.0.0.1:{ingest}/v1/events"),
        ])
        .args(["--receiver", &format!("127.0.0.1:{receiver}")])
        .args([
            "--rate",
            "300",
            "--duration",
            "12s",
            "--batch",
            "20",
            "--drain",
            "40s",
        ])
        .args([
            "--chaos",
            "kill:every=2s,receiver-flap",
            "--pipeline",
            file.to_str().unwrap(),
        ])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["lost"], 0, "{stdout}");
    assert!(out.status.success(), "{stdout}");
    assert!(
        v["acked"].as_u64().unwrap() > 2000,
        "load really flowed: {v}"
    );
    assert_eq!(v["delivered"], v["acked"]);
    assert!(
        v["chaos"]["kills"].as_u64().unwrap() >= 3,
        "kills really landed: {}",
        v["chaos"]
    );
    assert!(
        v["chaos"]["receiver_flaps"].as_u64().unwrap() >= 1,
        "the receiver really went down: {}",
        v["chaos"]
    );
}
