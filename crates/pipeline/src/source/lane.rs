//! A topic a source appends to in one engine (the engine's, or the standby's), and which
//! of its records have their `passed` outcome recorded — so that a crash neither loses
//! nor double-counts a tally, and the tally position keeps moving after failed appends.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use hifi_ledger::{NodeLedger, Outcome};
use hifi_log::{Log, LogError, ReadLimits};

use crate::event::EventMeta;

/// Which of this process's records in one partition have their `passed` outcome
/// recorded: all of them below `contiguous`, plus ranges above it recorded out of order
/// (concurrent requests).
///
/// Other writers (another process ingesting the same source, the standby's mover) put
/// records between ours. Theirs are theirs to tally, so a gap may be skipped once it
/// cannot hold one of ours: when none of our appends to the partition is in flight (each
/// is marked, or counted as failed, when it returns) and none failed. A failed append may
/// have left records that nobody tallies: after one, [`Lane::recover`] reads the gaps and
/// tallies what is in them (a record of another writer tallied again changes nothing:
/// tallies are sets of origins).
#[derive(Debug, Default)]
pub(super) struct TallyTracker {
    pub(super) contiguous: u64,
    pub(super) ahead: BTreeMap<u64, u64>,
    /// Our appends to the partition that have not returned yet.
    pub(super) in_flight: u32,
    /// Appends that failed since the gaps were last recovered.
    pub(super) failures: u64,
}

impl TallyTracker {
    pub(super) fn mark(&mut self, range: Range<u64>) {
        if range.end <= self.contiguous {
            return;
        }
        let end = self.ahead.entry(range.start).or_insert(range.end);
        *end = (*end).max(range.end);
        while let Some((&start, &end)) = self.ahead.first_key_value() {
            if start > self.contiguous {
                break;
            }
            self.contiguous = self.contiguous.max(end);
            self.ahead.remove(&start);
        }
    }

    /// The position below which every record of ours has its outcome recorded.
    pub(super) fn position(&mut self) -> u64 {
        if self.in_flight == 0 && self.failures == 0 {
            if let Some((_, &end)) = self.ahead.last_key_value() {
                self.contiguous = self.contiguous.max(end);
            }
            self.ahead.clear();
        }
        self.contiguous
    }
}

/// A topic a source appends to, in one engine: the engine's, or the standby's.
#[derive(Debug)]
pub(crate) struct Lane {
    /// The engine holding it.
    pub(crate) log: Arc<dyn Log>,
    /// The topic's name there.
    pub(crate) topic: String,
    /// Its partitions' name in the ledger's origins: the topic, or `standby:…`.
    pub(crate) origin_topic: String,
    /// Its partition count.
    pub(crate) partitions: u32,
    /// Round-robin partition choice.
    pub(super) next_partition: AtomicU32,
    /// Per partition: which offsets have their outcome recorded (for crash-exact tallies).
    pub(super) tallied: Vec<Mutex<TallyTracker>>,
    /// The tally positions last committed (none read yet: all are committed once).
    committed: Mutex<Vec<Option<u64>>>,
    /// This process's claim on the source's tally group in this engine: no other live
    /// process ingests the source under the same instance name.
    _claim: hifi_log::Claim,
}

impl Lane {
    /// The source's topic `topic` in `log`; claims the tally group there.
    pub(super) async fn open(
        log: Arc<dyn Log>,
        topic: &str,
        origin_topic: String,
        tally_group: &str,
        source: &str,
        instance: Option<&str>,
    ) -> Result<Lane, LogError> {
        let partitions = log.partitions(topic).await?;
        let claim = match log.claim(tally_group, topic).await {
            Err(LogError::InUse { holder, .. }) => {
                return Err(LogError::InUse {
                    name: match instance {
                        Some(i) => format!("source {source} as --instance {i}"),
                        None => format!("source {source} (without --instance)"),
                    },
                    holder: format!("{holder}; every process ingesting the same source needs its own --instance NAME"),
                })
            }
            other => other?,
        };
        Ok(Lane {
            log,
            topic: topic.to_owned(),
            origin_topic,
            partitions,
            next_partition: AtomicU32::new(rand::random::<u32>() % partitions.max(1)),
            tallied: (0..partitions)
                .map(|_| Mutex::new(TallyTracker::default()))
                .collect(),
            committed: Mutex::new(vec![None; partitions as usize]),
            _claim: claim,
        })
    }

