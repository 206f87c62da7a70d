//! The engine conformance suite: what every [`Log`] must do, whatever stores it.
//!
//! Each check takes an [`Engine`] — something that opens the same storage again, as a
//! restarted process would — and panics with a message on the first thing that does not
//! hold. The embedded engine runs the suite in `crates/log/tests/conformance.rs`, the
//! Kafka engine in `crates/kafka/tests/conformance.rs` against a real broker. Checks of
//! one engine's own machinery (segments, checksums, torn tails) live beside that engine.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test suite fails loudly

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Header, Log, LogError, ReadLimits, Record, StoredRecord, TopicSpec};

/// Opens the storage under test.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// An engine instance on the storage (a new process after the previous one stopped).
    async fn open(&self) -> Arc<dyn Log>;
    /// Stops an instance cleanly before the next [`Engine::open`].
    async fn close(&self, log: Arc<dyn Log>);
}

/// Runs every check, each on its own topics.
pub async fn run_all(engine: &dyn Engine) {
    durable_at_ack_and_read_your_writes(engine).await;
    long_poll_wakes_on_append(engine).await;
    a_waiting_read_holds_back_no_other_read(engine).await;
    cancelled_reads_skip_nothing(engine).await;
    committed_positions_survive_restart(engine).await;
    offset_for_time(engine).await;
    errors_name_what_is_wrong(engine).await;
    one_member_owns_every_partition(engine).await;
    deleted_topics_and_groups_are_gone(engine).await;
}

fn record(i: u64) -> Record {
    Record {
        key: i
            .is_multiple_of(3)
            .then(|| format!("k{i}").into_bytes().into()),
        value: format!("value {i} {}", "x".repeat((i % 50) as usize))
            .into_bytes()
            .into(),
        headers: vec![Header {
            name: "id".into(),
            value: i.to_le_bytes().to_vec().into(),
        }],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

async fn read_all(log: &dyn Log, topic: &str, partition: u32) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    crate::read_to_end(log, topic, partition, 0, |r| out.push(r))
        .await
        .unwrap();
    out
}

/// Appends are acknowledged with increasing offsets, read back identical (key, value,
/// headers, timestamp) by the same and by a restarted instance; partitions are isolated.
pub async fn durable_at_ack_and_read_your_writes(engine: &dyn Engine) {
    let log = engine.open().await;
    assert_eq!(
        log.ensure_topic(&TopicSpec::new("events", 2))
            .await
            .unwrap(),
        2
    );
    let mut expected = Vec::new();
    let mut last = None;
    for chunk in 0..20u64 {
        let recs: Vec<Record> = (chunk * 7..chunk * 7 + 7).map(record).collect();
        let offsets = log.append("events", 1, recs.clone()).await.unwrap();
        assert_eq!(offsets.len(), 7, "one offset per record");
        for o in &offsets {
            assert!(last < Some(*o), "offsets increase: {last:?} then {o}");
            last = Some(*o);
        }
        expected.extend(offsets.into_iter().zip(recs));
    }
    let check = |got: Vec<StoredRecord>| {
        let got: Vec<(u64, Record)> = got.into_iter().map(|r| (r.offset, r.record)).collect();
        assert_eq!(got.len(), expected.len());
        assert!(
            got == expected,
            "records read back differ from those appended"
        );
    };
    check(read_all(log.as_ref(), "events", 1).await);
    let other = log.offsets("events", 0).await.unwrap();
    assert_eq!(other.end, other.start, "partition 0 got nothing");
    engine.close(log).await;

    let log = engine.open().await;
    check(read_all(log.as_ref(), "events", 1).await);
    let next = log.append("events", 1, vec![record(999)]).await.unwrap();
    assert!(next[0] > last.unwrap(), "after a restart offsets go on");
    engine.close(log).await;
}

/// A read parked at the end wakes when a record arrives; a wait with nothing to read ends
/// empty at its deadline.
pub async fn long_poll_wakes_on_append(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("poll", 1)).await.unwrap();
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let limits = ReadLimits {
                wait: Duration::from_secs(30),
                ..ReadLimits::default()
            };
            let started = Instant::now();
            let got = log.read("poll", 0, 0, limits).await.unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.append("poll", 0, vec![record(1)]).await.unwrap();
    let (got, waited) = reader.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        waited < Duration::from_secs(10),
        "woke on append, not on timeout ({waited:?})"
    );
    let limits = ReadLimits {
        wait: Duration::from_millis(300),
        ..ReadLimits::default()
    };
    let started = Instant::now();
    assert!(log.read("poll", 0, 1, limits).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "waited");
    engine.close(log).await;
}

