//! The reader of each input partition: reads from the committed position (through
//! [`crate::consumer::Cursor`]), registers the offsets read in the partition's tracker
//! and queues them for the batcher; a revoked partition drains before it is released.

use super::*;

/// How long a revoked partition's events in flight may take before it is released.
const REVOKE_DRAIN: Duration = Duration::from_secs(15);

impl Sink {
    /// Works on one owned partition: reads it from the committed position until `stop`.
    /// When the partition is revoked (not at shutdown, which drains everything), waits
    /// for its events in flight (bounded) and commits what is done before it is released.
    pub(super) async fn partition_worker(
        self: Arc<Self>,
        p: u32,
        tx: mpsc::Sender<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let group = self.group();
        let limits = ReadLimits {
            max_records: self.cfg.batch.max_events,
            max_bytes: 4 << 20,
            wait: Duration::from_millis(500),
        };
        let log = self.log.as_ref();
        let Some(input_at) =
            Cursor::open(log, &self.name, &group, &self.input, p, limits, &stop).await
        else {
            return;
        };
        let input_at = input_at.measured(&self.stats.busy);
        let pos = input_at.position();
        *trackers[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Tracker {
            outstanding: BTreeSet::new(),
            next: pos,
            committed: pos,
            owned: true,
        };
        self.reader(p, input_at, tx, trackers.clone(), stop).await;
        if shutdown.is_cancelled() {
            return;
        }
        let deadline = tokio::time::Instant::now() + REVOKE_DRAIN;
        while tokio::time::Instant::now() < deadline {
            let idle = trackers[p as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .outstanding
                .is_empty();
            if idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.commit_positions(&trackers).await;
        trackers[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .owned = false;
    }

    /// Reads partition `p` into the batcher's queue, registering each read's offsets in
    /// the partition's tracker.
    pub(super) async fn reader(
        &self,
        p: u32,
        mut input_at: Cursor<'_>,
        tx: mpsc::Sender<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        stop: CancellationToken,
    ) {
        while let Some(read) = input_at.next_or_skip(&stop).await {
            let batch = match read {
                Read::Batch(b) => b,
                Read::Skipped { to } => {
                    trackers[p as usize]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .next = to;
                    continue;
                }
            };
            let first = batch[0].offset;
            let arrival_us = self.ledger.now_us();
            let pos = batch.last().map_or(first, |r| r.offset + 1);
            let cut = self.cfg.skip.as_ref();
            let mut items = Vec::with_capacity(batch.len());
            for r in batch {
                // Delivered from the version published before (crate::versions): passed
                // over before its body is made (after a publish a reader may pass over
                // most of the new version's topic).
                if let Some(cut) = cut {
                    let meta = EventMeta::of(&self.input, p, &r);
                    if cut.passes_over(&meta.origin, meta.time_ms, &r.record) {
                        continue;
                    }
                }
                let mut i = self.item(&self.input, p, From::Partition(p), r, arrival_us);
                // What it delivers all the same is a re-delivery (`--redeliver-from`).
                if cut.is_some_and(|c| c.redelivers(&i.origin, &i.record)) {
                    i.record.headers.push(hifi_log::Header {
                        name: crate::event::header::REDELIVERY.into(),
                        value: Vec::new().into(),
                    });
                }
                items.push(i);
            }
            input_at.seek(pos);
            if cut.is_some() && items.is_empty() {
                trackers[p as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .next = pos;
                continue;
            }
            {
                let mut t = trackers[p as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                t.outstanding.extend(items.iter().map(|i| i.offset));
                t.next = pos;
            }
            // Backpressure: waits while the batcher and deliveries are full. Items
            // abandoned here are never committed: the position stays at or before them.
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                sent = tx.send(items) => sent.is_ok(),
            };
            if !sent {
                let mut t = trackers[p as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                t.outstanding.retain(|&o| o < first);
                t.next = first;
                return;
            }
        }
    }
}
