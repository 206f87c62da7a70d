//! Offline inspection of a data directory: `hifi log verify` and `hifi log dump`.
//!
//! Both only read: they never truncate, rebuild or lock, so they are safe to run against a
//! directory a stopped (or crashed) process left behind. Against a running process they
//! may see a final frame still being written and report it as a torn tail.

use std::path::{Path, PathBuf};

use crate::record::{Record, StoredRecord};
use crate::segment::{
    check_header, parse_segment_name, scan_segment, scan_segment_with, segment_path, Damage,
    HeaderError, ScanOptions,
};
use crate::storage::{DiskStorage, Storage};

/// One problem found by [`verify_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Bad bytes at the end of the last segment (a crash mid-write); the next open
    /// truncates them. Records in them were never acknowledged.
    TornTail {
        segment: PathBuf,
        position: u64,
        bytes: u64,
        reason: &'static str,
    },
    /// A bad frame with good frames after it, or damaged bytes ending a sealed segment:
    /// data that was acknowledged and is now unreadable.
    Corrupt {
        segment: PathBuf,
        position: u64,
        offset: u64,
        reason: &'static str,
        resumes_at: Option<(u64, u64)>,
    },
    /// A segment whose header cannot be read.
    BadSegment { segment: PathBuf, reason: String },
    /// Offsets missing between two segments.
    Gap { after: PathBuf, from: u64, to: u64 },
}

impl Problem {
    /// Whether this is damage to acknowledged data (torn tails are not).
    pub fn is_corruption(&self) -> bool {
        !matches!(self, Problem::TornTail { .. })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::TornTail { segment, position, bytes, reason } => write!(
                f,
                "torn tail in {} at byte {position}: {bytes} bytes after the last good record ({reason}); \
                 never acknowledged, cut on next open",
                segment.display()
            ),
            Problem::Corrupt { segment, position, offset, reason, resumes_at } => {
                write!(f, "CORRUPTION in {} at byte {position}, offset {offset}: {reason}", segment.display())?;
                match resumes_at {
                    Some((pos, off)) => write!(f, "; good records resume at byte {pos}, offset {off}"),
                    None => write!(f, "; no good record after it in this segment"),
                }
            }
            Problem::BadSegment { segment, reason } => write!(f, "BAD SEGMENT {}: {reason}", segment.display()),
            Problem::Gap { after, from, to } => {
                write!(f, "MISSING offsets {from}..{to} after segment {}", after.display())
            }
        }
    }
}

/// What [`verify_dir`] found in one topic-partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    /// Topic name (its folder).
    pub topic: String,
    /// Partition number (its folder).
    pub partition: u32,
    /// Segment files.
    pub segments: usize,
    /// Verified records.
    pub records: u64,
    /// First verified offset.
    pub first_offset: Option<u64>,
    /// Last verified offset.
    pub last_offset: Option<u64>,
    /// Everything wrong, in file order.
    pub problems: Vec<Problem>,
}

/// Checks every segment of every topic-partition under `root`: framing, checksums and
/// offset sequence. `body_max` is the largest record the log was configured for.
pub fn verify_dir(root: &Path, body_max: usize) -> std::io::Result<Vec<PartitionReport>> {
    let storage = DiskStorage;
    let mut reports = Vec::new();
    let topics = root.join("topics");
    if !storage.list_dir(root)?.contains(&topics) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} has no topics/ folder: not a hifi data directory",
                root.display()
            ),
        ));
    }
    for topic_dir in storage.list_dir(&topics)? {
        let Some(topic) = topic_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if !topic_dir.is_dir() {
            continue;
        }
        let mut parts: Vec<(u32, PathBuf)> = storage
            .list_dir(&topic_dir)?
            .into_iter()
            .filter_map(|p| Some((p.file_name()?.to_str()?.parse().ok()?, p)))
            .collect();
        parts.sort();
        for (partition, dir) in parts {
            reports.push(verify_partition(
                &storage, &topic, partition, &dir, body_max,
            )?);
        }
    }
    Ok(reports)
}

