//! Row queries on real DataFusion: what they keep, filter and refuse, per event.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use hifi_sql::{RowQuery, RowResult, Schema};
use serde_json::{json, Value};

fn orders() -> Schema {
    Schema::parse(
        &[
            ("id", "string"),
            ("ts", "timestamp"),
            ("amount", "float64"),
            ("country", "string"),
            ("note", "string?"),
            ("extra", "json?"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap()
}

async fn run(sql: &str, events: &[Value]) -> Vec<RowResult> {
    let q = RowQuery::compile(sql, &orders()).await.unwrap();
    let bytes: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let values: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
    q.run(&values).await
}

fn out(r: &RowResult) -> Value {
    match r {
        RowResult::Out(b) => serde_json::from_slice(b).unwrap(),
        other => panic!("expected an output row, got {other:?}"),
    }
}

fn order(id: &str, amount: f64, country: &str) -> Value {
    json!({"id": id, "ts": "2026-12-06T01:02:03Z", "amount": amount, "country": country})
}

#[tokio::test]
async fn each_event_gets_its_own_row_or_is_filtered() {
    let events = [
        order("a", 5.0, "de"),
        order("b", 50.0, "fr"),
        order("c", 10.0, "it"),
    ];
    let r = run(
        "SELECT id, ts, amount, upper(country) AS country, amount * 0.2 AS vat FROM input WHERE amount >= 10",
        &events,
    )
    .await;
    assert_eq!(r[0], RowResult::Filtered);
    assert_eq!(
        out(&r[1]),
        json!({"id": "b", "ts": "2026-12-06T01:02:03.000Z", "amount": 50.0, "country": "FR", "vat": 10.0})
    );
    assert_eq!(out(&r[2])["id"], "c");
    assert_eq!(out(&r[2])["vat"], 2.0);
}

#[tokio::test]
async fn select_star_hides_the_row_column_and_json_fields_stay_documents() {
    let mut e = order("a", 1.0, "de");
    e["extra"] = json!({"tags": ["x", "y"]});
    e["undeclared"] = json!(1);
    let r = run("SELECT * FROM input", &[e]).await;
    let o = out(&r[0]);
    assert_eq!(o["extra"], json!({"tags": ["x", "y"]}));
    assert!(o.get("__hifi_row").is_none(), "{o}");
    assert!(o.get("undeclared").is_none(), "only declared fields: {o}");
    assert_eq!(o["note"], Value::Null);
}

#[tokio::test]
async fn events_not_of_the_schema_and_rows_the_query_fails_on_are_refused_alone() {
    let events = [
        json!({"id": "n1", "ts": 0, "amount": 1, "country": "de", "note": "12"}),
        json!({"id": "n2", "ts": 0, "amount": 1, "country": "de", "note": "twelve"}),
        json!({"id": "n3", "ts": 0, "amount": "1", "country": "de"}),
        json!({"id": "n4", "ts": 0, "amount": 1, "country": "de", "note": "7"}),
    ];
    let r = run("SELECT id, CAST(note AS BIGINT) AS n FROM input", &events).await;
    assert_eq!(out(&r[0])["n"], 12);
    assert!(
        matches!(&r[1], RowResult::Refused(w) if w.contains("twelve")),
        "{:?}",
        r[1]
    );
    assert!(
        matches!(&r[2], RowResult::Refused(w) if w.contains("field `amount`: expected float64")),
        "{:?}",
        r[2]
    );
    assert_eq!(out(&r[3])["n"], 7);
}

#[tokio::test]
async fn queries_that_change_the_number_of_rows_are_refused_with_the_reason() {
    for (sql, reason) in [
        (
            "SELECT country, count(*) FROM input GROUP BY country",
            "aggregate",
        ),
        ("SELECT count(*) FROM input", "aggregate"),
        (
            "SELECT a.id FROM input a JOIN input b ON a.id = b.id",
            "join",
        ),
        (
            "SELECT id, row_number() OVER () FROM input",
            "window functions",
        ),
        ("SELECT id FROM input LIMIT 1", "LIMIT"),
        ("SELECT DISTINCT country FROM input", "DISTINCT"),
        (
            "SELECT id FROM input UNION ALL SELECT id FROM input",
            "set operation",
        ),
        (
            "SELECT id FROM input WHERE amount > (SELECT avg(amount) FROM input)",
            "subquery",
        ),
    ] {
        let e = RowQuery::compile(sql, &orders()).await.unwrap_err();
        assert!(
            e.contains("runs its query on each event alone") && e.contains(reason),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn mistakes_name_the_problem_and_the_columns_there_are() {
    let e = RowQuery::compile("SELECT amout FROM input", &orders())
        .await
        .unwrap_err();
    assert!(e.contains("amout") && e.contains("amount"), "{e}");
    assert!(!e.contains("__hifi_row"), "{e}");
    let e = RowQuery::compile("SELEC id FROM input", &orders())
        .await
        .unwrap_err();
    assert!(e.to_lowercase().contains("selec"), "{e}");
    let e = RowQuery::compile("SELECT id FROM orders", &orders())
        .await
        .unwrap_err();
    assert!(e.contains("orders"), "{e}");
}

#[tokio::test]
async fn the_output_schema_comes_from_the_query() {
    let q = RowQuery::compile(
        "SELECT id, amount * 2 AS double, amount > 10 AS big, CAST(amount AS BIGINT) AS whole FROM input",
        &orders(),
    )
    .await
    .unwrap();
    let s: Vec<String> = q
        .output()
        .fields
        .iter()
        .map(|f| format!("{}={f}", f.name))
        .collect();
    assert_eq!(
        s,
        ["big=bool", "double=float64", "id=string", "whole=int64"]
    );
}
