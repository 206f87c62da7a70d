//! A SQL stage in a real pipeline: ingest checks the topic's schema, the query computes
//! each event (DataFusion), `WHERE` filters, a row the query fails on is dead-lettered
//! alone, and the ledger follows every event through it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_stage_computes_each_event_and_the_ledger_follows_it() {
    let dir = test_dir();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 2\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [ledger]\nsettle_after = \"2s\"\n\
             [topics.orders]\nschema = {{ id = \"string\", amount = \"float64\", country = \"string\", note = \"string?\" }}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\nid_field = \"/id\"\n\
             [stages.big]\ninput = \"orders\"\noutput = \"big-orders\"\n\
             sql = \"SELECT id, amount, upper(country) AS country, amount * 0.5 AS half, CAST(note AS BIGINT) AS n FROM input WHERE amount >= 10\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"big-orders\"\nurl = \"http://{}/ingest\"\n",
            receiver.addr("receiver")
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin");
    let client = reqwest::Client::new();

    // An event that does not fit the schema: the whole request is refused, nothing stored.
    let r = client
        .post(&url)
        .json(&serde_json::json!([
            {"id": "fits", "amount": 50, "country": "de"},
            {"id": "unfit", "amount": "12", "country": "de"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("field `amount`: expected float64") && body.contains("orders"),
        "{body}"
    );

    // 0..30: under 10 filtered, 25's note is no number (the CAST fails on it alone).
    let events: Vec<_> = (0..30)
        .map(|i| {
            let note = if i == 25 { "twenty-five" } else { "7" };
            serde_json::json!({"id": format!("o-{i}"), "amount": i, "country": "de", "note": note})
        })
        .collect();
    let r = client.post(&url).json(&events).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let expected: BTreeSet<String> = (10..30)
        .filter(|i| *i != 25)
        .map(|i| format!("o-{i}"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || {
            received_ids(&record)
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == expected
        }),
        "delivered: {:?}",
        received_ids(&record)
    );

    // Field-level lineage of the running pipeline: half is amount's, through big.
    let up = get_json(&format!("http://{admin}/v1/lineage?upstream=partner.half")).await;
    let fields: Vec<&str> = up["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["big.half", "api.amount"], "{up}");
    let graph = get_json(&format!("http://{admin}/v1/lineage")).await;
    assert!(graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == "api.country"
            && e["to"] == "big.country"
            && e["use"] == "selected"
            && e["via"] == "big"));
    let r = client
        .get(format!("http://{admin}/v1/lineage?impact=api.nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let buckets = settled_buckets(admin, Duration::from_secs(60)).await;
    let sum = |node, col| node_sum(&buckets, node, col);
    assert_eq!(
        (
            sum("api", "passed"),
            sum("big", "passed"),
            sum("big", "filtered")
        ),
        (30, 19, 10)
    );
    assert_eq!(
        (sum("big", "dead_lettered"), sum("partner", "delivered")),
        (1, 19)
    );
    let lost: u64 = buckets
        .iter()
        .map(|b| b["e2e_lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 0, "{buckets:?}");
    // A stage's dead letters are listed like a sink's.
    let dlq = get_json(&format!("http://{admin}/v1/sinks/big/dlq")).await;
    let letter = &dlq["dead_letters"][0];
    assert_eq!(
        (dlq["total"].as_u64(), &letter["id"]),
        (Some(1), &serde_json::json!("o-25")),
        "{dlq}"
    );
    assert_eq!(letter["reason"]["class"], "sql", "{dlq}");
    assert!(
        letter["reason"]["body"]
            .as_str()
            .unwrap()
            .contains("twenty-five"),
        "{dlq}"
    );

    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    receiver.sigterm(Duration::from_secs(10));

    // What the stage wrote, read back from the log: the query's columns, the event's id.
    let mut written = BTreeMap::new();
    for p in 0..2 {
        let out = Command::new(HIFI)
            .args([
                "log",
                "dump",
                "data",
                "--topic",
                "big-orders",
                "--partition",
            ])
            .arg(p.to_string())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let value: serde_json::Value =
                serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            assert_eq!(r["headers"]["hifi-format"], "json", "{r}");
            written.insert(r["headers"]["hifi-id"].as_str().unwrap().to_owned(), value);
        }
    }
    assert_eq!(written.len(), 19);
    assert_eq!(
        written["o-12"],
        serde_json::json!({"id": "o-12", "amount": 12.0, "country": "DE", "half": 6.0, "n": 7})
    );
}
