//! Signals: CloudEvents saying that a fingerprinted topic's bucket of event time is
//! complete (`hifi.bucket.complete`) or that late events changed a complete one
//! (`hifi.bucket.updated`), so that a batch job can start when its data is ready
//! instead of at a fixed hour.
//!
//! Every signal is appended to the topic `__signals` (kept 7 days; `GET /v1/signals`,
//! `hifi signals`) and, with `[signals] webhook`, POSTed there as a structured
//! CloudEvent (`application/cloudevents+json`). The webhook is fed from the topic, in
//! order, from a committed position (group `signals.webhook`; a first start begins at
//! the topic's end), by one process: the one owning the topic in that group. An outage
//! of the webhook (shorter than the topic's 7 days) or a crash of hifi delays signals,
//! loses none: each is tried again with backoff ([`crate::webhook`]) until the webhook
//! takes it, except one it refuses (a 4xx other than 408 and 429: logged and passed
//! over). A signal's id names its bucket and what it says
//! (`<topic>/<bucket start>/complete`, `…/updated/<count>`): after a crash, and when
//! the group rebalances (a process joining or leaving, a reload), a signal may be sent
//! again, with the same id.

use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Log, LogError, ReadLimits, Record, Retention, TopicSpec};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::consumer::{retry_until_ok, Cursor};

/// The topic of signals.
pub const SIGNALS_TOPIC: &str = "__signals";
/// The consumer group whose position in [`SIGNALS_TOPIC`] is up to where the webhook
/// took the signals.
pub const WEBHOOK_GROUP: &str = "signals.webhook";

/// Where signals go.
#[derive(Debug)]
pub struct Signals {
    log: Arc<dyn Log>,
    /// With a webhook: told by [`Signals::prepare`] that its group has a position.
    webhook_from: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Signals {
    /// Signals into `log`, and to `webhook` when given (its sender runs until `stop`).
    pub fn start(
        log: Arc<dyn Log>,
        webhook: Option<String>,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Arc<Signals> {
        let webhook_from = webhook.map(|url| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.spawn(send_to_webhook(log.clone(), url, rx, stop));
            tx
        });
        Arc::new(Signals {
            log,
            webhook_from: std::sync::Mutex::new(webhook_from),
        })
    }

    /// Creates the signals topic, and a first position for the webhook (the topic's
    /// end: it is not sent what was signalled before it was configured).
    pub async fn prepare(&self) -> Result<(), LogError> {
        let spec = TopicSpec {
            retention: Some(Retention {
                age: Some(Duration::from_secs(7 * 86_400)),
                bytes: None,
                // The webhook's position holds nothing back: a webhook down (or
                // removed from the file) for 7 days misses what retention removed. (A
                // topic created by an earlier hifi keeps its rule: the embedded engine
                // does not change an existing topic's retention.)
                ignore_consumers: true,
            }),
            ..TopicSpec::new(SIGNALS_TOPIC, 1)
        };
        self.log.ensure_topic(&spec).await?;
        let has_webhook = self
            .webhook_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if has_webhook
            && self
                .log
                .committed(WEBHOOK_GROUP, SIGNALS_TOPIC, 0)
                .await?
                .is_none()
        {
            let end = self.log.offsets(SIGNALS_TOPIC, 0).await?.end;
            let committed = self
                .log
                .commit_many(WEBHOOK_GROUP, SIGNALS_TOPIC, &[(0, end)])
                .await;
            // Refused when another process starting at the same time committed and
            // joined the group first: its position stands.
            if let Err(e) = committed {
                if self
                    .log
                    .committed(WEBHOOK_GROUP, SIGNALS_TOPIC, 0)
                    .await?
                    .is_none()
                {
                    return Err(e);
                }
            }
        }
        let tx = self
            .webhook_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        Ok(())
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

/// Sends the webhook every signal from its group's position on, in order, committing
/// past each one it took (or refused for good); until `stop`. One process sends: the one
/// that owns the topic's partition in the group (others with fingerprints wait their
/// turn, as a stage's replicas do).
async fn send_to_webhook(
    log: Arc<dyn Log>,
    url: String,
    from: tokio::sync::oneshot::Receiver<()>,
    stop: CancellationToken,
) {
    let node = "signals.webhook";
    // Set by `Signals::prepare` before any signal is emitted.
    tokio::select! {
        _ = stop.cancelled() => return,
        from = from => if from.is_err() { return },
    }
    let client = reqwest::Client::new();
    let membership = crate::owned::run_owned(
        log.as_ref(),
        node,
        WEBHOOK_GROUP,
        SIGNALS_TOPIC,
        &stop,
        |p, owned| {
            let (log, url, client) = (log.clone(), url.clone(), client.clone());
            async move { send_owned(log.as_ref(), (&url, &client), p, &owned).await }
        },
    )
    .await;
    drop(membership); // every signal taken was committed
}

/// [`send_to_webhook`] for partition `p`, owned until `stop`.
async fn send_owned(
    log: &dyn Log,
    (url, client): (&str, &reqwest::Client),
    p: u32,
    stop: &CancellationToken,
) {
    let node = "signals.webhook";
    let Some(start) = retry_until_ok(stop, node, "read its position in the signals", || async {
        Ok::<_, LogError>(
            match log.committed(WEBHOOK_GROUP, SIGNALS_TOPIC, p).await? {
                Some(at) => at,
                None => log.offsets(SIGNALS_TOPIC, p).await?.end,
            },
        )
    })
    .await
    else {
        return;
    };
    let limits = ReadLimits {
        max_records: 100,
        max_bytes: 16 << 20,
        wait: Duration::from_millis(500),
    };
    let mut cursor = Cursor::at(log, node, SIGNALS_TOPIC, p, start, limits)
        .retention_hint(" (signals the webhook was never sent)");
    while let Some(batch) = cursor.next(stop).await {
        for r in batch {
            match serde_json::from_slice::<Value>(&r.record.value) {
                Ok(signal) => {
                    if !crate::webhook::post_until_taken(client, (url, "signals"), &signal, stop)
                        .await
                    {
                        return;
                    }
                }
                Err(e) => warn!(
                    offset = r.offset, %e,
                    "a record of {SIGNALS_TOPIC} is not a signal; passed over"
                ),
            }
            cursor.seek(r.offset + 1);
            let at = [(p, r.offset + 1)];
            if retry_until_ok(stop, node, "commit its position in the signals", || {
                log.commit_many(WEBHOOK_GROUP, SIGNALS_TOPIC, &at)
            })
            .await
            .is_none()
            {
                return;
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
