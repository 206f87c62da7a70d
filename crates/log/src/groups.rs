//! Consumer-group positions: durable committed offsets per (group, topic, partition).
//!
//! One append-only file per group (`groups/<group>.offsets`, format in the crate
//! header); each commit appends one checksummed entry and fsyncs it (unless the fsync
//! policy is `never`); the last entry for a (topic, partition) wins. A torn or damaged
//! tail is cut at open: the positions fall back to an earlier commit, which re-delivers
//! (at-least-once) and never skips. When a file passes [`COMPACT_BYTES`] it is rewritten
//! with one entry per partition (temporary file, fsync, rename, directory fsync).
//!
//! Commits are serialised by one mutex (a commit is one small write and one fsync).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::record::u32_at;
use crate::segment::FORMAT_VERSION;
use crate::storage::{read_all, write_file_atomic, SegmentFile, Storage};
use crate::{LogError, OpenError};

/// Magic bytes at the start of a group offsets file.
const GROUP_MAGIC: &[u8; 7] = b"HIFIGRP";
/// A group file is compacted once it grows past this.
pub(crate) const COMPACT_BYTES: u64 = 1 << 20;

/// Committed positions of every group, with their files.
#[derive(Debug)]
pub(crate) struct GroupStore {
    /// `<data_dir>/groups`.
    dir: PathBuf,
    /// File system access.
    storage: Arc<dyn Storage>,
    /// Whether commits are fsync'd (false only under the `never` policy).
    sync: bool,
    /// Open group files and their positions.
    groups: Mutex<HashMap<String, GroupFile>>,
}

/// Latest committed offset per (topic, partition).
type Positions = HashMap<(String, u32), u64>;

#[derive(Debug)]
struct GroupFile {
    /// The open offsets file.
    file: Arc<dyn SegmentFile>,
    /// Its length (where the next entry goes).
    len: u64,
    /// Latest committed offset per (topic, partition).
    positions: Positions,
}

