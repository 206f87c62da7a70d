//! Reads: from the tail cache, or scanning segment files (checking every frame's CRC and
//! offset, quarantining damage), and the time index.

use super::*;

impl PartitionShared {
    pub(crate) fn err_failed(&self, reason: &str) -> LogError {
        LogError::Failed {
            topic: self.topic.clone(),
            partition: self.partition,
            reason: reason.to_owned(),
        }
    }

    pub(crate) fn check_failed(&self) -> Result<(), LogError> {
        match self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
        {
            Some(reason) => Err(self.err_failed(reason)),
            None => Ok(()),
        }
    }

    /// (log start offset, high watermark).
    pub(crate) fn offsets(&self) -> (u64, u64) {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        (view[0].base, view[view.len() - 1].next_offset)
    }

    /// Segment count and bytes, for gauges.
    pub(crate) fn size(&self) -> (usize, u64) {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        (view.len(), view.iter().map(|s| s.visible_bytes).sum())
    }

    pub(crate) fn corruption(
        &self,
        path: &Path,
        offset: u64,
        position: u64,
        reason: &str,
    ) -> LogError {
        LogError::Corruption {
            topic: self.topic.clone(),
            partition: self.partition,
            segment: path.to_path_buf(),
            offset,
            position,
            reason: reason.to_owned(),
        }
    }

    /// Counts and logs a corruption that stops a reader.
    pub(crate) fn report(&self, e: LogError) -> LogError {
        if let LogError::Corruption {
            segment,
            offset,
            position,
            reason,
            ..
        } = &e
        {
            self.stats.corruptions_total.fetch_add(1, Ordering::Relaxed);
            error!(topic = %self.topic, partition = self.partition, segment = %segment.display(),
                offset, position, reason, "corrupt record; reads stop here");
        }
        e
    }

    /// Reads verified records from `from` (blocking I/O; call from a blocking thread).
    /// Records before a damaged one are returned; the damaged one itself is an error
    /// once it is the first to return.
    pub(crate) fn read_blocking(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        // Each damaged region met is quarantined once, then skipped; the bound only
        // stops a segment made entirely of damage from looping here for long.
        for _ in 0..1024 {
            let from = self.past_holes(from);
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let result = self.scan_from(from, |rec, frame_bytes| {
                if rec.offset >= from {
                    bytes += frame_bytes;
                    out.push(rec);
                }
                out.len() < max_records && bytes < max_bytes
            });
            match result {
                Ok(read) => return Ok(own_buffers_if_few(out, bytes, read)),
                Err(LogError::Corruption { .. }) if !out.is_empty() => return Ok(out),
                Err(LogError::Corruption {
                    segment,
                    offset,
                    position,
                    reason,
                    ..
                }) if self.config.on_corruption == OnCorruption::Quarantine => {
                    if !self.quarantine_at(&segment, offset, position, &reason) {
                        let e = self.corruption(&segment, offset, position, &reason);
                        return Err(self.report(e));
                    }
                }
                Err(e) => return Err(self.report(e)),
            }
        }
        Err(self.err_failed("too many damaged regions in one read"))
    }

