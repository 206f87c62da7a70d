//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hifi_log::storage::{DiskStorage, SegmentFile, Storage};
use hifi_log::{EmbeddedLog, Log, LogConfig, ReadLimits, Record, StoredRecord, TopicSpec};

/// A record whose bytes are a pure function of `n`, so tests can check identity.
pub fn record(n: u64) -> Record {
    let value = format!(
        "{{\"n\":{n},\"pad\":\"{}\"}}",
        "x".repeat((n % 97) as usize)
    );
    Record::new(value, 1_700_000_000_000 + n as i64).with_header("hifi-id", format!("id-{n}"))
}

pub fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

pub async fn open(dir: &Path, config: LogConfig) -> EmbeddedLog {
    EmbeddedLog::open(dir, config).expect("open log")
}

pub async fn read_all(log: &dyn Log, topic: &str, partition: u32) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let end = log.offsets(topic, partition).await.unwrap().end;
    let mut from = log.offsets(topic, partition).await.unwrap().start;
    while from < end {
        let batch = log
            .read(topic, partition, from, ReadLimits::default())
            .await
            .unwrap();
        assert!(!batch.is_empty(), "read returned nothing before the end");
        from = batch.last().unwrap().offset + 1;
        out.extend(batch);
    }
    out
}

/// As [`read_all`], where quarantined regions may leave offsets out (also at the end,
/// where a read then waits and returns nothing).
pub async fn read_all_skipping(log: &dyn Log, topic: &str, partition: u32) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let end = log.offsets(topic, partition).await.unwrap().end;
    let mut from = log.offsets(topic, partition).await.unwrap().start;
    let limits = ReadLimits {
        wait: Duration::from_millis(50),
        ..ReadLimits::default()
    };
    while from < end {
        let batch = log.read(topic, partition, from, limits).await.unwrap();
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        out.extend(batch);
    }
    out
}

pub async fn topic(log: &dyn Log, name: &str, partitions: u32) {
    log.ensure_topic(&TopicSpec::new(name, partitions))
        .await
        .unwrap();
}

/// Switches for [`FaultyStorage`], shared with the test.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every fsync fails with EIO while set.
    pub fail_fsync: AtomicBool,
    /// fsyncs that may still succeed before every later one fails (negative: no limit).
    pub fsyncs_until_failure: AtomicI64,
    /// Bytes that may still be written before writes fail with ENOSPC (negative: no limit).
    pub space_left: AtomicI64,
    /// fsyncs that succeeded.
    pub fsyncs: AtomicU64,
    /// Each fsync takes this many milliseconds longer (a stalling disk).
    pub fsync_delay_ms: AtomicU64,
    /// Every change of a file's length fails with EIO while set.
    pub fail_set_len: AtomicBool,
    /// Every `start_writeback` asked for, in order: file, position, length, and the
    /// file's length at the time.
    pub writebacks: Mutex<Vec<(PathBuf, u64, u64, u64)>>,
    /// Every `start_writeback` fails with EIO (after being recorded) while set.
    pub fail_writeback: AtomicBool,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        let f = Faults::default();
        f.space_left.store(-1, Ordering::SeqCst);
        f.fsyncs_until_failure.store(-1, Ordering::SeqCst);
        Arc::new(f)
    }
}

/// The real disk, with injectable fsync failures and a disk that fills up.
#[derive(Debug)]
pub struct FaultyStorage {
    pub faults: Arc<Faults>,
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn SegmentFile>,
    faults: Arc<Faults>,
    path: PathBuf,
}

impl SegmentFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let left = self.faults.space_left.load(Ordering::SeqCst);
        if left >= 0 && (buf.len() as i64) > left {
            // A real full disk writes what fits, then fails.
            self.inner.write_all_at(&buf[..left as usize], pos)?;
            self.faults.space_left.store(0, Ordering::SeqCst);
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        if left >= 0 {
            self.faults
                .space_left
                .fetch_sub(buf.len() as i64, Ordering::SeqCst);
        }
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        let allowed = self.faults.fsyncs_until_failure.fetch_update(
            Ordering::SeqCst,
            Ordering::SeqCst,
            |n| (n > 0).then(|| n - 1),
        );
        if self.faults.fail_fsync.load(Ordering::SeqCst) || allowed == Err(0) {
            return Err(io::Error::other("injected EIO on fsync"));
        }
        self.faults.fsyncs.fetch_add(1, Ordering::SeqCst);
        let delay = self.faults.fsync_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.faults.fail_set_len.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO on truncate"));
        }
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn start_writeback(&self, pos: u64, len: u64) -> io::Result<()> {
        let file_len = self.inner.len()?;
        let at = (self.path.clone(), pos, len, file_len);
        self.faults.writebacks.lock().unwrap().push(at);
        if self.faults.fail_writeback.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO on writeback"));
        }
        self.inner.start_writeback(pos, len)
    }
}

impl FaultyStorage {
    fn wrap(&self, f: Arc<dyn SegmentFile>, path: &Path) -> Arc<dyn SegmentFile> {
        Arc::new(FaultyFile {
            inner: f,
            faults: self.faults.clone(),
            path: path.to_owned(),
        })
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(self.wrap(DiskStorage.open(path)?, path))
    }
    fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(self.wrap(DiskStorage.open_read_only(path)?, path))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(self.wrap(DiskStorage.create_new(path)?, path))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        DiskStorage.sync_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        DiskStorage.create_dir_all(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        DiskStorage.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        DiskStorage.rename(from, to)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        DiskStorage.list_dir(path)
    }
}

pub const SHORT: Duration = Duration::from_millis(50);
