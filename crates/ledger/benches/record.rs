//! Criterion benchmark of what every node records per event: an outcome and a lag, for a
//! batch of 100 events (a delivered request), one call per event vs one per batch; and
//! the lag alone when the events share their event time (recorded once with a count)
//! and when they do not.
//!
//! `cargo bench -p hifi-ledger` (see BENCHMARKS.md).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hifi_ledger::{Ledger, LedgerConfig, NodeKind, NodeSpec, Origin, Outcome, SystemClock};
use hifi_log::{EmbeddedLog, Log, LogConfig};

fn record(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ledger = rt.block_on(async {
        let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
        let nodes = vec![NodeSpec {
            name: "out".into(),
            kind: NodeKind::Sink,
            input: Some("events".into()),
            output: None,
            group: None,
            aggregates: false,
        }];
        Ledger::open(
            LedgerConfig::default(),
            nodes,
            Arc::new(log) as Arc<dyn Log>,
            Arc::new(SystemClock),
        )
        .await
        .unwrap()
    });
    let node = ledger.node("out");
    let now_us = node.now_us();
    let events: Vec<(Origin, i64, i64)> = (0..100)
        .map(|i| {
            let origin = Origin {
                topic: "events".into(),
                partition: 2,
                offset: 1_000 + i,
            };
            (origin, now_us / 1000 - 5, now_us - 2_000)
        })
        .collect();
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(100));
    g.bench_function("outcome and lag of 100 events, one call each", |b| {
        b.iter(|| {
            for (origin, t, arrival) in &events {
                node.outcome(Outcome::Delivered, origin, *t);
                node.lag(*t, *arrival, now_us);
            }
        })
    });
    g.bench_function("outcome and lag of 100 events, one call per batch", |b| {
        b.iter(|| {
            node.outcomes(
                events
                    .iter()
                    .map(|(o, t, _)| (Outcome::Delivered, o.as_ref(), *t)),
            );
            node.lags(events.iter().map(|(_, t, a)| (*t, *a)), now_us);
        })
    });
    // Every event with an event time of its own: no two share their lags.
    let distinct: Vec<(i64, i64)> = (0..100)
        .map(|i| (now_us / 1000 - 5 - i, now_us - 2_000))
        .collect();
    g.bench_function(
        "lag of 100 events with distinct event times, one call per batch",
        |b| b.iter(|| node.lags(distinct.iter().copied(), now_us)),
    );
    g.bench_function(
        "lag of 100 events sharing their event time, one call per batch",
        |b| b.iter(|| node.lags(events.iter().map(|(_, t, a)| (*t, *a)), now_us)),
    );
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
