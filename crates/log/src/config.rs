//! Limits and policies of the embedded log. Every limit has a name and a default.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Allowed `segment_bytes_max`, bytes.
pub const SEGMENT_BYTES: RangeInclusive<u64> = 4 << 10..=1 << 30;
/// Allowed `record_bytes_max`, bytes.
pub const RECORD_BYTES: RangeInclusive<u64> = 64..=64 << 20;
/// Allowed `preallocate_bytes`, bytes.
pub const PREALLOCATE_BYTES: RangeInclusive<u64> = 0..=1 << 30;

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging every append (group commit shares one fsync between
    /// concurrent appenders). The default, and the only policy that gives zero loss on
    /// power failure.
    Always,
    /// Acknowledge after the write; fsync at most this long afterwards. A power failure
    /// can lose up to this much acknowledged data (a process crash loses nothing).
    Interval(Duration),
    /// Never fsync appended data (the OS writes it back when it likes). For tests and
    /// throw-away data only.
    Never,
}

/// How long and how much a topic keeps. Whole segments are deleted, oldest first; the
/// active segment is never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete a segment whose newest record is older than this.
    pub age: Option<Duration>,
    /// Delete the oldest segments while the partition would still hold at least this many
    /// bytes without them.
    pub bytes: Option<u64>,
    /// Delete by age and size even what a consumer group has not read yet. By default
    /// (false) a segment is kept until every group that committed positions on the
    /// partition has committed past it, within [`LogConfig::retention_hold_bytes_max`].
    pub ignore_consumers: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            age: Some(Duration::from_secs(7 * 24 * 3600)),
            bytes: None,
            ignore_consumers: false,
        }
    }
}

/// Configuration of an [`crate::EmbeddedLog`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Durability policy (default `Always`).
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started when the next append would pass this
    /// size (default 128 MiB; 4 KiB ..= 1 GiB).
    pub segment_bytes_max: u64,
    /// Largest record (frame body) accepted (default 1 MiB; at most 64 MiB). Larger
    /// appends are refused; larger lengths found on disk are treated as damage.
    pub record_bytes_max: usize,
    /// Bytes of records between two sparse index entries (default 4 KiB).
    pub index_interval_bytes: u64,
    /// Append requests that may wait for one partition's writer (default 1024); beyond
    /// it appenders wait (backpressure).
    pub append_queue_max: usize,
    /// At most this many bytes go into one group commit (default 8 MiB).
    pub group_commit_bytes_max: usize,
    /// Cap on the records one read returns (default 10 000).
    pub read_records_max: usize,
    /// Cap on the bytes one read returns (default 8 MiB; one record is always returned
    /// even if larger).
    pub read_bytes_max: usize,
    /// Bytes of each partition's newest committed records kept in memory, so a reader
    /// keeping up with the writer needs no file read (default 1 MiB; 0 turns it off).
    /// Memory: up to this much per partition that was written to.
    pub tail_cache_bytes: usize,
    /// Bytes of zeroes the writer keeps ahead of its appends in the active segment
    /// (default 1 MiB; 0 turns it off; not with fsync `Never`). An append into space that
    /// is already zeroed and durable leaves the file's size alone, so its fsync writes the
    /// data only (on ext4 here: ~35 % less time and CPU per fsync). The zeroes are written
    /// and fsynced while the writer has no appends waiting, at most this much at a time;
    /// when appends outrun it they grow the file as before. Disk: up to this much unused
    /// space per partition (cut off when the segment is sealed).
    pub preallocate_bytes: u64,
    /// Partitions open at once, over all topics (default 4096). Each holds one writer
    /// thread and one open file (plus one per sealed segment being read).
    pub partitions_max: usize,
    /// How often retention runs (default 60 s).
    pub retention_check_interval: Duration,
    /// Retention for topics created without their own.
    pub default_retention: Retention,
    /// What readers do at a record that fails verification (default: quarantine it and
    /// go on; see [`crate::quarantine`]).
    pub on_corruption: crate::quarantine::OnCorruption,
    /// Most bytes per partition that retention may keep only because a consumer group
    /// has not read them yet (default 10 GiB). Past it, appends to the partition are
    /// refused ([`crate::LogError::RetentionHeld`]) until consumers catch up: nothing
    /// unread is deleted, and the writer is told why.
    pub retention_hold_bytes_max: u64,
    /// Files of sealed segments kept open for readers, over all partitions (default
    /// 256); the least recently read is closed first. Each partition's active segment
    /// is always open besides.
    pub open_segment_files_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 128 << 20,
            record_bytes_max: 1 << 20,
            index_interval_bytes: 4096,
            append_queue_max: 1024,
            group_commit_bytes_max: 8 << 20,
            read_records_max: 10_000,
            read_bytes_max: 8 << 20,
            tail_cache_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            partitions_max: 4096,
            retention_check_interval: Duration::from_secs(60),
            default_retention: Retention::default(),
            on_corruption: Default::default(),
            retention_hold_bytes_max: 10 << 30,
            open_segment_files_max: 256,
        }
    }
}

impl LogConfig {
    /// Checks the limits are within their bounds.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_owned()) };
        check(
            SEGMENT_BYTES.contains(&self.segment_bytes_max),
            "segment_bytes_max must be 4 KiB ..= 1 GiB",
        )?;
        check(
            RECORD_BYTES.contains(&(self.record_bytes_max as u64)),
            "record_bytes_max must be 64 B ..= 64 MiB",
        )?;
        check(
            self.index_interval_bytes >= 64,
            "index_interval_bytes must be at least 64",
        )?;
        check(
            self.append_queue_max >= 1,
            "append_queue_max must be at least 1",
        )?;
        check(
            self.group_commit_bytes_max >= 1,
            "group_commit_bytes_max must be at least 1",
        )?;
        check(
            self.read_records_max >= 1 && self.read_bytes_max >= 1,
            "read limits must be at least 1",
        )?;
        check(
            PREALLOCATE_BYTES.contains(&self.preallocate_bytes),
            "preallocate_bytes must be at most 1 GiB",
        )?;
        check(
            self.partitions_max >= 1,
            "partitions_max must be at least 1",
        )?;
        if let FsyncPolicy::Interval(d) = self.fsync {
            check(!d.is_zero(), "fsync interval must be above zero")?;
        }
        Ok(())
    }
}
