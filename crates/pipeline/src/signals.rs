//! Signals: CloudEvents saying that a fingerprinted topic's bucket of event time is
//! complete (`hifi.bucket.complete`) or that late events changed a complete one
//! (`hifi.bucket.updated`), so that a batch job can start when its data is ready
//! instead of at a fixed hour.
//!
//! Every signal is appended to the topic `__signals` (kept 7 days; `GET /v1/signals`,
//! `hifi signals`) and, with `[signals] webhook`, POSTed there as a structured
//! CloudEvent (`application/cloudevents+json`; tried 5 times with backoff, then logged
//! and left in the topic). A signal's id names its bucket and what it says
//! (`<topic>/<bucket start>/complete`, `…/updated/<count>`): after a crash a signal may
//! be sent again, with the same id.

use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Log, LogError, ReadLimits, Record, Retention, TopicSpec};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::consumer::sleep_or_cancel;

/// The topic of signals.
pub const SIGNALS_TOPIC: &str = "__signals";
/// Signals waiting for the webhook (past it, the webhook misses them: they stay in the
/// topic).
const WEBHOOK_QUEUE: usize = 1024;
const WEBHOOK_ATTEMPTS: u32 = 5;

/// Where signals go.
#[derive(Debug)]
pub struct Signals {
    log: Arc<dyn Log>,
    webhook: Option<mpsc::Sender<Value>>,
}

impl Signals {
    /// Signals into `log`, and to `webhook` when given (its sender runs until `stop`).
    pub fn start(
        log: Arc<dyn Log>,
        webhook: Option<String>,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Arc<Signals> {
        let webhook = webhook.map(|url| {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            tasks.spawn(send_to_webhook(url, rx, stop));
            tx
        });
        Arc::new(Signals { log, webhook })
    }

    /// Creates the signals topic.
    pub async fn prepare(&self) -> Result<(), LogError> {
        let spec = TopicSpec {
            retention: Some(Retention {
                age: Some(Duration::from_secs(7 * 86_400)),
                bytes: None,
                ignore_consumers: false,
            }),
            ..TopicSpec::new(SIGNALS_TOPIC, 1)
        };
        self.log.ensure_topic(&spec).await.map(|_| ())
    }

    /// Makes signals durable, then hands them to the webhook.
    pub async fn emit(&self, signals: Vec<Value>) -> Result<(), LogError> {
        if signals.is_empty() {
            return Ok(());
        }
        let records = signals
            .iter()
            .map(|s| Record::new(serde_json::to_vec(s).unwrap_or_default(), crate::now_ms()))
            .collect();
        self.log.append(SIGNALS_TOPIC, 0, records).await?;
        if let Some(tx) = &self.webhook {
            for s in signals {
                if tx.try_send(s).is_err() {
                    warn!("the signals webhook is behind; a signal was not sent to it (it is in {SIGNALS_TOPIC})");
                }
            }
        }
        Ok(())
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

async fn send_to_webhook(url: String, mut rx: mpsc::Receiver<Value>, stop: CancellationToken) {
    let client = reqwest::Client::new();
    loop {
        let signal = tokio::select! {
            _ = stop.cancelled() => return,
            s = rx.recv() => match s { Some(s) => s, None => return },
        };
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let sent = client
                .post(&url)
                .header("content-type", "application/cloudevents+json")
                .json(&signal)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            if attempt == WEBHOOK_ATTEMPTS {
                warn!(%url, id = %signal["id"], %why, "the signals webhook did not take a signal; it stays in {SIGNALS_TOPIC}");
            } else if !sleep_or_cancel(&stop, wait).await {
                return;
            }
            wait *= 2;
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
