//! Model-based property test: random sequences of create / append / read / commit /
//! reopen / retention against the real log and a tiny in-memory model; they must agree.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;
use std::path::Path;

use hifi_log::{EmbeddedLog, Log, LogConfig, LogError, ReadLimits, Record, Retention, TopicSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create {
        topic: usize,
        partitions: u32,
    },
    Append {
        topic: usize,
        partition: u32,
        sizes: Vec<usize>,
        ts: i64,
    },
    Read {
        topic: usize,
        partition: u32,
        from_permille: u32,
        max_records: usize,
    },
    Commit {
        group: usize,
        topic: usize,
        partition: u32,
        offset_permille: u32,
    },
    Reopen,
    Retention,
}

const TOPICS: [&str; 3] = ["alpha", "beta", "gamma"];
/// gamma keeps about 6 KiB per partition; the others keep everything.
const GAMMA_BYTES: u64 = 6 * 1024;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize, 1..4u32).prop_map(|(topic, partitions)| Op::Create { topic, partitions }),
        8 => (0..3usize, 0..4u32, prop::collection::vec(0..700usize, 1..6), 0..1_000_000i64)
            .prop_map(|(topic, partition, sizes, ts)| Op::Append { topic, partition, sizes, ts }),
        4 => (0..3usize, 0..4u32, 0..1100u32, 1..50usize)
            .prop_map(|(topic, partition, from_permille, max_records)| Op::Read { topic, partition, from_permille, max_records }),
        2 => (0..2usize, 0..3usize, 0..4u32, 0..1100u32)
            .prop_map(|(group, topic, partition, offset_permille)| Op::Commit { group, topic, partition, offset_permille }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Retention),
    ]
}

#[derive(Default)]
struct Model {
    /// topic -> partitions -> records (all ever appended; `start` says what is kept).
    topics: HashMap<usize, Vec<Vec<Record>>>,
    /// topic, partition -> first offset still stored.
    start: HashMap<(usize, u32), u64>,
    groups: HashMap<(usize, usize, u32), u64>,
}

/// `tail_cache_bytes`: reads come from memory, from files, or (small cache) from both.
fn config(tail_cache_bytes: usize) -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 512,
        tail_cache_bytes,
        ..LogConfig::default()
    }
}

