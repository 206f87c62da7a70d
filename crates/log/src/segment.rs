//! Segment files: the header, the scanner that verifies frames (used by recovery, reads,
//! `hifi log verify` and `hifi log dump`), and the sparse index files.
//!
//! # Scanning and damage
//!
//! The scanner walks frames from the segment header, checking each frame's checksum and
//! that offsets follow one another. At the first bad frame it tries to *resynchronise*:
//! it looks further on for a frame with a valid checksum and a plausible offset.
//! - If one is found, the bytes in between are **damage in the middle** of the segment
//!   (e.g. a flipped bit in acknowledged data). They are never returned as data; readers
//!   that reach them get a `Corruption` error. Nothing is truncated.
//! - If none is found, the bad bytes are a **torn tail** (a write cut short by a crash:
//!   a partial frame, garbage). Recovery truncates them; verify reports them.
//! - In the last (active) segment, zeroes from the bad frame to the end of the file are
//!   **preallocated space**: the writer zeroes space ahead of its appends (see
//!   `LogConfig::preallocate_bytes`). No frame is all zeroes, so they hold no record; the
//!   scan ends there cleanly. A sealed segment never has any (the roll cuts them off), so
//!   there they are damage like any other bytes.

use std::io;
use std::path::{Path, PathBuf};

use crate::record::{
    decode_frame, peek_offset, u32_at, u64_at, Frame, FRAME_HEADER_BYTES, FRAME_MIN_BYTES,
};
use crate::storage::{read_all, SegmentFile};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 7] = b"HIFISEG";
/// Magic bytes at the start of every offset index file.
pub const INDEX_MAGIC: &[u8; 7] = b"HIFIIDX";
/// Magic bytes at the start of every time index file.
pub const TIME_INDEX_MAGIC: &[u8; 7] = b"HIFITIX";
/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the segment header: magic, version, base offset.
pub const SEGMENT_HEADER_BYTES: u64 = 16;

/// How far the scanner reads at once (bounded memory however big the segment).
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// File name of the segment starting at `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// Path of the segment, its offset index or its time index.
pub fn segment_path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// Parses a segment file name back into its base offset.
pub fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// The 16-byte header of a segment starting at `base_offset`.
pub fn segment_header(base_offset: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..7].copy_from_slice(SEGMENT_MAGIC);
    h[7] = FORMAT_VERSION;
    h[8..].copy_from_slice(&base_offset.to_le_bytes());
    h
}

/// A region of a segment that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte position in the segment file where the bad frame starts.
    pub position: u64,
    /// The offset that was expected at `position`.
    pub offset: u64,
    /// What was wrong.
    pub reason: &'static str,
    /// Where good frames resume: (position, offset); `None` for a torn tail.
    pub resumes_at: Option<(u64, u64)>,
}

/// What a scan of one segment found.
#[derive(Debug, Clone, Default)]
pub struct ScanOutcome {
    /// Verified records.
    pub records: u64,
    /// First verified offset, if any.
    pub first_offset: Option<u64>,
    /// Offset after the last verified record (the base offset when there is none).
    pub next_offset: u64,
    /// End of the last verified frame: where a torn tail begins.
    pub valid_bytes: u64,
    /// Largest record timestamp seen (`i64::MIN` when empty).
    pub max_timestamp_ms: i64,
    /// The sparse indexes built while scanning.
    pub indexes: Indexes,
    /// Damage in the middle of the segment (good frames follow it).
    pub damage: Vec<Damage>,
    /// A torn tail: bad bytes from `valid_bytes` to the end of the file.
    pub torn_tail: Option<Damage>,
    /// Length of the file when it was scanned.
    pub file_bytes: u64,
    /// Zeroes from `valid_bytes` to the end of the last segment's file: preallocated
    /// space, not damage.
    pub zero_tail_bytes: u64,
}

/// Why a segment could not be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header (a crash right after creating it).
    #[error("segment header is incomplete ({len} bytes)")]
    Torn { len: u64 },
    /// Not a hifi segment, or a format this build does not know.
    #[error("{0}")]
    Bad(String),
    /// The file could not be read.
    #[error("cannot read segment: {0}")]
    Io(#[from] io::Error),
}

