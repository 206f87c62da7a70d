//! Signals: CloudEvents saying that a fingerprinted topic's bucket of event time is
//! complete (`hifi.bucket.complete`) or that late events changed a complete one
//! (`hifi.bucket.updated`), so that a batch job can start when its data is ready
//! instead of at a fixed hour.
//!
//! Every signal is appended to the topic `__signals` (kept 7 days; `GET /v1/signals`,
//! `hifi signals`) and, with `[signals] webhook`, POSTed there as a structured
//! CloudEvent (`application/cloudevents+json`), fed from the topic ([`crate::webhook`]:
//! in order, from the position of group `signals.webhook`, by one process, until
//! taken). A signal's id names its bucket and what it says
//! (`<topic>/<bucket start>/complete`, `…/updated/<count>`): after a crash, and when
//! the group rebalances (a process joining or leaving, a reload), a signal may be sent
//! again, with the same id.

use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Log, LogError, ReadLimits, Record, Retention, TopicSpec};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::webhook::{self, Feed, Pick};

/// The topic of signals.
pub const SIGNALS_TOPIC: &str = "__signals";
/// The consumer group whose position in [`SIGNALS_TOPIC`] is up to where the webhook
/// took the signals.
pub const WEBHOOK_GROUP: &str = "signals.webhook";

/// Where signals go.
#[derive(Debug)]
pub struct Signals {
    log: Arc<dyn Log>,
}

impl Signals {
    /// Creates the signals topic and, with `webhook`, its first position (the topic's
    /// end: it is not sent what was signalled before it was configured) and its sender
    /// (until `stop`); without, forgets that position.
    pub async fn start(
        log: Arc<dyn Log>,
        webhook: Option<String>,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Arc<Signals>, LogError> {
        let spec = TopicSpec {
            retention: Some(Retention {
                age: Some(Duration::from_secs(7 * 86_400)),
                bytes: None,
                // The webhook's position holds nothing back: a webhook down for 7 days
                // misses what retention removed.
                ignore_consumers: true,
            }),
            ..TopicSpec::new(SIGNALS_TOPIC, 1)
        };
        log.ensure_topic(&spec).await?;
        match webhook {
            Some(url) => {
                webhook::first_position(log.as_ref(), &FEED).await?;
                tasks.spawn(webhook::follow(log.clone(), FEED, url, || AsIs, stop));
            }
            None => webhook::forget(log.as_ref(), &FEED).await,
        }
        Ok(Arc::new(Signals { log }))
    }

    /// Makes signals durable (the webhook reads them from there).
    pub async fn emit(&self, signals: Vec<Value>) -> Result<(), LogError> {
        if signals.is_empty() {
            return Ok(());
        }
        let records = signals
            .iter()
            .map(|s| Record::new(serde_json::to_vec(s).unwrap_or_default(), crate::now_ms()))
            .collect();
        self.log.append(SIGNALS_TOPIC, 0, records).await.map(|_| ())
    }
}

/// The newest `limit` signals (oldest first), of type `kind` when given.
pub async fn recent(
    log: &dyn Log,
    kind: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, LogError> {
    let offsets = match log.offsets(SIGNALS_TOPIC, 0).await {
        Ok(o) => o,
        Err(LogError::TopicNotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Read back in steps until enough of the kind are found.
    let mut found = Vec::new();
    let mut to = offsets.end;
    while to > offsets.start && found.len() < limit {
        let from = to.saturating_sub(1000).max(offsets.start);
        let mut part = Vec::new();
        let limits = ReadLimits {
            max_records: (to - from) as usize,
            max_bytes: 64 << 20,
            wait: Duration::ZERO,
        };
        let mut at = from;
        while at < to {
            let recs = log.read(SIGNALS_TOPIC, 0, at, limits).await?;
            let Some(last) = recs.last().map(|r| r.offset) else {
                break;
            };
            for r in recs.into_iter().filter(|r| r.offset < to) {
                if let Ok(v) = serde_json::from_slice::<Value>(&r.record.value) {
                    if kind.is_none_or(|k| v["type"] == k) {
                        part.push(v);
                    }
                }
            }
            at = last + 1;
        }
        part.extend(found);
        found = part;
        to = from;
    }
    let skip = found.len().saturating_sub(limit);
    Ok(found.split_off(skip))
}

/// The signals webhook's feed.
const FEED: Feed = Feed {
    node: "signals.webhook",
    group: WEBHOOK_GROUP,
    topic: SIGNALS_TOPIC,
    what: "signals",
};

/// Every record of [`SIGNALS_TOPIC`] is sent as it is, a structured CloudEvent.
struct AsIs;

impl Pick for AsIs {
    fn pick(&mut self, offset: u64, value: &[u8]) -> Option<Value> {
        match serde_json::from_slice::<Value>(value) {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!(offset, %e, "a record of {SIGNALS_TOPIC} is not a signal; passed over");
                None
            }
        }
    }
}

/// A signal about a bucket, as a CloudEvent of type `kind` (`hifi.bucket.complete`, …).
pub fn bucket_signal(node: &str, kind: &str, id: String, subject: String, data: Value) -> Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("hifi/{node}"),
        "type": kind,
        "time": crate::event::rfc3339_ms(crate::now_ms()),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    })
}
