//! The embedded engine: topics of partitions in a data directory, one process at a time.
//!
//! Opening takes an exclusive lock on `<data_dir>/hifi.lock`, recovers every partition
//! (see [`crate::partition`]) and starts one writer thread per partition plus one
//! maintenance thread (interval fsync, retention). Topic creation is serialised and
//! atomic: partition folders first, then `topic.json` written with rename + directory
//! fsync — a topic without `topic.json` was never acknowledged as created. Deletion
//! stops the topic's writers, drops every group's positions on it and renames its
//! folder into `trash/` (emptied then, and at every open).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{FsyncPolicy, LogConfig, Retention};
use crate::groups::GroupStore;
use crate::partition::{open_partition, PartitionHandle, WriterMsg};
use crate::record::{Record, StoredRecord};
use crate::storage::{read_all, write_file_atomic, DiskStorage, Storage};
use crate::{
    validate_name, Log, LogError, LogStats, OpenError, PartitionOffsets, ReadLimits, TopicSpec,
};

/// The topic metadata file, `topics/<topic>/topic.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicMeta {
    /// On-disk format version of the topic's segments.
    pub(crate) format_version: u8,
    /// The topic's name (same as its folder).
    pub(crate) name: String,
    /// Partition count, fixed at creation.
    pub(crate) partitions: u32,
    /// Age retention in milliseconds; `null` keeps forever.
    pub(crate) retention_ms: Option<u64>,
    /// Size retention per partition in bytes; `null` for no limit.
    pub(crate) retention_bytes: Option<u64>,
    /// Retention deletes what consumers have not read (absent in older files: false).
    #[serde(default)]
    pub(crate) retention_ignore_consumers: bool,
}

#[derive(Debug)]
struct TopicHandle {
    /// Retention applied by the maintenance thread (an `ensure_topic` with another rule
    /// changes it).
    retention: Mutex<Retention>,
    /// One per partition, in partition order.
    partitions: Vec<PartitionHandle>,
}

impl TopicHandle {
    fn retention(&self) -> Retention {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The embedded, on-disk engine. Cheap to clone (shared inside).
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The data directory.
    root: PathBuf,
    /// Limits and policies.
    config: Arc<LogConfig>,
    /// File system access (the real disk, or a fault-injecting one in tests).
    storage: Arc<dyn Storage>,
    /// Counters for metrics.
    stats: Arc<LogStats>,
    /// Open topics.
    topics: RwLock<HashMap<String, Arc<TopicHandle>>>,
    /// Serialises topic creation (and the partition count check).
    create_lock: Mutex<()>,
    /// Committed group positions.
    groups: GroupStore,
    /// Open files of sealed segments, bounded over all partitions.
    files: Arc<crate::files::FileCache>,
    /// Stops the maintenance thread when dropped or sent to.
    maintenance_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Held for the life of the log: one process per data directory.
    _lock: File,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `root` on the real disk, recovering every
    /// partition. Blocking; from async code call it inside `spawn_blocking`.
    pub fn open(root: impl AsRef<Path>, config: LogConfig) -> Result<Self, OpenError> {
        Self::open_with_storage(root, config, Arc::new(DiskStorage))
    }

    /// As [`EmbeddedLog::open`], with a custom [`Storage`] (fault injection in tests).
    pub fn open_with_storage(
        root: impl AsRef<Path>,
        config: LogConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let root = root.as_ref().to_path_buf();
        let ioe = |what: &str, e| OpenError::Io {
            context: format!("{what} {}", root.display()),
            source: e,
        };
        std::fs::create_dir_all(&root).map_err(|e| ioe("creating", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("hifi.lock"))
            .map_err(|e| ioe("opening the lock file in", e))?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked { dir: root });
        }
        storage
            .create_dir_all(&root.join("topics"))
            .map_err(|e| ioe("creating topics/ in", e))?;
        let config = Arc::new(config);
        let stats = Arc::new(LogStats::default());
        let groups = GroupStore::open(
            storage.clone(),
            root.join("groups"),
            config.fsync != FsyncPolicy::Never,
        )?;
        let files = Arc::new(crate::files::FileCache::new(
            storage.clone(),
            config.open_segment_files_max,
        ));
        let log = EmbeddedLog {
            inner: Arc::new(Inner {
                root,
                config,
                storage,
                stats,
                topics: RwLock::new(HashMap::new()),
                create_lock: Mutex::new(()),
                groups,
                files,
                maintenance_stop: Mutex::new(None),
                _lock: lock,
            }),
        };
        log.empty_trash();
        log.open_existing_topics()?;
        log.start_maintenance();
        Ok(log)
    }

