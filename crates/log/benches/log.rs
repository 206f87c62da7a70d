//! Criterion benchmarks of the log's hot paths: frame encode/decode, group-committed
//! appends (fsync always) and reads from the page cache.
//!
//! `cargo bench -p hifi-log` (see BENCHMARKS.md). The end-to-end table against the
//! disk's raw limits comes from `hifi log bench` (scripts/bench-log).

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hifi_log::record::{decode_frame, encode_frame, Frame};
use hifi_log::{EmbeddedLog, Log, LogConfig, ReadLimits, Record, TopicSpec};

fn sample() -> Record {
    Record::new(vec![b'v'; 256], 1_700_000_000_000)
        .with_header("hifi-id", "0d6f3a0e-5b7e-4f59-9d2c-6f1f2b7c9a10")
        .with_header("hifi-event-time", "1700000000000")
}

fn frames(c: &mut Criterion) {
    let rec = sample();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode 256 B", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            encode_frame(&mut buf, 42, &rec);
        })
    });
    let mut buf = Vec::new();
    encode_frame(&mut buf, 42, &rec);
    g.bench_function("decode+verify 256 B", |b| {
        b.iter(|| assert!(matches!(decode_frame(&buf, 1 << 20), Frame::Valid { .. })))
    });
    g.finish();
}

fn append_and_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
    rt.block_on(log.ensure_topic(&TopicSpec::new("t", 1)))
        .unwrap();
    let batch: Vec<Record> = (0..100).map(|_| sample()).collect();

    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(100));
    g.bench_function("append 100 x 256 B, fsync always, 1 appender", |b| {
        b.iter_batched(
            || batch.clone(),
            |recs| rt.block_on(log.append("t", 0, recs)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let end = rt.block_on(log.offsets("t", 0)).unwrap().end;
    g.throughput(Throughput::Elements(1000));
    g.bench_function("read 1000 records from page cache", |b| {
        let mut from = 0;
        b.iter(|| {
            if from + 1000 > end {
                from = 0;
            }
            let limits = ReadLimits {
                max_records: 1000,
                max_bytes: 8 << 20,
                ..ReadLimits::default()
            };
            let got = rt.block_on(log.read("t", 0, from, limits)).unwrap();
            from += got.len() as u64;
        })
    });
    g.finish();
    rt.block_on(log.close());
}

criterion_group!(benches, frames, append_and_read);
criterion_main!(benches);