/// Checks the header of a segment file expected to start at `base_offset`.
pub fn check_header(file: &dyn SegmentFile, base_offset: u64) -> Result<u64, HeaderError> {
    let len = file.len()?;
    if len < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Torn { len });
    }
    let mut h = [0u8; 16];
    crate::storage::read_exact_at(file, &mut h, 0)?;
    if &h[..7] != SEGMENT_MAGIC {
        return Err(HeaderError::Bad(
            "not a hifi segment file (bad magic)".into(),
        ));
    }
    if h[7] != FORMAT_VERSION {
        return Err(HeaderError::Bad(format!(
            "segment format version {} is not supported (this build reads {FORMAT_VERSION})",
            h[7]
        )));
    }
    let stored_base = u64_at(&h, 8);
    if stored_base != base_offset {
        return Err(HeaderError::Bad(format!(
            "header says base offset {stored_base}, file name says {base_offset}"
        )));
    }
    Ok(len)
}

/// Reads a file through a bounded window, refilling as the scan moves on.
struct Window<'a> {
    file: &'a dyn SegmentFile,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn SegmentFile, len: u64) -> Self {
        Window {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The buffered bytes from `pos` on, at least `min` of them (fewer only at the end of
    /// the file). Refills only when the buffer does not hold `min` bytes at `pos`.
    fn at(&mut self, pos: u64, min: usize) -> io::Result<&[u8]> {
        let min = min.min(self.len.saturating_sub(pos) as usize);
        let end = self.start + self.buf.len() as u64;
        if pos < self.start || pos + min as u64 > end {
            let n = min.max(SCAN_CHUNK_BYTES).min((self.len - pos) as usize);
            self.buf.resize(n, 0);
            crate::storage::read_exact_at(self.file, &mut self.buf, pos)?;
            self.start = pos;
        }
        Ok(&self.buf[(pos - self.start) as usize..])
    }

    /// Decodes the frame at `pos`, reading more when the buffer ends inside it.
    fn frame(&mut self, pos: u64, body_max: usize) -> io::Result<Frame> {
        let frame = decode_frame(self.at(pos, FRAME_HEADER_BYTES)?, body_max);
        match frame {
            Frame::Incomplete { needed } if pos + needed as u64 <= self.len => {
                Ok(decode_frame(self.at(pos, needed)?, body_max))
            }
            other => Ok(other),
        }
    }
}

/// Options for a scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Largest frame body accepted; larger lengths are damage.
    pub body_max: usize,
    /// Bytes of frames between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Look past a bad frame for good ones (recovery, verify); `false` stops at the first
    /// bad frame (dump), reporting it as `torn_tail`.
    pub resync: bool,
    /// The segment is the last one: zeroes to its end are preallocated space.
    pub last: bool,
    /// Resync only over damage starting below this byte position (the durable end of
    /// the active segment: past it lie bytes that were never made durable, where a
    /// "frame" found by searching could be one embedded in an event's value); `u64::MAX`
    /// everywhere.
    pub resync_below: u64,
}

/// Scans and verifies every frame of a segment (whose header must already be checked).
pub fn scan_segment(
    file: &dyn SegmentFile,
    file_len: u64,
    base_offset: u64,
    opts: ScanOptions,
) -> io::Result<ScanOutcome> {
    scan_segment_with(file, file_len, base_offset, opts, &mut |_, _| true)
}

