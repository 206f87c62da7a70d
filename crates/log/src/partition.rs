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

/// The newest group commits' frames, oldest first, with contiguous offsets (see the
/// module docs).
#[derive(Debug, Default)]
pub(crate) struct TailCache {
    /// (offset of the first record, the frames) per group commit.
    groups: VecDeque<(u64, Bytes)>,
    /// Offset after the newest group's last record.
    end: u64,
    /// Bytes of frames held.
    bytes: usize,
}

impl TailCache {
    /// Adds a committed group whose records start at `first` and end before `end`
    /// (`None`: a group too large to keep); drops the oldest groups beyond `max` bytes.
    /// A group that does not follow the newest one, or is not kept, empties the cache, so
    /// it never has a gap.
    fn push(&mut self, first: u64, end: u64, frames: Option<Bytes>, max: usize) {
        if first != self.end || frames.is_none() {
            self.groups.clear();
            self.bytes = 0;
        }
        self.end = end;
        let Some(frames) = frames else { return };
        self.bytes += frames.len();
        self.groups.push_back((first, frames));
        while self.bytes > max {
            let (_, old) = self.groups.pop_front().expect("bytes > 0 means a group");
            self.bytes -= old.len();
        }
    }

    /// The groups holding `from` and what follows it, up to about `max_bytes`; `None`
    /// when `from` is not held.
    fn groups_from(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>> {
        let first = self.groups.front()?.0;
        if from < first || from >= self.end {
            return None;
        }
        let i = self.groups.partition_point(|(start, _)| *start <= from) - 1;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (start, frames) in self.groups.range(i..) {
            if bytes >= max_bytes {
                break;
            }
            bytes += frames.len();
            out.push((*start, frames.clone()));
        }
        Some(out)
    }
}

#[cfg(test)]
impl TailCache {
    /// Flips one bit in every cached frame's bytes at `at` (a memory fault, for tests).
    pub(crate) fn damage(&mut self, at: usize) {
        for (_, frames) in &mut self.groups {
            let mut bytes = frames.to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 0x10;
            }
            *frames = Bytes::from(bytes);
        }
    }
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

impl PartitionShared {
    fn err_failed(&self, reason: &str) -> LogError {
        LogError::Failed {
            topic: self.topic.clone(),
            partition: self.partition,
            reason: reason.to_owned(),
        }
    }

    pub(crate) fn check_failed(&self) -> Result<(), LogError> {
        match self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
        {
            Some(reason) => Err(self.err_failed(reason)),
            None => Ok(()),
        }
    }

    /// (log start offset, high watermark).
    pub(crate) fn offsets(&self) -> (u64, u64) {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        (view[0].base, view[view.len() - 1].next_offset)
    }

    /// Segment count and bytes, for gauges.
    pub(crate) fn size(&self) -> (usize, u64) {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        (view.len(), view.iter().map(|s| s.visible_bytes).sum())
    }

    fn corruption(&self, path: &Path, offset: u64, position: u64, reason: &str) -> LogError {
        LogError::Corruption {
            topic: self.topic.clone(),
            partition: self.partition,
            segment: path.to_path_buf(),
            offset,
            position,
            reason: reason.to_owned(),
        }
    }

    /// Counts and logs a corruption that stops a reader.
    fn report(&self, e: LogError) -> LogError {
        if let LogError::Corruption {
            segment,
            offset,
            position,
            reason,
            ..
        } = &e
        {
            self.stats.corruptions_total.fetch_add(1, Ordering::Relaxed);
            error!(topic = %self.topic, partition = self.partition, segment = %segment.display(),
                offset, position, reason, "corrupt record; reads stop here");
        }
        e
    }

    /// Reads verified records from `from` (blocking I/O; call from a blocking thread).
    /// Records before a damaged one are returned; the damaged one itself is an error
    /// once it is the first to return.
    pub(crate) fn read_blocking(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        // Each damaged region met is quarantined once, then skipped; the bound only
        // stops a segment made entirely of damage from looping here for long.
        for _ in 0..1024 {
            let from = self.past_holes(from);
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let result = self.scan_from(from, |rec, frame_bytes| {
                if rec.offset >= from {
                    bytes += frame_bytes;
                    out.push(rec);
                }
                out.len() < max_records && bytes < max_bytes
            });
            match result {
                Ok(read) => return Ok(own_buffers_if_few(out, bytes, read)),
                Err(LogError::Corruption { .. }) if !out.is_empty() => return Ok(out),
                Err(LogError::Corruption {
                    segment,
                    offset,
                    position,
                    reason,
                    ..
                }) if self.config.on_corruption == OnCorruption::Quarantine => {
                    if !self.quarantine_at(&segment, offset, position, &reason) {
                        let e = self.corruption(&segment, offset, position, &reason);
                        return Err(self.report(e));
                    }
                }
                Err(e) => return Err(self.report(e)),
            }
        }
        Err(self.err_failed("too many damaged regions in one read"))
    }

    /// Offset ranges skipped as quarantined, oldest first.
    pub(crate) fn quarantined(&self) -> Vec<Range<u64>> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        view.iter()
            .flat_map(|s| s.holes.iter().map(|h| h.offset..h.resume_offset))
            .collect()
    }

    /// A segment's open file: the active one's, or a sealed one's from the cache.
    fn file_of(&self, seg: &SegmentView) -> Result<Arc<dyn SegmentFile>, LogError> {
        match &seg.file {
            Some(f) => Ok(f.clone()),
            None => self
                .files
                .get(&seg.path)
                .map_err(|e| LogError::io(format!("opening {}", seg.path.display()), e)),
        }
    }

    /// `from`, or the offset after the quarantined region holding it.
    pub(crate) fn past_holes(&self, from: u64) -> u64 {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let i = view.partition_point(|s| s.base <= from);
        let Some(seg) = i.checked_sub(1).map(|i| &view[i]) else {
            return from;
        };
        seg.holes
            .iter()
            .find(|h| (h.offset..h.resume_offset).contains(&from))
            .map_or(from, |h| h.resume_offset)
    }

