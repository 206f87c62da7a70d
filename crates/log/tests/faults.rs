//! Fault injection through the Storage trait: a failing fsync never leads to an
//! acknowledgement, and a full disk is an error to the appender that loses nothing.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hifi_log::{EmbeddedLog, Log, LogConfig, LogError, Record};
use support::*;

fn open_faulty(dir: &std::path::Path, faults: &Arc<Faults>) -> EmbeddedLog {
    open_faulty_with(dir, faults, LogConfig::default())
}

fn open_faulty_with(dir: &std::path::Path, faults: &Arc<Faults>, config: LogConfig) -> EmbeddedLog {
    let storage = Arc::new(FaultyStorage {
        faults: faults.clone(),
    });
    EmbeddedLog::open_with_storage(dir, config, storage).unwrap()
}

/// Closes the log, checks `verify` finds nothing wrong, reopens it on a healthy disk and
/// checks topic `t` partition 0 holds exactly `acked`.
async fn closed_clean_with(log: EmbeddedLog, dir: &std::path::Path, acked: &[Record]) {
    log.close().await;
    drop(log);
    let reports = hifi_log::verify::verify_dir(dir, 1 << 20).unwrap();
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{reports:?}");
    let log = open(dir, LogConfig::default()).await;
    let got: Vec<Record> = read_all(&log, "t", 0)
        .await
        .into_iter()
        .map(|r| r.record)
        .collect();
    assert_eq!(got, acked);
}

/// Waits (at most 5 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_failed_fsync_of_preallocated_space_fails_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty(dir.path(), &faults);
    topic(&log, "t", 1).await;
    // The append's own fsync succeeds; the next one, of the space zeroed after it, fails.
    faults.fsyncs_until_failure.store(1, Ordering::SeqCst);
    log.append("t", 0, vec![record(0)]).await.unwrap();
    let stats = log.stats();
    eventually("the partition failed", || {
        hifi_log::LogStats::get(&stats.failed_partitions) == 1
    })
    .await;
    assert_eq!(hifi_log::LogStats::get(&stats.preallocated_bytes_total), 0);
    let err = log.append("t", 0, vec![record(1)]).await.unwrap_err();
    assert!(err.to_string().contains("preallocated"), "{err}");
    log.close().await;
    drop(log);
    let log = open(dir.path(), LogConfig::default()).await;
    assert_eq!(read_all(&log, "t", 0).await[0].record, record(0));
}

#[tokio::test]
async fn a_failed_cut_of_preallocated_space_at_a_roll_fails_the_partition_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty_with(dir.path(), &faults, small_segments());
    topic(&log, "t", 1).await;
    let stats = log.stats();
    log.append("t", 0, vec![record(0)]).await.unwrap();
    let mut acked = vec![record(0)];
    eventually("space was preallocated", || {
        hifi_log::LogStats::get(&stats.preallocated_bytes_total) > 0
    })
    .await;
    // The segment fills up; the roll must cut the zeroes off before sealing it, and
    // cannot.
    faults.fail_set_len.store(true, Ordering::SeqCst);
    let err = loop {
        let n = acked.len() as u64;
        assert!(n < 200, "a 4 KiB segment never rolled");
        match log.append("t", 0, vec![record(n)]).await {
            Ok(_) => acked.push(record(n)),
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("cutting preallocated space"),
        "{err}"
    );
    assert!(
        acked.len() > 5,
        "the first segment held {} records",
        acked.len()
    );
    assert_eq!(hifi_log::LogStats::get(&stats.failed_partitions), 1);
    let err = log.append("t", 0, vec![record(999)]).await.unwrap_err();
    assert!(err.to_string().contains("restart to recover"), "{err}");
    // After a restart the unsealed segment is still the active one, its zeroes
    // preallocated space: every acknowledged record is there, nothing is damaged.
    faults.fail_set_len.store(false, Ordering::SeqCst);
    closed_clean_with(log, dir.path(), &acked).await;
}

#[tokio::test]
async fn without_an_fsync_per_append_the_disk_is_started_writing_every_mebibyte() {
    use hifi_log::FsyncPolicy;
    let hour = std::time::Duration::from_secs(3600);
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(hour),
        FsyncPolicy::Always,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let config = LogConfig {
            fsync,
            segment_bytes_max: 4 << 20,
            ..LogConfig::default()
        };
        let log = open_faulty_with(dir.path(), &faults, config);
        topic(&log, "t", 1).await;
        // 10 MiB in appends of 8 × 64 KiB: two rolls.
        let mut acked = Vec::new();
        for n in 0..160 {
            acked.push(Record::new(vec![b'a' + (n % 26) as u8; 64 << 10], n as i64));
            if acked.len() % 8 == 0 {
                let batch = acked[acked.len() - 8..].to_vec();
                log.append("t", 0, batch).await.unwrap();
            }
        }
        let hints = faults.writebacks.lock().unwrap().clone();
        if fsync == FsyncPolicy::Always {
            assert!(hints.is_empty(), "every append is synced: {hints:?}");
        } else {
            // In each of the three segments, the stretches start at its first record
            // and each starts where the last ended; at least 1 MiB, at most 1 MiB and
            // one append more; all inside the file.
            let files: std::collections::BTreeSet<_> = hints.iter().map(|h| &h.0).collect();
            assert_eq!(files.len(), 3, "{fsync:?}: {hints:?}");
            let segment_start = hints[0].1;
            for pair in hints.windows(2) {
                let ((file, from, len, _), (next_file, next, _, _)) = (&pair[0], &pair[1]);
                let expected = if next_file == file {
                    from + len
                } else {
                    segment_start
                };
                assert_eq!(*next, expected, "{fsync:?}: {hints:?}");
            }
            for (_, from, len, file_len) in &hints {
                assert!(
                    (1 << 20..(1 << 20) + (600 << 10)).contains(len),
                    "{hints:?}"
                );
                assert!(from + len <= *file_len, "{hints:?}");
            }
        }
        closed_clean_with(log, dir.path(), &acked).await;
    }
}

