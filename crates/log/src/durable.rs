//! Each partition's **durable end**: how far its active segment was made durable, kept in
//! a small file beside the segments so that recovery can tell a torn tail (bytes written
//! but never made durable, so never acknowledged: cut) from damage to acknowledged data
//! (below the durable end: quarantined, never cut, its offsets never reused).
//!
//! # Format
//! The file `durable` in the partition's directory holds 28 bytes, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | base offset of the active segment |
//! | 8..16 | bytes of that segment made durable (header included) |
//! | 16..24 | the offset after the last durable record |
//! | 24..28 | CRC32C of bytes 0..24 |
//!
//! # When it is written
//! The writer rewrites it in place after every fsync of the active segment's data — after
//! each group commit under `fsync = "always"`, after each timed or sealing fsync
//! otherwise — and when it starts a new segment. It is written *after* the data's fsync,
//! so it never claims more than is durable. The file itself is fsynced at most once a
//! second (and at shutdown): a process crash leaves it exact (the page cache survives),
//! a power failure may leave it up to a second behind, in which case damage in that last
//! second of data is taken for a torn tail as before. A missing or unreadable file (an
//! older data directory, a torn write of the file itself) means "unknown": recovery then
//! behaves as before it existed.

use std::path::{Path, PathBuf};

use crate::storage::{read_all, Storage};

/// File name of the durable-end checkpoint inside a partition's directory.
pub const FILE_NAME: &str = "durable";

const LEN: usize = 28;

/// What was durable in the active segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableEnd {
    /// Base offset of the segment the checkpoint is about.
    pub base: u64,
    /// Bytes of it made durable.
    pub bytes: u64,
    /// Offset after the last durable record.
    pub next_offset: u64,
}

impl DurableEnd {
    /// The 28 bytes of the file.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(&self.base.to_le_bytes());
        b[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes the file's bytes; `None` when they are not a valid checkpoint.
    pub fn decode(b: &[u8]) -> Option<DurableEnd> {
        if b.len() < LEN {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
        (crc32c::crc32c(&b[0..24]) == crc).then(|| DurableEnd {
            base: u(0),
            bytes: u(8),
            next_offset: u(16),
        })
    }
}

/// Path of a partition's checkpoint.
pub fn path(partition_dir: &Path) -> PathBuf {
    partition_dir.join(FILE_NAME)
}

/// Reads a partition's checkpoint; `None` when there is none or it is unreadable.
pub fn read(storage: &dyn Storage, partition_dir: &Path) -> Option<DurableEnd> {
    let file = storage.open_read_only(&path(partition_dir)).ok()?;
    DurableEnd::decode(&read_all(file.as_ref()).ok()?)
}

/// Writes a checkpoint file directly (tools and tests; the writer keeps its file open).
pub fn write(partition_dir: &Path, end: DurableEnd) -> std::io::Result<()> {
    std::fs::write(path(partition_dir), end.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_a_damaged_one_is_unknown() {
        let d = DurableEnd {
            base: 7,
            bytes: 4096,
            next_offset: 99,
        };
        let mut b = d.encode();
        assert_eq!(DurableEnd::decode(&b), Some(d));
        b[9] ^= 1;
        assert_eq!(DurableEnd::decode(&b), None);
        assert_eq!(DurableEnd::decode(&b[..20]), None);
    }
}
