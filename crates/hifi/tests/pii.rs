//! PII as a user meets it: `hifi validate` refuses declared PII reaching a sink that does
//! not allow it (naming the path), `hifi lineage --pii` shows what each sink receives, and
//! a running pipeline's detector finds undeclared PII in ingested events and raises an
//! alarm (`/v1/pii`, `/metrics`) — with counts only, never a value.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::*;

fn hifi(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(HIFI).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn validate_refuses_pii_a_sink_does_not_allow_and_lineage_shows_where_it_goes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sql-stage.toml");
    let (code, out, err) = hifi(&["lineage", example, "--pii"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("declared PII: api.email (sources.api.pii)"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("contact")
            && l.contains("yes")
            && l.contains("api.email → big.contact → partner")),
        "{out}"
    );

    let dir = test_dir();
    let refused = dir.path().join("refused.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("allow_pii = [\"contact\"]", "");
    std::fs::write(&refused, text).unwrap();
    let file = refused.to_str().unwrap();
    let (code, _, err) = hifi(&["validate", file]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sinks.partner.allow_pii"), "{err}");
    assert!(
        err.contains("contact (api.email → big.contact → partner)"),
        "{err}"
    );
    let (code, out, _) = hifi(&["lineage", file, "--pii"]);
    assert_eq!(code, 1);
    assert!(
        out.lines()
            .any(|l| l.contains("contact") && l.contains("NO")),
        "{out}"
    );
    let (code, out, _) = hifi(&["lineage", file, "--pii", "--json"]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["sinks"]["partner"][0]["allowed"], false);
    assert_eq!(j["sinks"]["partner"][0]["from"], "api.email");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_finds_undeclared_pii_reaching_a_sink_and_never_shows_a_value() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [pii]\nsample_every = 1\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\npii = [\"email\"]\n\
             [stages.clean]\ninput = \"orders\"\noutput = \"clean\"\n\
             [[stages.clean.transforms]]\ntype = \"redact\"\nfield = \"/email\"\nmode = \"hash\"\nsalt = \"s\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"clean\"\nurl = \"http://{}/ingest\"\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    // `note` carries card numbers nobody declared; `phone` has one in 40 (not enough to
    // be suspected); `email` is declared and redacted on the way.
    let cards = [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
    ];
    let events: Vec<_> = (0..40)
        .map(|i| {
            let phone = if i == 0 { "+49 30 1234567" } else { "n/a" };
            serde_json::json!({
                "id": format!("o-{i}"),
                "email": format!("user{i}@example.com"),
                "note": format!("paid with {}", cards[i % 3]),
                "phone": phone,
                "amount": i,
            })
        })
        .collect();
    let r = reqwest::Client::new()
        .post(&url)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let body = reqwest::get(format!("http://{admin}/v1/pii"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in cards
        .iter()
        .map(|c| c.to_string())
        .chain(["user1@example.com".into(), "+49 30".into()])
    {
        assert!(
            !body.contains(&secret),
            "a value leaked into /v1/pii: {secret}"
        );
    }
    let pii: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fields = &pii["sources"]["api"]["fields"];
    assert_eq!(pii["sources"]["api"]["sampled_events"], 40);
    assert_eq!(fields["note"]["looks_like"]["card"], 40);
    assert_eq!(fields["note"]["declared"], false);
    assert_eq!(fields["email"]["looks_like"]["email"], 40);
    assert_eq!(fields["email"]["declared"], true);
    assert_eq!(fields["phone"]["looks_like"]["phone"], 1);
    assert_eq!(fields["phone"]["suspected"], serde_json::json!([]));
    assert_eq!(fields["amount"]["looks_like"], serde_json::json!({}));
    // Only the undeclared card numbers alarm: the declared email is redacted on the way.
    assert_eq!(
        pii["alarms"],
        serde_json::json!([{
            "field": "api.note",
            "looks_like": ["card"],
            "sink": "partner",
            "path": ["api.note", "clean.note", "partner.note"],
        }]),
        "{pii:#}"
    );
    assert_eq!(
        pii["sinks"],
        serde_json::json!({}),
        "email is redacted before partner"
    );
    assert_eq!(metric(admin, "hifi_pii_alarms").await, 1.0);
    assert_eq!(metric(admin, "hifi_pii_sampled_events_total").await, 40.0);
    // The alarm reaches the log too (the watcher looks every 10 s), once.
    let log_path = proc.log.clone();
    let warned = off_workers(|| {
        wait_until(hifi_pipeline::pii::report::WATCH_EVERY * 2, || {
            std::fs::read_to_string(&log_path)
                .unwrap()
                .contains("undeclared PII")
        })
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(warned, "{log}");
    let alarm = log.lines().find(|l| l.contains("undeclared PII")).unwrap();
    assert!(
        alarm.contains("api.note") && alarm.contains("card"),
        "{alarm}"
    );
    assert!(!log.contains("4111"), "a value leaked into the log");
    drop(receiver);
}