impl GroupStore {
    /// Loads every group file in `dir`, cutting torn tails.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        sync: bool,
    ) -> Result<Self, OpenError> {
        let ioe = |e| OpenError::Io {
            context: format!("opening {}", dir.display()),
            source: e,
        };
        storage.create_dir_all(&dir).map_err(ioe)?;
        let mut groups = HashMap::new();
        for path in storage.list_dir(&dir).map_err(ioe)? {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".offsets"))
            else {
                continue;
            };
            let file = storage.open(&path).map_err(ioe)?;
            let bytes = read_all(file.as_ref()).map_err(ioe)?;
            let (positions, good) = parse(&bytes).ok_or_else(|| OpenError::BadTopic {
                path: path.clone(),
                reason: "not a hifi group offsets file (bad magic or version)".into(),
            })?;
            let mut good = good;
            if good < 8 {
                file.set_len(0).map_err(ioe)?;
                file.write_all_at(&header(), 0).map_err(ioe)?;
                file.sync_data().map_err(ioe)?;
                good = 8;
            } else if good < bytes.len() as u64 {
                warn!(group = name, file = %path.display(), cut_bytes = bytes.len() as u64 - good,
                    "group offsets file had a torn tail; positions fall back to the last intact commit");
                file.set_len(good).map_err(ioe)?;
                file.sync_data().map_err(ioe)?;
            }
            groups.insert(
                name.to_owned(),
                GroupFile {
                    file,
                    len: good,
                    positions,
                },
            );
        }
        Ok(GroupStore {
            dir,
            storage,
            sync,
            groups: Mutex::new(groups),
        })
    }

    /// The committed position of (group, topic, partition).
    pub(crate) fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .get(group)?
            .positions
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// The lowest position any group committed on (topic, partition): what retention
    /// must keep. `None` when no group has committed there.
    pub(crate) fn min_committed(&self, topic: &str, partition: u32) -> Option<u64> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_owned(), partition);
        groups
            .values()
            .filter_map(|g| g.positions.get(&key).copied())
            .min()
    }

    /// Durably records positions of partitions of `topic`: one write, one fsync
    /// (blocking I/O).
    pub(crate) fn commit(
        &self,
        group: &str,
        topic: &str,
        positions: &[(u32, u64)],
    ) -> Result<(), LogError> {
        let io = |e| LogError::io(format!("committing group {group:?}"), e);
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if !groups.contains_key(group) {
            let path = self.path(group);
            let file = self.storage.create_new(&path).map_err(io)?;
            file.write_all_at(&header(), 0).map_err(io)?;
            file.sync_data().map_err(io)?;
            self.storage.sync_dir(&self.dir).map_err(io)?;
            groups.insert(
                group.to_owned(),
                GroupFile {
                    file,
                    len: 8,
                    positions: HashMap::new(),
                },
            );
        }
        let g = groups.get_mut(group).expect("inserted above");
        let mut entries = Vec::with_capacity(64 * positions.len());
        for &(partition, offset) in positions {
            encode_entry(&mut entries, topic, partition, offset);
        }
        g.file.write_all_at(&entries, g.len).map_err(io)?;
        if self.sync {
            g.file.sync_data().map_err(io)?;
        }
        g.len += entries.len() as u64;
        for &(partition, offset) in positions {
            g.positions.insert((topic.to_owned(), partition), offset);
        }
        if g.len > COMPACT_BYTES {
            self.compact(group, g).map_err(io)?;
        }
        Ok(())
    }

    /// Drops every group's positions on `topic` (it was deleted): each group file that
    /// had some is rewritten without them (blocking I/O).
    pub(crate) fn forget_topic(&self, topic: &str) -> Result<(), LogError> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for (name, g) in groups.iter_mut() {
            let before = g.positions.len();
            g.positions.retain(|(t, _), _| t != topic);
            if g.positions.len() != before {
                self.compact(name, g)
                    .map_err(|e| LogError::io(format!("rewriting group {name:?}"), e))?;
            }
        }
        Ok(())
    }

    /// Deletes a group and its file (blocking I/O). A group that has none: nothing to do.
    pub(crate) fn delete(&self, group: &str) -> Result<(), LogError> {
        let io = |e| LogError::io(format!("deleting group {group:?}"), e);
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.remove(group).is_none() {
            return Ok(());
        }
        self.storage.remove_file(&self.path(group)).map_err(io)?;
        self.storage.sync_dir(&self.dir).map_err(io)
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.offsets"))
    }

    fn compact(&self, group: &str, g: &mut GroupFile) -> std::io::Result<()> {
        let mut bytes = header().to_vec();
        let mut keys: Vec<_> = g.positions.iter().collect();
        keys.sort();
        for ((topic, partition), offset) in keys {
            encode_entry(&mut bytes, topic, *partition, *offset);
        }
        let path = self.path(group);
        write_file_atomic(self.storage.as_ref(), &path, &bytes)?;
        g.file = self.storage.open(&path)?;
        g.len = bytes.len() as u64;
        Ok(())
    }
}

fn header() -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..7].copy_from_slice(GROUP_MAGIC);
    h[7] = FORMAT_VERSION;
    h
}

fn encode_entry(buf: &mut Vec<u8>, topic: &str, partition: u32, offset: u64) {
    let mut body = Vec::with_capacity(14 + topic.len());
    body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&partition.to_le_bytes());
    body.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&body);
}

/// Parses a group file: the positions and the length of the intact prefix; `None` when
/// the header is wrong.
fn parse(bytes: &[u8]) -> Option<(Positions, u64)> {
    if bytes.len() < 8 || &bytes[..7] != GROUP_MAGIC || bytes[7] != FORMAT_VERSION {
        // An empty or header-torn file is a crash right after creation: nothing in it.
        return (bytes.len() < 8 && GROUP_MAGIC.starts_with(&bytes[..bytes.len().min(7)]))
            .then(|| (HashMap::new(), 0));
    }
    let mut positions = HashMap::new();
    let mut pos = 8usize;
    while pos + 8 <= bytes.len() {
        let len = u32_at(bytes, pos) as usize;
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if len < 14 || crc32c::crc32c(body) != u32_at(bytes, pos + 4) {
            break;
        }
        let tlen = u16::from_le_bytes([body[0], body[1]]) as usize;
        if body.len() != 2 + tlen + 12 {
            break;
        }
        let Ok(topic) = std::str::from_utf8(&body[2..2 + tlen]) else {
            break;
        };
        let partition = u32_at(body, 2 + tlen);
        let offset = crate::record::u64_at(body, 6 + tlen);
        positions.insert((topic.to_owned(), partition), offset);
        pos += 8 + len;
    }
    Some((positions, pos as u64))
}