    /// Offset ranges skipped as quarantined, oldest first.
    pub(crate) fn quarantined(&self) -> Vec<Range<u64>> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        view.iter()
            .flat_map(|s| s.holes.iter().map(|h| h.offset..h.resume_offset))
            .collect()
    }

    /// A segment's open file: the active one's, or a sealed one's from the cache.
    pub(crate) fn file_of(&self, seg: &SegmentView) -> Result<Arc<dyn SegmentFile>, LogError> {
        match &seg.file {
            Some(f) => Ok(f.clone()),
            None => self
                .files
                .get(&seg.path)
                .map_err(|e| LogError::io(format!("opening {}", seg.path.display()), e)),
        }
    }

    /// `from`, or the offset after the quarantined region holding it.
    pub(crate) fn past_holes(&self, from: u64) -> u64 {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let i = view.partition_point(|s| s.base <= from);
        let Some(seg) = i.checked_sub(1).map(|i| &view[i]) else {
            return from;
        };
        seg.holes
            .iter()
            .find(|h| (h.offset..h.resume_offset).contains(&from))
            .map_or(from, |h| h.resume_offset)
    }

    /// Registers the damage a read met at `position` (offset `offset`) of `segment` as
    /// a hole: finds where good frames resume, copies the bytes aside, counts and logs
    /// it. False when the segment is not found (deleted meanwhile) or the damage is at
    /// a known hole already (nothing new to skip: the caller reports it).
    pub(crate) fn quarantine_at(
        &self,
        segment: &Path,
        offset: u64,
        position: u64,
        reason: &str,
    ) -> bool {
        let (file, base, visible, next_offset) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let Some(seg) = view.iter().find(|s| s.path == segment) else {
                return false;
            };
            if seg.holes.iter().any(|h| h.position == position) {
                return false;
            }
            let Ok(file) = self.file_of(seg) else {
                return false;
            };
            (file, seg.base, seg.visible_bytes, seg.next_offset)
        };
        let body_max = self.config.record_bytes_max;
        let resumed =
            crate::segment::resync_in(file.as_ref(), visible, position + 1, offset, body_max)
                .ok()
                .flatten();
        let (resume_position, resume_offset) = resumed.unwrap_or((visible, next_offset));
        let hole = Hole {
            position,
            offset,
            resume_position,
            resume_offset,
        };
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            let Some(seg) = view.iter_mut().find(|s| s.path == segment) else {
                return false;
            };
            if seg.holes.iter().any(|h| h.position == position) {
                return true; // another reader registered it meanwhile
            }
            seg.holes.push(hole);
            seg.holes.sort_by_key(|h| h.position);
        }
        record_hole(
            &self.stats,
            &self.topic,
            self.partition,
            &self.dir,
            segment,
            base,
            file.as_ref(),
            hole,
            reason,
        );
        true
    }

    /// Reads verified records from `from` out of the tail cache, without I/O. `None` when
    /// the cache does not hold `from` (or a cached frame fails verification, which only
    /// a memory fault could cause): the caller then reads the file. The caller checks
    /// `from` against the log start (retention may delete records the cache still holds).
    pub(crate) fn read_tail(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredRecord>> {
        let groups = self
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .groups_from(from, max_bytes)?;
        let body_max = self.config.record_bytes_max;
        let mut out = Vec::new();
        let (mut bytes, mut touched) = (0, 0);
        for (first, frames) in groups {
            touched += frames.len();
            let (mut pos, mut expected) = (0, first);
            while pos < frames.len() {
                if expected < from {
                    // Skip a frame before `from` by its length field alone.
                    if frames.len() - pos < FRAME_HEADER_BYTES {
                        return None;
                    }
                    pos += FRAME_HEADER_BYTES + u32_at(&frames, pos) as usize;
                    expected += 1;
                    if pos > frames.len() {
                        return None;
                    }
                    continue;
                }
                match decode_shared_frame(&frames.slice(pos..), body_max) {
                    Frame::Valid {
                        offset,
                        record,
                        frame_bytes,
                    } if offset == expected => {
                        pos += frame_bytes;
                        expected += 1;
                        bytes += frame_bytes;
                        out.push(StoredRecord { offset, record });
                        if out.len() >= max_records || bytes >= max_bytes {
                            return Some(own_buffers_if_few(out, bytes, touched));
                        }
                    }
                    _ => {
                        warn!(topic = %self.topic, partition = self.partition, offset = expected,
                            "a cached frame failed verification; reading the segment file instead");
                        return None;
                    }
                }
            }
        }
        Some(own_buffers_if_few(out, bytes, touched))
    }

    /// Walks verified records of the segment holding `from`, starting at or before it,
    /// calling `visit(record, frame_bytes)` until it returns false or the segment's
    /// visible end is reached.
    pub(crate) fn scan_from(
        &self,
        from: u64,
        mut visit: impl FnMut(StoredRecord, usize) -> bool,
    ) -> Result<usize, LogError> {
        let (file, path, mut expected, mut pos, bound, holes) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let (start, end) = (view[0].base, view[view.len() - 1].next_offset);
            if from < start || from > end {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    requested: from,
                    start,
                    end,
                });
            }
            if from == end {
                return Ok(0);
            }
            let seg = &view[view.partition_point(|s| s.base <= from) - 1];
            if from >= seg.next_offset {
                return Err(self.corruption(
                    &seg.path,
                    from,
                    seg.visible_bytes,
                    "records missing between segments",
                ));
            }
            let (offset, pos) = seg.indexes.position_for(seg.base, from);
            (
                self.file_of(seg)?,
                seg.path.clone(),
                offset,
                pos,
                seg.visible_bytes,
                seg.holes.clone(),
            )
        };
        let body_max = self.config.record_bytes_max;
        // Records read share the chunk they were read in (no copy per field); a chunk is
        // freed once the last of its records is.
        let mut buf = Bytes::new();
        let mut buf_start = pos;
        let mut read = 0;
        while pos < bound {
            if let Some(h) = holes.iter().find(|h| h.position == pos) {
                pos = h.resume_position;
                expected = h.resume_offset;
                continue;
            }
            let have = (buf_start + buf.len() as u64).saturating_sub(pos) as usize;
            let frame = if have >= FRAME_HEADER_BYTES {
                decode_shared_frame(&buf.slice((pos - buf_start) as usize..), body_max)
            } else {
                Frame::Incomplete {
                    needed: FRAME_HEADER_BYTES,
                }
            };
            match frame {
                Frame::Valid {
                    offset,
                    record,
                    frame_bytes,
                } if offset == expected => {
                    pos += frame_bytes as u64;
                    expected += 1;
                    if !visit(StoredRecord { offset, record }, frame_bytes) {
                        return Ok(read);
                    }
                }
                Frame::Incomplete { needed } => {
                    let chunk = (needed.max(READ_CHUNK_BYTES) as u64).min(bound - pos) as usize;
                    if chunk < needed {
                        return Err(self.corruption(
                            &path,
                            expected,
                            pos,
                            "frame runs past the end of the data",
                        ));
                    }
                    let mut fresh = vec![0; chunk];
                    read_exact_at(file.as_ref(), &mut fresh, pos)
                        .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
                    buf = Bytes::from(fresh);
                    read += chunk;
                    buf_start = pos;
                }
                Frame::Valid { .. } => {
                    return Err(self.corruption(&path, expected, pos, "offset out of sequence"))
                }
                Frame::Invalid { reason } => {
                    return Err(self.corruption(&path, expected, pos, reason))
                }
            }
        }
        Ok(read)
    }

    /// The first offset whose record timestamp is at least `ts` (blocking).
    pub(crate) fn offset_for_time_blocking(&self, ts: i64) -> Result<Option<u64>, LogError> {
        loop {
            let hint = {
                let view = self.view.read().unwrap_or_else(|p| p.into_inner());
                match view.iter().find(|s| s.max_timestamp_ms >= ts) {
                    Some(seg) => seg.indexes.offset_for_time_hint(seg.base, ts),
                    None => return Ok(None),
                }
            };
            let mut found = None;
            let mut last = hint;
            self.scan_from(hint, |rec, _| {
                last = rec.offset;
                if rec.offset >= hint && rec.record.timestamp_ms >= ts {
                    found = Some(rec.offset);
                    return false;
                }
                true
            })
            .map_err(|e| self.report(e))?;
            if found.is_some() {
                return Ok(found);
            }
            // Retention may have moved the segment under us; look again from the top.
            if last < self.offsets().0 {
                continue;
            }
            return Ok(None);
        }
    }
}