#[tokio::test]
async fn a_failed_writeback_hint_changes_nothing_for_appends() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    faults.fail_writeback.store(true, Ordering::SeqCst);
    let config = LogConfig {
        fsync: hifi_log::FsyncPolicy::Never,
        segment_bytes_max: 4 << 20,
        ..LogConfig::default()
    };
    let log = open_faulty_with(dir.path(), &faults, config);
    topic(&log, "t", 1).await;
    let batch: Vec<Record> = (0..8u8)
        .map(|n| Record::new(vec![b'a' + n; 64 << 10], i64::from(n)))
        .collect();
    let mut acked = Vec::new();
    for _ in 0..20 {
        log.append("t", 0, batch.clone()).await.unwrap();
        acked.extend(batch.iter().cloned());
    }
    assert!(
        faults.writebacks.lock().unwrap().len() >= 6,
        "hints were tried"
    );
    assert_eq!(hifi_log::LogStats::get(&log.stats().failed_partitions), 0);
    closed_clean_with(log, dir.path(), &acked).await;
}

#[tokio::test]
async fn a_disk_too_full_to_preallocate_still_takes_appends() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty(dir.path(), &faults);
    topic(&log, "t", 1).await;
    // Room for the append, not for the 1 MiB of zeroes after it.
    faults
        .space_left
        .store(record(0).frame_bytes() as i64 + 100, Ordering::SeqCst);
    log.append("t", 0, vec![record(0)]).await.unwrap();
    eventually("preallocation ran into the full disk", || {
        faults.space_left.load(Ordering::SeqCst) == 0
    })
    .await;
    faults.space_left.store(10_000, Ordering::SeqCst);
    let mut acked = vec![record(0)];
    for i in 1..5 {
        log.append("t", 0, vec![record(i)]).await.unwrap();
        acked.push(record(i));
    }
    assert!(
        faults.space_left.load(Ordering::SeqCst) > 0,
        "no zeroes were written after the failure"
    );
    let stats = log.stats();
    assert_eq!(hifi_log::LogStats::get(&stats.preallocated_bytes_total), 0);
    assert_eq!(hifi_log::LogStats::get(&stats.failed_partitions), 0);
    closed_clean_with(log, dir.path(), &acked).await;
}

#[tokio::test]
async fn a_failed_fsync_is_never_acknowledged_and_fails_the_partition_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty(dir.path(), &faults);
    topic(&log, "t", 2).await;
    log.append("t", 0, vec![record(0)]).await.unwrap();

    faults.fail_fsync.store(true, Ordering::SeqCst);
    // Many concurrent appenders: not one may get an Ok.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append("t", 0, vec![record(i)]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(matches!(r, Err(LogError::Failed { .. })), "{r:?}");
    }
    assert_eq!(
        log.offsets("t", 0).await.unwrap().end,
        1,
        "readers never see unsynced records"
    );

    // Even when fsync works again, the partition stays failed: never retried.
    faults.fail_fsync.store(false, Ordering::SeqCst);
    let err = log.append("t", 0, vec![record(99)]).await.unwrap_err();
    assert!(err.to_string().contains("restart to recover"), "{err}");
    // Other partitions are unaffected.
    log.append("t", 1, vec![record(1)]).await.unwrap();
    log.close().await;
    drop(log);

    // After a restart the partition recovers; the acknowledged record is there. (The
    // unacknowledged ones may also be there: at-least-once, never fewer.)
    let log = open(dir.path(), LogConfig::default()).await;
    let got = read_all(&log, "t", 0).await;
    assert_eq!(got[0].record, record(0));
    log.append("t", 0, vec![record(5)]).await.unwrap();
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty(dir.path(), &faults);
    topic(&log, "t", 1).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        log.append("t", 0, vec![record(i)]).await.unwrap();
        acked.push(record(i));
    }
    faults.space_left.store(100, Ordering::SeqCst); // less than one more batch
    let big: Vec<Record> = (100..110).map(record).collect();
    let err = log.append("t", 0, big).await.unwrap_err();
    assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(log.offsets("t", 0).await.unwrap().end, 10);

    // Space comes back: appends continue right after the acknowledged records, and the
    // partial write left no garbage behind.
    faults.space_left.store(-1, Ordering::SeqCst);
    assert_eq!(
        log.append("t", 0, vec![record(10)]).await.unwrap(),
        vec![10]
    );
    acked.push(record(10));
    closed_clean_with(log, dir.path(), &acked).await;
}

#[tokio::test]
async fn a_stalling_disk_shows_as_slow_fsyncs_and_fsync_time() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_faulty(dir.path(), &faults);
    topic(&log, "t", 1).await;
    let stats = log.stats();
    let get = hifi_log::LogStats::get;
    log.append("t", 0, vec![record(0)]).await.unwrap();
    let (slow0, micros0) = (
        get(&stats.slow_fsyncs_total),
        get(&stats.fsync_micros_total),
    );
    faults.fsync_delay_ms.store(150, Ordering::SeqCst);
    log.append("t", 0, vec![record(1)]).await.unwrap();
    faults.fsync_delay_ms.store(0, Ordering::SeqCst);
    log.append("t", 0, vec![record(2)]).await.unwrap();
    assert_eq!(get(&stats.slow_fsyncs_total), slow0 + 1);
    assert!(get(&stats.fsync_micros_total) >= micros0 + 150_000);
}