    /// Registers the damage a read met at `position` (offset `offset`) of `segment` as
    /// a hole: finds where good frames resume, copies the bytes aside, counts and logs
    /// it. False when the segment is not found (deleted meanwhile) or the damage is at
    /// a known hole already (nothing new to skip: the caller reports it).
    fn quarantine_at(&self, segment: &Path, offset: u64, position: u64, reason: &str) -> bool {
        let (file, base, visible, next_offset) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let Some(seg) = view.iter().find(|s| s.path == segment) else {
                return false;
            };
            if seg.holes.iter().any(|h| h.position == position) {
                return false;
            }
            let Ok(file) = self.file_of(seg) else {
                return false;
            };
            (file, seg.base, seg.visible_bytes, seg.next_offset)
        };
        let body_max = self.config.record_bytes_max;
        let resumed =
            crate::segment::resync_in(file.as_ref(), visible, position + 1, offset, body_max)
                .ok()
                .flatten();
        let (resume_position, resume_offset) = resumed.unwrap_or((visible, next_offset));
        let hole = Hole {
            position,
            offset,
            resume_position,
            resume_offset,
        };
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            let Some(seg) = view.iter_mut().find(|s| s.path == segment) else {
                return false;
            };
            if seg.holes.iter().any(|h| h.position == position) {
                return true; // another reader registered it meanwhile
            }
            seg.holes.push(hole);
            seg.holes.sort_by_key(|h| h.position);
        }
        record_hole(
            &self.stats,
            &self.topic,
            self.partition,
            &self.dir,
            segment,
            base,
            file.as_ref(),
            hole,
            reason,
        );
        true
    }

    /// Reads verified records from `from` out of the tail cache, without I/O. `None` when
    /// the cache does not hold `from` (or a cached frame fails verification, which only
    /// a memory fault could cause): the caller then reads the file. The caller checks
    /// `from` against the log start (retention may delete records the cache still holds).
    pub(crate) fn read_tail(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredRecord>> {
        let groups = self
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .groups_from(from, max_bytes)?;
        let body_max = self.config.record_bytes_max;
        let mut out = Vec::new();
        let (mut bytes, mut touched) = (0, 0);
        for (first, frames) in groups {
            touched += frames.len();
            let (mut pos, mut expected) = (0, first);
            while pos < frames.len() {
                if expected < from {
                    // Skip a frame before `from` by its length field alone.
                    if frames.len() - pos < FRAME_HEADER_BYTES {
                        return None;
                    }
                    pos += FRAME_HEADER_BYTES + u32_at(&frames, pos) as usize;
                    expected += 1;
                    if pos > frames.len() {
                        return None;
                    }
                    continue;
                }
                match decode_shared_frame(&frames.slice(pos..), body_max) {
                    Frame::Valid {
                        offset,
                        record,
                        frame_bytes,
                    } if offset == expected => {
                        pos += frame_bytes;
                        expected += 1;
                        bytes += frame_bytes;
                        out.push(StoredRecord { offset, record });
                        if out.len() >= max_records || bytes >= max_bytes {
                            return Some(own_buffers_if_few(out, bytes, touched));
                        }
                    }
                    _ => {
                        warn!(topic = %self.topic, partition = self.partition, offset = expected,
                            "a cached frame failed verification; reading the segment file instead");
                        return None;
                    }
                }
            }
        }
        Some(own_buffers_if_few(out, bytes, touched))
    }

    /// Walks verified records of the segment holding `from`, starting at or before it,
    /// calling `visit(record, frame_bytes)` until it returns false or the segment's
    /// visible end is reached.
    fn scan_from(
        &self,
        from: u64,
        mut visit: impl FnMut(StoredRecord, usize) -> bool,
    ) -> Result<usize, LogError> {
        let (file, path, mut expected, mut pos, bound, holes) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let (start, end) = (view[0].base, view[view.len() - 1].next_offset);
            if from < start || from > end {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    requested: from,
                    start,
                    end,
                });
            }
            if from == end {
                return Ok(0);
            }
            let seg = &view[view.partition_point(|s| s.base <= from) - 1];
            if from >= seg.next_offset {
                return Err(self.corruption(
                    &seg.path,
                    from,
                    seg.visible_bytes,
                    "records missing between segments",
                ));
            }
            let (offset, pos) = seg.indexes.position_for(seg.base, from);
            (
                self.file_of(seg)?,
                seg.path.clone(),
                offset,
                pos,
                seg.visible_bytes,
                seg.holes.clone(),
            )
        };
        let body_max = self.config.record_bytes_max;
        // Records read share the chunk they were read in (no copy per field); a chunk is
        // freed once the last of its records is.
        let mut buf = Bytes::new();
        let mut buf_start = pos;
        let mut read = 0;
        while pos < bound {
            if let Some(h) = holes.iter().find(|h| h.position == pos) {
                pos = h.resume_position;
                expected = h.resume_offset;
                continue;
            }
            let have = (buf_start + buf.len() as u64).saturating_sub(pos) as usize;
            let frame = if have >= FRAME_HEADER_BYTES {
                decode_shared_frame(&buf.slice((pos - buf_start) as usize..), body_max)
            } else {
                Frame::Incomplete {
                    needed: FRAME_HEADER_BYTES,
                }
            };
            match frame {
                Frame::Valid {
                    offset,
                    record,
                    frame_bytes,
                } if offset == expected => {
                    pos += frame_bytes as u64;
                    expected += 1;
                    if !visit(StoredRecord { offset, record }, frame_bytes) {
                        return Ok(read);
                    }
                }
                Frame::Incomplete { needed } => {
                    let chunk = (needed.max(READ_CHUNK_BYTES) as u64).min(bound - pos) as usize;
                    if chunk < needed {
                        return Err(self.corruption(
                            &path,
                            expected,
                            pos,
                            "frame runs past the end of the data",
                        ));
                    }
                    let mut fresh = vec![0; chunk];
                    read_exact_at(file.as_ref(), &mut fresh, pos)
                        .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
                    buf = Bytes::from(fresh);
                    read += chunk;
                    buf_start = pos;
                }
                Frame::Valid { .. } => {
                    return Err(self.corruption(&path, expected, pos, "offset out of sequence"))
                }
                Frame::Invalid { reason } => {
                    return Err(self.corruption(&path, expected, pos, reason))
                }
            }
        }
        Ok(read)
    }

    /// The first offset whose record timestamp is at least `ts` (blocking).
    pub(crate) fn offset_for_time_blocking(&self, ts: i64) -> Result<Option<u64>, LogError> {
        loop {
            let hint = {
                let view = self.view.read().unwrap_or_else(|p| p.into_inner());
                match view.iter().find(|s| s.max_timestamp_ms >= ts) {
                    Some(seg) => seg.indexes.offset_for_time_hint(seg.base, ts),
                    None => return Ok(None),
                }
            };
            let mut found = None;
            let mut last = hint;
            self.scan_from(hint, |rec, _| {
                last = rec.offset;
                if rec.offset >= hint && rec.record.timestamp_ms >= ts {
                    found = Some(rec.offset);
                    return false;
                }
                true
            })
            .map_err(|e| self.report(e))?;
            if found.is_some() {
                return Ok(found);
            }
            // Retention may have moved the segment under us; look again from the top.
            if last < self.offsets().0 {
                continue;
            }
            return Ok(None);
        }
    }
}

