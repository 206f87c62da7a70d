//! The engine's semantics on real files: durable appends, reads, long-poll, groups,
//! offset for time, segments, retention, the data-directory lock.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use hifi_log::{
    EmbeddedLog, Log, LogConfig, LogError, OpenError, ReadLimits, Record, Retention, TopicSpec,
};
use support::*;

#[tokio::test]
async fn appended_records_read_back_identically_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments()).await;
    topic(&log, "events", 2).await;
    let mut expected = Vec::new();
    for chunk in 0..50u64 {
        let recs: Vec<Record> = (chunk * 7..chunk * 7 + 7).map(record).collect();
        let offsets = log.append("events", 1, recs.clone()).await.unwrap();
        assert_eq!(offsets, (chunk * 7..chunk * 7 + 7).collect::<Vec<_>>());
        expected.extend(recs);
    }
    let got: Vec<Record> = read_all(&log, "events", 1)
        .await
        .into_iter()
        .map(|r| r.record)
        .collect();
    assert_eq!(got, expected);
    let segments = std::fs::read_dir(dir.path().join("topics/events/1"))
        .unwrap()
        .count();
    assert!(
        segments > 3,
        "small segments should have rolled, found {segments} files"
    );
    assert_eq!(
        log.offsets("events", 0).await.unwrap().end,
        0,
        "partitions are isolated"
    );
    log.close().await;
    drop(log);

    let log = open(dir.path(), small_segments()).await;
    let got: Vec<Record> = read_all(&log, "events", 1)
        .await
        .into_iter()
        .map(|r| r.record)
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        log.append("events", 1, vec![record(999)]).await.unwrap(),
        vec![350]
    );
}

#[tokio::test]
async fn a_reader_parked_at_the_end_wakes_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default()).await;
    topic(&log, "t", 1).await;
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let limits = ReadLimits {
                wait: Duration::from_secs(30),
                ..ReadLimits::default()
            };
            let started = std::time::Instant::now();
            (
                log.read("t", 0, 0, limits).await.unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.append("t", 0, vec![record(1)]).await.unwrap();
    let (got, waited) = reader.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        waited < Duration::from_secs(10),
        "woke on append, not on timeout"
    );
    // And a wait with nothing to read ends empty at its deadline.
    let limits = ReadLimits {
        wait: SHORT,
        ..ReadLimits::default()
    };
    assert!(log.read("t", 0, 1, limits).await.unwrap().is_empty());
}

#[tokio::test]
async fn committed_positions_are_durable_per_group_topic_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default()).await;
    topic(&log, "a", 2).await;
    topic(&log, "b", 1).await;
    assert_eq!(log.committed("g1", "a", 0).await.unwrap(), None);
    for i in 0..2000u64 {
        log.commit("g1", "a", (i % 2) as u32, i).await.unwrap();
    }
    log.commit("g2", "b", 0, 7).await.unwrap();
    log.close().await;
    drop(log);
    let log = open(dir.path(), LogConfig::default()).await;
    assert_eq!(log.committed("g1", "a", 0).await.unwrap(), Some(1998));
    assert_eq!(log.committed("g1", "a", 1).await.unwrap(), Some(1999));
    assert_eq!(log.committed("g2", "b", 0).await.unwrap(), Some(7));
    assert_eq!(log.committed("g2", "a", 0).await.unwrap(), None);
    assert!(matches!(
        log.commit("g1", "nope", 0, 1).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.commit("bad/name", "a", 0, 1).await,
        Err(LogError::InvalidName { .. })
    ));
}

#[tokio::test]
async fn offset_for_time_finds_the_first_record_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments()).await;
    topic(&log, "t", 1).await;
    // Timestamps 1000, 1010, ..., with one out-of-order record.
    let mut recs: Vec<Record> = (0..300)
        .map(|i| Record::new(vec![b'x'; 40], 1000 + i * 10))
        .collect();
    recs[150].timestamp_ms = 5;
    for chunk in recs.chunks(10) {
        log.append("t", 0, chunk.to_vec()).await.unwrap();
    }
    let check = |ts: i64| {
        recs.iter()
            .position(|r| r.timestamp_ms >= ts)
            .map(|i| i as u64)
    };
    for ts in [
        0, 999, 1000, 1001, 1500, 2490, 2500, 2505, 3990, 3991, 10_000,
    ] {
        assert_eq!(
            log.offset_for_time("t", 0, ts).await.unwrap(),
            check(ts),
            "ts {ts}"
        );
    }
    // Index files are rebuilt when deleted, and give the same answers.
    log.close().await;
    drop(log);
    for e in std::fs::read_dir(dir.path().join("topics/t/0")).unwrap() {
        let p = e.unwrap().path();
        if p.extension()
            .is_some_and(|x| x == "index" || x == "timeindex")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let log = open(dir.path(), small_segments()).await;
    for ts in [0, 1001, 2505, 3991] {
        assert_eq!(
            log.offset_for_time("t", 0, ts).await.unwrap(),
            check(ts),
            "ts {ts} after rebuild"
        );
    }
}

