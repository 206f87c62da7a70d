//! One topic-partition of the embedded log: recovery on open, the writer thread that does
//! group commit, verified reads with long-poll, offset-for-time and retention.
//!
//! # Group commit
//! Each partition has one writer thread fed by a bounded queue. The thread takes every
//! append request that is waiting (up to `group_commit_bytes_max`), encodes them into one
//! buffer, writes it with one positional write and makes it durable with one `fdatasync`,
//! then answers all of them. Requests that arrive while an fsync runs wait in the queue
//! and go into the next one: no appender waits more than one fsync behind.
//!
//! # Visibility
//! Readers see records only up to the *high watermark*. With `fsync = "always"` that is
//! the end of the last fsync'd write: a record that could vanish in a crash is never
//! handed to a reader (so an origin offset is never reused for a different event). With
//! `"interval"` or `"never"` records are visible once written — a power failure (not a
//! process crash) may then take back records that readers already saw.
//!
//! # Tail cache
//! Each group commit's encoded frames stay in memory after the commit (up to
//! `tail_cache_bytes` per partition, newest kept). A reader asking for records that are
//! still there (a consumer keeping up with the writer) decodes them from memory on its
//! own task; older records are read from the segment file on a blocking thread. Both
//! paths verify each frame's checksum and give the same records.
//!
//! # Failure
//! A failed `fdatasync` marks the partition failed: the pending appenders get an error,
//! every later append fails at once, and it is never retried (the page cache may have
//! dropped the data; see "fsyncgate"). A failed write (e.g. disk full) truncates the
//! segment back to its last good length and answers an error; nothing already
//! acknowledged is touched and later appends may succeed.
//!
//! # Files
//! `recovery.rs` (opening: indexes, scans, torn tails and the durable end), `writer.rs`
//! (the writer thread), `read.rs` (reads, quarantine, time index), `tail.rs` (the tail
//! cache); this file holds the state they share.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::config::{FsyncPolicy, LogConfig, Retention};
use crate::durable::DurableEnd;
use crate::quarantine::{Hole, OnCorruption, QuarantineEntry};
use crate::record::{
    decode_shared_frame, encode_frame, u32_at, Bytes, Frame, Record, StoredRecord,
    FRAME_HEADER_BYTES,
};
use crate::segment::{
    check_header, encode_offset_index, encode_time_index, load_indexes, parse_segment_name,
    scan_segment, segment_header, segment_path, HeaderError, Indexer, Indexes, ScanOptions,
    ScanOutcome, SegmentSummary, SEGMENT_HEADER_BYTES,
};
use crate::storage::{read_exact_at, remove_if_present, write_file_atomic, SegmentFile, Storage};
use crate::{LogError, LogStats, OpenError};

mod read;
mod recovery;
mod tail;
mod writer;

pub(crate) use read::*;
pub(crate) use recovery::*;
pub(crate) use tail::*;
pub(crate) use writer::*;

/// What readers may see of one segment.
#[derive(Debug)]
pub(crate) struct SegmentView {
    /// Offset of the segment's first record (also its file name).
    pub(crate) base: u64,
    /// Path of the `.log` file (named in corruption errors).
    pub(crate) path: PathBuf,
    /// The open file of the active segment; `None` for a sealed one, whose file readers
    /// get from the log's bounded cache ([`crate::files`]).
    pub(crate) file: Option<Arc<dyn SegmentFile>>,
    /// Readers may read frames below this byte position.
    pub(crate) visible_bytes: u64,
    /// Offset after the last visible record.
    pub(crate) next_offset: u64,
    /// Largest timestamp of the visible records (`i64::MIN` when empty).
    pub(crate) max_timestamp_ms: i64,
    /// Sparse indexes of the visible records.
    pub(crate) indexes: Indexes,
    /// Quarantined regions readers skip, by position (see [`crate::quarantine`]).
    pub(crate) holes: Vec<Hole>,
}

/// State shared by the writer thread and readers.
#[derive(Debug)]
pub(crate) struct PartitionShared {
    /// Topic name (for errors and logs).
    pub(crate) topic: String,
    /// Partition number.
    pub(crate) partition: u32,
    /// The partition's directory.
    pub(crate) dir: PathBuf,
    /// Segments, oldest first; never empty. The writer updates it after each commit.
    pub(crate) view: RwLock<Vec<SegmentView>>,
    /// The high watermark: offset after the last visible record, moved after each commit
    /// once its appenders are answered. Long-polling readers wait for it to change; what
    /// they may read is the view's end, which moves first.
    pub(crate) high_watermark: watch::Sender<u64>,
    /// Set once an unrecoverable I/O error happened; appends then fail at once.
    pub(crate) failed: Mutex<Option<String>>,
    /// Bytes retention keeps only for consumers, when over
    /// `retention_hold_bytes_max` (0 otherwise): appends are then refused.
    pub(crate) held_bytes: std::sync::atomic::AtomicU64,
    /// The newest committed frames, for readers at the tail.
    pub(crate) tail: Mutex<TailCache>,
    /// Limits and policies.
    pub(crate) config: Arc<LogConfig>,
    /// Counters shared with the whole log.
    pub(crate) stats: Arc<LogStats>,
    /// Open files of sealed segments (shared by every partition of the log).
    pub(crate) files: Arc<crate::files::FileCache>,
}

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// Append these records; answer with their offsets once durable.
    Append {
        records: Vec<Record>,
        bytes: usize,
        reply: oneshot::Sender<Result<Range<u64>, LogError>>,
    },
    /// Make written data durable now (the `interval` fsync policy's timer).
    Sync,
    /// Delete segments outside the retention limits (and, unless the retention ignores
    /// consumers, only below `keep_from`: the lowest committed position).
    Retention {
        retention: Retention,
        now_ms: i64,
        keep_from: Option<u64>,
        reply: Option<oneshot::Sender<()>>,
    },
    /// Sync and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// A partition's handle inside the log: its shared state and its writer's queue.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    /// State readers use.
    pub(crate) shared: Arc<PartitionShared>,
    /// The writer thread's queue (bounded: `append_queue_max` requests).
    pub(crate) tx: mpsc::Sender<WriterMsg>,
    /// The writer thread, joined on close.
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PartitionHandle {
    pub(crate) fn start(shared: Arc<PartitionShared>, writer: Writer) -> Result<Self, OpenError> {
        let (tx, rx) = mpsc::channel(shared.config.append_queue_max);
        let name = format!("hifi-w-{}-{}", shared.topic, shared.partition);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Io {
                context: "starting a writer thread".into(),
                source: e,
            })?;
        Ok(PartitionHandle {
            shared,
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the writer to sync and stop, then waits for it.
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(WriterMsg::Shutdown { reply }).await.is_ok() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
