//! Webhooks that lose nothing they were given: the signals webhook and the loss alarm
//! webhook.
//!
//! Each is a [`Feed`]: it reads a one-partition topic in order from the committed
//! position of its consumer group (a first start begins at the topic's end:
//! [`first_position`]), POSTs what it picks of each record, and commits past it once
//! the webhook took it. One process sends, the one owning the topic in that group
//! (others wait their turn, as a stage's replicas do); a crash or a rebalance may send
//! a record again. A webhook down, or hifi killed, delays what it is sent and loses
//! none of it while the topic keeps it.
//!
//! Each POST is tried until the receiver takes it ([`post_until_taken`]), with the
//! sinks' rules of delivery ([`crate::delivery`]): an answer is classified as a sink's
//! would be (a 4xx other than 408 and 429 is a refusal for good, logged and passed
//! over), and attempts back off with full jitter, never sooner than a 429's or 503's
//! `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Log, LogError, ReadLimits};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::consumer::{retry_until_ok, sleep_or_cancel, Cursor};
use crate::delivery::{backoff, parse_retry_after, Class, Classifier};

/// Shortest and longest wait between two attempts (before jitter).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A webhook fed from a topic of one partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Feed {
    /// Its name in logs (`signals.webhook`).
    pub node: &'static str,
    /// The consumer group whose position is up to where the webhook took the records.
    pub group: &'static str,
    pub topic: &'static str,
    /// What it sends, for logs (`signals`, `loss alarm`).
    pub what: &'static str,
}

/// What a [`Feed`] sends of its topic's records. A new one is made each time this
/// process comes to own the topic.
pub(crate) trait Pick: Send + 'static {
    /// Whether [`Pick::seen`] is shown the topic's records before the position first.
    const HISTORY: bool = false;
    /// A record before the position: sent already (or before the webhook was
    /// configured). It may be shown the same record twice (a read failed midway).
    fn seen(&mut self, _value: &[u8]) {}
    /// What to POST for a record at or after the position; none passes over it.
    fn pick(&mut self, offset: u64, value: &[u8]) -> Option<Value>;
}

/// Commits the topic's end as the first position of the feed's group when it has none,
/// so that the webhook is not sent what came before it was configured. Call it before
/// [`follow`], and before anything is appended that the webhook must get.
pub(crate) async fn first_position(log: &dyn Log, feed: &Feed) -> Result<(), LogError> {
    if log.committed(feed.group, feed.topic, 0).await?.is_some() {
        return Ok(());
    }
    let end = log.offsets(feed.topic, 0).await?.end;
    let committed = log.commit_many(feed.group, feed.topic, &[(0, end)]).await;
    // Refused when another process starting at the same time committed and joined the
    // group first: its position stands.
    match committed {
        Err(e) if log.committed(feed.group, feed.topic, 0).await?.is_none() => Err(e),
        _ => Ok(()),
    }
}

/// A feed not configured (any more): forgets its group's position, so that configuring
/// it again starts at the topic's end, not with everything since it was removed. Best
/// effort (Kafka refuses while another process is in the group: its webhook goes on).
pub(crate) async fn forget(log: &dyn Log, feed: &Feed) {
    if let Ok(Some(_)) = log.committed(feed.group, feed.topic, 0).await {
        match log.delete_group(feed.group).await {
            Ok(()) => info!(
                group = feed.group,
                "{} webhook not configured: its position is forgotten", feed.what
            ),
            Err(e) => {
                tracing::debug!(group = feed.group, %e, "cannot forget the webhook's position")
            }
        }
    }
}

/// Sends `url` what `pick` picks of every record from the group's position on, in
/// order, committing past each one taken (or refused for good); until `stop`.
pub(crate) async fn follow<P: Pick>(
    log: Arc<dyn Log>,
    feed: Feed,
    url: String,
    pick: impl Fn() -> P,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    let membership = crate::owned::run_owned(
        log.as_ref(),
        feed.node,
        feed.group,
        feed.topic,
        &stop,
        |p, owned| {
            let (log, url, client, pick) = (log.clone(), url.clone(), client.clone(), pick());
            async move { send_owned(log.as_ref(), feed, (&url, &client), (p, pick), &owned).await }
        },
    )
    .await;
    drop(membership); // every record taken was committed
}