/// Counts, logs and copies aside a newly found hole.
#[allow(clippy::too_many_arguments)]
fn record_hole(
    stats: &LogStats,
    topic: &str,
    partition: u32,
    dir: &Path,
    segment: &Path,
    base: u64,
    file: &dyn SegmentFile,
    hole: Hole,
    reason: &str,
) {
    stats
        .quarantined_regions_total
        .fetch_add(1, Ordering::Relaxed);
    stats.quarantined_records_total.fetch_add(
        hole.resume_offset.saturating_sub(hole.offset),
        Ordering::Relaxed,
    );
    error!(topic, partition, segment = %segment.display(), position = hole.position,
        offsets = ?(hole.offset..hole.resume_offset), reason,
        "CORRUPTION: damaged records quarantined (copied to quarantine/, skipped by readers; the ledger reports them lost)");
    let entry = QuarantineEntry {
        topic: topic.to_owned(),
        partition,
        segment: segment.to_path_buf(),
        position: hole.position,
        end_position: hole.resume_position,
        first_offset: hole.offset,
        next_offset: hole.resume_offset,
        reason: reason.to_owned(),
        quarantined_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        copied_bytes: 0,
    };
    if let Err(e) = crate::quarantine::copy_aside(file, dir, base, entry) {
        warn!(topic, partition, segment = %segment.display(), %e,
            "could not copy the damaged bytes to quarantine/ (they are skipped all the same)");
    }
}

/// How much a read pulls from the file at once.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Records read share the buffers they were decoded from (`buffer_bytes` in all, of
/// which the records' frames are `bytes`). When they are a small part of them (few or
/// small records returned) they get buffers of their own instead of keeping the whole
/// buffers alive while they are in flight.
fn own_buffers_if_few(
    records: Vec<StoredRecord>,
    bytes: usize,
    buffer_bytes: usize,
) -> Vec<StoredRecord> {
    if buffer_bytes > 2 * bytes + READ_CHUNK_BYTES / 4 {
        records.into_iter().map(StoredRecord::unshared).collect()
    } else {
        records
    }
}

/// Opens (recovering as needed) or creates the partition in `dir`.
pub(crate) fn open_partition(
    storage: Arc<dyn Storage>,
    files: Arc<crate::files::FileCache>,
    config: Arc<LogConfig>,
    stats: Arc<LogStats>,
    topic: &str,
    partition: u32,
    dir: PathBuf,
) -> Result<(Arc<PartitionShared>, Writer), OpenError> {
    let ioe = |what: &str, e| OpenError::Io {
        context: format!("{what} {}", dir.display()),
        source: e,
    };
    storage
        .create_dir_all(&dir)
        .map_err(|e| ioe("creating", e))?;
    let mut bases = Vec::new();
    for path in storage.list_dir(&dir).map_err(|e| ioe("listing", e))? {
        if let Some(base) = parse_segment_name(&path) {
            bases.push(base);
        } else if path.extension().is_some_and(|e| e == "tmp") {
            storage
                .remove_file(&path)
                .map_err(|e| ioe("removing stale temporary file in", e))?;
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        create_segment(storage.as_ref(), &dir, 0)
            .map_err(|e| ioe("creating first segment in", e))?;
        bases.push(0);
    }
    let opts = ScanOptions {
        body_max: config.record_bytes_max,
        index_interval_bytes: config.index_interval_bytes,
        resync: true,
        last: false,
        resync_below: u64::MAX,
    };
    let ctx = RecoveryCtx {
        storage: storage.as_ref(),
        stats: &stats,
        topic,
        partition,
        dir: &dir,
        opts,
        durable: crate::durable::read(storage.as_ref(), &dir),
        quarantine: config.on_corruption == OnCorruption::Quarantine,
    };
    let mut view = Vec::with_capacity(bases.len());
    let mut active_file_bytes = 0;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        view.push(match next_base {
            Some(next) => ctx.open_sealed(base, next)?,
            None => {
                let (seg, file_bytes) = ctx.open_last(base)?;
                active_file_bytes = file_bytes;
                seg
            }
        });
        if let (Some(next), Some(seg)) = (next_base, view.last()) {
            if seg.next_offset > next {
                return Err(OpenError::BadSegment {
                    path: seg.path.clone(),
                    reason: format!(
                        "records run to offset {} but the next segment starts at {next}",
                        seg.next_offset
                    ),
                });
            }
            if seg.next_offset < next {
                stats.damaged_regions_total.fetch_add(1, Ordering::Relaxed);
                error!(topic, partition, segment = %seg.path.display(), missing_from = seg.next_offset,
                    missing_to = next, "records missing between segments; reads stop there");
            }
        }
    }
    let last = view.last().expect("at least one segment");
    let hw = last.next_offset;
    let writer_state = (
        last.file.clone().expect("the active segment is open"),
        last.base,
        last.visible_bytes,
        last.next_offset,
    );
    let indexer = {
        let out = ScanOutcome {
            valid_bytes: last.visible_bytes,
            max_timestamp_ms: last.max_timestamp_ms,
            indexes: last.indexes.clone(),
            ..ScanOutcome::default()
        };
        Indexer::resume(config.index_interval_bytes, &out)
    };
    let shared = Arc::new(PartitionShared {
        topic: topic.to_owned(),
        partition,
        dir,
        view: RwLock::new(view),
        high_watermark: watch::Sender::new(hw),
        failed: Mutex::new(None),
        held_bytes: std::sync::atomic::AtomicU64::new(0),
        tail: Mutex::new(TailCache {
            end: hw,
            ..TailCache::default()
        }),
        config: config.clone(),
        stats,
        files,
    });
    let storage_for_checkpoint = storage.clone();
    let mut writer = Writer {
        shared: shared.clone(),
        storage,
        active_file: writer_state.0,
        active_base: writer_state.1,
        written_bytes: writer_state.2,
        file_bytes: active_file_bytes.max(writer_state.2),
        preallocation_off: false,
        writeback_from: writer_state.2,
        next_offset: writer_state.3,
        indexer,
        unsynced: false,
        last_sync: Instant::now(),
        buf: Vec::new(),
        slow_syncs: (0, None),
        durable_file: open_checkpoint(storage_for_checkpoint.as_ref(), &shared.dir),
        durable_synced: (Instant::now(), false),
    };
    // What recovery kept is durable before it is recorded as such (records of a group
    // whose fsync a crash interrupted may be in the page cache only).
    if writer.active_file.sync_data().is_ok() {
        writer.checkpoint();
    }
    Ok((shared, writer))
}

/// Opens (creating it if needed) a partition's durable-end checkpoint file.
fn open_checkpoint(storage: &dyn Storage, dir: &Path) -> Option<Arc<dyn SegmentFile>> {
    let path = crate::durable::path(dir);
    let opened = match storage.open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => storage.create_new(&path),
        other => other,
    };
    match opened {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(path = %path.display(), %e,
                "cannot open the durable-end checkpoint; damage at the end of the active segment will be taken for a torn tail");
            None
        }
    }
}

/// Everything recovery of one partition needs.
struct RecoveryCtx<'a> {
    storage: &'a dyn Storage,
    stats: &'a LogStats,
    topic: &'a str,
    partition: u32,
    dir: &'a Path,
    opts: ScanOptions,
    /// The durable end the writer recorded (see [`crate::durable`]).
    durable: Option<DurableEnd>,
    /// Damage becomes holes readers skip (`on_corruption = "quarantine"`).
    quarantine: bool,
}