async fn run(ops: Vec<Op>, tail_cache_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let open = |dir: &Path| EmbeddedLog::open(dir, config(tail_cache_bytes)).unwrap();
    let mut log = open(dir.path());
    let mut m = Model::default();
    let mut seq = 0u64;
    for op in ops {
        match op {
            Op::Create { topic, partitions } => {
                let bytes = (topic == 2).then_some(GAMMA_BYTES);
                let retention = Some(Retention {
                    age: None,
                    bytes,
                    ignore_consumers: true,
                });
                let spec = TopicSpec {
                    name: TOPICS[topic].into(),
                    partitions,
                    retention,
                };
                let got = log.ensure_topic(&spec).await;
                match m.topics.get(&topic) {
                    None => {
                        assert_eq!(got.unwrap(), partitions);
                        m.topics
                            .insert(topic, vec![Vec::new(); partitions as usize]);
                    }
                    Some(p) if p.len() as u32 == partitions => assert_eq!(got.unwrap(), partitions),
                    Some(_) => assert!(matches!(got, Err(LogError::PartitionCountMismatch { .. }))),
                }
            }
            Op::Append {
                topic,
                partition,
                sizes,
                ts,
            } => {
                let recs: Vec<Record> = sizes
                    .iter()
                    .map(|&n| {
                        seq += 1;
                        Record::new(vec![(seq % 251) as u8; n], ts)
                            .with_header("seq", seq.to_string())
                    })
                    .collect();
                let got = log.append(TOPICS[topic], partition, recs.clone()).await;
                match m
                    .topics
                    .get_mut(&topic)
                    .map(|p| p.get_mut(partition as usize))
                {
                    None => assert!(matches!(got, Err(LogError::TopicNotFound { .. }))),
                    Some(None) => assert!(matches!(got, Err(LogError::PartitionNotFound { .. }))),
                    Some(Some(records)) => {
                        let start = records.len() as u64;
                        assert_eq!(
                            got.unwrap(),
                            (start..start + recs.len() as u64).collect::<Vec<_>>()
                        );
                        records.extend(recs);
                    }
                }
            }
            Op::Read {
                topic,
                partition,
                from_permille,
                max_records,
            } => {
                let Some(Some(records)) = m.topics.get(&topic).map(|p| p.get(partition as usize))
                else {
                    continue;
                };
                let start = m.start.get(&(topic, partition)).copied().unwrap_or(0);
                let end = records.len() as u64;
                let from = start + (end - start + 1) * from_permille as u64 / 1000;
                let limits = ReadLimits {
                    max_records,
                    ..ReadLimits::default()
                };
                let got = log.read(TOPICS[topic], partition, from, limits).await;
                if from > end {
                    assert!(
                        matches!(got, Err(LogError::OffsetOutOfRange { .. })),
                        "{got:?}"
                    );
                } else {
                    let got = got.unwrap();
                    assert!(got.len() <= max_records);
                    assert!(
                        from == end || !got.is_empty(),
                        "read at {from} of {end} returned nothing"
                    );
                    for (i, r) in got.iter().enumerate() {
                        assert_eq!(r.offset, from + i as u64);
                        assert_eq!(&r.record, &records[r.offset as usize]);
                    }
                }
            }
            Op::Commit {
                group,
                topic,
                partition,
                offset_permille,
            } => {
                let Some(Some(records)) = m.topics.get(&topic).map(|p| p.get(partition as usize))
                else {
                    continue;
                };
                let offset = records.len() as u64 * offset_permille as u64 / 1000;
                let g = format!("g{group}");
                log.commit(&g, TOPICS[topic], partition, offset)
                    .await
                    .unwrap();
                m.groups.insert((group, topic, partition), offset);
            }
            Op::Reopen => {
                log.close().await;
                drop(log);
                log = open(dir.path());
            }
            Op::Retention => {
                log.apply_retention(i64::MAX).await;
                for (&topic, parts) in &m.topics {
                    for p in 0..parts.len() as u32 {
                        let o = log.offsets(TOPICS[topic], p).await.unwrap();
                        let before = m.start.get(&(topic, p)).copied().unwrap_or(0);
                        assert!(o.start >= before, "start never goes back");
                        assert_eq!(o.end, parts[p as usize].len() as u64);
                        if topic != 2 {
                            assert_eq!(o.start, 0, "topics without retention keep everything");
                        } else {
                            let kept: u64 = parts[p as usize][o.start as usize..]
                                .iter()
                                .map(|r| r.frame_bytes() as u64)
                                .sum();
                            let kept_before: u64 = parts[p as usize][before as usize..]
                                .iter()
                                .map(|r| r.frame_bytes() as u64)
                                .sum();
                            assert!(
                                kept >= GAMMA_BYTES.min(kept_before),
                                "retention never keeps less than its limit"
                            );
                            assert!(
                                kept <= GAMMA_BYTES.max(kept_before.min(GAMMA_BYTES)) + 2 * 4096,
                                "retention kept {kept}"
                            );
                        }
                        m.start.insert((topic, p), o.start);
                    }
                }
            }
        }
        // After every step, every group position agrees with the model.
        for (&(group, topic, partition), &offset) in &m.groups {
            let got = log
                .committed(&format!("g{group}"), TOPICS[topic], partition)
                .await
                .unwrap();
            assert_eq!(got, Some(offset));
        }
    }
    // At the end, the whole content agrees.
    for (&topic, parts) in &m.topics {
        for (p, records) in parts.iter().enumerate() {
            let start = m.start.get(&(topic, p as u32)).copied().unwrap_or(0);
            let got = support::read_all(&log, TOPICS[topic], p as u32).await;
            assert_eq!(got.len() as u64, records.len() as u64 - start);
            for r in got {
                assert_eq!(&r.record, &records[r.offset as usize]);
            }
        }
    }
    log.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_agrees_with_a_model(
        ops in prop::collection::vec(op(), 1..80),
        tail_cache_bytes in prop_oneof![Just(0usize), Just(2048), Just(1 << 20)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, tail_cache_bytes));
    }
}
