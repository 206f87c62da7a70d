//! Criterion benchmarks of the pipeline's per-event work: parsing an ingest request
//! (a CloudEvents batch of 100 events of ~200 B, as `hifi loadtest` sends, and a plain
//! JSON batch whose id and time are read by JSON pointer) and reading
//! a stored event's metadata back for delivery (and adding the `hifiversion` extension
//! a versioned stage's readers deliver).
//!
//! `cargo bench -p hifi-pipeline` (see BENCHMARKS.md).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hifi_log::{Record, StoredRecord};
use hifi_pipeline::event::{cloudevent_body, header, with_extension, EventMeta};
use hifi_pipeline::parse::{parse_body, BodyFormat, ParseOptions};

fn batch(events: usize) -> Bytes {
    let pad = "x".repeat(60);
    let items: Vec<String> = (0..events)
        .map(|j| {
            format!(
                r#"{{"specversion":"1.0","id":"lt-19a3f2c1b0-1234-{j}","source":"hifi-loadtest","type":"loadtest","time":"2026-11-30T10:22:52.123Z","data":{{"pad":"{pad}"}}}}"#
            )
        })
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

/// A plain JSON array of `events` events of ~200 B with an id and an event time.
fn plain_batch(events: usize) -> Bytes {
    let pad = "x".repeat(110);
    let items: Vec<String> = (0..events)
        .map(|j| {
            format!(
                r#"{{"id":"order-19a3f2c1b0-{j}","ts":"2026-11-30T10:22:52.123Z","customer":{{"name":"Ada","tier":3}},"pad":"{pad}"}}"#
            )
        })
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

fn ingest(c: &mut Criterion) {
    let body = batch(100);
    let opts = ParseOptions {
        event_time: None,
        id_field: None,
        default_source: "hifi".into(),
        event_type: "hifi.event".into(),
        max_events: 10_000,
    };
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse a CloudEvents batch, 100 x 200 B", |b| {
        b.iter(|| parse_body(&body, BodyFormat::CloudEventBatch, &opts).unwrap())
    });
    let plain = plain_batch(100);
    let opts = ParseOptions {
        event_time: Some("/ts".into()),
        id_field: Some("/id".into()),
        ..opts
    };
    g.bench_function(
        "parse a plain JSON batch with id and time, 100 x 200 B",
        |b| b.iter(|| parse_body(&plain, BodyFormat::Json, &opts).unwrap()),
    );
    g.finish();
}

fn sink(c: &mut Criterion) {
    let value = batch(1).slice(1..);
    let stored = StoredRecord {
        offset: 123_456,
        record: Record::new(value.slice(..value.len() - 1), 1_700_000_000_000)
            .with_header(header::ID, "lt-19a3f2c1b0-1234-0")
            .with_header(header::SOURCE, "hifi-loadtest")
            .with_header(header::TYPE, "loadtest")
            .with_header(header::TIME, "1700000000123")
            .with_header(header::INGEST_TIME, "1700000000125")
            .with_header(header::FORMAT, "ce"),
    };
    let mut g = c.benchmark_group("sink");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event metadata and body of a stored CloudEvent", |b| {
        b.iter(|| {
            let meta = EventMeta::of("events", 2, &stored);
            let body = cloudevent_body(&meta, &stored.record.value);
            (meta, body)
        })
    });
    // What a sink of a versioned stage's output adds: the `hifiversion` extension, one
    // copy of the event.
    g.bench_function(
        "... and the hifiversion extension added (versioned output)",
        |b| {
            b.iter(|| {
                let meta = EventMeta::of("events", 2, &stored);
                let body = cloudevent_body(&meta, &stored.record.value);
                let body = with_extension(&body, "hifiversion", "3f9a2c1e");
                (meta, body)
            })
        },
    );
    g.finish();
}

criterion_group!(benches, ingest, sink);
criterion_main!(benches);