impl RecoveryCtx<'_> {
    fn bad(&self, path: &Path, reason: impl Into<String>) -> OpenError {
        OpenError::BadSegment {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(&self, path: &Path, e: std::io::Error) -> OpenError {
        OpenError::Io {
            context: format!("recovering {}", path.display()),
            source: e,
        }
    }

    /// A sealed segment: trusted indexes when intact, otherwise a verifying scan.
    fn open_sealed(&self, base: u64, next_base: u64) -> Result<SegmentView, OpenError> {
        let path = segment_path(self.dir, base, "log");
        let file = self.storage.open(&path).map_err(|e| self.io(&path, e))?;
        let len = match check_header(file.as_ref(), base) {
            Ok(len) => len,
            Err(HeaderError::Io(e)) => return Err(self.io(&path, e)),
            Err(e) => return Err(self.bad(&path, e.to_string())),
        };
        if let Some((summary, indexes)) = load_indexes(self.storage, self.dir, base, len) {
            return Ok(SegmentView {
                base,
                path,
                file: None, // opened again when read (closes this descriptor)
                visible_bytes: summary.segment_bytes,
                next_offset: summary.next_offset,
                max_timestamp_ms: summary.max_timestamp_ms,
                indexes,
                holes: Vec::new(),
            });
        }
        let out =
            scan_segment(file.as_ref(), len, base, self.opts).map_err(|e| self.io(&path, e))?;
        let clean = out.damage.is_empty() && out.torn_tail.is_none();
        self.report_damage(&path, &out, false);
        if clean {
            let summary = summary_of(&out);
            if let Err(e) = write_indexes(self.storage, self.dir, base, &summary, &out.indexes) {
                warn!(segment = %path.display(), %e, "could not rewrite index files; they will be rebuilt next time");
            }
        }
        let mut view = view_of(base, path, file, &out, len);
        if self.quarantine {
            let mut holes = self.holes_of(&out);
            if let Some(t) = &out.torn_tail {
                // A sealed segment was complete: damage to its end is a hole up to the
                // next segment, never the end of the partition.
                holes.push(Hole {
                    position: t.position,
                    offset: t.offset,
                    resume_position: len,
                    resume_offset: next_base,
                });
                view.next_offset = next_base;
            }
            self.record_holes(&view, &holes, &out);
            view.holes = holes;
        }
        view.file = None; // opened again when read (closes this descriptor)
        Ok(view)
    }

    /// Holes for the damage a scan resynced past.
    fn holes_of(&self, out: &ScanOutcome) -> Vec<Hole> {
        out.damage
            .iter()
            .filter_map(|d| {
                let (resume_position, resume_offset) = d.resumes_at?;
                Some(Hole {
                    position: d.position,
                    offset: d.offset,
                    resume_position,
                    resume_offset,
                })
            })
            .collect()
    }

    fn record_holes(&self, view: &SegmentView, holes: &[Hole], out: &ScanOutcome) {
        let reason = |h: &Hole| {
            out.damage
                .iter()
                .chain(&out.torn_tail)
                .find(|d| d.position == h.position)
                .map_or("acknowledged records missing below the durable end", |d| {
                    d.reason
                })
        };
        for h in holes {
            let Some(file) = &view.file else { continue };
            record_hole(
                self.stats,
                self.topic,
                self.partition,
                self.dir,
                &view.path,
                view.base,
                file.as_ref(),
                *h,
                reason(h),
            );
        }
    }

    /// The last (active) segment: always scanned; a torn tail is truncated, preallocated
    /// zeroes are kept. Returns the view and the file's length.
    fn open_last(&self, base: u64) -> Result<(SegmentView, u64), OpenError> {
        let path = segment_path(self.dir, base, "log");
        let file = self.storage.open(&path).map_err(|e| self.io(&path, e))?;
        let len = match check_header(file.as_ref(), base) {
            Ok(len) => len,
            Err(HeaderError::Torn { len }) => {
                warn!(topic = self.topic, partition = self.partition, segment = %path.display(), len,
                    "segment header was cut short by a crash; rewriting it");
                file.set_len(0).map_err(|e| self.io(&path, e))?;
                file.write_all_at(&segment_header(base), 0)
                    .map_err(|e| self.io(&path, e))?;
                file.sync_data().map_err(|e| self.io(&path, e))?;
                SEGMENT_HEADER_BYTES
            }
            Err(HeaderError::Io(e)) => return Err(self.io(&path, e)),
            Err(e) => return Err(self.bad(&path, e.to_string())),
        };
        // What the writer recorded as durable in this segment: below it every byte is
        // an acknowledged frame (damage there is corruption, never a torn tail); above
        // it lie bytes never made durable, which are not searched for frames.
        let durable = self
            .durable
            .filter(|d| d.base == base && d.bytes >= SEGMENT_HEADER_BYTES);
        let opts = ScanOptions {
            last: true,
            resync_below: durable.map_or(u64::MAX, |d| d.bytes),
            ..self.opts
        };
        let mut out =
            scan_segment(file.as_ref(), len, base, opts).map_err(|e| self.io(&path, e))?;
        // Acknowledged records lost below the durable end: damage cut short at the end,
        // or a frame that a fault turned into zeroes (taken for preallocated space).
        let lost_durable = durable.filter(|d| {
            out.valid_bytes < d.bytes && out.torn_tail.as_ref().is_none_or(|t| t.position < d.bytes)
        });
        let mut hole = None;
        if let Some(d) = lost_durable {
            let (position, offset, reason) = match out.torn_tail.take() {
                Some(t) => (t.position, t.offset, t.reason),
                None => (
                    out.valid_bytes,
                    out.next_offset,
                    "acknowledged records turned into zeroes",
                ),
            };
            hole = Some((
                Hole {
                    position,
                    offset,
                    resume_position: d.bytes,
                    resume_offset: d.next_offset.max(offset),
                },
                reason,
            ));
            out.valid_bytes = d.bytes;
            out.next_offset = d.next_offset.max(offset);
            out.zero_tail_bytes = 0;
        }
        self.report_damage(&path, &out, true);
        let mut file_bytes = out.file_bytes;
        if out.torn_tail.is_some() || hole.is_some() {
            // Only bytes past the durable end (never acknowledged) are cut.
            file.set_len(out.valid_bytes)
                .map_err(|e| self.io(&path, e))?;
            file.sync_data().map_err(|e| self.io(&path, e))?;
            file_bytes = out.valid_bytes;
        }
        let mut view = view_of(base, path, file, &out, out.valid_bytes);
        if let Some((h, reason)) = hole {
            self.stats
                .damaged_regions_total
                .fetch_add(1, Ordering::Relaxed);
            error!(topic = self.topic, partition = self.partition, segment = %view.path.display(),
                position = h.position, offsets = ?(h.offset..h.resume_offset), reason,
                "acknowledged records damaged below the durable end; their offsets are never reused");
        }
        if self.quarantine {
            let mut holes = self.holes_of(&out);
            holes.extend(hole.map(|(h, _)| h));
            self.record_holes(&view, &holes, &out);
            view.holes = holes;
        }
        Ok((view, file_bytes))
    }

    fn report_damage(&self, path: &Path, out: &ScanOutcome, truncate_tail: bool) {
        let (topic, partition) = (self.topic, self.partition);
        for d in &out.damage {
            self.stats
                .damaged_regions_total
                .fetch_add(1, Ordering::Relaxed);
            error!(topic, partition, segment = %path.display(), offset = d.offset, position = d.position,
                reason = d.reason, resumes_at = ?d.resumes_at, "corrupt records in the middle of a segment; reads stop there");
        }
        if let Some(t) = &out.torn_tail {
            let cut = out.file_bytes - out.valid_bytes;
            if truncate_tail {
                self.stats.torn_tails_total.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .torn_tail_bytes_total
                    .fetch_add(cut, Ordering::Relaxed);
                warn!(topic, partition, segment = %path.display(), position = t.position, cut_bytes = cut,
                    next_offset = t.offset, reason = t.reason, "torn tail truncated (records never acknowledged)");
            } else {
                self.stats
                    .damaged_regions_total
                    .fetch_add(1, Ordering::Relaxed);
                error!(topic, partition, segment = %path.display(), position = t.position, offset = t.offset,
                    reason = t.reason, "sealed segment ends in damaged bytes; reads stop there");
            }
        }
        if out.torn_tail.is_none() && out.damage.is_empty() && truncate_tail {
            debug!(topic, partition, segment = %path.display(), records = out.records, "recovered tail segment cleanly");
        }
    }
}

fn summary_of(out: &ScanOutcome) -> SegmentSummary {
    SegmentSummary {
        segment_bytes: out.file_bytes,
        next_offset: out.next_offset,
        max_timestamp_ms: out.max_timestamp_ms,
        records: out.records,
    }
}

fn view_of(
    base: u64,
    path: PathBuf,
    file: Arc<dyn SegmentFile>,
    out: &ScanOutcome,
    visible: u64,
) -> SegmentView {
    SegmentView {
        base,
        path,
        file: Some(file),
        visible_bytes: visible,
        next_offset: out.next_offset,
        max_timestamp_ms: out.max_timestamp_ms,
        indexes: out.indexes.clone(),
        holes: Vec::new(),
    }
}

fn write_indexes(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    summary: &SegmentSummary,
    idx: &Indexes,
) -> std::io::Result<()> {
    write_file_atomic(
        storage,
        &segment_path(dir, base, "index"),
        &encode_offset_index(base, summary, idx),
    )?;
    write_file_atomic(
        storage,
        &segment_path(dir, base, "timeindex"),
        &encode_time_index(base, idx),
    )
}

/// Creates an empty segment (header only), durable with its directory entry.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
) -> std::io::Result<Arc<dyn SegmentFile>> {
    let path = segment_path(dir, base, "log");
    // A leftover from a failed roll holds no acknowledged data (nothing was appended to it).
    remove_if_present(storage, &path)?;
    let file = storage.create_new(&path)?;
    let made = file
        .write_all_at(&segment_header(base), 0)
        .and_then(|()| file.sync_data())
        .and_then(|()| storage.sync_dir(dir));
    if let Err(e) = made {
        // Never leave a half-made segment behind: the old segment stays active, and a
        // stray file above it would make the partition unopenable.
        let _ = storage.remove_file(&path);
        let _ = storage.sync_dir(dir);
        return Err(e);
    }
    Ok(file)
}