/// Two readers of one partition in one process (a stage and its candidate version, two
/// sinks of a topic): one waiting at the end holds back neither the other's reads from
/// further back nor, in turn, its own wake-up on append.
pub async fn a_waiting_read_holds_back_no_other_read(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("two-readers", 1))
        .await
        .unwrap();
    let recs: Vec<Record> = (0..100).map(record).collect();
    log.append("two-readers", 0, recs).await.unwrap();
    let long = ReadLimits {
        wait: Duration::from_secs(30),
        ..ReadLimits::default()
    };
    let at_end = {
        let log = log.clone();
        tokio::spawn(async move { log.read("two-readers", 0, 100, long).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut from = 0;
    while from < 100 {
        let limits = ReadLimits {
            max_records: 10,
            ..long
        };
        let got = log.read("two-readers", 0, from, limits).await.unwrap();
        assert_eq!(got.first().map(|r| r.offset), Some(from), "from {from}");
        from = got.last().unwrap().offset + 1;
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "ten reads behind a read waiting at the end took {waited:?} (held back by it)"
    );
    if at_end.is_finished() {
        let got = at_end.await.map(|records| records.len());
        panic!("the read waiting at the end returned before any append: {got:?}");
    }
    log.append("two-readers", 0, vec![record(100)])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), at_end)
        .await
        .expect("the waiting read woke on the append")
        .unwrap();
    assert_eq!(got[0].offset, 100);
    engine.close(log).await;
}

/// A read whose caller stops waiting (its future dropped midway, as a revoked partition's
/// reader is) takes nothing away from the next read: reading again from the same offset
/// returns the records from exactly there. Large reads matter: a read may give way
/// (tokio's cooperative budget) with records already taken, and be dropped right then.
pub async fn cancelled_reads_skip_nothing(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("cancel", 1))
        .await
        .unwrap();
    const N: u64 = 3000;
    for chunk in 0..N / 500 {
        let recs = (chunk * 500..chunk * 500 + 500).map(record).collect();
        log.append("cancel", 0, recs).await.unwrap();
    }
    let limits = ReadLimits {
        max_records: 300,
        wait: Duration::from_millis(500),
        ..ReadLimits::default()
    };
    let (mut from, mut round) = (0u64, 0u64);
    while from < N {
        // Alternately: dropped when its task's budget runs out (the read gives way in
        // the middle of taking records), and dropped after 0 to 6 ms.
        round += 1;
        let budget_spent = std::future::poll_fn(|_| {
            if tokio::task::coop::has_budget_remaining() {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        });
        let cancel_after = Duration::from_micros((round % 31) * 200);
        if round % 2 == 0 {
            tokio::select! {
                biased;
                _ = log.read("cancel", 0, from, limits) => {}
                () = budget_spent => {}
            }
        } else {
            let _ = tokio::time::timeout(cancel_after, log.read("cancel", 0, from, limits)).await;
        }
        let mut got = Vec::new();
        for _ in 0..20 {
            // An empty answer only means the wait ended first.
            got = log.read("cancel", 0, from, limits).await.unwrap();
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(
            got.first().map(|r| r.offset),
            Some(from),
            "after a cancelled read (round {round}), a read from {from} must start there"
        );
        for pair in got.windows(2) {
            assert_eq!(pair[1].offset, pair[0].offset + 1, "no record skipped");
        }
        from = got.last().unwrap().offset + 1;
    }
    engine.close(log).await;
}

/// Commits are per group, topic and partition, the last one wins, and they survive a
/// restart.
pub async fn committed_positions_survive_restart(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("ca", 2)).await.unwrap();
    log.ensure_topic(&TopicSpec::new("cb", 1)).await.unwrap();
    assert_eq!(log.committed("g1", "ca", 0).await.unwrap(), None);
    for i in 0..20u64 {
        log.commit("g1", "ca", (i % 2) as u32, i).await.unwrap();
    }
    log.commit("g2", "cb", 0, 7).await.unwrap();
    log.commit_many("g3", "ca", &[(0, 5), (1, 6)])
        .await
        .unwrap();
    log.commit_many("g3", "ca", &[(1, 9)]).await.unwrap();
    log.commit_many("g3", "ca", &[]).await.unwrap();
    engine.close(log).await;

    let log = engine.open().await;
    assert_eq!(log.committed("g1", "ca", 0).await.unwrap(), Some(18));
    assert_eq!(log.committed("g1", "ca", 1).await.unwrap(), Some(19));
    assert_eq!(log.committed("g2", "cb", 0).await.unwrap(), Some(7));
    assert_eq!(log.committed("g2", "ca", 0).await.unwrap(), None);
    assert_eq!(log.committed("g3", "ca", 0).await.unwrap(), Some(5));
    assert_eq!(log.committed("g3", "ca", 1).await.unwrap(), Some(9));
    assert!(matches!(
        log.commit_many("g3", "ca", &[(0, 10), (2, 10)]).await,
        Err(LogError::PartitionNotFound { .. })
    ));
    assert_eq!(
        log.committed("g3", "ca", 0).await.unwrap(),
        Some(5),
        "nothing is committed when one partition is wrong"
    );
    assert!(matches!(
        log.commit("g1", "nope", 0, 1).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.commit("bad/name", "ca", 0, 1).await,
        Err(LogError::InvalidName { .. })
    ));
    engine.close(log).await;
}

