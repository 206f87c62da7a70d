//! Global retries and dead letters of one HTTP sink (and the dead letters of a stage,
//! which use the same DLQ format: see `stage.rs`).
//!
//! # Topics (created with the sink, one partition each)
//! - `__retry.<sink>.<tier>` — one topic per delay tier of `retry.global.schedule`
//!   (default 30 s, 2 min, 10 min, 30 min, 1 h, 2 h). Every record in a tier waits the same
//!   delay, so records become due in append order: the retrier only ever looks at the head
//!   of each tier, never scans.
//! - `__dlq.<sink>` — dead letters, with the reason.
//! - `__dlq.<sink>.redriven` — offsets of dead letters already re-driven (so a second
//!   re-drive does not send them again).
//!
//! A retried or dead-lettered record is the original record (value and headers, with
//! `hifi-origin` added) plus headers:
//!
//! | header | meaning |
//! |---|---|
//! | `hifi-retry-attempts` | delivery attempts so far |
//! | `hifi-retry-first-ms` | first failed attempt, epoch ms |
//! | `hifi-retry-due-ms` | when the next attempt is due, epoch ms |
//! | `hifi-retry-reason` | the last failure |
//! | `hifi-dlq-reason` | (dead letters) JSON: `class`, `status`, `body` (≤ 1 KiB), `attempts`, `first_attempt`, `last_attempt` |

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Header, Log, LogError, Record, TopicSpec};
use serde::{Deserialize, Serialize};

use crate::event::{header, rfc3339_ms, EventMeta};

/// Header names of retried and dead-lettered records.
pub mod retry_header {
    /// Attempts so far.
    pub const ATTEMPTS: &str = "hifi-retry-attempts";
    /// First failure, epoch ms.
    pub const FIRST_MS: &str = "hifi-retry-first-ms";
    /// Next attempt due, epoch ms.
    pub const DUE_MS: &str = "hifi-retry-due-ms";
    /// Last failure.
    pub const REASON: &str = "hifi-retry-reason";
    /// Dead-letter reason (JSON).
    pub const DLQ_REASON: &str = "hifi-dlq-reason";
}

/// Topic of a retry tier.
pub fn retry_topic(sink: &str, tier: usize) -> String {
    format!("__retry.{sink}.{tier}")
}

/// Topic of a sink's dead letters.
pub fn dlq_topic(sink: &str) -> String {
    format!("__dlq.{sink}")
}

/// Topic of the dead letters a sink (or stage) re-drove.
pub fn redriven_topic(sink: &str) -> String {
    format!("__dlq.{sink}.redriven")
}

/// Creates a sink's retry, DLQ and re-drive topics. Retry topics keep records for at
/// least `keep` (the global `max_age` plus the longest delay, so nothing is deleted
/// before it is due), whatever the engine's default retention.
pub async fn ensure_topics(
    log: &dyn Log,
    sink: &str,
    tiers: usize,
    keep: Duration,
) -> Result<(), LogError> {
    let retention = hifi_log::Retention {
        age: Some(keep.max(Duration::from_secs(7 * 24 * 3600))),
        bytes: None,
        ignore_consumers: false,
    };
    for t in 0..tiers {
        let spec = TopicSpec {
            retention: Some(retention),
            ..TopicSpec::new(retry_topic(sink, t), 1)
        };
        log.ensure_topic(&spec).await?;
    }
    log.ensure_topic(&TopicSpec::new(dlq_topic(sink), 1))
        .await?;
    log.ensure_topic(&TopicSpec::new(redriven_topic(sink), 1))
        .await?;
    Ok(())
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DlqReason {
    /// `non_recoverable` or `retries_exhausted`.
    pub class: String,
    /// Last HTTP status (0 for a transport error).
    pub status: u16,
    /// Last failure: response body snippet (≤ 1 KiB) or transport error.
    pub body: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// First failed attempt, RFC 3339.
    pub first_attempt: String,
    /// Last attempt, RFC 3339.
    pub last_attempt: String,
}

/// Retry bookkeeping of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts so far.
    pub attempts: u32,
    /// First failure, epoch ms.
    pub first_ms: i64,
}

fn hdr_str<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

/// The retry state carried by a record (none for a first delivery).
pub fn retry_state(r: &Record) -> Option<RetryState> {
    Some(RetryState {
        attempts: hdr_str(r, retry_header::ATTEMPTS)?.parse().ok()?,
        first_ms: hdr_str(r, retry_header::FIRST_MS)?.parse().ok()?,
    })
}