fn segment_bases(storage: &DiskStorage, dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut bases: Vec<u64> = storage
        .list_dir(dir)?
        .iter()
        .filter_map(|p| parse_segment_name(p))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

fn verify_partition(
    storage: &DiskStorage,
    topic: &str,
    partition: u32,
    dir: &Path,
    body_max: usize,
) -> std::io::Result<PartitionReport> {
    let bases = segment_bases(storage, dir)?;
    let mut report = PartitionReport {
        topic: topic.to_owned(),
        partition,
        segments: bases.len(),
        records: 0,
        first_offset: None,
        last_offset: None,
        problems: Vec::new(),
    };
    let opts = ScanOptions {
        body_max,
        index_interval_bytes: u64::MAX,
        resync: true,
        last: false,
        resync_below: u64::MAX,
    };
    let durable = crate::durable::read(storage, dir);
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base, "log");
        let is_last = i + 1 == bases.len();
        // Below the active segment's durable end every byte was acknowledged: damage
        // there is corruption, not a torn tail (see `durable.rs`).
        let durable_bytes = durable
            .filter(|d| is_last && d.base == base)
            .map(|d| d.bytes);
        let file = storage.open_read_only(&path)?;
        let len = match check_header(file.as_ref(), base) {
            Ok(len) => len,
            Err(HeaderError::Torn { len }) if is_last => {
                report.problems.push(Problem::TornTail {
                    segment: path,
                    position: 0,
                    bytes: len,
                    reason: "header cut short",
                });
                continue;
            }
            Err(HeaderError::Io(e)) => return Err(e),
            Err(e) => {
                report.problems.push(Problem::BadSegment {
                    segment: path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let out = scan_segment(
            file.as_ref(),
            len,
            base,
            ScanOptions {
                last: is_last,
                resync_below: durable_bytes.unwrap_or(u64::MAX),
                ..opts
            },
        )?;
        report.records += out.records;
        if report.first_offset.is_none() {
            report.first_offset = out.first_offset;
        }
        if out.records > 0 {
            report.last_offset = Some(out.next_offset - 1);
        }
        for d in &out.damage {
            report.problems.push(corrupt(&path, d));
        }
        if out.torn_tail.is_none() && durable_bytes.is_some_and(|d| out.valid_bytes < d) {
            report.problems.push(Problem::Corrupt {
                segment: path.clone(),
                position: out.valid_bytes,
                offset: out.next_offset,
                reason: "acknowledged records below the durable end turned into zeroes",
                resumes_at: None,
            });
        }
        if let Some(t) = &out.torn_tail {
            let acknowledged = durable_bytes.is_some_and(|d| t.position < d);
            report.problems.push(if is_last && !acknowledged {
                Problem::TornTail {
                    segment: path.clone(),
                    position: t.position,
                    bytes: len - t.position,
                    reason: t.reason,
                }
            } else {
                corrupt(&path, t)
            });
        }
        if let Some(&next) = bases.get(i + 1) {
            if out.next_offset < next && out.torn_tail.is_none() {
                report.problems.push(Problem::Gap {
                    after: path,
                    from: out.next_offset,
                    to: next,
                });
            }
        }
    }
    Ok(report)
}

fn corrupt(path: &Path, d: &Damage) -> Problem {
    Problem::Corrupt {
        segment: path.to_path_buf(),
        position: d.position,
        offset: d.offset,
        reason: d.reason,
        resumes_at: d.resumes_at,
    }
}

/// Why [`dump`] stopped before reaching the end or the limit.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The topic-partition folder does not exist.
    #[error("no such topic-partition: {}", .0.display())]
    NotFound(PathBuf),
    /// A record could not be verified; nothing from it on was printed.
    #[error("stopped at {problem}")]
    Damaged { problem: Problem },
    /// Reading failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Calls `visit` for each verified record of `topic`/`partition` from offset `from`, at
/// most `limit` records. Stops with an error at the first record it cannot verify.
pub fn dump(
    root: &Path,
    topic: &str,
    partition: u32,
    from: u64,
    limit: u64,
    body_max: usize,
    mut visit: impl FnMut(&StoredRecord),
) -> Result<u64, DumpError> {
    let storage = DiskStorage;
    let dir = root.join("topics").join(topic).join(partition.to_string());
    if !dir.is_dir() {
        return Err(DumpError::NotFound(dir));
    }
    let bases = segment_bases(&storage, &dir)?;
    let opts = ScanOptions {
        body_max,
        index_interval_bytes: u64::MAX,
        resync: false,
        last: false,
        resync_below: u64::MAX,
    };
    let mut printed = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        if bases.get(i + 1).is_some_and(|&next| next <= from) {
            continue;
        }
        let path = segment_path(&dir, base, "log");
        let file = storage.open_read_only(&path)?;
        let len = check_header(file.as_ref(), base).map_err(|e| match e {
            HeaderError::Io(e) => DumpError::Io(e),
            other => DumpError::Damaged {
                problem: Problem::BadSegment {
                    segment: path.clone(),
                    reason: other.to_string(),
                },
            },
        })?;
        let mut visit_one = |offset: u64, record: &Record| {
            if offset >= from {
                visit(&StoredRecord {
                    offset,
                    record: record.clone(),
                });
                printed += 1;
            }
            printed < limit
        };
        let opts = ScanOptions {
            last: i + 1 == bases.len(),
            ..opts
        };
        let out = scan_segment_with(file.as_ref(), len, base, opts, &mut visit_one)?;
        if printed >= limit {
            return Ok(printed);
        }
        if let Some(t) = out.torn_tail {
            let problem = if i + 1 == bases.len() {
                Problem::TornTail {
                    segment: path,
                    position: t.position,
                    bytes: len - t.position,
                    reason: t.reason,
                }
            } else {
                corrupt(&path, &t)
            };
            return Err(DumpError::Damaged { problem });
        }
    }
    Ok(printed)
}
