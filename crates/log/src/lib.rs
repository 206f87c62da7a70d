//! hifi's engine: the [`Log`] trait and the embedded, crash-safe segment log.
//!
//! A *topic* is a durable, partitioned, append-only log of [`Record`]s (key, value,
//! headers, timestamp) — Kafka's record model — so that a Kafka engine can implement the
//! same trait. Appends go to an explicit partition and return offsets **only once the
//! records are durable**.
//!
//! # Invariants
//! - `append` answers `Ok` only after the records are written and (policy `always`)
//!   fsync'd. After a failed fsync the partition acknowledges nothing ever again.
//! - Nothing unverified is read back: every frame's CRC32C and offset sequence are checked
//!   on every read; a bad frame stops the read with [`LogError::Corruption`].
//! - Readers see only durable records (up to the high watermark).
//!
//! # On-disk layout of the embedded engine
//! ```text
//! <data_dir>/
//!   hifi.lock                       held (flock) by the process that has the log open
//!   topics/<topic>/topic.json       {"format_version":1,"name":..,"partitions":N,
//!                                    "retention_ms":..|null,"retention_bytes":..|null}
//!   topics/<topic>/<partition>/     one folder per partition: 0, 1, ...
//!       00000000000000000000.log        segment, named by its base offset (20 digits)
//!       00000000000000000000.index      sparse offset index (sealed segments only)
//!       00000000000000000000.timeindex  sparse time index (sealed segments only)
//!   groups/<group>.offsets          committed positions of one consumer group
//! ```
//!
//! # Segment file (`.log`), all integers little-endian
//! ```text
//! header = "HIFISEG" version:u8 (=1) base_offset:u64          16 bytes
//! frame* = body_len:u32 crc32c(body):u32 body                 see [`record`]
//! body   = offset:u64 timestamp_ms:i64 key_len:i32 (-1 = none) key
//!          value_len:u32 value header_count:u16
//!          (name_len:u16 name value_len:u32 value)*
//! ```
//! A segment is sealed when the next append would pass `segment_bytes_max`; its index
//! files are then written (see [`segment::encode_offset_index`] and
//! [`segment::encode_time_index`]: magic, version, base offset, entries, trailing
//! CRC32C). Index files are a cache: when missing, damaged or stale they are rebuilt
//! from the segment. The offset index has an entry every `index_interval_bytes` of
//! frames; the time index, at those same points, the largest timestamp so far.
//!
//! # Group offsets file (`groups/<group>.offsets`)
//! ```text
//! header = "HIFIGRP" version:u8                                  8 bytes
//! entry* = body_len:u32 crc32c(body):u32 body
//! body   = topic_len:u16 topic partition:u32 offset:u64          (last entry wins)
//! ```
//!
//! # Recovery
//! On open, sealed segments are trusted to their index files (reads still verify every
//! frame). The last segment is scanned in full: a torn tail (a frame cut short, garbage
//! with no valid frame after it) is truncated back to the last good record and counted;
//! zeroes to the end of the file are the writer's preallocated space, kept and appended
//! into; a bad frame *followed by* good frames is damage in the middle and is kept,
//! never read as data. A directory is fsync'd after every segment is created or deleted.
//!
//! # Limits
//! See [`LogConfig`]: record size, segment size, open partitions (threads and files),
//! queued appends, group-commit size, read batch. Every one has a default.

pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod durable;
mod embedded;
mod files;
mod groups;
mod membership;
mod partition;
pub mod quarantine;
pub mod record;
pub mod segment;
pub mod storage;
pub mod stress;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use config::{FsyncPolicy, LogConfig, Retention};
pub use embedded::EmbeddedLog;
pub use membership::{Claim, Membership, MembershipControl};
pub use record::{register_header_names, Bytes, Header, Record, StoredRecord};

/// What to create: a topic with a partition count and, optionally, its own retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name: 1..=200 of `[A-Za-z0-9._-]`, not `.` or `..`.
    pub name: String,
    /// Number of partitions (1..=10 000).
    pub partitions: u32,
    /// Retention; `None` takes the log's default.
    pub retention: Option<Retention>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the default retention.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            retention: None,
        }
    }
}