    /// The log's counters.
    pub fn stats(&self) -> &Arc<LogStats> {
        &self.inner.stats
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Names of the open topics, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// (segments, bytes) over all partitions, for gauges.
    pub fn disk_usage(&self) -> (usize, u64) {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .values()
            .flat_map(|t| &t.partitions)
            .map(|p| p.shared.size())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Runs retention on every partition now (normally the maintenance thread does this
    /// every `retention_check_interval`); `now_ms` is the wall clock to judge age by.
    pub async fn apply_retention(&self, now_ms: i64) {
        let topics: Vec<_> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in topics {
            for p in &t.partitions {
                let (reply, done) = oneshot::channel();
                let msg = WriterMsg::Retention {
                    retention: t.retention(),
                    now_ms,
                    keep_from: self
                        .inner
                        .groups
                        .min_committed(&p.shared.topic, p.shared.partition),
                    reply: Some(reply),
                };
                if p.tx.send(msg).await.is_ok() {
                    let _ = done.await;
                }
            }
        }
    }

    /// Syncs and stops every writer, then the maintenance thread. Appends after this
    /// fail with [`LogError::Closed`]. Idempotent.
    pub async fn close(&self) {
        if let Some(stop) = self
            .inner
            .maintenance_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        let topics: Vec<_> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in topics {
            for p in &t.partitions {
                p.shutdown(Duration::from_secs(30)).await;
            }
        }
    }

    fn open_existing_topics(&self) -> Result<(), OpenError> {
        let topics_dir = self.inner.root.join("topics");
        let ioe = |e| OpenError::Io {
            context: format!("listing {}", topics_dir.display()),
            source: e,
        };
        for dir in self.inner.storage.list_dir(&topics_dir).map_err(ioe)? {
            let meta_path = dir.join("topic.json");
            let meta = match self.inner.storage.open_read_only(&meta_path) {
                Ok(f) => read_all(f.as_ref()).map_err(ioe)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    warn!(dir = %dir.display(), "topic folder without topic.json (creation was interrupted); ignored");
                    continue;
                }
                Err(e) => return Err(ioe(e)),
            };
            let meta: TopicMeta =
                serde_json::from_slice(&meta).map_err(|e| OpenError::BadTopic {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                })?;
            if meta.format_version != crate::segment::FORMAT_VERSION {
                return Err(OpenError::BadTopic {
                    path: meta_path,
                    reason: format!("format version {} is not supported", meta.format_version),
                });
            }
            let retention = Retention {
                age: meta.retention_ms.map(Duration::from_millis),
                bytes: meta.retention_bytes,
                ignore_consumers: meta.retention_ignore_consumers,
            };
            let handle = self.open_topic(&meta.name, meta.partitions, retention)?;
            self.inner
                .topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(meta.name, Arc::new(handle));
        }
        Ok(())
    }

    fn open_topic(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<TopicHandle, OpenError> {
        let open_now: usize = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|t| t.partitions.len())
            .sum();
        if open_now + partitions as usize > self.inner.config.partitions_max {
            return Err(OpenError::Config(format!(
                "opening topic {name:?} would pass partitions_max ({})",
                self.inner.config.partitions_max
            )));
        }
        // Recovery scans each partition's active segment (CPU-bound: CRCs and frames), so
        // partitions are opened on as many threads as there are cores: a restart after a
        // crash with 4 partitions of ~120 MB active segments took ~1 s on one thread.
        let next = std::sync::atomic::AtomicU32::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(partitions as usize);
        let mut opened: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let p = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if p >= partitions {
                                return mine;
                            }
                            let dir = self.topic_dir(name).join(p.to_string());
                            let result = open_partition(
                                self.inner.storage.clone(),
                                self.inner.files.clone(),
                                self.inner.config.clone(),
                                self.inner.stats.clone(),
                                name,
                                p,
                                dir,
                            );
                            mine.push((p, result));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        opened.sort_by_key(|(p, _)| *p);
        let mut handles = Vec::with_capacity(partitions as usize);
        for (_, result) in opened {
            let (shared, writer) = result?;
            handles.push(PartitionHandle::start(shared, writer)?);
        }
        Ok(TopicHandle {
            retention: Mutex::new(retention),
            partitions: handles,
        })
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.inner.root.join("topics").join(name)
    }

    fn create_topic_blocking(&self, spec: &TopicSpec) -> Result<u32, LogError> {
        let _guard = self
            .inner
            .create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self
            .topic_handle(&spec.name)
            .ok()
            .map(|t| t.partitions.len() as u32)
        {
            return check_partitions(&spec.name, existing, spec.partitions);
        }
        let retention = spec
            .retention
            .unwrap_or(self.inner.config.default_retention);
        let handle = self
            .open_topic(&spec.name, spec.partitions, retention)
            .map_err(|e| match e {
                OpenError::Io { context, source } => LogError::Io { context, source },
                OpenError::Config(_) => LogError::TooManyPartitions {
                    max: self.inner.config.partitions_max,
                },
                other => LogError::Invalid(other.to_string()),
            })?;
        self.write_meta(&spec.name, spec.partitions, retention)
            .and_then(|()| self.inner.storage.sync_dir(&self.inner.root.join("topics")))
            .map_err(|e| LogError::io(format!("creating topic {:?}", spec.name), e))?;
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.name.clone(), Arc::new(handle));
        Ok(spec.partitions)
    }

    /// Moves the topic's folder out of `topics/` in one rename (a crash leaves it whole
    /// or gone), forgets it, then removes its files. What a crash leaves in `trash/` is
    /// removed at the next open.
    fn delete_topic_blocking(&self, topic: &str) -> Result<(), LogError> {
        let _guard = self
            .inner
            .create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let io = |e| LogError::io(format!("deleting topic {topic:?}"), e);
        let trash = self.inner.root.join("trash");
        self.inner.storage.create_dir_all(&trash).map_err(io)?;
        // Positions first: a crash after leaves a topic being deleted without them
        // (deleted again by whoever asked); one before the rename would leave them to
        // a topic created again under this name.
        self.inner.groups.forget_topic(topic)?;
        let dir = self.topic_dir(topic);
        let gone = trash.join(format!("{topic}.{}", now_ms()));
        self.inner.storage.rename(&dir, &gone).map_err(io)?;
        self.inner
            .storage
            .sync_dir(&self.inner.root.join("topics"))
            .map_err(io)?;
        self.inner.storage.sync_dir(&trash).map_err(io)?;
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        self.inner.files.forget_under(&dir);
        if let Err(e) = std::fs::remove_dir_all(&gone) {
            warn!(dir = %gone.display(), %e, "a deleted topic's files could not be removed; they are removed at the next start");
        }
        Ok(())
    }

    /// Removes what deletions left in `trash/` (a crash between the rename and the
    /// removal).
    fn empty_trash(&self) {
        let trash = self.inner.root.join("trash");
        let Ok(entries) = std::fs::read_dir(&trash) else {
            return;
        };
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                warn!(dir = %e.path().display(), %err, "cannot remove a deleted topic's files");
            }
        }
    }

    /// Writes a topic's `topic.json` (atomically).
    fn write_meta(&self, name: &str, partitions: u32, retention: Retention) -> std::io::Result<()> {
        let meta = TopicMeta {
            format_version: crate::segment::FORMAT_VERSION,
            name: name.to_owned(),
            partitions,
            retention_ms: retention.age.map(|d| d.as_millis() as u64),
            retention_bytes: retention.bytes,
            retention_ignore_consumers: retention.ignore_consumers,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("topic metadata serialises");
        let path = self.topic_dir(name).join("topic.json");
        write_file_atomic(self.inner.storage.as_ref(), &path, &json)
    }

    /// Gives an existing topic the retention rule `retention` (in its `topic.json`, then
    /// in force), if it has another.
    fn set_retention_blocking(&self, topic: &str, retention: Retention) -> Result<(), LogError> {
        let _guard = self
            .inner
            .create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let t = self.topic_handle(topic)?;
        let before = t.retention();
        if before == retention {
            return Ok(());
        }
        // In force at once; a topic.json that cannot be written (a full disk, when
        // retention was shortened to make room) is written again at the next start.
        *t.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
        info!(topic, ?before, after = ?retention, "topic retention changed");
        if let Err(e) = self.write_meta(topic, t.partitions.len() as u32, retention) {
            warn!(topic, %e, "cannot store the topic's new retention (in force until it stops; stored at its next start)");
        }
        Ok(())
    }

    fn topic_handle(&self, topic: &str) -> Result<Arc<TopicHandle>, LogError> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::TopicNotFound {
                topic: topic.to_owned(),
            })
    }

    fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(Arc<TopicHandle>, usize), LogError> {
        let t = self.topic_handle(topic)?;
        let n = t.partitions.len() as u32;
        if partition >= n {
            return Err(LogError::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
                partitions: n,
            });
        }
        Ok((t, partition as usize))
    }

    fn start_maintenance(&self) {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let weak = Arc::downgrade(&self.inner);
        let config = self.inner.config.clone();
        let tick = match config.fsync {
            FsyncPolicy::Interval(d) => d.min(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        let spawned = std::thread::Builder::new()
            .name("hifi-log-maint".into())
            .spawn(move || {
                let mut last_retention = std::time::Instant::now();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(tick)
                {
                    let Some(inner) = weak.upgrade() else { return };
                    let retention_due = last_retention.elapsed() >= config.retention_check_interval;
                    if retention_due {
                        last_retention = std::time::Instant::now();
                    }
                    let topics: Vec<_> = inner
                        .topics
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    for t in topics {
                        for p in &t.partitions {
                            if matches!(config.fsync, FsyncPolicy::Interval(_)) {
                                let _ = p.tx.try_send(WriterMsg::Sync);
                            }
                            if retention_due {
                                let msg = WriterMsg::Retention {
                                    retention: t.retention(),
                                    now_ms: now_ms(),
                                    keep_from: inner
                                        .groups
                                        .min_committed(&p.shared.topic, p.shared.partition),
                                    reply: None,
                                };
                                let _ = p.tx.try_send(msg);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => {
                *self
                    .inner
                    .maintenance_stop
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(stop_tx)
            }
            Err(e) => {
                warn!(%e, "could not start the maintenance thread; retention and interval fsync will not run")
            }
        }
    }
}

fn check_partitions(topic: &str, existing: u32, requested: u32) -> Result<u32, LogError> {
    if existing == requested {
        Ok(existing)
    } else {
        Err(LogError::PartitionCountMismatch {
            topic: topic.to_owned(),
            existing,
            requested,
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(LogError::Invalid(format!("blocking task failed: {e}"))))
}

#[async_trait::async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32, LogError> {
        validate_name(&spec.name)?;
        if !(1..=10_000).contains(&spec.partitions) {
            return Err(LogError::Invalid(format!(
                "topic {:?}: partitions must be 1..=10000",
                spec.name
            )));
        }
        if let Ok(t) = self.topic_handle(&spec.name) {
            let n = check_partitions(&spec.name, t.partitions.len() as u32, spec.partitions)?;
            // A rule asked for (not the default of a spec without one) is the topic's from
            // now on: a pipeline file's edited retention takes effect at its next start.
            if let Some(r) = spec.retention.filter(|r| *r != t.retention()) {
                let (log, topic) = (self.clone(), spec.name.clone());
                blocking(move || log.set_retention_blocking(&topic, r)).await?;
            }
            return Ok(n);
        }
        let (log, spec) = (self.clone(), spec.clone());
        blocking(move || log.create_topic_blocking(&spec)).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic_handle(topic)?.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<Vec<u64>, LogError> {
        if records.is_empty() {
            return Err(LogError::Invalid(
                "an append needs at least one record".into(),
            ));
        }
        let max = self.inner.config.record_bytes_max;
        let mut bytes = 0;
        for r in &records {
            let b = r.frame_bytes();
            if b - crate::record::FRAME_HEADER_BYTES > max || !r.fits_frame() {
                return Err(LogError::RecordTooLarge { bytes: b, max });
            }
            bytes += b;
        }
        let (t, i) = self.partition(topic, partition)?;
        let p = &t.partitions[i];
        let held_bytes = p
            .shared
            .held_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if held_bytes > 0 {
            return Err(LogError::RetentionHeld {
                topic: topic.to_owned(),
                partition,
                held_bytes,
            });
        }
        p.shared.check_failed()?;
        let (reply, answer) = oneshot::channel();
        p.tx.send(WriterMsg::Append {
            records,
            bytes,
            reply,
        })
        .await
        .map_err(|_| LogError::Closed)?;
        let range = answer.await.map_err(|_| LogError::Closed)??;
        Ok(range.collect())
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let (t, i) = self.partition(topic, partition)?;
        let shared = t.partitions[i].shared.clone();
        let mut hw = shared.high_watermark.subscribe();
        let deadline = tokio::time::Instant::now() + limits.wait;
        let start = loop {
            // What is visible is the segment view's end (the writer updates it before
            // it answers appenders and moves the watermark, which only wakes readers).
            // Marked seen first, so a commit after the look at the view still wakes us.
            hw.borrow_and_update();
            let (start, end) = shared.offsets();
            // Past the end: the read reports it out of range. A quarantined region up to
            // the end reads as the end: wait there for new records.
            if from != end && shared.past_holes(from) != end {
                break start;
            }
            match tokio::time::timeout_at(deadline, hw.changed()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(Err(_closed)) => return Err(LogError::Closed),
                Ok(Ok(())) => {}
            }
        };
        let max_records = limits
            .max_records
            .clamp(1, self.inner.config.read_records_max);
        let max_bytes = limits.max_bytes.clamp(1, self.inner.config.read_bytes_max);
        // Below the log start (retention deleted it): the file read reports it out of
        // range, even if the tail cache still holds it.
        if from >= start {
            if let Some(records) = shared.read_tail(from, max_records, max_bytes) {
                return Ok(records);
            }
        }
        blocking(move || shared.read_blocking(from, max_records, max_bytes)).await
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, LogError> {
        let (t, i) = self.partition(topic, partition)?;
        let (start, end) = t.partitions[i].shared.offsets();
        Ok(PartitionOffsets { start, end })
    }

    async fn commit_many(
        &self,
        group: &str,
        topic: &str,
        positions: &[(u32, u64)],
    ) -> Result<(), LogError> {
        validate_name(group)?;
        for &(partition, _) in positions {
            self.partition(topic, partition)?;
        }
        if positions.is_empty() {
            return Ok(());
        }
        let (log, group, topic) = (self.clone(), group.to_owned(), topic.to_owned());
        let positions = positions.to_vec();
        blocking(move || log.inner.groups.commit(&group, &topic, &positions)).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        validate_name(topic)?;
        // Writers stop first (appends fail with `Closed` from here on), while the topic
        // is still known: a creation of the same name meanwhile finds it, not its files.
        let handle = self.topic_handle(topic)?;
        for p in &handle.partitions {
            p.shutdown(Duration::from_secs(30)).await;
        }
        let (log, topic) = (self.clone(), topic.to_owned());
        blocking(move || log.delete_topic_blocking(&topic)).await
    }

    async fn delete_group(&self, group: &str) -> Result<(), LogError> {
        validate_name(group)?;
        let (log, group) = (self.clone(), group.to_owned());
        blocking(move || log.inner.groups.delete(&group)).await
    }

    async fn quarantined(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<std::ops::Range<u64>>, LogError> {
        let (t, i) = self.partition(topic, partition)?;
        Ok(t.partitions[i].shared.quarantined())
    }

    /// One process owns every partition. A group joining a topic for the first time is
    /// registered as its reader by committing the oldest stored offset of each
    /// partition it has no position on: retention then keeps what it has not read
    /// (see `Retention::ignore_consumers`), even before its first own commit.
    async fn join(&self, group: &str, topic: &str) -> Result<crate::Membership, LogError> {
        validate_name(group)?;
        let partitions = self.partitions(topic).await?;
        let mut unknown = Vec::new();
        for p in 0..partitions {
            if self.inner.groups.committed(group, topic, p).is_none() {
                unknown.push((p, self.offsets(topic, p).await?.start));
            }
        }
        self.commit_many(group, topic, &unknown).await?;
        Ok(crate::Membership::fixed(partitions))
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        validate_name(group)?;
        self.partition(topic, partition)?;
        Ok(self.inner.groups.committed(group, topic, partition))
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, LogError> {
        let (t, i) = self.partition(topic, partition)?;
        let shared = t.partitions[i].shared.clone();
        blocking(move || shared.offset_for_time_blocking(timestamp_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Record, TopicSpec};

    #[tokio::test]
    async fn a_topic_takes_the_retention_asked_of_it_again_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |days: u64, ignore_consumers| Retention {
            age: Some(Duration::from_secs(days * 86_400)),
            bytes: None,
            ignore_consumers,
        };
        let spec = |r| TopicSpec {
            retention: Some(r),
            ..TopicSpec::new("t", 2)
        };
        let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
        log.ensure_topic(&spec(rule(7, false))).await.unwrap();
        let held = |log: &EmbeddedLog| log.topic_handle("t").unwrap().retention();
        log.ensure_topic(&spec(rule(2, true))).await.unwrap();
        assert_eq!(held(&log), rule(2, true));
        // A spec without a rule (a tool's) leaves it.
        log.ensure_topic(&TopicSpec::new("t", 2)).await.unwrap();
        assert_eq!(held(&log), rule(2, true));
        log.close().await;
        drop(log);
        let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(held(&log), rule(2, true), "kept across a restart");
        assert!(matches!(
            log.ensure_topic(&spec(rule(1, false))).await,
            Ok(2)
        ));
        assert_eq!(held(&log), rule(1, false));
    }

    #[tokio::test]
    async fn a_cached_frame_failing_verification_is_read_from_the_file_instead() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
        log.ensure_topic(&TopicSpec::new("t", 1)).await.unwrap();
        let records: Vec<Record> = (0..5)
            .map(|i| Record::new(format!("value {i}"), 1_700_000_000_000 + i))
            .collect();
        log.append("t", 0, records.clone()).await.unwrap();
        let limits = ReadLimits {
            wait: Duration::ZERO,
            ..ReadLimits::default()
        };
        let from_cache = log.read("t", 0, 0, limits).await.unwrap();
        {
            let (t, i) = log.partition("t", 0).unwrap();
            // A byte inside the first frame's body: its checksum no longer matches.
            t.partitions[i].shared.tail.lock().unwrap().damage(20);
        }
        let from_file = log.read("t", 0, 0, limits).await.unwrap();
        assert_eq!(from_file, from_cache);
        assert_eq!(
            from_file.iter().map(|r| &r.record).collect::<Vec<_>>(),
            records.iter().collect::<Vec<_>>()
        );
        assert_eq!(LogStats::get(&log.stats().corruptions_total), 0);
        log.close().await;
    }
}
