//! The batcher: forms batches from the readers' queue and starts deliveries in the fast
//! lane, or in the recovery lane for a batch whose first request failed; while
//! refusals are frequent, batches shrink.

use super::*;

/// Full batches per request slot that may be in the recovery lane at once, and its
/// requests in flight per request slot.
pub(super) const RECOVERING_PER_SLOT: usize = 4;
/// Where a delivery's requests take their slots (see [`Sink::deliver`]). The permit
/// a lane holds is kept until the batch's fates are durable.
pub(super) enum Lane {
    /// A fresh batch, holding one of the batcher's `concurrency` slots.
    Fast { _slot: Slot },
    /// A batch that has failed once (with its place in the recovery lane, or none for a
    /// split-off part or a global retry); each request takes a recovery slot.
    Recovering {
        _place: Option<OwnedSemaphorePermit>,
    },
}

/// The share of recent events a destination refused (non-recoverably), over roughly the
/// last `RefusalRate::WINDOW` events. While it is high, batches shrink so that few good
/// events share a request with a bad one: a destination refuses the whole request, so
/// they would wait for the split that isolates the bad one.
#[derive(Debug, Default)]
pub(super) struct RefusalRate {
    delivered: f64,
    refused: f64,
    /// When a refusal was last logged, and refusals since.
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalRate {
    /// Events after which the counts are halved (older outcomes fade).
    const WINDOW: f64 = 5_000.0;
    /// Refused events per batch aimed at (measured with `scripts/bench-failures`: 0.2
    /// made so many requests that fresh batches queued for slots; 0.5 kept the events
    /// never in a failed request as fast as without failures).
    const REFUSED_PER_BATCH: f64 = 0.5;

    pub(super) fn record(&mut self, delivered: usize, refused: usize) {
        self.delivered += delivered as f64;
        self.refused += refused as f64;
        if self.delivered + self.refused > Self::WINDOW {
            self.delivered /= 2.0;
            self.refused /= 2.0;
        }
    }

    /// Whether this refusal gets a log line (at most one a second); if so, how many
    /// refusals went unlogged since the last line, this one included.
    pub(super) fn take_log_turn(&mut self, now: tokio::time::Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// The batch size to use now, at most `max_events`.
    pub(super) fn batch_limit(&self, max_events: usize) -> usize {
        let seen = self.delivered + self.refused;
        if self.refused < 1.0 || seen <= 0.0 {
            return max_events;
        }
        let rate = self.refused / seen;
        ((Self::REFUSED_PER_BATCH / rate).ceil() as usize).clamp(1, max_events)
    }
}

impl Lane {
    /// The lane of a split-off part or a global retry (no place of its own).
    pub(super) fn part() -> Lane {
        Lane::Recovering { _place: None }
    }
}

/// `n` permits from `sem` (at least one); `None` at shutdown.
pub(super) async fn acquire(
    sem: &Arc<Semaphore>,
    n: usize,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    tokio::select! {
        _ = stop.cancelled() => None,
        p = sem.clone().acquire_many_owned(n) => p.ok(),
    }
}

impl Sink {
    /// Groups queued events into batches and starts deliveries; returns the deliveries
    /// still in flight at shutdown.
    pub(super) async fn batcher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) -> tokio::task::JoinSet<()> {
        let mut in_flight = tokio::task::JoinSet::new();
        let max_bytes = self.cfg.batch.max_bytes.0 as usize;
        // Items received and not yet batched (the rest of one read, in order).
        let mut pending: VecDeque<Item> = VecDeque::new();
        loop {
            let first = match pending.pop_front() {
                Some(i) => i,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return in_flight,
                    next = rx.recv() => match next {
                        Some(items) => {
                            pending.extend(items);
                            continue;
                        }
                        None => return in_flight,
                    },
                },
            };
            // Batch while busy: with a free request slot, send what is queued at once;
            // with every slot busy, keep filling for up to `max_wait`.
            let deadline = tokio::time::Instant::now() + self.cfg.batch.max_wait.0;
            let mut bytes = first.body.len() + 2;
            let mut batch = vec![first];
            let max_events = self
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .batch_limit(
                    if self.cfg.kind == crate::config::SinkType::Http
                        && self.cfg.format().one_per_request()
                    {
                        1
                    } else {
                        self.cfg.batch.max_events
                    },
                );
            while batch.len() < max_events {
                if pending.is_empty() {
                    let next = match rx.try_recv() {
                        Ok(items) => Some(items),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                        Err(mpsc::error::TryRecvError::Empty) if self.slots.free() => None,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            tokio::time::timeout_at(deadline, rx.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                    };
                    let Some(items) = next else { break };
                    pending.extend(items);
                }
                let Some(item) = pending.pop_front() else {
                    continue;
                };
                if bytes + item.body.len() + 1 > max_bytes {
                    pending.push_front(item);
                    break;
                }
                bytes += item.body.len() + 1;
                batch.push(item);
            }
            let Some(permit) = self.slots.acquire(&shutdown).await else {
                return in_flight;
            };
            let (sink, trackers, stop) = (self.clone(), trackers.clone(), stop.clone());
            in_flight.spawn(async move {
                // Held until the fates are durable (memory stays bounded).
                let mut lane = Lane::Fast { _slot: permit };
                if let Some(fates) = sink.deliver(&batch, &stop, &mut lane).await {
                    if sink.settle_until_done(&batch, &fates, 0, &stop).await {
                        // One lock per run of one partition's items (reads come whole).
                        for run in batch.chunk_by(|a, b| a.from == b.from) {
                            let From::Partition(p) = run[0].from else {
                                continue;
                            };
                            let mut t = trackers[p as usize]
                                .lock()
                                .unwrap_or_else(|e| e.into_inner());
                            for item in run {
                                t.outstanding.remove(&item.offset);
                            }
                        }
                    }
                }
            });
            while in_flight.try_join_next().is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalRate;
    use std::time::Duration;

    #[test]
    fn batches_shrink_while_refusals_are_frequent_and_grow_back_after() {
        let mut r = RefusalRate::default();
        assert_eq!(r.batch_limit(500), 500, "no history: full batches");
        // 1 % refused: about 50 events per batch (half a refused event per batch).
        for _ in 0..50 {
            r.record(99, 1);
        }
        assert_eq!(r.batch_limit(500), 50);
        assert_eq!(r.batch_limit(10), 10, "never above the configured size");
        // Everything refused: one event per request.
        for _ in 0..100 {
            r.record(0, 50);
        }
        assert_eq!(r.batch_limit(500), 1);
        // Refusals stop: the old ones fade and batches grow back to full size.
        let mut sizes = Vec::new();
        for _ in 0..100 {
            r.record(500, 0);
            sizes.push(r.batch_limit(500));
        }
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 500, "{sizes:?}");
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_a_count() {
        let mut r = RefusalRate::default();
        let t0 = tokio::time::Instant::now();
        assert_eq!(r.take_log_turn(t0), Some(1));
        for i in 1..=99u64 {
            assert_eq!(r.take_log_turn(t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(r.take_log_turn(t0 + Duration::from_millis(1001)), Some(100));
    }
}