/// Writes zeroes to `from..end` of `file`.
fn write_zeroes(file: &dyn SegmentFile, from: u64, end: u64) -> std::io::Result<()> {
    static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
    let mut pos = from;
    while pos < end {
        let n = (end - pos).min(ZEROES.len() as u64) as usize;
        file.write_all_at(&ZEROES[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// The writer thread's state: the only code that writes to a partition.
#[derive(Debug)]
pub(crate) struct Writer {
    /// What readers see; updated after each commit.
    shared: Arc<PartitionShared>,
    /// File system access.
    storage: Arc<dyn Storage>,
    /// The segment being appended to.
    active_file: Arc<dyn SegmentFile>,
    /// Its base offset.
    active_base: u64,
    /// Bytes written to it (all of them visible once the commit finishes).
    written_bytes: u64,
    /// Its length: past `written_bytes` it holds preallocated zeroes.
    file_bytes: u64,
    /// Preallocation failed in this segment (e.g. a full disk); appends grow the file.
    preallocation_off: bool,
    /// Where the active segment's data not yet handed to the disk begins
    /// (`interval`/`never` policies; see [`Writer::start_writeback`]).
    writeback_from: u64,
    /// Offset the next record gets.
    next_offset: u64,
    /// Builds the active segment's sparse indexes.
    indexer: Indexer,
    /// Whether data was written since the last fsync (`interval`/`never` policies).
    unsynced: bool,
    /// When the last fsync finished (`interval` policy).
    last_sync: Instant,
    /// Encoding buffer, reused across commits.
    buf: Vec<u8>,
    /// Slow fsyncs since the last warning about them, and when that was.
    slow_syncs: (u64, Option<Instant>),
    /// The durable-end checkpoint file (see [`crate::durable`]); `None` if it could not
    /// be opened (recovery then works as without it).
    durable_file: Option<Arc<dyn SegmentFile>>,
    /// When the checkpoint file was last fsynced, and whether it changed since.
    durable_synced: (Instant, bool),
}

/// The checkpoint file is fsynced at most this often (see [`crate::durable`]).
const DURABLE_SYNC_EVERY: Duration = Duration::from_secs(1);

/// An fsync taking longer than this is counted and logged as slow: every append of
/// its group commit waited that long for its acknowledgement.
const SLOW_FSYNC: Duration = Duration::from_millis(100);

/// Without an fsync per group (`interval`/`never`), the writer starts the disk writing
/// every this many bytes, so that little is left dirty when a sync must wait for it.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// Writeback stretches end at a multiple of this: a multiple of every page size Linux
/// uses (4, 16 and 64 KiB), so the page the next append fills is never among them.
const WRITEBACK_ALIGN: u64 = 64 << 10;

/// One append request inside a group commit.
struct Pending {
    records: Vec<Record>,
    bytes: usize,
    reply: oneshot::Sender<Result<Range<u64>, LogError>>,
}

impl Writer {
    /// Runs until shut down or until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let group_max = self.shared.config.group_commit_bytes_max;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut others = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append {
                        records,
                        bytes: b,
                        reply,
                    } => {
                        bytes += b;
                        batch.push(Pending {
                            records,
                            bytes: b,
                            reply,
                        });
                    }
                    other => others.push(other),
                }
                if bytes < group_max {
                    next = rx.try_recv().ok();
                }
            }
            let appended = !batch.is_empty();
            if appended {
                self.append_batch(batch);
            }
            for msg in others {
                match msg {
                    WriterMsg::Sync => self.sync_if_dirty(),
                    WriterMsg::Retention {
                        retention,
                        now_ms,
                        keep_from,
                        reply,
                    } => {
                        self.apply_retention(retention, now_ms, keep_from);
                        if let Some(r) = reply {
                            let _ = r.send(());
                        }
                    }
                    WriterMsg::Shutdown { reply } => {
                        self.sync_if_dirty();
                        self.sync_checkpoint();
                        let _ = reply.send(());
                        return;
                    }
                    WriterMsg::Append { .. } => unreachable!("appends are batched above"),
                }
            }
            if let FsyncPolicy::Interval(every) = self.shared.config.fsync {
                if self.unsynced && self.last_sync.elapsed() >= every {
                    self.sync_if_dirty();
                }
            }
            if self.durable_synced.1 && self.durable_synced.0.elapsed() >= DURABLE_SYNC_EVERY {
                self.sync_checkpoint();
            }
            // Only a partition being written to, and only while no append waits for it.
            if appended && rx.is_empty() {
                self.preallocate();
            }
        }
        self.sync_if_dirty();
        self.sync_checkpoint();
    }

    /// Zeroes the space the next appends will take and makes it durable, when less than
    /// half of `preallocate_bytes` is left ahead of them: their fsyncs then write data
    /// only, with no change to the file's size.
    fn preallocate(&mut self) {
        let config = &self.shared.config;
        let want = config.preallocate_bytes;
        if want == 0
            || config.fsync == FsyncPolicy::Never
            || self.preallocation_off
            || self.shared.check_failed().is_err()
        {
            return;
        }
        let end = (self.written_bytes + want).min(config.segment_bytes_max);
        if self.file_bytes >= (self.written_bytes + want / 2).min(end) {
            return;
        }
        let from = self.file_bytes;
        if let Err(e) = write_zeroes(self.active_file.as_ref(), from, end) {
            warn!(topic = %self.shared.topic, partition = self.shared.partition, %e,
                "could not preallocate segment space; appends grow the file until the next segment");
            // Best effort: zeroes past the data are harmless (recovery keeps them as space).
            let _ = self.active_file.set_len(from);
            self.preallocation_off = true;
            return;
        }
        if let Err(e) = self.active_file.sync_data() {
            self.fail(format!("fsync of preallocated space failed: {e}"));
            return;
        }
        self.file_bytes = end;
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.shared
            .stats
            .preallocated_bytes_total
            .fetch_add(end - from, Ordering::Relaxed);
    }

    /// Records the active segment's data as durable up to where it is written (call
    /// right after an fsync of it); fsyncs the record itself at most every
    /// [`DURABLE_SYNC_EVERY`] (and via [`Writer::sync_checkpoint`]).
    fn checkpoint(&mut self) {
        let Some(file) = &self.durable_file else {
            return;
        };
        let end = DurableEnd {
            base: self.active_base,
            bytes: self.written_bytes,
            next_offset: self.next_offset,
        };
        if let Err(e) = file.write_all_at(&end.encode(), 0) {
            warn!(topic = %self.shared.topic, partition = self.shared.partition, %e,
                "cannot write the durable-end checkpoint");
            return;
        }
        self.durable_synced.1 = true;
        if self.durable_synced.0.elapsed() >= DURABLE_SYNC_EVERY {
            self.sync_checkpoint();
        }
    }

    /// fsyncs the checkpoint file if it changed. A failure only makes the checkpoint
    /// possibly stale after a power failure (the data itself is durable): logged.
    fn sync_checkpoint(&mut self) {
        let (Some(file), true) = (&self.durable_file, self.durable_synced.1) else {
            return;
        };
        if let Err(e) = file.sync_data() {
            warn!(topic = %self.shared.topic, partition = self.shared.partition, %e,
                "cannot fsync the durable-end checkpoint");
        }
        self.durable_synced = (Instant::now(), false);
    }

    fn fail(&self, reason: String) {
        error!(topic = %self.shared.topic, partition = self.shared.partition, %reason,
            "partition failed; no further appends will be acknowledged");
        self.shared
            .stats
            .failed_partitions
            .fetch_add(1, Ordering::Relaxed);
        *self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// fsyncs the active segment's data, counting the calls, their time and the slow
    /// ones (logged at most every 10 s, with how many there were).
    fn sync_data(&mut self) -> std::io::Result<()> {
        let stats = &self.shared.stats;
        stats.fsyncs_total.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.active_file.sync_data();
        let took = started.elapsed();
        stats
            .fsync_micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if took >= SLOW_FSYNC {
            stats.slow_fsyncs_total.fetch_add(1, Ordering::Relaxed);
            self.slow_syncs.0 += 1;
            let quiet = self
                .slow_syncs
                .1
                .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
            if !quiet {
                warn!(topic = %self.shared.topic, partition = self.shared.partition, took_ms = took.as_millis() as u64,
                    slow_since_last_line = self.slow_syncs.0,
                    "slow fsync: appends waited this long for their acknowledgement (disk busy or slow)");
                self.slow_syncs = (0, Some(Instant::now()));
            }
        }
        result
    }

    fn sync_if_dirty(&mut self) {
        if !self.unsynced || self.shared.check_failed().is_err() {
            return;
        }
        match self.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.checkpoint();
            }
            Err(e) => self.fail(format!("fsync failed: {e}")),
        }
    }

    fn append_batch(&mut self, batch: Vec<Pending>) {
        let seg_max = self.shared.config.segment_bytes_max;
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            if let Err(e) = self.shared.check_failed() {
                for p in rest {
                    let _ = p.reply.send(Err(e.clone_kind()));
                }
                return;
            }
            let active_has_data = self.written_bytes > SEGMENT_HEADER_BYTES;
            let first_bytes = rest.peek().map_or(0, |p| p.bytes) as u64;
            if active_has_data && self.written_bytes + first_bytes > seg_max {
                if let Err(e) = self.roll() {
                    for p in rest {
                        let _ = p.reply.send(Err(e.clone_kind()));
                    }
                    return;
                }
                continue;
            }
            let mut group = Vec::new();
            let mut group_bytes = 0u64;
            while let Some(p) = rest.peek() {
                let fits = self.written_bytes + group_bytes + p.bytes as u64 <= seg_max;
                if !group.is_empty() && !fits {
                    break;
                }
                group_bytes += p.bytes as u64;
                group.push(rest.next().expect("peeked"));
            }
            self.commit_group(group);
        }
    }

    /// Writes a group of requests with one write and (policy `always`) one fsync.
    fn commit_group(&mut self, group: Vec<Pending>) {
        self.buf.clear();
        // Exactly the frames' size (`bytes` is exact): a buffer handed to the tail cache
        // then holds no spare capacity beyond what the cache counts.
        let frames_bytes: usize = group.iter().map(|p| p.bytes).sum();
        self.buf.reserve_exact(frames_bytes);
        let pos0 = self.written_bytes;
        let indexer_before = self.indexer.clone();
        let mut new_idx = Indexes::default();
        let mut max_ts = i64::MIN;
        let mut offset = self.next_offset;
        let mut ranges = Vec::with_capacity(group.len());
        for p in &group {
            let first = offset;
            for rec in &p.records {
                let at = pos0 + self.buf.len() as u64;
                let before = self.buf.len();
                encode_frame(&mut self.buf, offset, rec);
                let frame_bytes = (self.buf.len() - before) as u64;
                self.indexer.add(
                    &mut new_idx,
                    self.active_base,
                    offset,
                    at,
                    frame_bytes,
                    rec.timestamp_ms,
                );
                max_ts = max_ts.max(rec.timestamp_ms);
                offset += 1;
            }
            ranges.push(first..offset);
        }
        debug_assert_eq!(self.buf.len(), frames_bytes, "Record::frame_bytes is exact");
        if let Err(e) = self.write_and_sync(pos0) {
            self.indexer = indexer_before;
            for p in group {
                let _ = p.reply.send(Err(e.clone_kind()));
            }
            return;
        }
        self.written_bytes += self.buf.len() as u64;
        self.next_offset = offset;
        if self.shared.config.fsync == FsyncPolicy::Always {
            self.checkpoint();
        }
        let frames_written = self.buf.len() as u64;
        self.publish(new_idx, max_ts, ranges[0].start);
        let stats = &self.shared.stats;
        stats
            .appended_records_total
            .fetch_add(offset - ranges[0].start, Ordering::Relaxed);
        stats
            .appended_bytes_total
            .fetch_add(frames_written, Ordering::Relaxed);
        for (p, range) in group.into_iter().zip(ranges) {
            let _ = p.reply.send(Ok(range));
        }
        // Appenders first, then long-polling readers: woken tasks run in wake order, and
        // a sink decoding the new group ahead of the acknowledgements added ~0.3 ms to
        // ingest latency at 10 000 events/s on two cores.
        self.shared.high_watermark.send_replace(self.next_offset);
    }

    /// Writes `self.buf` at `pos0` and syncs it per policy. On a failed write the segment
    /// is cut back to `pos0`; on a failed fsync the partition is marked failed.
    fn write_and_sync(&mut self, pos0: u64) -> Result<(), LogError> {
        let (topic, partition) = (self.shared.topic.clone(), self.shared.partition);
        let written = self.active_file.write_all_at(&self.buf, pos0);
        self.file_bytes = self.file_bytes.max(pos0 + self.buf.len() as u64);
        if let Err(e) = written {
            let kind = e.kind();
            self.file_bytes = pos0;
            if let Err(e2) = self.active_file.set_len(pos0) {
                let reason = format!("write failed ({e}) and truncating back failed ({e2})");
                self.fail(reason.clone());
                return Err(LogError::Failed {
                    topic,
                    partition,
                    reason,
                });
            }
            warn!(%topic, partition, error = %e, "append failed; segment cut back to its last good length");
            return Err(if kind == std::io::ErrorKind::StorageFull {
                LogError::NoSpace { topic, partition }
            } else {
                LogError::io(format!("appending to {topic}/{partition}"), e)
            });
        }
        match self.shared.config.fsync {
            FsyncPolicy::Always => {
                if let Err(e) = self.sync_data() {
                    let reason = format!("fsync failed: {e}");
                    self.fail(reason.clone());
                    return Err(LogError::Failed {
                        topic,
                        partition,
                        reason,
                    });
                }
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                self.unsynced = true;
                self.start_writeback(pos0 + self.buf.len() as u64);
            }
        }
        Ok(())
    }

    /// Starts the disk writing the data up to `end` once a [`WRITEBACK_BYTES`] stretch
    /// of it is dirty, without waiting for it to finish. Otherwise a whole segment (128
    /// MiB by default) stays dirty until the fsync that seals it, and that fsync holds
    /// the partition's appends while it writes: ~1.3 s per segment on a disk writing
    /// 100 MB/s, 5 s when four partitions rolled together (see BENCHMARKS.md). Only a
    /// hint (Linux only; nothing elsewhere): durability still comes from the fsyncs
    /// alone. The stretch ends on a page boundary ([`WRITEBACK_ALIGN`]): a page being
    /// written out must not be the one the next append fills (it could wait for it).
    fn start_writeback(&mut self, end: u64) {
        let end = end & !(WRITEBACK_ALIGN - 1);
        if end < self.writeback_from + WRITEBACK_BYTES {
            return;
        }
        let from = self.writeback_from;
        if let Err(e) = self.active_file.start_writeback(from, end - from) {
            debug!(topic = %self.shared.topic, partition = self.shared.partition, %e,
                "could not start writeback (the next fsync writes it all)");
        }
        self.writeback_from = end;
    }

    /// Hands the committed group's frames (`self.buf`) to the tail cache; the writer
    /// starts the next group in a new buffer.
    fn keep_in_tail(&mut self, first: u64, end: u64) {
        let max = self.shared.config.tail_cache_bytes;
        if max == 0 {
            return;
        }
        let frames = (self.buf.len() <= max).then(|| Bytes::from(std::mem::take(&mut self.buf)));
        self.shared
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(first, end, frames, max);
    }

    /// Makes the committed group (records from `first`, frames in `self.buf`) visible to
    /// readers: the segment view first, then the tail cache (a reader never gets a record
    /// from the cache that a file read would call out of range). The caller moves the
    /// high watermark afterwards, which wakes long-polling readers.
    fn publish(&mut self, new_idx: Indexes, max_ts: i64, first: u64) {
        {
            let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
            let seg = view.last_mut().expect("at least one segment");
            seg.visible_bytes = self.written_bytes;
            seg.next_offset = self.next_offset;
            seg.max_timestamp_ms = seg.max_timestamp_ms.max(max_ts);
            seg.indexes.offsets.extend(new_idx.offsets);
            seg.indexes.times.extend(new_idx.times);
        }
        self.keep_in_tail(first, self.next_offset);
    }

    /// Seals the active segment (durable, with index files) and starts a new one.
    fn roll(&mut self) -> Result<(), LogError> {
        let (topic, partition) = (self.shared.topic.clone(), self.shared.partition);
        if self.unsynced {
            self.sync_if_dirty();
            self.shared.check_failed()?;
        }
        if self.file_bytes > self.written_bytes {
            // A sealed segment ends at its last record: cut the preallocated zeroes off.
            let cut = self.active_file.set_len(self.written_bytes);
            match cut.and_then(|()| self.active_file.sync_data()) {
                Ok(()) => self.file_bytes = self.written_bytes,
                Err(e) => {
                    self.fail(format!(
                        "cutting preallocated space before sealing the segment failed: {e}"
                    ));
                    self.shared.check_failed()?;
                }
            }
        }
        let (summary, idx) = {
            let view = self.shared.view.read().unwrap_or_else(|p| p.into_inner());
            let seg = view.last().expect("at least one segment");
            let summary = SegmentSummary {
                segment_bytes: seg.visible_bytes,
                next_offset: seg.next_offset,
                max_timestamp_ms: seg.max_timestamp_ms,
                records: seg.next_offset - seg.base,
            };
            (summary, seg.indexes.clone())
        };
        let dir = self.shared.dir.clone();
        if let Err(e) = write_indexes(
            self.storage.as_ref(),
            &dir,
            self.active_base,
            &summary,
            &idx,
        ) {
            warn!(%topic, partition, %e, "could not write index files; they will be rebuilt on open");
        }
        let base = self.next_offset;
        let file = create_segment(self.storage.as_ref(), &dir, base).map_err(|e| {
            LogError::io(format!("creating segment {base} of {topic}/{partition}"), e)
        })?;
        self.active_file = file.clone();
        self.active_base = base;
        self.written_bytes = SEGMENT_HEADER_BYTES;
        self.file_bytes = SEGMENT_HEADER_BYTES;
        self.writeback_from = SEGMENT_HEADER_BYTES;
        self.preallocation_off = false;
        self.indexer = Indexer::new(self.shared.config.index_interval_bytes);
        // The sealed segment is durable whole; the new one holds nothing yet.
        self.checkpoint();
        let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
        if let Some(sealed) = view.last_mut() {
            sealed.file = None; // read through the log's bounded cache from now on
        }
        view.push(SegmentView {
            base,
            path: segment_path(&dir, base, "log"),
            file: Some(file),
            visible_bytes: SEGMENT_HEADER_BYTES,
            next_offset: base,
            max_timestamp_ms: i64::MIN,
            indexes: Indexes::default(),
            holes: Vec::new(),
        });
        Ok(())
    }

    /// Deletes whole sealed segments that are older than the age limit or beyond the size
    /// limit (oldest first). The active segment is never deleted.
    fn apply_retention(&mut self, retention: Retention, now_ms: i64, keep_from: Option<u64>) {
        let mut doomed = Vec::new();
        let mut held = 0u64;
        {
            let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
            let mut total: u64 = view.iter().map(|s| s.visible_bytes).sum();
            let mut i = 0;
            while view.len() - i > 1 {
                let seg = &view[i];
                let too_old = retention.age.is_some_and(|age| {
                    seg.max_timestamp_ms < now_ms.saturating_sub(age.as_millis() as i64)
                });
                let too_big = retention
                    .bytes
                    .is_some_and(|max| total - seg.visible_bytes >= max);
                if !(too_old || too_big) {
                    break;
                }
                total -= seg.visible_bytes;
                let unread =
                    !retention.ignore_consumers && keep_from.is_some_and(|k| k < seg.next_offset);
                if unread || held > 0 {
                    // Kept for a consumer that has not read it yet (and so is every
                    // segment after it: deletion only ever takes the oldest).
                    held += seg.visible_bytes;
                    i += 1;
                    continue;
                }
                doomed.push(view.remove(0));
            }
        }
        self.hold(held);
        if doomed.is_empty() {
            return;
        }
        let dir = self.shared.dir.clone();
        for seg in &doomed {
            self.shared.files.forget(&seg.path);
            for ext in ["log", "index", "timeindex"] {
                let path = segment_path(&dir, seg.base, ext);
                if let Err(e) = remove_if_present(self.storage.as_ref(), &path) {
                    warn!(path = %path.display(), %e, "could not delete segment file");
                }
            }
            self.shared
                .stats
                .segments_deleted_total
                .fetch_add(1, Ordering::Relaxed);
            info!(topic = %self.shared.topic, partition = self.shared.partition, base = seg.base,
                next_offset = seg.next_offset, "retention deleted segment");
        }
        if let Err(e) = self.storage.sync_dir(&dir) {
            warn!(dir = %dir.display(), %e, "fsync of directory after deleting segments failed");
        }
    }
}