/// Counts, logs and copies aside a newly found hole.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_hole(
    stats: &LogStats,
    topic: &str,
    partition: u32,
    dir: &Path,
    segment: &Path,
    base: u64,
    file: &dyn SegmentFile,
    hole: Hole,
    reason: &str,
) {
    stats
        .quarantined_regions_total
        .fetch_add(1, Ordering::Relaxed);
    stats.quarantined_records_total.fetch_add(
        hole.resume_offset.saturating_sub(hole.offset),
        Ordering::Relaxed,
    );
    error!(topic, partition, segment = %segment.display(), position = hole.position,
        offsets = ?(hole.offset..hole.resume_offset), reason,
        "CORRUPTION: damaged records quarantined (copied to quarantine/, skipped by readers; the ledger reports them lost)");
    let entry = QuarantineEntry {
        topic: topic.to_owned(),
        partition,
        segment: segment.to_path_buf(),
        position: hole.position,
        end_position: hole.resume_position,
        first_offset: hole.offset,
        next_offset: hole.resume_offset,
        reason: reason.to_owned(),
        quarantined_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        copied_bytes: 0,
    };
    if let Err(e) = crate::quarantine::copy_aside(file, dir, base, entry) {
        warn!(topic, partition, segment = %segment.display(), %e,
            "could not copy the damaged bytes to quarantine/ (they are skipped all the same)");
    }
}

/// How much a read pulls from the file at once.
pub(crate) const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Records read share the buffers they were decoded from (`buffer_bytes` in all, of
/// which the records' frames are `bytes`). When they are a small part of them (few or
/// small records returned) they get buffers of their own instead of keeping the whole
/// buffers alive while they are in flight.
pub(crate) fn own_buffers_if_few(
    records: Vec<StoredRecord>,
    bytes: usize,
    buffer_bytes: usize,
) -> Vec<StoredRecord> {
    if buffer_bytes > 2 * bytes + READ_CHUNK_BYTES / 4 {
        records.into_iter().map(StoredRecord::unshared).collect()
    } else {
        records
    }
}
