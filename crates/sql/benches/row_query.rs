//! A row query over one batch of 1 000 events, and a window query over a window of
//! 1 000 events: JSON → Arrow → the query → JSON, as SQL stages run them
//! (`cargo bench -p hifi-sql`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hifi_sql::{RowQuery, Schema, WindowQuery};

fn batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let schema = Schema::parse(
        &[
            ("id", "string"),
            ("ts", "timestamp"),
            ("amount", "float64"),
            ("country", "string"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .expect("a schema");
    let query = rt
        .block_on(RowQuery::compile(
            "SELECT id, ts, amount, upper(country) AS country, amount * 0.2 AS vat FROM input WHERE amount >= 10",
            &schema,
        ))
        .expect("the query plans");
    let events: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"id":"o-{i}","ts":"2026-12-06T10:00:00.{:03}Z","amount":{},"country":"{}","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
                i % 1000,
                i % 50,
                ["de", "fr", "nl", "pl"][i % 4]
            )
            .into_bytes()
        })
        .collect();
    let values: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
    let mut g = c.benchmark_group("row_query");
    g.throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("1000 events: JSON → Arrow → query → JSON", |b| {
        b.iter(|| rt.block_on(query.run(&values)))
    });
    g.finish();
    let per_country = rt
        .block_on(WindowQuery::compile(
            "SELECT country, count(*) AS orders, sum(amount) AS total FROM input GROUP BY country",
            &schema,
        ))
        .expect("the query plans");
    let mut g = c.benchmark_group("window_query");
    g.throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("1000 events: JSON → Arrow → GROUP BY → JSON", |b| {
        b.iter(|| rt.block_on(per_country.run(&values)))
    });
    g.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
