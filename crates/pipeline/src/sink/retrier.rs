//! The retriers: one per retry tier, re-delivering each record when it is due.

use super::*;

impl Sink {
    pub(super) async fn count_waiting_retries(&self) -> Result<(), LogError> {
        let mut waiting = 0;
        for tier in 0..self.tiers() {
            let topic = retry_topic(&self.name, tier);
            let pos = start_position(self.log.as_ref(), &self.retry_group(tier), &topic, 0).await?;
            waiting += self.log.offsets(&topic, 0).await?.end - pos;
        }
        self.stats.retrying_events.store(waiting, Ordering::Relaxed);
        Ok(())
    }

    /// Re-delivers the events of one retry tier when they are due, rate-limited.
    pub(super) async fn retrier(&self, tier: usize, stop: CancellationToken) {
        let topic = retry_topic(&self.name, tier);
        let group = self.retry_group(tier);
        let limits = ReadLimits {
            max_records: self.cfg.batch.max_events,
            max_bytes: 4 << 20,
            wait: Duration::from_secs(1),
        };
        let log = self.log.as_ref();
        let Some(cursor) = Cursor::open(log, &self.name, &group, &topic, 0, limits, &stop).await
        else {
            return;
        };
        let mut tier_at = cursor.retention_hint(": raise the retention of the retry topics");
        while let Some(batch) = tier_at.next(&stop).await {
            // Records of one tier become due in order: wait for the head, take what is due.
            let now = crate::now_ms();
            let head_due = due_ms(&batch[0].record);
            if head_due > now {
                sleep_or_cancel(&stop, Duration::from_millis((head_due - now) as u64)).await;
                continue;
            }
            let arrival_us = self.ledger.now_us();
            let due: Vec<Item> = batch
                .into_iter()
                .take_while(|r| due_ms(&r.record) <= now)
                .map(|r| self.item(&topic, 0, From::Tier(tier), r, arrival_us))
                .collect();
            if !self.pace(due.len() as u64, &stop).await {
                return;
            }
            let Some(fates) = self.deliver(&due, &stop, &mut Lane::part()).await else {
                return;
            };
            if !self.settle_until_done(&due, &fates, tier + 1, &stop).await {
                return;
            }
            // The fates are durable: retry only the bookkeeping, never the deliveries.
            tier_at.seek(due.last().map_or(tier_at.position(), |i| i.offset + 1));
            if !tier_at.commit(&group, &self.ledger, &stop).await {
                return;
            }
        }
    }
}