impl Writer {
    /// Records how many bytes retention keeps only for consumers; past
    /// `retention_hold_bytes_max` appends are refused until they catch up.
    fn hold(&mut self, held: u64) {
        let max = self.shared.config.retention_hold_bytes_max;
        let over = held > max;
        let was = self
            .shared
            .held_bytes
            .swap(if over { held } else { 0 }, Ordering::Relaxed);
        if over && was == 0 {
            error!(topic = %self.shared.topic, partition = self.shared.partition, held, max,
                "retention keeps unread records for a consumer that is far behind, past retention_hold_bytes_max; appends to this partition are refused until it catches up");
        } else if !over && was > 0 {
            info!(topic = %self.shared.topic, partition = self.shared.partition,
                "consumers caught up; appends accepted again");
        }
        if held > 0 && !over {
            debug!(topic = %self.shared.topic, partition = self.shared.partition, held,
                "retention keeps segments a consumer has not read yet");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Option<Bytes> {
        Some(Bytes::from(vec![0u8; n]))
    }

    fn held(t: &TailCache) -> Vec<u64> {
        t.groups.iter().map(|(first, _)| *first).collect()
    }

    #[test]
    fn the_tail_cache_keeps_the_newest_groups_within_its_bytes_and_never_a_gap() {
        let mut t = TailCache::default();
        t.push(0, 10, frames(400), 1000);
        t.push(10, 20, frames(400), 1000);
        assert_eq!((held(&t), t.bytes), (vec![0, 10], 800));
        // Past the bound the oldest go.
        t.push(20, 25, frames(400), 1000);
        assert_eq!((held(&t), t.bytes, t.end), (vec![10, 20], 800, 25));
        // A group too large to keep empties the cache (keeping the older ones would
        // leave a gap before the next group).
        t.push(25, 30, None, 1000);
        assert_eq!((held(&t), t.bytes, t.end), (vec![], 0, 30));
        t.push(30, 31, frames(10), 1000);
        assert_eq!(held(&t), vec![30]);
        // A group that does not follow the newest one starts over.
        t.push(40, 41, frames(10), 1000);
        assert_eq!((held(&t), t.bytes), (vec![40], 10));
    }

    #[test]
    fn the_tail_cache_answers_only_for_offsets_it_holds() {
        let mut t = TailCache::default();
        assert!(t.groups_from(0, 1 << 20).is_none());
        t.push(0, 10, frames(100), 1000);
        t.push(10, 20, frames(100), 1000);
        t.push(20, 30, frames(100), 1000);
        let starts =
            |g: Option<Vec<(u64, Bytes)>>| g.map(|g| g.iter().map(|x| x.0).collect::<Vec<_>>());
        assert_eq!(starts(t.groups_from(0, 1 << 20)), Some(vec![0, 10, 20]));
        assert_eq!(starts(t.groups_from(15, 1 << 20)), Some(vec![10, 20]));
        assert_eq!(starts(t.groups_from(29, 1 << 20)), Some(vec![20]));
        // Only as many groups as the byte limit needs (at least one).
        assert_eq!(starts(t.groups_from(0, 150)), Some(vec![0, 10]));
        assert_eq!(starts(t.groups_from(0, 1)), Some(vec![0]));
        assert_eq!(
            t.groups_from(30, 1 << 20),
            None,
            "the high watermark is not held"
        );
        t.push(30, 40, frames(950), 1000);
        assert_eq!(t.groups_from(5, 1 << 20), None, "evicted");
    }
}