/// As [`scan_segment`], calling `visit(offset, record)` for each verified record in order;
/// the scan stops early when it returns false.
pub fn scan_segment_with(
    file: &dyn SegmentFile,
    file_len: u64,
    base_offset: u64,
    opts: ScanOptions,
    visit: &mut dyn FnMut(u64, &crate::record::Record) -> bool,
) -> io::Result<ScanOutcome> {
    let mut out = ScanOutcome {
        next_offset: base_offset,
        valid_bytes: SEGMENT_HEADER_BYTES,
        max_timestamp_ms: i64::MIN,
        file_bytes: file_len,
        ..ScanOutcome::default()
    };
    let mut win = Window::new(file, file_len);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut indexer = Indexer::new(opts.index_interval_bytes);
    while pos < file_len {
        let frame = win.frame(pos, opts.body_max)?;
        let problem = match frame {
            Frame::Valid {
                offset,
                record,
                frame_bytes,
            } if offset == out.next_offset => {
                out.first_offset.get_or_insert(offset);
                out.records += 1;
                out.max_timestamp_ms = out.max_timestamp_ms.max(record.timestamp_ms);
                indexer.add(
                    &mut out.indexes,
                    base_offset,
                    offset,
                    pos,
                    frame_bytes as u64,
                    record.timestamp_ms,
                );
                pos += frame_bytes as u64;
                out.next_offset = offset + 1;
                out.valid_bytes = pos;
                if !visit(offset, &record) {
                    break;
                }
                continue;
            }
            Frame::Valid { .. } => "offset out of sequence",
            Frame::Incomplete { .. } => "frame cut short by the end of the file",
            Frame::Invalid { reason } => reason,
        };
        if opts.last && zeroes_to_the_end(&mut win, pos)? {
            out.zero_tail_bytes = file_len - pos;
            break;
        }
        let mut damage = Damage {
            position: pos,
            offset: out.next_offset,
            reason: problem,
            resumes_at: None,
        };
        let resumed = if opts.resync && pos < opts.resync_below {
            resync(&mut win, pos + 1, out.next_offset, opts.body_max)?
        } else {
            None
        };
        match resumed {
            Some((resume_pos, resume_offset)) => {
                damage.resumes_at = Some((resume_pos, resume_offset));
                out.damage.push(damage);
                // Offsets in between are unreadable; the index must still let readers
                // start after the damage, so point an entry at the resumed frame.
                indexer.force_next();
                pos = resume_pos;
                out.next_offset = resume_offset;
            }
            None => {
                out.torn_tail = Some(damage);
                break;
            }
        }
    }
    Ok(out)
}

/// Whether every byte from `pos` to the end of the file is zero.
fn zeroes_to_the_end(win: &mut Window<'_>, mut pos: u64) -> io::Result<bool> {
    while pos < win.len {
        let bytes = win.at(pos, 1)?;
        if bytes.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += bytes.len() as u64;
    }
    Ok(true)
}

/// Looks from `from` onwards for a verified frame whose offset is at least `expected` and
/// plausible for the distance covered.
/// The next frame after damage at `from - 1` that verifies with a plausible offset (at
/// least `expected`), searching `from..len` of `file`: (position, offset).
pub fn resync_in(
    file: &dyn SegmentFile,
    len: u64,
    from: u64,
    expected: u64,
    body_max: usize,
) -> io::Result<Option<(u64, u64)>> {
    resync(&mut Window::new(file, len), from, expected, body_max)
}

fn resync(
    win: &mut Window<'_>,
    from: u64,
    expected: u64,
    body_max: usize,
) -> io::Result<Option<(u64, u64)>> {
    let len = win.len;
    let mut pos = from;
    while pos + FRAME_MIN_BYTES as u64 <= len {
        let head = win.at(pos, FRAME_HEADER_BYTES + 8)?;
        let body_len = u32_at(head, 0) as usize;
        let offset = peek_offset(head).unwrap_or(0);
        let max_plausible = expected + (pos - from) / FRAME_MIN_BYTES as u64 + 1;
        if body_len <= body_max && offset >= expected && offset <= max_plausible {
            if let Frame::Valid { offset, .. } = win.frame(pos, body_max)? {
                return Ok(Some((pos, offset)));
            }
        }
        pos += 1;
    }
    Ok(None)
}