/// How much one read may return and how long it may wait for new records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many records.
    pub max_records: usize,
    /// At most about this many bytes (one record is returned even if larger).
    pub max_bytes: usize,
    /// When no record is there yet, wait up to this long for one (long-poll). With
    /// none, a read still returns the records that are there (an engine that fetches
    /// them waits for the fetch): an empty answer then means nothing to read.
    pub wait: Duration,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_records: 1000,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
        }
    }
}

/// Everything that can go wrong in the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic was never created.
    #[error("topic {topic:?} does not exist")]
    TopicNotFound { topic: String },
    /// The partition number is beyond the topic's partitions.
    #[error("topic {topic:?} has {partitions} partitions; there is no partition {partition}")]
    PartitionNotFound {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// A topic or group name that cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The topic exists with another partition count.
    #[error("topic {topic:?} exists with {existing} partitions, not {requested}")]
    PartitionCountMismatch {
        topic: String,
        existing: u32,
        requested: u32,
    },
    /// Bad argument (e.g. zero partitions, an empty append).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A record larger than `record_bytes_max`; nothing of the append was written.
    #[error("record of {bytes} bytes is larger than record_bytes_max ({max} bytes)")]
    RecordTooLarge { bytes: usize, max: usize },
    /// Reading outside `start..=end` (the start moves with retention).
    #[error("offset {requested} is out of range for {topic}/{partition}: valid offsets are {start}..={end}")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        requested: u64,
        start: u64,
        end: u64,
    },
    /// A stored record failed verification; nothing at or after it was returned.
    #[error("corruption in {topic}/{partition}, segment {}, at offset {offset} (byte {position}): {reason}", segment.display())]
    Corruption {
        topic: String,
        partition: u32,
        segment: PathBuf,
        offset: u64,
        position: u64,
        reason: String,
    },
    /// The disk is full; nothing of this append was acknowledged or kept.
    #[error("disk full while appending to {topic}/{partition}; nothing of this append was kept")]
    NoSpace { topic: String, partition: u32 },
    /// An I/O error that did not compromise acknowledged data.
    #[error("I/O error {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The partition hit an unrecoverable error (failed fsync) and acknowledges nothing
    /// more until the process restarts and recovers it.
    #[error("{topic}/{partition} has failed ({reason}); it acknowledges nothing more; restart to recover")]
    Failed {
        topic: String,
        partition: u32,
        reason: String,
    },
    /// Retention keeps more unread records for a consumer far behind than
    /// `retention_hold_bytes_max`: nothing is deleted unread, so appends wait until the
    /// consumer catches up (or the topic's retention is told to ignore consumers).
    #[error("{topic}/{partition} holds {held_bytes} bytes that retention keeps for a consumer that has not read them (over retention_hold_bytes_max); appends wait until it catches up")]
    RetentionHeld {
        topic: String,
        partition: u32,
        held_bytes: u64,
    },
    /// A name another live process holds (see [`Log::claim`]).
    #[error("{name} is held by another live process ({holder})")]
    InUse { name: String, holder: String },
    /// Too many partitions open.
    #[error("partitions_max ({max}) reached; raise it or use fewer partitions")]
    TooManyPartitions { max: usize },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy for handing the same failure to several waiters (`io::Error` is not
    /// `Clone`; its kind and message are kept).
    pub(crate) fn clone_kind(&self) -> Self {
        match self {
            LogError::Io { context, source } => LogError::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            LogError::NoSpace { topic, partition } => LogError::NoSpace {
                topic: topic.clone(),
                partition: *partition,
            },
            LogError::Failed {
                topic,
                partition,
                reason,
            } => LogError::Failed {
                topic: topic.clone(),
                partition: *partition,
                reason: reason.clone(),
            },
            other => LogError::Invalid(other.to_string()),
        }
    }

    /// Whether retrying the same call later may succeed (disk full, transient I/O).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LogError::NoSpace { .. } | LogError::Io { .. } | LogError::RetentionHeld { .. }
        )
    }
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the data directory open.
    #[error("{} is in use by another process (lock file {}); stop it first", dir.display(), dir.join("hifi.lock").display())]
    Locked { dir: PathBuf },
    /// A segment that cannot be recovered automatically.
    #[error("cannot open segment {}: {reason}", path.display())]
    BadSegment { path: PathBuf, reason: String },
    /// A topic folder whose metadata cannot be read.
    #[error("cannot open topic at {}: {reason}", path.display())]
    BadTopic { path: PathBuf, reason: String },
    /// The configuration is out of bounds.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The file system failed.
    #[error("I/O error {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Counters of the whole log, for metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records acknowledged.
    pub appended_records_total: AtomicU64,
    /// Bytes of frames acknowledged.
    pub appended_bytes_total: AtomicU64,
    /// fsync calls on segment data.
    pub fsyncs_total: AtomicU64,
    /// Time spent in those calls, µs.
    pub fsync_micros_total: AtomicU64,
    /// fsync calls that took 100 ms or more.
    pub slow_fsyncs_total: AtomicU64,
    /// Reads stopped by a record that failed verification.
    pub corruptions_total: AtomicU64,
    /// Torn tails truncated at open.
    pub torn_tails_total: AtomicU64,
    /// Bytes cut from torn tails at open.
    pub torn_tail_bytes_total: AtomicU64,
    /// Damaged regions found at open (kept, never read as data).
    pub damaged_regions_total: AtomicU64,
    /// Damaged regions quarantined (copied aside, skipped by readers).
    pub quarantined_regions_total: AtomicU64,
    /// Records skipped by readers because they were in a quarantined region.
    pub quarantined_records_total: AtomicU64,
    /// Zeroes written ahead of appends (see `LogConfig::preallocate_bytes`).
    pub preallocated_bytes_total: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted_total: AtomicU64,
    /// Partitions that failed (fsync error) since start.
    pub failed_partitions: AtomicU64,
}