/// When a retry record is due (epoch ms).
pub fn due_ms(r: &Record) -> i64 {
    hdr_str(r, retry_header::DUE_MS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The record to store for a retry or dead letter: the original, with its origin made
/// explicit and the retry headers replaced.
pub fn annotate(original: &Record, origin: &str, extra: Vec<(&'static str, String)>) -> Record {
    let mut r = original.clone();
    r.headers
        .retain(|h| !h.name.starts_with("hifi-retry-") && h.name != retry_header::DLQ_REASON);
    if r.header(header::ORIGIN).is_none() {
        r.headers.push(Header {
            name: header::ORIGIN.into(),
            value: origin.to_owned().into(),
        });
    }
    for (name, value) in extra {
        r.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
    }
    r
}

/// A record for a sink's first retry tier, due now, as if it had not been tried yet
/// (re-driven dead letters, replays): `reason` says why it is there.
pub fn due_now(original: &Record, origin: &str, now_ms: i64, reason: &str) -> Record {
    annotate(
        original,
        origin,
        vec![
            (retry_header::ATTEMPTS, "0".into()),
            (retry_header::FIRST_MS, now_ms.to_string()),
            (retry_header::DUE_MS, now_ms.to_string()),
            (retry_header::REASON, reason.to_owned()),
        ],
    )
}

/// One dead letter as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Position in the DLQ topic.
    pub dlq_offset: u64,
    /// Event id.
    pub id: String,
    /// Origin.
    pub origin: String,
    /// Event time.
    pub event_time: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: String,
    /// Why.
    pub reason: Option<DlqReason>,
    /// Whether it was re-driven already.
    pub redriven: bool,
}

pub(crate) async fn redriven(log: &dyn Log, sink: &str) -> Result<BTreeSet<u64>, LogError> {
    let mut set = BTreeSet::new();
    hifi_log::read_to_end(log, &redriven_topic(sink), 0, 0, |r| {
        if let Ok(s) = std::str::from_utf8(&r.record.value) {
            set.extend(s.split(',').filter_map(|x| x.parse::<u64>().ok()));
        }
    })
    .await?;
    Ok(set)
}

/// Visits every dead letter of a sink, oldest first, with its record. Reads one chunk at
/// a time: memory stays bounded however long the DLQ is (but for the set of re-driven
/// offsets, 8 bytes or so each).
pub async fn scan_dead_letters(
    log: &dyn Log,
    sink: &str,
    mut visit: impl FnMut(DeadLetter, Record),
) -> Result<(), LogError> {
    let done = redriven(log, sink).await?;
    let topic = dlq_topic(sink);
    hifi_log::read_to_end(log, &topic, 0, 0, |stored| {
        let (d, r) = dead_letter(&topic, stored, &done);
        visit(d, r)
    })
    .await
}

fn dead_letter(
    topic: &str,
    stored: hifi_log::StoredRecord,
    redriven: &BTreeSet<u64>,
) -> (DeadLetter, Record) {
    let offset = stored.offset;
    let meta = EventMeta::of(topic, 0, &stored);
    let r = stored.record;
    (
        DeadLetter {
            dlq_offset: offset,
            id: meta.id.to_string(),
            origin: meta.origin.to_string(),
            event_time: rfc3339_ms(meta.time_ms),
            dead_lettered_at: rfc3339_ms(r.timestamp_ms),
            reason: hdr_str(&r, retry_header::DLQ_REASON)
                .and_then(|j| serde_json::from_str(j).ok()),
            redriven: redriven.contains(&offset),
        },
        r,
    )
}

/// What to re-drive.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedriveFilter {
    /// Only dead letters from this time on (RFC 3339 or epoch ms).
    pub since_ms: Option<i64>,
    /// Only those whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Count, do not send.
    #[serde(default)]
    pub dry_run: bool,
}

/// The result of a re-drive.
#[derive(Debug, Clone, Serialize)]
pub struct RedriveResult {
    /// Dead letters matching the filter and not re-driven before.
    pub matched: usize,
    /// Of those, sent back through the sink (0 on a dry run).
    pub redriven: usize,
    /// Their event ids (the first `REDRIVE_IDS_SHOWN`).
    pub ids: Vec<String>,
}

/// Ids a re-drive answers with at most.
pub const REDRIVE_IDS_SHOWN: usize = 1000;

/// Sends matching dead letters of `sink` (a sink or a stage) to `target` — a sink's first
/// retry tier (due now), a stage's re-drive topic — with their original ids and event
/// times; marks them re-driven. Works through the DLQ
/// one read chunk at a time (bounded memory); each chunk's re-driven letters are
/// appended and then marked, so a crash between the two re-drives that chunk again
/// (duplicates, not loss).
pub async fn redrive(
    log: &Arc<dyn Log>,
    sink: &str,
    target: &str,
    filter: &RedriveFilter,
    now_ms: i64,
) -> Result<RedriveResult, LogError> {
    let done = redriven(log.as_ref(), sink).await?;
    let topic = dlq_topic(sink);
    let mut result = RedriveResult {
        matched: 0,
        redriven: 0,
        ids: Vec::new(),
    };
    let mut chunks = hifi_log::ChunksToEnd::start(log.as_ref(), &topic, 0, 0).await?;
    while let Some(chunk) = chunks.next().await? {
        let chosen: Vec<(DeadLetter, Record)> = chunk
            .into_iter()
            .map(|stored| dead_letter(&topic, stored, &done))
            .filter(|(d, r)| {
                !d.redriven
                    && filter.since_ms.is_none_or(|t| r.timestamp_ms >= t)
                    && filter.reason_contains.as_ref().is_none_or(|s| {
                        let reason = hdr_str(r, retry_header::DLQ_REASON).unwrap_or("");
                        reason.contains(s.as_str())
                    })
            })
            .collect();
        result.matched += chosen.len();
        let room = REDRIVE_IDS_SHOWN.saturating_sub(result.ids.len());
        result
            .ids
            .extend(chosen.iter().take(room).map(|(d, _)| d.id.clone()));
        if filter.dry_run || chosen.is_empty() {
            continue;
        }
        let records: Vec<Record> = chosen
            .iter()
            .map(|(d, r)| due_now(r, &d.origin, now_ms, "re-driven from the dead-letter queue"))
            .collect();
        log.append(target, 0, records).await?;
        let offsets: Vec<String> = chosen
            .iter()
            .map(|(d, _)| d.dlq_offset.to_string())
            .collect();
        log.append(
            &redriven_topic(sink),
            0,
            vec![Record::new(offsets.join(","), now_ms)],
        )
        .await?;
        result.redriven += chosen.len();
    }
    Ok(result)
}

#[cfg(test)]
mod redrive_tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;

    /// A DLQ longer than one read chunk (5 000) is re-driven whole, once, with a bounded
    /// list of ids in the answer.
    #[tokio::test]
    async fn a_long_dlq_is_redriven_chunk_by_chunk_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(
            hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap(),
        );
        ensure_topics(log.as_ref(), "out", 1, Duration::from_secs(60))
            .await
            .unwrap();
        let n = 12_001;
        for start in (0..n).step_by(4000) {
            let records = (start..n.min(start + 4000))
                .map(|i| Record::new(format!("{{\"n\":{i}}}"), 1_000))
                .collect();
            log.append(&dlq_topic("out"), 0, records).await.unwrap();
        }
        let mut listed = 0;
        scan_dead_letters(log.as_ref(), "out", |d, _| {
            assert!(!d.redriven);
            listed += 1;
        })
        .await
        .unwrap();
        assert_eq!(listed, n);

        let all = RedriveFilter::default();
        let first = redrive(&log, "out", &retry_topic("out", 0), &all, 2_000)
            .await
            .unwrap();
        assert_eq!((first.matched, first.redriven), (n, n));
        assert_eq!(first.ids.len(), REDRIVE_IDS_SHOWN);
        let retried = log.offsets(&retry_topic("out", 0), 0).await.unwrap();
        assert_eq!(
            retried.end - retried.start,
            n as u64,
            "every letter re-sent once"
        );

        let second = redrive(&log, "out", &retry_topic("out", 0), &all, 3_000)
            .await
            .unwrap();
        assert_eq!((second.matched, second.redriven), (0, 0));
        let mut redriven = 0;
        scan_dead_letters(log.as_ref(), "out", |d, _| {
            redriven += usize::from(d.redriven)
        })
        .await
        .unwrap();
        assert_eq!(redriven, n);
    }
}