/// Builds the sparse indexes while frames go by: an offset-index entry every
/// `interval` bytes of frames, and a time-index entry there when the largest timestamp
/// has grown since the last one.
#[derive(Debug, Clone)]
pub(crate) struct Indexer {
    /// Bytes of frames between entries.
    interval: u64,
    /// Bytes of frames since the last entry.
    since_last: u64,
    /// Largest timestamp written to the time index so far.
    last_time_entry: i64,
    /// Largest timestamp seen so far.
    max_ts: i64,
}

impl Indexer {
    pub(crate) fn new(interval: u64) -> Self {
        Indexer {
            interval,
            since_last: 0,
            last_time_entry: i64::MIN,
            max_ts: i64::MIN,
        }
    }

    /// Continues indexing after a scan that produced `out`.
    pub(crate) fn resume(interval: u64, out: &ScanOutcome) -> Self {
        let last_entry_pos = out
            .indexes
            .offsets
            .last()
            .map_or(SEGMENT_HEADER_BYTES, |e| e.1 as u64);
        Indexer {
            interval,
            since_last: out.valid_bytes.saturating_sub(last_entry_pos),
            last_time_entry: out.indexes.times.last().map_or(i64::MIN, |e| e.0),
            max_ts: out.max_timestamp_ms,
        }
    }

    /// Makes the next frame get an entry (used after damage, so that readers can start
    /// past it).
    pub(crate) fn force_next(&mut self) {
        self.since_last = self.interval;
    }

    /// Records the frame of `offset` at `pos`, adding entries to `idx` when due.
    pub(crate) fn add(
        &mut self,
        idx: &mut Indexes,
        base: u64,
        offset: u64,
        pos: u64,
        frame_bytes: u64,
        ts: i64,
    ) {
        self.max_ts = self.max_ts.max(ts);
        if self.since_last >= self.interval {
            let rel = (offset - base) as u32;
            idx.offsets.push((rel, pos as u32));
            if self.max_ts > self.last_time_entry {
                idx.times.push((self.max_ts, rel));
                self.last_time_entry = self.max_ts;
            }
            self.since_last = 0;
        }
        self.since_last += frame_bytes;
    }
}

/// A segment's sparse indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes {
    /// (offset - base, byte position), ascending.
    pub offsets: Vec<(u32, u32)>,
    /// (largest timestamp up to here, offset - base), ascending in both.
    pub times: Vec<(i64, u32)>,
}

impl Indexes {
    /// Where to start reading to find `offset`: an (offset, byte position) at or before
    /// its frame.
    pub fn position_for(&self, base: u64, offset: u64) -> (u64, u64) {
        let rel = offset.saturating_sub(base).min(u32::MAX as u64) as u32;
        let i = self.offsets.partition_point(|e| e.0 <= rel);
        if i == 0 {
            (base, SEGMENT_HEADER_BYTES)
        } else {
            let (rel, pos) = self.offsets[i - 1];
            (base + rel as u64, pos as u64)
        }
    }

    /// An offset from which to scan for the first record with timestamp >= `ts`.
    pub fn offset_for_time_hint(&self, base: u64, ts: i64) -> u64 {
        let i = self.times.partition_point(|e| e.0 < ts);
        if i == 0 {
            base
        } else {
            base + self.times[i - 1].1 as u64
        }
    }
}

/// The summary stored in an offset index file, checked against the segment on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Length of the segment file the index describes.
    pub segment_bytes: u64,
    /// Offset after the segment's last record.
    pub next_offset: u64,
    /// Largest timestamp in the segment.
    pub max_timestamp_ms: i64,
    /// Number of records.
    pub records: u64,
}

