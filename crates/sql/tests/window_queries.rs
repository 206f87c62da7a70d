//! Window queries on real DataFusion: one result per window, rows keyed by their group,
//! events that do not fit left out with the reason.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use hifi_sql::{Schema, WindowQuery};
use serde_json::{json, Value};

fn orders() -> Schema {
    Schema::parse(
        &[
            ("id", "string"),
            ("amount", "float64"),
            ("country", "string"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap()
}

async fn run(sql: &str, events: &[Value]) -> hifi_sql::WindowOutput {
    let q = WindowQuery::compile(sql, &orders()).await.unwrap();
    let bytes: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let values: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
    q.run(&values).await
}

fn events() -> Vec<Value> {
    vec![
        json!({"id": "a", "amount": 1.0, "country": "DE"}),
        json!({"id": "b", "amount": 2.0, "country": "FR"}),
        json!({"id": "c", "amount": 3.0, "country": "DE"}),
        json!({"id": "d", "amount": "four", "country": "DE"}),
    ]
}

#[tokio::test]
async fn group_by_gives_one_row_per_group_keyed_by_the_group() {
    let out = run(
        "SELECT country, count(*) AS orders, sum(amount) AS total FROM input GROUP BY country ORDER BY country",
        &events(),
    )
    .await;
    assert_eq!(out.refused.len(), 1, "{out:?}");
    assert_eq!(out.refused[0].0, 3);
    assert!(out.refused[0].1.contains("amount"), "{out:?}");
    let rows: Vec<(String, Value)> = out
        .rows
        .into_iter()
        .map(|r| (r.key, Value::Object(r.value)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "[\"DE\"]".to_owned(),
                json!({"country": "DE", "orders": 2, "total": 4.0})
            ),
            (
                "[\"FR\"]".to_owned(),
                json!({"country": "FR", "orders": 1, "total": 2.0})
            ),
        ]
    );
}

#[tokio::test]
async fn keys_without_groups_and_without_aggregates() {
    let out = run("SELECT count(*) AS n FROM input", &events()).await;
    assert_eq!(out.rows.len(), 1);
    assert_eq!(
        (out.rows[0].key.as_str(), &out.rows[0].value["n"]),
        ("", &json!(3))
    );
    // No aggregate: each row is keyed by its content, so equal windows give equal keys.
    let a = run("SELECT id, amount FROM input WHERE amount > 1", &events()).await;
    let b = run("SELECT id, amount FROM input WHERE amount > 1", &events()).await;
    assert_eq!(a.rows.len(), 2);
    assert_eq!(a, b);
    assert_ne!(a.rows[0].key, a.rows[1].key);
    // Grouped, but the group is not selected: keyed by the whole row.
    let c = run(
        "SELECT count(*) AS n FROM input GROUP BY country",
        &events(),
    )
    .await;
    assert_eq!(c.rows.len(), 2);
    assert!(c.rows.iter().all(|r| r.key.starts_with('{')), "{c:?}");
}

#[tokio::test]
async fn the_output_schema_adds_the_window_bounds() {
    let q = WindowQuery::compile(
        "SELECT country, sum(amount) AS total FROM input GROUP BY country",
        &orders(),
    )
    .await
    .unwrap();
    let names: Vec<&str> = q.output().fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["country", "total", "window_start", "window_end"]);
    let l = q.lineage();
    assert_eq!(l[1].field, "total");
    assert_eq!(
        (l[1].selected.clone(), l[1].non_selected.clone()),
        (vec!["amount".to_string()], vec!["country".to_string()])
    );
    let e = WindowQuery::compile("SELECT count(*) AS window_start FROM input", &orders())
        .await
        .unwrap_err();
    assert!(
        e.contains("window_start") && e.contains("the stage adds it"),
        "{e}"
    );
}

#[tokio::test]
async fn a_query_lineage_cannot_walk_still_runs_with_every_input_as_its_source() {
    let q = WindowQuery::compile(
        "SELECT unnest(make_array(amount, amount)) AS a FROM input",
        &orders(),
    )
    .await
    .unwrap();
    let a = &q.lineage()[0];
    assert_eq!(a.field, "a");
    assert_eq!(a.selected, ["amount", "country", "id"]);
    let out = run(
        "SELECT unnest(make_array(amount, amount)) AS a FROM input",
        &events(),
    )
    .await;
    assert_eq!(out.rows.len(), 6, "{out:?}");
}

#[tokio::test]
async fn events_the_query_fails_on_are_found_among_many_and_the_rest_counted() {
    // A CAST that fails on three ids out of 1 000, at the edges and inside.
    let bad = [0usize, 517, 999];
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            let id = if bad.contains(&i) {
                format!("x{i}")
            } else {
                i.to_string()
            };
            json!({"id": id, "amount": 1.0, "country": "DE"})
        })
        .collect();
    let out = run(
        "SELECT count(*) AS n, sum(CAST(id AS BIGINT)) AS ids FROM input",
        &events,
    )
    .await;
    let refused: Vec<usize> = out.refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, bad, "{:?}", out.refused);
    assert!(
        out.refused[0].1.contains("Cannot cast"),
        "{:?}",
        out.refused[0]
    );
    let good: i64 = (0..1000i64).filter(|i| !bad.contains(&(*i as usize))).sum();
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].value["n"], json!(997));
    assert_eq!(out.rows[0].value["ids"], json!(good));
}
