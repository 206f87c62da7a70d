//! `[ledger] alarm_webhook`: each loss alarm, a settled bucket's table over the
//! threshold, POSTed as JSON. Fed from the ledger's settled tables (`__ledger_settled`,
//! [`crate::webhook`]): an alarm raised while the webhook is down, or just before hifi
//! is killed, is sent once it is back, while the ledger keeps that table (`history`).
//!
//! A bucket's table is sent when it is over the threshold with more events lost than
//! any of its tables before it (the ledger settles a bucket again when late outcomes
//! change it; with several processes on Kafka each settles it): the same event is not
//! alarmed twice, whichever process settled it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hifi_ledger::{LossTable, SETTLED_TOPIC};
use hifi_log::{Log, LogError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::webhook::{self, Feed, Pick};

/// The loss alarm webhook's feed.
const FEED: Feed = Feed {
    node: "ledger.alarm_webhook",
    group: "ledger.alarm_webhook",
    topic: SETTLED_TOPIC,
    what: "loss alarm",
};

/// With a webhook: makes its first position (the end of the settled tables: it is not
/// sent alarms raised before it was configured), then sends it every alarm until
/// `stop`. Without: forgets its position. Call it after the ledger is open, before it
/// settles anything; `percent` and `history` are the ledger's.
pub async fn start(
    log: Arc<dyn Log>,
    url: Option<String>,
    (percent, history): (f64, Duration),
    stop: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), LogError> {
    let Some(url) = url else {
        webhook::forget(log.as_ref(), &FEED).await;
        return Ok(());
    };
    webhook::first_position(log.as_ref(), &FEED).await?;
    let history_ms = history.as_millis() as i64;
    let alarms = move || Alarms::new(percent, history_ms);
    tasks.spawn(webhook::follow(log, FEED, url, alarms, stop));
    Ok(())
}

/// Picks the tables that raise an alarm.
struct Alarms {
    percent: f64,
    /// How long before now buckets are remembered (the ledger keeps its tables that
    /// long).
    history_ms: i64,
    /// Per bucket start: the most events lost in a table of it over the threshold.
    sent: BTreeMap<i64, u64>,
}

impl Alarms {
    fn new(percent: f64, history_ms: i64) -> Alarms {
        Alarms {
            percent,
            history_ms,
            sent: BTreeMap::new(),
        }
    }

    /// The table of `value` if it raises an alarm (remembered as sent).
    fn alarm(&mut self, value: &[u8]) -> Option<LossTable> {
        let table = serde_json::from_slice::<LossTable>(value).ok()?;
        if !hifi_ledger::alarming(&table, self.percent) {
            return None;
        }
        if self
            .sent
            .get(&table.start_ms)
            .is_some_and(|s| table.e2e_lost <= *s)
        {
            return None;
        }
        // Buckets the ledger no longer keeps are forgotten (by the wall clock: a bucket
        // of a producer's clock far ahead does not push the others out).
        let keep_from = crate::now_ms() - self.history_ms;
        self.sent = self.sent.split_off(&keep_from);
        self.sent.insert(table.start_ms, table.e2e_lost);
        Some(table)
    }
}

impl Pick for Alarms {
    const HISTORY: bool = true;

    fn seen(&mut self, value: &[u8]) {
        self.alarm(value);
    }

    fn pick(&mut self, offset: u64, value: &[u8]) -> Option<Value> {
        let table = self.alarm(value)?;
        serde_json::to_value(&table)
            .inspect_err(|e| warn!(offset, %e, "a loss table cannot be sent; passed over"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(start_ms: i64, events: u64, lost: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "start": "", "start_ms": start_ms, "settled": true, "events": events,
            "nodes": [], "e2e_lost": lost,
            "e2e_loss_percent": 100.0 * lost as f64 / events as f64,
            "lost": [], "lost_complete": true,
        }))
        .unwrap()
    }

    #[test]
    fn a_bucket_alarms_when_its_loss_rises_above_what_was_sent() {
        let mut a = Alarms::new(1.0, 3_600_000);
        assert!(a.pick(0, &table(0, 1000, 5)).is_none(), "0.5 %: under 1 %");
        assert!(a.pick(1, &table(0, 1000, 20)).is_some());
        assert!(
            a.pick(2, &table(0, 1000, 20)).is_none(),
            "settled again (another process)"
        );
        assert!(
            a.pick(3, &table(60_000, 100, 2)).is_some(),
            "another bucket"
        );
        assert!(a.pick(4, &table(0, 1000, 25)).is_some(), "more lost");
        assert!(a.pick(5, b"not a table").is_none());

        // After a restart, what was before the position counts as sent.
        let mut b = Alarms::new(1.0, 3_600_000);
        b.seen(&table(0, 1000, 20));
        b.seen(&table(0, 1000, 20)); // shown twice after a failed read
        assert!(b.pick(6, &table(0, 1000, 20)).is_none());
        assert!(b.pick(7, &table(0, 1000, 21)).is_some());

        // Buckets older than the history before now are forgotten, not the one just
        // sent (its next table with the same loss is not sent again).
        let now = crate::now_ms();
        assert!(b.pick(8, &table(now, 100, 2)).is_some());
        assert_eq!(b.sent.keys().collect::<Vec<_>>(), [&now]);
        assert!(b.pick(9, &table(7_200_000, 100, 2)).is_some());
        assert!(b.pick(10, &table(7_200_000, 100, 2)).is_none());
        // A bucket far ahead (a producer's clock) keeps the others.
        assert!(b.pick(11, &table(now + 86_400_000, 100, 2)).is_some());
        assert!(b.pick(12, &table(now, 100, 2)).is_none());
    }

    /// The webhook's feed over a real log and a webhook on loopback: what it is sent,
    /// across a restart, with tables before it was configured and tables repeated.
    #[tokio::test]
    async fn the_webhook_gets_each_alarm_once_from_its_position_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        // Buckets of ten minutes ago (the feed forgets those older than the history).
        let t0 = (crate::now_ms() / 60_000 - 10) * 60_000;
        let log: Arc<dyn Log> = Arc::new(
            hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap(),
        );
        log.ensure_topic(&hifi_log::TopicSpec::new(SETTLED_TOPIC, 1))
            .await
            .unwrap();
        let append = |t: Vec<u8>| {
            let log = log.clone();
            async move {
                let r = hifi_log::Record::new(t, 0);
                log.append(SETTLED_TOPIC, 0, vec![r]).await.unwrap();
            }
        };
        let (url, bodies) = crate::webhook::tests::webhook(|_| "HTTP/1.1 200 OK").await;
        let sent = || -> Vec<(i64, u64)> {
            let bodies = bodies.lock().unwrap();
            let tables = bodies
                .iter()
                .map(|b| serde_json::from_slice::<LossTable>(b));
            tables
                .map(|t| t.map(|t| (t.start_ms, t.e2e_lost)).unwrap())
                .collect()
        };
        let rule = (0.0, Duration::from_secs(86_400));
        // Raised before the webhook was configured: never sent.
        append(table(t0, 100, 20)).await;
        let run = |stop: CancellationToken| {
            let (log, url) = (log.clone(), url.clone());
            async move {
                let mut tasks = tokio::task::JoinSet::new();
                start(log, Some(url), rule, stop, &mut tasks).await.unwrap();
                tasks
            }
        };
        let stop = CancellationToken::new();
        let mut tasks = run(stop.clone()).await;
        append(table(t0 + 60_000, 100, 3)).await;
        let at = |n: u64| {
            let log = log.clone();
            async move {
                for _ in 0..100 {
                    let c = log.committed(FEED.group, SETTLED_TOPIC, 0).await.unwrap();
                    if c == Some(n) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the webhook's position never reached {n}");
            }
        };
        at(2).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        assert_eq!(sent(), [(t0 + 60_000, 3)]);

        // Stopped: the same table again (another process settled it), more loss in that
        // bucket, the first bucket as before and then with more loss.
        append(table(t0 + 60_000, 100, 3)).await;
        append(table(t0 + 60_000, 100, 5)).await;
        append(table(t0, 100, 20)).await;
        append(table(t0, 100, 21)).await;
        let stop = CancellationToken::new();
        let mut tasks = run(stop.clone()).await;
        at(6).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        assert_eq!(sent(), [(t0 + 60_000, 3), (t0 + 60_000, 5), (t0, 21)]);

        // Not configured any more: its position is forgotten; configured again, it
        // starts at the end.
        let mut tasks = tokio::task::JoinSet::new();
        start(
            log.clone(),
            None,
            rule,
            CancellationToken::new(),
            &mut tasks,
        )
        .await
        .unwrap();
        assert_eq!(
            log.committed(FEED.group, SETTLED_TOPIC, 0).await.unwrap(),
            None
        );
        let stop = CancellationToken::new();
        let mut tasks = run(stop.clone()).await;
        append(table(t0 + 120_000, 100, 1)).await;
        at(7).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        assert_eq!(sent().last(), Some(&(t0 + 120_000, 1)));
        assert_eq!(sent().len(), 4);
    }
}
