//! Open files of sealed segments, bounded over the whole log.
//!
//! A partition keeps its active segment open (the writer appends to it). A sealed
//! segment is opened read-only when a reader needs it and kept in this cache, least
//! recently used first out, at most [`crate::LogConfig::open_segment_files_max`] files
//! for all partitions together. Before, every segment of every partition held a file
//! descriptor for the life of the process: a week of retention at a high rate is
//! thousands of segments, and each of them took a descriptor that connections and new
//! segments then lacked. A reader that holds a file while it is evicted keeps it open
//! until it is done (the cache only drops its own handle).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::{SegmentFile, Storage};

/// The cache of sealed segments' open files.
#[derive(Debug)]
pub(crate) struct FileCache {
    /// Opens files (the real disk, or a fault-injecting one in tests).
    storage: Arc<dyn Storage>,
    /// Most files kept open.
    max: usize,
    /// Open files with the tick of their last use.
    open: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    files: HashMap<PathBuf, (Arc<dyn SegmentFile>, u64)>,
    tick: u64,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cached({} files)", self.files.len())
    }
}

impl FileCache {
    pub(crate) fn new(storage: Arc<dyn Storage>, max: usize) -> Self {
        FileCache {
            storage,
            max: max.max(1),
            open: Mutex::default(),
        }
    }

    /// The open file of a sealed segment, opening it (read-only) if needed.
    pub(crate) fn get(&self, path: &Path) -> std::io::Result<Arc<dyn SegmentFile>> {
        {
            let mut c = self.open.lock().unwrap_or_else(|p| p.into_inner());
            c.tick += 1;
            let tick = c.tick;
            if let Some((file, used)) = c.files.get_mut(path) {
                *used = tick;
                return Ok(file.clone());
            }
        }
        let file = self.storage.open_read_only(path)?;
        let mut c = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while c.files.len() >= self.max {
            let oldest = c
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| p.clone());
            match oldest {
                Some(p) => c.files.remove(&p),
                None => break,
            };
        }
        let tick = c.tick;
        c.files.insert(path.to_path_buf(), (file.clone(), tick));
        Ok(file)
    }

    /// Forgets a file (its segment was deleted).
    pub(crate) fn forget(&self, path: &Path) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .remove(path);
    }

    /// Forgets every file under `dir` (its topic was deleted: a topic created again
    /// under that name has files of the same names).
    pub(crate) fn forget_under(&self, dir: &Path) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .retain(|path, _| !path.starts_with(dir));
    }

    /// Files open now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;
    use crate::storage::DiskStorage;

    #[test]
    fn at_most_max_files_stay_open_least_recently_used_out() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..5)
            .map(|i| {
                let p = dir.path().join(format!("{i}.log"));
                std::fs::write(&p, [i as u8]).unwrap();
                p
            })
            .collect();
        let cache = FileCache::new(Arc::new(DiskStorage), 2);
        let first = cache.get(&paths[0]).unwrap();
        cache.get(&paths[1]).unwrap();
        cache.get(&paths[0]).unwrap(); // 0 used last: 1 goes next
        cache.get(&paths[2]).unwrap();
        assert_eq!(cache.len(), 2);
        let c = cache.open.lock().unwrap();
        assert!(c.files.contains_key(&paths[0]) && c.files.contains_key(&paths[2]));
        drop(c);
        for p in &paths {
            cache.get(p).unwrap();
        }
        assert_eq!(cache.len(), 2);
        // A file handed out before it was evicted still reads.
        let mut b = [0u8; 1];
        first.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0]);
        cache.forget(&paths[4]);
        assert_eq!(cache.len(), 1);
    }
}
