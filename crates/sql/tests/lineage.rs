//! Field-level lineage from real DataFusion plans: a table of queries, each with the
//! lineage of every output field written by hand (selected; non-selected).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use hifi_sql::lineage::of_query;
use hifi_sql::{RowQuery, Schema};

fn orders() -> Schema {
    Schema::parse(
        &[
            ("id", "string"),
            ("ts", "timestamp"),
            ("amount", "float64"),
            ("email", "string"),
            ("card", "string"),
            ("country", "string"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap()
}

/// Expected lineage: (field, selected, non-selected), fields in output order.
type Expected = &'static [(
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
)];

const CASES: &[(&str, &str, Expected)] = &[
    (
        "projection, expressions and WHERE (the issue's row stage)",
        "SELECT id, ts, amount, upper(country) AS country, amount * 0.2 AS vat FROM input WHERE amount >= 10",
        &[
            ("id", &["id"], &["amount"]),
            ("ts", &["ts"], &["amount"]),
            ("amount", &["amount"], &[]),
            ("country", &["country"], &["amount"]),
            ("vat", &["amount"], &[]),
        ],
    ),
    (
        "SELECT * (a schema's fields are in name order)",
        "SELECT * FROM input",
        &[
            ("amount", &["amount"], &[]),
            ("card", &["card"], &[]),
            ("country", &["country"], &[]),
            ("email", &["email"], &[]),
            ("id", &["id"], &[]),
            ("ts", &["ts"], &[]),
        ],
    ),
    (
        "CASE reads every column it names",
        "SELECT CASE WHEN country = 'DE' THEN amount ELSE 0 END AS de_amount FROM input",
        &[("de_amount", &["amount", "country"], &[])],
    ),
    (
        "aggregates: the group key is non-selected for the aggregates",
        "SELECT country, count(*) AS orders, sum(amount) AS total FROM input GROUP BY country",
        &[
            ("country", &["country"], &[]),
            ("orders", &[], &["country"]),
            ("total", &["amount"], &["country"]),
        ],
    ),
    (
        "HAVING on an aggregate not selected",
        "SELECT country, sum(amount) AS total FROM input GROUP BY country HAVING max(email) <> ''",
        &[
            ("country", &["country"], &["email"]),
            ("total", &["amount"], &["country", "email"]),
        ],
    ),
    (
        "nested subquery in FROM, filters at both levels",
        "SELECT big FROM (SELECT amount * 2 AS big, country FROM input WHERE card IS NOT NULL) t WHERE country = 'FR'",
        &[("big", &["amount"], &["card", "country"])],
    ),
    (
        "a chain of CTEs, then ORDER BY",
        "WITH a AS (SELECT id, amount FROM input WHERE country = 'DE'), \
         b AS (SELECT id, amount * 1.19 AS gross FROM a WHERE amount > 5) \
         SELECT id, gross FROM b ORDER BY gross",
        &[
            ("id", &["id"], &["amount", "country"]),
            ("gross", &["amount"], &["country"]),
        ],
    ),
    (
        "IN (subquery): what the subquery reads decides the rows",
        "SELECT id FROM input WHERE email IN (SELECT email FROM input WHERE country = 'DE')",
        &[("id", &["id"], &["country", "email"])],
    ),
    (
        "correlated EXISTS",
        "SELECT id FROM input o WHERE EXISTS (SELECT 1 FROM input i WHERE i.email = o.email AND i.amount > 100)",
        &[("id", &["id"], &["amount", "email"])],
    ),
    (
        "a scalar subquery's values flow into its column",
        "SELECT id, (SELECT max(amount) FROM input) AS top FROM input",
        &[("id", &["id"], &[]), ("top", &["amount"], &[])],
    ),
    (
        "window function: PARTITION BY and ORDER BY are non-selected",
        "SELECT id, sum(amount) OVER (PARTITION BY country ORDER BY ts) AS running FROM input",
        &[("id", &["id"], &[]), ("running", &["amount"], &["country", "ts"])],
    ),
    (
        "self-join: the join key is non-selected",
        "SELECT a.id, b.email FROM input a JOIN input b ON a.card = b.card",
        &[("id", &["id"], &["card"]), ("email", &["email"], &["card"])],
    ),
    (
        "UNION ALL: a column comes from both sides",
        "SELECT id FROM input WHERE amount > 1 UNION ALL SELECT email FROM input",
        &[("id", &["email", "id"], &["amount"])],
    ),
    (
        "DISTINCT",
        "SELECT DISTINCT country FROM input",
        &[("country", &["country"], &[])],
    ),
    (
        "constants read nothing",
        "SELECT 'v1' AS version, id FROM input",
        &[("version", &[], &[]), ("id", &["id"], &[])],
    ),
];

#[tokio::test]
async fn each_output_field_names_the_input_fields_it_comes_from() {
    let schema = orders();
    let mut wrong = Vec::new();
    for (what, sql, expected) in CASES {
        let got = match of_query(sql, &schema).await {
            Ok(l) => l,
            Err(e) => {
                wrong.push(format!("{what}: {e}"));
                continue;
            }
        };
        let got: Vec<(String, Vec<String>, Vec<String>)> = got
            .into_iter()
            .map(|f| (f.field, f.selected, f.non_selected))
            .collect();
        let want: Vec<(String, Vec<String>, Vec<String>)> = expected
            .iter()
            .map(|(f, s, n)| {
                let v = |x: &[&str]| x.iter().map(|c| c.to_string()).collect();
                (f.to_string(), v(s), v(n))
            })
            .collect();
        if got != want {
            wrong.push(format!("{what}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_row_stage_carries_the_lineage_of_its_query() {
    let q = RowQuery::compile(
        "SELECT id, amount * 0.2 AS vat FROM input WHERE country = 'DE'",
        &orders(),
    )
    .await
    .unwrap();
    let l = q.lineage();
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(
        (l[1].field.as_str(), &l[1].selected[..]),
        ("vat", &["amount".to_string()][..])
    );
    assert_eq!(l[1].non_selected, vec!["country".to_string()]);
}