/// [`follow`] for partition `p`, owned until `stop`.
async fn send_owned<P: Pick>(
    log: &dyn Log,
    feed: Feed,
    (url, client): (&str, &reqwest::Client),
    (p, mut pick): (u32, P),
    stop: &CancellationToken,
) {
    let node = feed.node;
    let Some(start) = retry_until_ok(stop, node, "read its position", || async {
        Ok::<_, LogError>(match log.committed(feed.group, feed.topic, p).await? {
            Some(at) => at,
            None => log.offsets(feed.topic, p).await?.end,
        })
    })
    .await
    else {
        return;
    };
    if P::HISTORY {
        // Shown again from the start after a failed read: `seen` takes a record twice.
        while let Err(e) = show_history(log, (feed.topic, p), start, &mut pick, stop).await {
            error!(node, %e, "cannot read what it was sent before; retrying");
            if !sleep_or_cancel(stop, Duration::from_secs(1)).await {
                return;
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
    let limits = ReadLimits {
        max_records: 100,
        max_bytes: 16 << 20,
        wait: Duration::from_millis(500),
    };
    let mut cursor = Cursor::at(log, node, feed.topic, p, start, limits)
        .retention_hint(" (what the webhook was never sent)");
    let commit = |next: u64| async move {
        let at = [(p, next)];
        retry_until_ok(stop, node, "commit its position", || {
            log.commit_many(feed.group, feed.topic, &at)
        })
        .await
        .is_some()
    };
    while let Some(batch) = cursor.next(stop).await {
        // Committed after each record sent; records passed over, once per batch (read
        // again after a crash, they are passed over again).
        let mut passed_over = None;
        for r in batch {
            cursor.seek(r.offset + 1);
            let Some(body) = pick.pick(r.offset, &r.record.value) else {
                passed_over = Some(r.offset + 1);
                continue;
            };
            if !post_until_taken(client, (url, feed.what), &body, stop).await
                || !commit(r.offset + 1).await
            {
                return;
            }
            passed_over = None;
        }
        if let Some(next) = passed_over {
            if !commit(next).await {
                return;
            }
        }
    }
}

/// Shows `pick` the records of partition `p` before `start` (until `stop`).
async fn show_history(
    log: &dyn Log,
    (topic, p): (&str, u32),
    start: u64,
    pick: &mut impl Pick,
    stop: &CancellationToken,
) -> Result<(), LogError> {
    let mut chunks = hifi_log::ChunksToEnd::start(log, topic, p, 0).await?;
    while let Some(chunk) = chunks.next().await? {
        if stop.is_cancelled() {
            return Ok(());
        }
        for r in chunk {
            if r.offset >= start {
                return Ok(());
            }
            pick.seen(&r.record.value);
        }
    }
    Ok(())
}

/// POSTs `body` (a signal as a structured CloudEvent, or a loss table) to the `what`
/// webhook at `url` until it takes it (true) or refuses it for good (true, logged);
/// false once `stop` is cancelled, a POST in flight included.
pub(crate) async fn post_until_taken(
    client: &reqwest::Client,
    (url, what): (&str, &str),
    body: &Value,
    stop: &CancellationToken,
) -> bool {
    let content_type = match body.get("specversion") {
        Some(_) => "application/cloudevents+json",
        None => "application/json",
    };
    let id = body
        .get("id")
        .or_else(|| body.get("start"))
        .cloned()
        .unwrap_or_default();
    let rules = Classifier::default();
    for attempt in 1u32.. {
        let send = client
            .post(url)
            .header("content-type", content_type)
            .json(body)
            .timeout(ATTEMPT_TIMEOUT)
            .send();
        let sent = tokio::select! {
            _ = stop.cancelled() => return false,
            sent = send => sent,
        };
        let class = match sent {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                rules.status(r.status().as_u16(), "", retry_after)
            }
            Err(e) => rules.transport(&e.to_string()),
        };
        let (why, retry_after) = match class {
            Class::Success => {
                if attempt > 1 {
                    info!(%url, %id, attempt, "the {what} webhook took it");
                }
                return true;
            }
            Class::NonRecoverable { reason, .. } => {
                error!(%url, %id, %reason, "the {what} webhook refused it; passed over");
                return true;
            }
            Class::Recoverable {
                reason,
                retry_after,
                ..
            } => (reason, retry_after),
        };
        if attempt == 1 || attempt % 10 == 0 {
            warn!(%url, %id, %why, attempt, "the {what} webhook did not take it; trying again");
        }
        let wait = backoff(BACKOFF.0, BACKOFF.1, attempt - 1, retry_after);
        if !sleep_or_cancel(stop, wait).await {
            return false;
        }
    }
    unreachable!("attempts are counted without end")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What a test webhook was POSTed: each request's body, in order.
    pub(crate) type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A webhook on loopback answering its n-th request (from 0) with `answer(n)` (a
    /// status line and headers); returns its URL and the bodies it got.
    pub(crate) async fn webhook(answer: fn(usize) -> &'static str) -> (String, Bodies) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Bodies::default();
        let keep = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The whole request: headers, then `content-length` bytes of body.
                let body = loop {
                    let read = conn.read(&mut buf).await.unwrap_or(0);
                    got.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&got).to_lowercase();
                    let Some(head) = text.find("\r\n\r\n") else {
                        if read == 0 {
                            break Vec::new();
                        }
                        continue;
                    };
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if read == 0 || got.len() >= head + 4 + length {
                        break got[head + 4..].to_vec();
                    }
                };
                let i = {
                    let mut bodies = keep.lock().unwrap();
                    bodies.push(body);
                    bodies.len() - 1
                };
                let reply = format!(
                    "{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    answer(i)
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (url, bodies)
    }

    #[tokio::test]
    async fn a_429_is_tried_again_no_sooner_than_its_retry_after() {
        let (url, count) = webhook(|n| match n {
            0 => "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2",
            _ => "HTTP/1.1 200 OK",
        })
        .await;
        let started = Instant::now();
        let body = serde_json::json!({"specversion": "1.0", "id": "a"});
        let taken = post_until_taken(
            &reqwest::Client::new(),
            (&url, "test"),
            &body,
            &CancellationToken::new(),
        )
        .await;
        assert!(taken);
        assert_eq!(count.lock().unwrap().len(), 2);
        // Without the header the second attempt would come within 200 ms.
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refusal_for_good_is_passed_over_and_a_5xx_is_not() {
        let (url, count) = webhook(|_| "HTTP/1.1 400 Bad Request").await;
        let body = serde_json::json!({"start": 0});
        let client = reqwest::Client::new();
        let stop = CancellationToken::new();
        assert!(post_until_taken(&client, (&url, "test"), &body, &stop).await);
        assert_eq!(count.lock().unwrap().len(), 1, "a 400 is not tried again");

        let (url, count) = webhook(|n| match n {
            0..=2 => "HTTP/1.1 503 Service Unavailable",
            _ => "HTTP/1.1 204 No Content",
        })
        .await;
        assert!(post_until_taken(&client, (&url, "test"), &body, &stop).await);
        assert_eq!(count.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_stop_ends_the_attempts_unsent() {
        let (url, count) = webhook(|_| "HTTP/1.1 500 Internal Server Error").await;
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
        let body = serde_json::json!({"id": "x"});
        let client = reqwest::Client::new();
        assert!(!post_until_taken(&client, (&url, "test"), &body, &stop).await);
        assert!(!count.lock().unwrap().is_empty());
    }
}
