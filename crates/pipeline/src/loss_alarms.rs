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

/// Makes the webhook's first position (the end of the settled tables: it is not sent
/// alarms raised before it was configured), then sends it every alarm until `stop`.
/// Call it after the ledger is open, before it settles anything.
pub async fn start(
    log: Arc<dyn Log>,
    url: String,
    percent: f64,
    stop: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), LogError> {
    webhook::first_position(log.as_ref(), &FEED).await?;
    tasks.spawn(webhook::follow(
        log,
        FEED,
        url,
        move || Alarms::new(percent),
        stop,
    ));
    Ok(())
}

/// Picks the tables that raise an alarm.
struct Alarms {
    percent: f64,
    /// Per bucket start: the most events lost in a table of it over the threshold.
    sent: BTreeMap<i64, u64>,
}

impl Alarms {
    fn new(percent: f64) -> Alarms {
        Alarms {
            percent,
            sent: BTreeMap::new(),
        }
    }

    /// The table of `value` if it raises an alarm (remembered as sent).
    fn alarm(&mut self, value: &[u8]) -> Option<LossTable> {
        let table = serde_json::from_slice::<LossTable>(value).ok()?;
        if !hifi_ledger::alarming(&table, self.percent) {
            return None;
        }
        let sent = self.sent.entry(table.start_ms).or_default();
        if table.e2e_lost <= *sent {
            return None;
        }
        *sent = table.e2e_lost;
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
        let mut a = Alarms::new(1.0);
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
        let mut b = Alarms::new(1.0);
        b.seen(&table(0, 1000, 20));
        b.seen(&table(0, 1000, 20)); // shown twice after a failed read
        assert!(b.pick(6, &table(0, 1000, 20)).is_none());
        assert!(b.pick(7, &table(0, 1000, 21)).is_some());
    }
}
