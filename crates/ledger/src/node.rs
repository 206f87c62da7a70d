//! One node's handle: records outcomes and lag, and flushes them to the journal.

use super::*;

/// One node's handle: records outcomes and lag, and flushes them durably.
#[derive(Debug)]
pub struct NodeLedger {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) node: String,
    pub(crate) pending: Mutex<Delta>,
    /// One flush at a time: a flush returns only when everything recorded before it is
    /// durable (a concurrent caller waits for the flush in progress, then flushes).
    pub(crate) flushing: tokio::sync::Mutex<()>,
    /// Records nothing (a node the ledger does not account for, e.g. a candidate
    /// version of a stage).
    pub(crate) detached: bool,
}

impl NodeLedger {
    /// Whether the ledger records anything.
    pub fn enabled(&self) -> bool {
        self.ledger.cfg.enabled && !self.detached
    }

    /// Now in µs on the ledger's clock.
    pub fn now_us(&self) -> i64 {
        self.ledger.clock.now_us()
    }

    /// Records an outcome for an event.
    pub fn outcome(&self, outcome: Outcome, origin: &Origin, event_time_ms: i64) {
        self.outcomes([(outcome, origin.as_ref(), event_time_ms)]);
    }

    /// Records the (outcome, origin, event time ms) of each event of a batch, under one
    /// lock. A run of events with the same outcome and bucket at consecutive offsets of
    /// one partition (a stored request; most of a delivered batch) is added as a range.
    pub fn outcomes<'a>(&self, events: impl IntoIterator<Item = (Outcome, OriginRef<'a>, i64)>) {
        if !self.enabled() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_all(events);
    }

    /// Records an event's lag at this node (times in µs since the epoch).
    pub fn lag(&self, event_time_ms: i64, arrival_us: i64, departure_us: i64) {
        self.lags([(event_time_ms, arrival_us)], departure_us);
    }

    /// Records the lag of events that left this node together at `departure_us`: (event
    /// time ms, arrival µs) each, under one lock.
    pub fn lags(&self, events: impl IntoIterator<Item = (i64, i64)>, departure_us: i64) {
        if !self.enabled() {
            return;
        }
        let mut rec = self.ledger.lag[&self.node]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = rec.skewed_events;
        rec.record_batch(
            events.into_iter().map(|(event_time_ms, arrival_us)| {
                (event_time_ms.saturating_mul(1000), arrival_us)
            }),
            departure_us,
        );
        let skewed = rec.skewed_events - before;
        if skewed > 0 {
            self.ledger
                .stats
                .skewed_events_total
                .fetch_add(skewed, Ordering::Relaxed);
        }
    }

    /// Appends everything recorded so far to the journal, durably, and makes it part of
    /// the open buckets. Call before committing the input position. On error nothing is
    /// lost: the records stay pending for the next flush.
    pub async fn flush(&self) -> Result<(), LogError> {
        let _one_at_a_time = self.flushing.lock().await;
        let _not_while_settling = self.ledger.journal_gate.read().await;
        let delta = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if delta.is_empty() {
            return Ok(());
        }
        let now = self.ledger.clock.now_ms();
        let records: Vec<Record> = delta
            .encode(&self.node)
            .into_iter()
            .map(|v| Record::new(v, now))
            .collect();
        match self.ledger.log.append(JOURNAL_TOPIC, 0, records).await {
            Ok(offsets) => {
                self.ledger.merge(&self.node, &delta, offsets[0]);
                Ok(())
            }
            Err(e) => {
                self.ledger
                    .stats
                    .journal_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for ((b, o), set) in delta.sets {
                    union_into(p.sets.entry((b, o)).or_default(), &set);
                }
                Err(e)
            }
        }
    }
}