impl LogStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where one topic-partition's offsets stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The oldest offset still stored (moves forward with retention).
    pub start: u64,
    /// The offset the next record will get (the high watermark).
    pub end: u64,
}

/// A durable, partitioned, append-only record log: the engine interface.
///
/// Implemented by [`EmbeddedLog`] and by the Kafka engine (`hifi-kafka`). All methods are
/// cancel-safe in the sense that dropping a future never corrupts the log; a dropped
/// `append` may or may not have written its records (at-least-once).
#[async_trait::async_trait]
pub trait Log: Send + Sync + std::fmt::Debug {
    /// Creates the topic if it does not exist (idempotent); fails if it exists with
    /// another partition count. Returns the partition count. An existing topic gets a
    /// retention rule given in `spec` on the embedded engine (a spec without one leaves
    /// it); Kafka sets retention only when it creates the topic.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32, LogError>;

    /// The partition count of an existing topic.
    async fn partitions(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends records to one partition; returns their offsets, in order, once they are
    /// durable. On error none of them is acknowledged (some may still have been stored:
    /// a caller that tries again may store them twice). The embedded engine gives
    /// contiguous offsets; on Kafka another producer's records may sit between them.
    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<Vec<u64>, LogError>;

    /// Reads verified records from `from`; when none is there yet, waits up to
    /// `limits.wait` for one. Returns an empty vector when the wait ends without data.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>, LogError>;

    /// The start and end offsets of a partition.
    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, LogError>;

    /// Durably records `offset` as the group's position (the next offset to process).
    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), LogError> {
        self.commit_many(group, topic, &[(partition, offset)]).await
    }

    /// Durably records positions of several partitions of one topic for a group, in one
    /// write (one fsync on the embedded log, one request on Kafka). Every partition is
    /// checked first: a wrong one commits none.
    async fn commit_many(
        &self,
        group: &str,
        topic: &str,
        positions: &[(u32, u64)],
    ) -> Result<(), LogError>;

    /// The group's committed position, if any.
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError>;

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or `None`
    /// when every record is older.
    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, LogError>;

    /// Joins `group` as a consumer of `topic`: the returned [`Membership`] says which
    /// partitions this process works on, and how that changes as processes join and
    /// leave. An engine run by one process (the embedded log) gives every partition.
    /// Commits for the group's partitions should come from this process while it owns
    /// them.
    async fn join(&self, group: &str, topic: &str) -> Result<Membership, LogError> {
        validate_name(group)?;
        Ok(Membership::fixed(self.partitions(topic).await?))
    }