#[tokio::test]
async fn errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            record_bytes_max: 1024,
            ..LogConfig::default()
        },
    )
    .await;
    assert!(matches!(
        log.append("missing", 0, vec![record(1)]).await,
        Err(LogError::TopicNotFound { .. })
    ));
    topic(&log, "t", 2).await;
    assert!(matches!(
        log.append("t", 2, vec![record(1)]).await,
        Err(LogError::PartitionNotFound { .. })
    ));
    assert!(matches!(
        log.append("t", 0, vec![]).await,
        Err(LogError::Invalid(_))
    ));
    let big = Record::new(vec![0u8; 2000], 0);
    assert!(matches!(
        log.append("t", 0, vec![record(1), big]).await,
        Err(LogError::RecordTooLarge { .. })
    ));
    assert_eq!(
        log.offsets("t", 0).await.unwrap().end,
        0,
        "a rejected append writes nothing"
    );
    let err = log.ensure_topic(&TopicSpec::new("t", 3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::PartitionCountMismatch {
                existing: 2,
                requested: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(log.ensure_topic(&TopicSpec::new("t", 2)).await.unwrap(), 2);
    for bad in ["", ".", "..", "a/b", "sp ace", &"x".repeat(201)] {
        assert!(
            matches!(
                log.ensure_topic(&TopicSpec::new(bad, 1)).await,
                Err(LogError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    log.append("t", 0, vec![record(1)]).await.unwrap();
    let err = log
        .read("t", 0, 5, ReadLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::OffsetOutOfRange {
                requested: 5,
                start: 0,
                end: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path(), LogConfig::default()).await;
    let err = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another process"));
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments()).await;
    let by_size = TopicSpec {
        retention: Some(Retention {
            age: None,
            bytes: Some(16 * 1024),
            ignore_consumers: false,
        }),
        ..TopicSpec::new("s", 1)
    };
    log.ensure_topic(&by_size).await.unwrap();
    let by_age = TopicSpec {
        retention: Some(Retention {
            age: Some(Duration::from_secs(3600)),
            bytes: None,
            ignore_consumers: false,
        }),
        ..TopicSpec::new("a", 1)
    };
    log.ensure_topic(&by_age).await.unwrap();
    for i in 0..600u64 {
        log.append("s", 0, vec![record(i)]).await.unwrap();
        // Old records first (timestamps from 1970 + i), then recent ones.
        let ts = if i < 300 { i as i64 } else { 4_000_000_000_000 };
        log.append("a", 0, vec![Record::new(vec![b'a'; 100], ts)])
            .await
            .unwrap();
    }
    log.apply_retention(3_999_999_000_000).await;

    let s = log.offsets("s", 0).await.unwrap();
    assert!(s.start > 0, "size retention deleted something");
    let kept_bytes: u64 = std::fs::read_dir(dir.path().join("topics/s/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        (16 * 1024..=16 * 1024 + 4096 + 512).contains(&kept_bytes),
        "kept {kept_bytes} bytes"
    );
    let rest = read_all(&log, "s", 0).await;
    assert_eq!(rest.first().unwrap().offset, s.start);
    assert_eq!(
        rest.first().unwrap().record,
        record(s.start),
        "what remains is intact"
    );
    assert!(matches!(
        log.read("s", 0, 0, ReadLimits::default()).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));

    let a = log.offsets("a", 0).await.unwrap();
    assert!(
        a.start > 250 && a.start <= 300,
        "age retention cut the old segments only (start {})",
        a.start
    );
}

#[tokio::test]
async fn concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default()).await;
    topic(&log, "t", 1).await;
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..20u64 {
                let r = log
                    .append("t", 0, vec![record(task * 1000 + i)])
                    .await
                    .unwrap();
                offsets.push((r[0], task * 1000 + i));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let stored = read_all(&log, "t", 0).await;
    assert_eq!(stored.len(), 640);
    for (offset, n) in all {
        assert_eq!(stored[offset as usize].record, record(n));
    }
    let fsyncs = hifi_log::LogStats::get(&log.stats().fsyncs_total);
    assert!(
        fsyncs < 640,
        "640 appends should share fsyncs, saw {fsyncs}"
    );
}

#[tokio::test]
async fn records_read_share_their_read_buffer_only_while_they_are_most_of_it() {
    // Read from the file (no tail cache) and from the tail cache.
    for tail_cache_bytes in [0, LogConfig::default().tail_cache_bytes] {
        records_read_share_their_buffer(LogConfig {
            tail_cache_bytes,
            ..LogConfig::default()
        })
        .await;
    }
}

async fn records_read_share_their_buffer(config: LogConfig) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config).await;
    topic(&log, "events", 1).await;
    let recs: Vec<Record> = (0..2000).map(record).collect();
    log.append("events", 0, recs).await.unwrap();
    let read = |max_records| {
        log.read(
            "events",
            0,
            0,
            ReadLimits {
                max_records,
                max_bytes: 1 << 20,
                wait: Duration::ZERO,
            },
        )
    };
    // Many records from one chunk: slices of it, no copy.
    let many = read(1000).await.unwrap();
    assert_eq!(many.len(), 1000);
    assert!(!many[0].record.value.is_unique(), "shares the read buffer");
    // One record out of a large chunk: its own buffers, so it does not keep the chunk
    // (hundreds of KiB) allocated while it is in flight.
    let one = read(1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].record.value.is_unique(), "copied out of the chunk");
    assert_eq!(one[0].record, many[0].record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_the_writer_get_every_record_once_in_order() {
    // Small appends as fast as they go, readers asking for the next offset as soon as
    // they have one: reads land on groups just being made visible — in the tail cache
    // (default and tiny, so some reads fall back to the file) or from the file only.
    const N: u64 = 3_000;
    for tail_cache_bytes in [0, 2048, LogConfig::default().tail_cache_bytes] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            fsync: hifi_log::FsyncPolicy::Never,
            segment_bytes_max: 64 * 1024,
            tail_cache_bytes,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config).await;
        topic(&log, "t", 1).await;
        let appender = {
            let log = log.clone();
            tokio::spawn(async move {
                for n in 0..N {
                    log.append("t", 0, vec![record(n)]).await.unwrap();
                }
            })
        };
        let mut readers = Vec::new();
        for max_records in [1, 7] {
            let log = log.clone();
            readers.push(tokio::spawn(async move {
                let mut pos = 0;
                while pos < N {
                    let limits = ReadLimits {
                        max_records,
                        max_bytes: 1 << 20,
                        wait: Duration::from_secs(5),
                    };
                    let got = log.read("t", 0, pos, limits).await.unwrap_or_else(|e| {
                        panic!("read from {pos} (tail cache {tail_cache_bytes} B): {e}")
                    });
                    assert!(
                        !got.is_empty(),
                        "a 5 s long-poll came back empty at {pos} (tail cache {tail_cache_bytes} B)"
                    );
                    for r in got {
                        assert_eq!(r.offset, pos);
                        assert_eq!(r.record, record(pos));
                        pos += 1;
                    }
                }
            }));
        }
        appender.await.unwrap();
        for r in readers {
            r.await.unwrap();
        }
        log.close().await;
    }
}

/// Retention keeps what a consumer group has not read yet (unless the topic says to
/// ignore consumers), and past `retention_hold_bytes_max` refuses appends instead of
/// deleting unread records; a commit past them lets both go on.
#[tokio::test]
async fn retention_never_deletes_what_a_consumer_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_hold_bytes_max: 8 * 1024,
        ..small_segments()
    };
    let log = open(dir.path(), config).await;
    let old = |ignore_consumers| Retention {
        age: Some(Duration::from_secs(3600)),
        bytes: None,
        ignore_consumers,
    };
    for (name, ignore) in [("kept", false), ("dropped", true)] {
        let spec = TopicSpec {
            retention: Some(old(ignore)),
            ..TopicSpec::new(name, 1)
        };
        log.ensure_topic(&spec).await.unwrap();
        for i in 0..300u64 {
            let r = Record::new(vec![b'a'; 100], i as i64); // all from 1970: expired
            log.append(name, 0, vec![r]).await.unwrap();
        }
        // A consumer has read the first 50 records of each.
        log.commit("sink.out", name, 0, 50).await.unwrap();
    }
    log.apply_retention(4_000_000_000_000).await;
    let kept = log.offsets("kept", 0).await.unwrap();
    assert!(
        kept.start <= 50,
        "unread records deleted: start {}",
        kept.start
    );
    assert!(kept.start > 0, "read segments are still deleted");
    let dropped = log.offsets("dropped", 0).await.unwrap();
    assert!(
        dropped.start > 50,
        "ignore_consumers deletes by age: {}",
        dropped.start
    );

    // Over 8 KiB kept only for the consumer: appends wait for it.
    let err = log.append("kept", 0, vec![record(1)]).await.unwrap_err();
    assert!(matches!(err, LogError::RetentionHeld { .. }), "{err}");
    assert!(err.is_transient());
    assert!(log.append("dropped", 0, vec![record(1)]).await.is_ok());
    // The consumer catches up: segments go, appends come back.
    log.commit("sink.out", "kept", 0, 300).await.unwrap();
    log.apply_retention(4_000_000_000_000).await;
    assert!(log.offsets("kept", 0).await.unwrap().start > 250);
    assert_eq!(
        log.append("kept", 0, vec![record(2)]).await.unwrap()[0],
        300
    );
}
