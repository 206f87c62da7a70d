//! Opening a partition: sealed segments from their indexes (or rescanned), the last
//! segment scanned, torn tails cut only above the durable end.

use super::*;

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
pub(crate) fn open_checkpoint(storage: &dyn Storage, dir: &Path) -> Option<Arc<dyn SegmentFile>> {
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
pub(crate) struct RecoveryCtx<'a> {
    pub(crate) storage: &'a dyn Storage,
    pub(crate) stats: &'a LogStats,
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) dir: &'a Path,
    pub(crate) opts: ScanOptions,
    /// The durable end the writer recorded (see [`crate::durable`]).
    pub(crate) durable: Option<DurableEnd>,
    /// Damage becomes holes readers skip (`on_corruption = "quarantine"`).
    pub(crate) quarantine: bool,
}

impl RecoveryCtx<'_> {
    pub(crate) fn bad(&self, path: &Path, reason: impl Into<String>) -> OpenError {
        OpenError::BadSegment {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(&self, path: &Path, e: std::io::Error) -> OpenError {
        OpenError::Io {
            context: format!("recovering {}", path.display()),
            source: e,
        }
    }

    /// A sealed segment: trusted indexes when intact, otherwise a verifying scan.
    pub(crate) fn open_sealed(&self, base: u64, next_base: u64) -> Result<SegmentView, OpenError> {
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
    pub(crate) fn holes_of(&self, out: &ScanOutcome) -> Vec<Hole> {
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

    pub(crate) fn record_holes(&self, view: &SegmentView, holes: &[Hole], out: &ScanOutcome) {
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
    pub(crate) fn open_last(&self, base: u64) -> Result<(SegmentView, u64), OpenError> {
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

    pub(crate) fn report_damage(&self, path: &Path, out: &ScanOutcome, truncate_tail: bool) {
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

pub(crate) fn summary_of(out: &ScanOutcome) -> SegmentSummary {
    SegmentSummary {
        segment_bytes: out.file_bytes,
        next_offset: out.next_offset,
        max_timestamp_ms: out.max_timestamp_ms,
        records: out.records,
    }
}

pub(crate) fn view_of(
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

pub(crate) fn write_indexes(
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
pub(crate) fn create_segment(
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
pub(crate) fn write_zeroes(file: &dyn SegmentFile, from: u64, end: u64) -> std::io::Result<()> {
    static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
    let mut pos = from;
    while pos < end {
        let n = (end - pos).min(ZEROES.len() as u64) as usize;
        file.write_all_at(&ZEROES[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}