    fn tracker(&self, p: u32) -> std::sync::MutexGuard<'_, TallyTracker> {
        self.tallied[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records `passed` for the records stored before a crash whose tallies were not
    /// durable yet (from the tally position to the end); returns how many.
    pub(super) async fn catch_up(&self, ledger: &NodeLedger, group: &str) -> Result<u64, LogError> {
        let mut caught_up = 0;
        for p in 0..self.partitions {
            let end = self.log.offsets(&self.topic, p).await?.end;
            let pos =
                crate::consumer::start_position(self.log.as_ref(), group, &self.topic, p).await?;
            if ledger.enabled() {
                caught_up += self.tally(ledger, p, pos..end, &BTreeMap::new()).await?;
            }
            self.tracker(p).contiguous = end;
        }
        Ok(caught_up)
    }

    /// Records `passed` for every record of `range` not in `skip` (ranges already
    /// recorded); returns how many.
    async fn tally(
        &self,
        ledger: &NodeLedger,
        p: u32,
        range: Range<u64>,
        skip: &BTreeMap<u64, u64>,
    ) -> Result<u64, LogError> {
        // Records below the partition's start are gone (retention): nothing to read.
        let mut at = range
            .start
            .max(self.log.offsets(&self.topic, p).await?.start);
        let mut n = 0;
        while at < range.end {
            if let Some((_, &end)) = skip.range(..=at).next_back().filter(|(_, &e)| e > at) {
                at = end;
                continue;
            }
            let limits = ReadLimits::default();
            let batch = self.log.read(&self.topic, p, at, limits).await?;
            let Some(last) = batch.last().map(|r| r.offset) else {
                break; // a quarantined tail: nothing readable left
            };
            for r in batch.iter().filter(|r| r.offset < range.end) {
                let in_skip = skip
                    .range(..=r.offset)
                    .next_back()
                    .is_some_and(|(_, &e)| e > r.offset);
                if !in_skip {
                    let meta = EventMeta::of(&self.origin_topic, p, r);
                    ledger.outcome(Outcome::Passed, &meta.origin, meta.time_ms);
                    n += 1;
                }
            }
            at = last + 1;
        }
        Ok(n)
    }

    /// After failed appends, once none of ours is in flight: tallies whatever is in the
    /// gaps up to the partition's end (a failed append's records, if it left any), so
    /// that the tally position moves on and the out-of-order ranges stay few.
    pub(super) async fn recover(&self, ledger: &NodeLedger) -> Result<(), LogError> {
        for p in 0..self.partitions {
            let (from, ahead, failures) = {
                let t = self.tracker(p);
                if t.failures == 0 || t.in_flight > 0 {
                    continue;
                }
                (t.contiguous, t.ahead.clone(), t.failures)
            };
            // Read after every append of ours returned: a failed one's records, if any
            // landed, are below it.
            let end = self.log.offsets(&self.topic, p).await?.end;
            if ledger.enabled() {
                self.tally(ledger, p, from..end, &ahead).await?;
            }
            let mut t = self.tracker(p);
            t.mark(from..end);
            if t.failures == failures {
                t.failures = 0;
            }
        }
        Ok(())
    }

    /// The tally position of each partition (see [`TallyTracker::position`]).
    pub(super) fn positions(&self) -> Vec<u64> {
        (0..self.partitions)
            .map(|p| self.tracker(p).position())
            .collect()
    }

    /// Commits the positions that moved since the last commit.
    pub(super) async fn commit(&self, group: &str, positions: &[u64]) -> Result<(), LogError> {
        let moved: Vec<(u32, u64)> = {
            let last = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            positions
                .iter()
                .enumerate()
                .filter(|(p, pos)| last[*p] != Some(**pos))
                .map(|(p, pos)| (p as u32, *pos))
                .collect()
        };
        if moved.is_empty() {
            return Ok(());
        }
        self.log.commit_many(group, &self.topic, &moved).await?;
        let mut last = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        for (p, pos) in moved {
            last[p as usize] = Some(pos);
        }
        Ok(())
    }

    /// Offsets of partition `p` written by another writer whose outcomes are recorded
    /// elsewhere (the standby's mover: the spool's lane recorded them): not a gap.
    pub(crate) fn mark_recorded(&self, p: u32, offsets: &[u64]) {
        let mut t = self.tracker(p);
        for &o in offsets {
            t.mark(o..o + 1);
        }
    }

    /// Whether an append is under way on any partition (begun, not ended).
    pub(super) fn appending(&self) -> bool {
        (0..self.partitions).any(|p| self.tracker(p).in_flight > 0)
    }

    /// Marks an append's start, before it is sent.
    pub(super) fn begin(&self, p: u32) {
        self.tracker(p).in_flight += 1;
    }

    /// Marks an append's end: its offsets (recorded), or a failure.
    pub(super) fn end(&self, p: u32, offsets: Option<&[u64]>) {
        let mut t = self.tracker(p);
        t.in_flight -= 1;
        match offsets {
            Some(o) if !o.is_empty() => t.mark(o[0]..o[o.len() - 1] + 1),
            Some(_) => {}
            None => t.failures += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_left_by_other_writers_are_skipped_only_when_none_of_ours_can_be_in_them() {
        let mut t = TallyTracker {
            in_flight: 2,
            ..Default::default()
        };
        t.mark(0..10);
        t.in_flight -= 1;
        // 10..15 is another process's, or our append still in flight.
        t.mark(15..20);
        assert_eq!(t.position(), 10, "an append of ours is in flight");
        t.in_flight -= 1;
        assert_eq!(
            t.position(),
            20,
            "nothing of ours in flight: the gap is theirs"
        );
        assert!(t.ahead.is_empty());

        t.failures = 1; // may have left records of ours in 20..30
        t.mark(30..40);
        assert_eq!(
            t.position(),
            20,
            "after a failed append, gaps stay until they are recovered"
        );
        // Recovery tallies 20..40 (what is in the gap) and marks it.
        t.mark(20..40);
        t.failures = 0;
        assert_eq!(t.position(), 40);
        assert!(t.ahead.is_empty());
    }

    #[test]
    fn offsets_marked_one_by_one_merge() {
        let mut t = TallyTracker::default();
        for o in [3, 1, 0, 2, 5] {
            t.mark(o..o + 1);
        }
        assert_eq!(t.contiguous, 4);
        assert_eq!(t.ahead.len(), 1);
        t.mark(4..5);
        assert_eq!((t.contiguous, t.ahead.len()), (6, 0));
        t.mark(2..3); // below: nothing changes
        assert_eq!((t.contiguous, t.ahead.len()), (6, 0));
    }
}