    /// Claims `name` for this process among all the processes using the engine, for as
    /// long as the returned [`Claim`] lives; fails with [`LogError::InUse`] while another
    /// live process holds it. A holder that died unannounced is waited for until the
    /// engine declares it gone. `topic` is any existing topic (an engine may need one to
    /// hold the claim). An engine run by one process (the embedded log, whose data
    /// directory is locked) has nothing to check.
    async fn claim(&self, name: &str, topic: &str) -> Result<Claim, LogError> {
        validate_name(name)?;
        self.partitions(topic).await?;
        Ok(Claim::default())
    }

    /// Deletes a topic and every record in it; on the embedded engine also every
    /// group's positions on it (Kafka's coordinator drops those itself). Returns once
    /// the topic is gone from the engine's metadata; a topic of the same name created
    /// after is a new, empty topic. [`LogError::TopicNotFound`] when there is none.
    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        Err(LogError::Invalid(format!(
            "cannot delete topic {topic:?}: this engine does not delete topics"
        )))
    }

    /// Deletes a consumer group's committed positions (every topic). A group that has
    /// none is not an error.
    async fn delete_group(&self, group: &str) -> Result<(), LogError> {
        Err(LogError::Invalid(format!(
            "cannot delete group {group:?}: this engine does not delete groups"
        )))
    }

    /// Offset ranges of a partition that were quarantined as damaged (see
    /// [`quarantine`]): readers skip them. Empty for an engine without quarantine.
    async fn quarantined(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Vec<std::ops::Range<u64>>, LogError> {
        Ok(Vec::new())
    }
}

/// Checks a topic or group name: 1..=200 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), LogError> {
    let bad = |reason| {
        Err(LogError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Up to where `group` has read `topic`'s `partition`: its committed position, or none;
/// a position inside a quarantined region counts as past it (a consumer cannot commit
/// past a damaged region at the end of its input: there is no record after it to read
/// yet). The one rule for "has this group read up to there" (the ledger's gate, the
/// fingerprints' quiet input).
pub async fn read_through(
    log: &dyn Log,
    group: &str,
    topic: &str,
    partition: u32,
) -> Result<Option<u64>, LogError> {
    let Some(at) = log.committed(group, topic, partition).await? else {
        return Ok(None);
    };
    let holes = log.quarantined(topic, partition).await.unwrap_or_default();
    Ok(Some(
        holes.iter().find(|h| h.contains(&at)).map_or(at, |h| h.end),
    ))
}

/// Reads one partition from `from` (or its start, if later) to the end it has when the
/// call begins, calling `visit` for each record in order. For small internal topics and
/// tools; streaming consumers use [`Log::read`] with long-poll.
pub async fn read_to_end(
    log: &dyn Log,
    topic: &str,
    partition: u32,
    from: u64,
    mut visit: impl FnMut(StoredRecord),
) -> Result<(), LogError> {
    let mut chunks = ChunksToEnd::start(log, topic, partition, from).await?;
    while let Some(chunk) = chunks.next().await? {
        chunk.into_iter().for_each(&mut visit);
    }
    Ok(())
}

/// Reads one partition from `from` (or its start, if later) to the end it had when
/// started, one read at a time (at most 5 000 records, 8 MiB each), so that a caller can
/// act on each chunk (append, answer) with memory bounded by one chunk.
#[derive(Debug)]
pub struct ChunksToEnd<'a> {
    log: &'a dyn Log,
    topic: &'a str,
    partition: u32,
    pos: u64,
    end: u64,
}

impl<'a> ChunksToEnd<'a> {
    /// Starts at `from`; the end is the partition's end now.
    pub async fn start(
        log: &'a dyn Log,
        topic: &'a str,
        partition: u32,
        from: u64,
    ) -> Result<Self, LogError> {
        let o = log.offsets(topic, partition).await?;
        Ok(ChunksToEnd {
            log,
            topic,
            partition,
            pos: from.max(o.start),
            end: o.end,
        })
    }

    /// The next chunk, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<StoredRecord>>, LogError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let limits = ReadLimits {
            max_records: 5000,
            max_bytes: 8 << 20,
            wait: Duration::ZERO,
        };
        let batch = self
            .log
            .read(self.topic, self.partition, self.pos, limits)
            .await?;
        let Some(last) = batch.last().map(|r| r.offset) else {
            self.pos = self.end;
            return Ok(None);
        };
        self.pos = last + 1;
        Ok(Some(batch))
    }
}
