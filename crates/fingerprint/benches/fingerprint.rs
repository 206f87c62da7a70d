//! Cost of fingerprinting one event: top-level fields read, distinct values, numbers and
//! entropy of one field.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hifi_fingerprint::{Bucket, Settings};

fn events() -> Vec<Vec<u8>> {
    let countries = ["de", "fr", "us", "gb", "nl", "se", "pl", "it", "es", "jp"];
    (0..10_000)
        .map(|i| {
            format!(
                r#"{{"id":"ord-{i}","user":"u{}","country":"{}","amount":{}.{:02},"email":"user{}@example.com","status":"paid"}}"#,
                i % 3_000,
                countries[i % countries.len()],
                i % 500,
                i % 100,
                i % 3_000
            )
            .into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let settings = Settings {
        fields_max: 64,
        entropy: vec!["country".into()],
    };
    let mut g = c.benchmark_group("fingerprint");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("add_10000_events_6_fields", |b| {
        b.iter(|| {
            let mut bucket = Bucket::default();
            for e in &events {
                bucket.add(e, &settings);
            }
            bucket
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
