//! The partition's writer thread: group commit, fsync, preallocation, rolling segments,
//! the durable-end checkpoint and retention.

use super::*;

/// The writer thread's state: the only code that writes to a partition.
#[derive(Debug)]
pub(crate) struct Writer {
    /// What readers see; updated after each commit.
    pub(crate) shared: Arc<PartitionShared>,
    /// File system access.
    pub(crate) storage: Arc<dyn Storage>,
    /// The segment being appended to.
    pub(crate) active_file: Arc<dyn SegmentFile>,
    /// Its base offset.
    pub(crate) active_base: u64,
    /// Bytes written to it (all of them visible once the commit finishes).
    pub(crate) written_bytes: u64,
    /// Its length: past `written_bytes` it holds preallocated zeroes.
    pub(crate) file_bytes: u64,
    /// Preallocation failed in this segment (e.g. a full disk); appends grow the file.
    pub(crate) preallocation_off: bool,
    /// Where the active segment's data not yet handed to the disk begins
    /// (`interval`/`never` policies; see [`Writer::start_writeback`]).
    pub(crate) writeback_from: u64,
    /// Offset the next record gets.
    pub(crate) next_offset: u64,
    /// Builds the active segment's sparse indexes.
    pub(crate) indexer: Indexer,
    /// Whether data was written since the last fsync (`interval`/`never` policies).
    pub(crate) unsynced: bool,
    /// When the last fsync finished (`interval` policy).
    pub(crate) last_sync: Instant,
    /// Encoding buffer, reused across commits.
    pub(crate) buf: Vec<u8>,
    /// Slow fsyncs since the last warning about them, and when that was.
    pub(crate) slow_syncs: (u64, Option<Instant>),
    /// The durable-end checkpoint file (see [`crate::durable`]); `None` if it could not
    /// be opened (recovery then works as without it).
    pub(crate) durable_file: Option<Arc<dyn SegmentFile>>,
    /// When the checkpoint file was last fsynced, and whether it changed since.
    pub(crate) durable_synced: (Instant, bool),
}

/// The checkpoint file is fsynced at most this often (see [`crate::durable`]).
pub(crate) const DURABLE_SYNC_EVERY: Duration = Duration::from_secs(1);

/// An fsync taking longer than this is counted and logged as slow: every append of
/// its group commit waited that long for its acknowledgement.
pub(crate) const SLOW_FSYNC: Duration = Duration::from_millis(100);

/// Without an fsync per group (`interval`/`never`), the writer starts the disk writing
/// every this many bytes, so that little is left dirty when a sync must wait for it.
pub(crate) const WRITEBACK_BYTES: u64 = 1 << 20;

/// Writeback stretches end at a multiple of this: a multiple of every page size Linux
/// uses (4, 16 and 64 KiB), so the page the next append fills is never among them.
pub(crate) const WRITEBACK_ALIGN: u64 = 64 << 10;

/// One append request inside a group commit.
pub(crate) struct Pending {
    pub(crate) records: Vec<Record>,
    pub(crate) bytes: usize,
    pub(crate) reply: oneshot::Sender<Result<Range<u64>, LogError>>,
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
    pub(crate) fn preallocate(&mut self) {
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
    pub(crate) fn checkpoint(&mut self) {
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
    pub(crate) fn sync_checkpoint(&mut self) {
        let (Some(file), true) = (&self.durable_file, self.durable_synced.1) else {
            return;
        };
        if let Err(e) = file.sync_data() {
            warn!(topic = %self.shared.topic, partition = self.shared.partition, %e,
                "cannot fsync the durable-end checkpoint");
        }
        self.durable_synced = (Instant::now(), false);
    }

    pub(crate) fn fail(&self, reason: String) {
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
    pub(crate) fn sync_data(&mut self) -> std::io::Result<()> {
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

    pub(crate) fn sync_if_dirty(&mut self) {
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

    pub(crate) fn append_batch(&mut self, batch: Vec<Pending>) {
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
    pub(crate) fn commit_group(&mut self, group: Vec<Pending>) {
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
    pub(crate) fn write_and_sync(&mut self, pos0: u64) -> Result<(), LogError> {
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
    pub(crate) fn start_writeback(&mut self, end: u64) {
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
    pub(crate) fn keep_in_tail(&mut self, first: u64, end: u64) {
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
    pub(crate) fn publish(&mut self, new_idx: Indexes, max_ts: i64, first: u64) {
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
    pub(crate) fn roll(&mut self) -> Result<(), LogError> {
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
    pub(crate) fn apply_retention(
        &mut self,
        retention: Retention,
        now_ms: i64,
        keep_from: Option<u64>,
    ) {
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
    pub(crate) fn hold(&mut self, held: u64) {
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