/// The first offset whose timestamp is at or after a time.
pub async fn offset_for_time(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("times", 1)).await.unwrap();
    let mut offsets = Vec::new();
    for i in 0..10i64 {
        let r = Record::new(format!("at {i}"), 1_000_000 + i * 1000);
        offsets.extend(log.append("times", 0, vec![r]).await.unwrap());
    }
    let at = |ms| log.offset_for_time("times", 0, ms);
    assert_eq!(at(0).await.unwrap(), Some(offsets[0]), "before the first");
    assert_eq!(at(1_000_000).await.unwrap(), Some(offsets[0]), "exactly");
    assert_eq!(at(1_004_500).await.unwrap(), Some(offsets[5]), "between");
    assert_eq!(at(1_009_000).await.unwrap(), Some(offsets[9]), "the last");
    assert_eq!(at(1_009_001).await.unwrap(), None, "after the last");
    engine.close(log).await;
}

/// Missing topics and partitions, empty appends, reads out of range and partition-count
/// clashes are errors that say so.
pub async fn errors_name_what_is_wrong(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("errs", 2)).await.unwrap();
    assert!(matches!(
        log.append("missing", 0, vec![record(1)]).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.append("errs", 2, vec![record(1)]).await,
        Err(LogError::PartitionNotFound { partitions: 2, .. })
    ));
    assert!(matches!(
        log.append("errs", 0, vec![]).await,
        Err(LogError::Invalid(_))
    ));
    assert!(matches!(
        log.read("missing", 0, 0, ReadLimits::default()).await,
        Err(LogError::TopicNotFound { .. })
    ));
    let appended = log.append("errs", 0, vec![record(1)]).await.unwrap();
    assert!(matches!(
        log.read("errs", 0, appended[0] + 100, ReadLimits::default())
            .await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.ensure_topic(&TopicSpec::new("errs", 3)).await,
        Err(LogError::PartitionCountMismatch {
            existing: 2,
            requested: 3,
            ..
        })
    ));
    assert!(matches!(
        log.ensure_topic(&TopicSpec::new("no/slash", 1)).await,
        Err(LogError::InvalidName { .. })
    ));
    engine.close(log).await;
}

/// A group with one member owns every partition.
pub async fn one_member_owns_every_partition(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("owned", 3)).await.unwrap();
    let mut m = log.join("solo", "owned").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.owned().len() < 3 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), m.changed()).await;
    }
    assert_eq!(m.owned(), BTreeSet::from([0, 1, 2]));
    drop(m);
    engine.close(log).await;
}

/// A deleted topic is gone with its records (and a topic created again under its name
/// is new and empty, its old positions gone too); a deleted group has no positions.
/// Both survive a restart.
pub async fn deleted_topics_and_groups_are_gone(engine: &dyn Engine) {
    let log = engine.open().await;
    log.ensure_topic(&TopicSpec::new("del", 2)).await.unwrap();
    log.ensure_topic(&TopicSpec::new("kept", 1)).await.unwrap();
    for p in 0..2 {
        log.append("del", p, (0..50).map(record).collect())
            .await
            .unwrap();
    }
    // Read once, so that an engine caching open files or readers has them.
    assert_eq!(read_all(log.as_ref(), "del", 0).await.len(), 50);
    log.append("kept", 0, vec![record(1)]).await.unwrap();
    log.commit_many("gdel", "del", &[(0, 10), (1, 20)])
        .await
        .unwrap();
    log.commit("gdel", "kept", 0, 1).await.unwrap();
    log.commit("gone", "kept", 0, 1).await.unwrap();

    log.delete_topic("del").await.unwrap();
    assert!(matches!(
        log.partitions("del").await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.read("del", 0, 0, ReadLimits::default()).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.delete_topic("del").await,
        Err(LogError::TopicNotFound { .. })
    ));
    log.delete_group("gone").await.unwrap();
    log.delete_group("never-was").await.unwrap();
    assert_eq!(log.committed("gone", "kept", 0).await.unwrap(), None);
    assert_eq!(
        log.committed("gdel", "kept", 0).await.unwrap(),
        Some(1),
        "a group keeps its positions on other topics"
    );
    assert_eq!(read_all(log.as_ref(), "kept", 0).await.len(), 1);
    engine.close(log).await;

    let log = engine.open().await;
    assert!(matches!(
        log.partitions("del").await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert_eq!(log.committed("gone", "kept", 0).await.unwrap(), None);
    log.ensure_topic(&TopicSpec::new("del", 1)).await.unwrap();
    let o = log.offsets("del", 0).await.unwrap();
    assert_eq!(o.start, o.end, "a topic created again starts empty");
    assert!(read_all(log.as_ref(), "del", 0).await.is_empty());
    let at = log.append("del", 0, vec![record(7)]).await.unwrap();
    let back = read_all(log.as_ref(), "del", 0).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].offset, at[0]);
    assert_eq!(back[0].record.value, record(7).value);
    engine.close(log).await;
}
