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

#[tokio::test]
async fn json_functions_read_inside_json_fields() {
    let mut with = order("a", 20.0, "de");
    with["extra"] = json!({"user": {"name": "Ana", "age": 41, "vip": true}, "tags": ["x", "y"]});
    let without = order("b", 30.0, "fr");
    let r = run(
        "SELECT id, json_get_str(extra, 'user', 'name') AS name, json_get_int(extra, 'user', 'age') AS age, \
         json_get_bool(extra, 'user', 'vip') AS vip, json_length(extra, 'tags') AS tags, \
         json_contains(extra, 'user') AS has_user, json_get_json(extra, 'user') AS user_doc, \
         extra->>'tags' AS tags_text, json_get(extra, 'user', 'age')::bigint AS age2, \
         json_as_text(extra, 'user', 'name') AS name_text \
         FROM input WHERE json_get_int(extra, 'user', 'age') > 18 OR extra IS NULL",
        &[with, without],
    )
    .await;
    assert_eq!(
        out(&r[0]),
        json!({"id": "a", "name": "Ana", "age": 41, "vip": true, "tags": 2, "has_user": true,
               "user_doc": "{\"age\":41,\"name\":\"Ana\",\"vip\":true}", "tags_text": "[\"x\",\"y\"]", "age2": 41, "name_text": "Ana"})
    );
    assert_eq!(
        out(&r[1]),
        json!({"id": "b", "name": null, "age": null, "vip": null, "tags": null, "has_user": false,
               "user_doc": null, "tags_text": null, "age2": null, "name_text": null})
    );
    // The output schema comes from the typed functions; the untyped `json_get` (a union)
    // is refused with what to use instead.
    let q = RowQuery::compile(
        "SELECT json_get_str(extra, 'a') AS a, json_get_float(extra, 'b') AS b FROM input",
        &orders(),
    )
    .await
    .unwrap();
    let types: Vec<String> = q.output().fields.iter().map(|f| f.to_string()).collect();
    assert_eq!(types, ["string?", "float64?"]);
    let e = RowQuery::compile("SELECT json_get(extra, 'a') AS a FROM input", &orders())
        .await
        .err()
        .unwrap();
    assert!(e.contains("json_get_str"), "{e}");
}
