//! Damaged records are **quarantined**, not fatal: a region of a segment that fails
//! verification (a flipped bit, a bad sector, a manual edit) is copied as raw bytes into
//! the partition's `quarantine/` folder, recorded as a *hole* that every reader skips,
//! counted (`quarantined_regions_total`) and logged as an error. Every other record,
//! partition and topic keeps flowing; consumers see the offsets of the hole skipped, so
//! the ledger reports those events lost at the first node that could not read them.
//! `engine.on_corruption = "stop"` keeps the older behaviour: readers stop at the damage
//! with a `Corruption` error.
//!
//! A hole is found at recovery (a scan that finds damage and good frames after it, or
//! damage below the durable end of the active segment: see [`crate::durable`]) or by a
//! read that meets a frame failing verification. Its end is the next frame that verifies
//! with a plausible offset (the same search recovery uses), or the segment's visible end.
//!
//! # Files
//! `quarantine/<segment base, 20 digits>-<byte position, 20 digits>.bin` holds the bytes
//! of the hole (at most [`COPY_BYTES_MAX`]); the `.json` beside it says where they came
//! from ([`QuarantineEntry`]). Holes are found again at each start (nothing about them is
//! trusted from these files), and an existing copy is not written again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::{read_exact_at, SegmentFile};

/// Most bytes of one hole copied to the quarantine folder.
pub const COPY_BYTES_MAX: u64 = 64 << 20;

/// What to do with a record that fails verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnCorruption {
    /// Copy it aside, skip it, report it; everything else keeps flowing (default).
    #[default]
    Quarantine,
    /// Readers stop at it with a `Corruption` error (the behaviour before quarantine).
    Stop,
}

/// A damaged region of one segment that readers skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// Byte position where the damage starts.
    pub position: u64,
    /// The offset expected there (the first offset of the hole).
    pub offset: u64,
    /// Byte position where good frames resume (the segment's visible end when none).
    pub resume_position: u64,
    /// Offset of the first record after the hole.
    pub resume_offset: u64,
}

/// The `.json` of one quarantined region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The segment file.
    pub segment: PathBuf,
    /// Byte range of the hole in it.
    pub position: u64,
    /// End of that range.
    pub end_position: u64,
    /// Offsets skipped: `first_offset..next_offset`.
    pub first_offset: u64,
    /// Offset after the hole.
    pub next_offset: u64,
    /// What failed.
    pub reason: String,
    /// When it was quarantined (epoch ms).
    pub quarantined_at_ms: i64,
    /// Bytes copied to the `.bin` file (less than the hole when over [`COPY_BYTES_MAX`]).
    pub copied_bytes: u64,
}

/// The quarantine folder of a partition.
pub fn dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join("quarantine")
}

fn stem(base: u64, position: u64) -> String {
    format!("{base:020}-{position:020}")
}

/// Copies a hole's bytes and its description into the partition's quarantine folder,
/// unless they are there already. Errors are the caller's to log: skipping the hole does
/// not depend on the copy.
pub fn copy_aside(
    file: &dyn SegmentFile,
    partition_dir: &Path,
    base: u64,
    mut entry: QuarantineEntry,
) -> std::io::Result<()> {
    let q = dir(partition_dir);
    let name = stem(base, entry.position);
    let meta = q.join(format!("{name}.json"));
    if meta.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&q)?;
    let len = (entry.end_position - entry.position).min(COPY_BYTES_MAX);
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(file, &mut bytes, entry.position)?;
    std::fs::write(q.join(format!("{name}.bin")), &bytes)?;
    entry.copied_bytes = len;
    let json = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?;
    // The description last: its presence says the copy is complete.
    std::fs::write(&meta, json)
}

/// Every quarantined region under a data directory (`topics/*/*/quarantine/*.json`),
/// oldest segment first.
pub fn list(data_dir: &Path) -> std::io::Result<Vec<QuarantineEntry>> {
    let mut out = Vec::new();
    let topics = data_dir.join("topics");
    for topic in std::fs::read_dir(&topics)? {
        let topic = topic?.path();
        if !topic.is_dir() {
            continue;
        }
        for part in std::fs::read_dir(&topic)? {
            let q = dir(&part?.path());
            let Ok(files) = std::fs::read_dir(&q) else {
                continue;
            };
            let mut names: Vec<PathBuf> = files
                .filter_map(|f| f.ok().map(|f| f.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            names.sort();
            for n in names {
                let text = std::fs::read(&n)?;
                match serde_json::from_slice(&text) {
                    Ok(e) => out.push(e),
                    Err(e) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: {e}", n.display()),
                        ))
                    }
                }
            }
        }
    }
    Ok(out)
}