/// Encodes a sealed segment's offset index file.
///
/// ```text
/// "HIFIIDX" version:u8 base:u64
/// segment_bytes:u64 next_offset:u64 max_timestamp_ms:i64 records:u64
/// count:u32 (relative_offset:u32 position:u32)*count
/// crc32c:u32   (of everything before it)
/// ```
pub fn encode_offset_index(base: u64, summary: &SegmentSummary, idx: &Indexes) -> Vec<u8> {
    let mut b = Vec::with_capacity(52 + idx.offsets.len() * 8);
    b.extend_from_slice(INDEX_MAGIC);
    b.push(FORMAT_VERSION);
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&summary.segment_bytes.to_le_bytes());
    b.extend_from_slice(&summary.next_offset.to_le_bytes());
    b.extend_from_slice(&summary.max_timestamp_ms.to_le_bytes());
    b.extend_from_slice(&summary.records.to_le_bytes());
    b.extend_from_slice(&(idx.offsets.len() as u32).to_le_bytes());
    for (rel, pos) in &idx.offsets {
        b.extend_from_slice(&rel.to_le_bytes());
        b.extend_from_slice(&pos.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Encodes a sealed segment's time index file.
///
/// ```text
/// "HIFITIX" version:u8 base:u64
/// count:u32 (max_timestamp_ms:i64 relative_offset:u32)*count
/// crc32c:u32   (of everything before it)
/// ```
pub fn encode_time_index(base: u64, idx: &Indexes) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + idx.times.len() * 12);
    b.extend_from_slice(TIME_INDEX_MAGIC);
    b.push(FORMAT_VERSION);
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&(idx.times.len() as u32).to_le_bytes());
    for (ts, rel) in &idx.times {
        b.extend_from_slice(&ts.to_le_bytes());
        b.extend_from_slice(&rel.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Checks the magic, version, base offset and trailing checksum of an index file and
/// returns the bytes between the 16-byte header and the checksum.
fn index_payload<'a>(b: &'a [u8], magic: &[u8; 7], base: u64) -> Option<&'a [u8]> {
    if b.len() < 20 || &b[..7] != magic || b[7] != FORMAT_VERSION || u64_at(b, 8) != base {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    (crc32c::crc32c(body) == u32_at(crc, 0)).then_some(&body[16..])
}

/// Decodes an offset index file; `None` if it is damaged or not for this segment.
pub fn decode_offset_index(b: &[u8], base: u64) -> Option<(SegmentSummary, Vec<(u32, u32)>)> {
    let p = index_payload(b, INDEX_MAGIC, base)?;
    if p.len() < 36 {
        return None;
    }
    let summary = SegmentSummary {
        segment_bytes: u64_at(p, 0),
        next_offset: u64_at(p, 8),
        max_timestamp_ms: u64_at(p, 16) as i64,
        records: u64_at(p, 24),
    };
    let count = u32_at(p, 32) as usize;
    if p.len() != 36 + count * 8 {
        return None;
    }
    let entries = (0..count)
        .map(|i| (u32_at(p, 36 + i * 8), u32_at(p, 40 + i * 8)))
        .collect();
    Some((summary, entries))
}

/// Decodes a time index file; `None` if it is damaged or not for this segment.
pub fn decode_time_index(b: &[u8], base: u64) -> Option<Vec<(i64, u32)>> {
    let p = index_payload(b, TIME_INDEX_MAGIC, base)?;
    if p.len() < 4 {
        return None;
    }
    let count = u32_at(p, 0) as usize;
    if p.len() != 4 + count * 12 {
        return None;
    }
    Some(
        (0..count)
            .map(|i| (u64_at(p, 4 + i * 12) as i64, u32_at(p, 12 + i * 12)))
            .collect(),
    )
}

/// Loads a sealed segment's indexes from their files, if both are present, intact and
/// describe a segment of exactly `segment_bytes`.
pub fn load_indexes(
    storage: &dyn crate::storage::Storage,
    dir: &Path,
    base: u64,
    segment_bytes: u64,
) -> Option<(SegmentSummary, Indexes)> {
    let read = |ext: &str| -> Option<Vec<u8>> {
        let f = storage.open_read_only(&segment_path(dir, base, ext)).ok()?;
        read_all(f.as_ref()).ok()
    };
    let (summary, offsets) = decode_offset_index(&read("index")?, base)?;
    let times = decode_time_index(&read("timeindex")?, base)?;
    (summary.segment_bytes == segment_bytes).then_some((summary, Indexes { offsets, times }))
}
