//! Making the fates of a delivery durable: retried events to the next retry tier (dead
//! letters past `max_age`), refused ones to the dead letters, outcomes to the ledger.

use super::*;

impl Sink {
    /// Makes the fates of a delivery durable: retried events to the retry tier
    /// `next_tier` (dead letters past `max_age`), refused ones to the DLQ; records the
    /// outcomes. An error leaves the events pending (they are re-sent later).
    pub(super) async fn settle(
        &self,
        batch: &[Item],
        fates: &[Fate],
        next_tier: usize,
    ) -> Result<(), LogError> {
        let now = crate::now_ms();
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for (item, fate) in batch.iter().zip(fates) {
            match fate {
                Fate::Delivered => {}
                Fate::Retry { reason, attempts } => {
                    let first = item.retry.map_or(now, |r| r.first_ms);
                    if now - first >= self.cfg.retry.global.max_age.0.as_millis() as i64 {
                        let why = format!(
                            "retries exhausted after {:?}: {reason}",
                            self.cfg.retry.global.max_age.0
                        );
                        dead.push((
                            item,
                            self.dlq_record(
                                item,
                                "retries_exhausted",
                                0,
                                &why,
                                *attempts,
                                first,
                                now,
                            ),
                        ));
                    } else {
                        let tier = next_tier.min(self.tiers() - 1);
                        let due = now + self.cfg.retry.global.schedule[tier].0.as_millis() as i64;
                        let rec = annotate(
                            &item.record,
                            &item.origin.to_string(),
                            vec![
                                (retry_header::ATTEMPTS, attempts.to_string()),
                                (retry_header::FIRST_MS, first.to_string()),
                                (retry_header::DUE_MS, due.to_string()),
                                (retry_header::REASON, reason.clone()),
                            ],
                        );
                        let mut rec = rec;
                        rec.timestamp_ms = now; // retention judges retry records by when they were written
                        retries.push((item, tier, rec));
                    }
                }
                Fate::Dead {
                    status,
                    body,
                    attempts,
                } => {
                    let first = item.retry.map_or(now, |r| r.first_ms);
                    dead.push((
                        item,
                        self.dlq_record(
                            item,
                            "non_recoverable",
                            *status,
                            body,
                            *attempts,
                            first,
                            now,
                        ),
                    ));
                }
            }
        }
        for tier in 0..self.tiers() {
            let recs: Vec<Record> = retries
                .iter()
                .filter(|r| r.1 == tier)
                .map(|r| r.2.clone())
                .collect();
            if !recs.is_empty() {
                self.log
                    .append(&retry_topic(&self.name, tier), 0, recs)
                    .await?;
            }
        }
        if !dead.is_empty() {
            self.log
                .append(
                    &dlq_topic(&self.name),
                    0,
                    dead.iter().map(|d| d.1.clone()).collect(),
                )
                .await?;
        }
        let retrying = retries.iter().map(|(i, _, _)| (Outcome::Retrying, *i));
        let dead_lettered = dead.iter().map(|(i, _)| (Outcome::DeadLettered, *i));
        self.ledger.outcomes(
            retrying
                .chain(dead_lettered)
                .map(|(o, i)| (o, i.origin.as_ref(), i.event_time_ms)),
        );
        let from_retry = batch
            .iter()
            .filter(|i| matches!(i.from, From::Tier(_)))
            .count() as u64;
        self.stats
            .retried_events_total
            .fetch_add(retries.len() as u64, Ordering::Relaxed);
        self.stats
            .dead_lettered_events_total
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        // Concurrent deliveries settle at once: update the gauge atomically.
        let gauge = &self.stats.retrying_events;
        gauge.fetch_add(retries.len() as u64, Ordering::Relaxed);
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(from_retry))
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn dlq_record(
        &self,
        item: &Item,
        class: &str,
        status: u16,
        body: &str,
        attempts: u32,
        first: i64,
        now: i64,
    ) -> Record {
        let mut snippet = body.to_owned();
        if snippet.len() > BODY_SNIPPET_BYTES {
            let mut cut = BODY_SNIPPET_BYTES;
            while !snippet.is_char_boundary(cut) {
                cut -= 1;
            }
            snippet.truncate(cut);
        }
        let reason = DlqReason {
            class: class.into(),
            status,
            body: snippet,
            attempts,
            first_attempt: rfc3339_ms(first),
            last_attempt: rfc3339_ms(now),
        };
        let mut rec = annotate(
            &item.record,
            &item.origin.to_string(),
            vec![(
                retry_header::DLQ_REASON,
                serde_json::to_string(&reason).unwrap_or_default(),
            )],
        );
        rec.timestamp_ms = now;
        rec
    }

    /// [`Self::settle`] until it succeeds (e.g. after a disk-full) or shutdown (false:
    /// the events stay pending and are re-sent after a restart).
    pub(super) async fn settle_until_done(
        &self,
        batch: &[Item],
        fates: &[Fate],
        next_tier: usize,
        stop: &CancellationToken,
    ) -> bool {
        let settle = || self.settle(batch, fates, next_tier);
        retry_until_ok(
            stop,
            &self.name,
            "store the fate of delivered/failed events",
            settle,
        )
        .await
        .is_some()
    }
}
