//! What each node that reads a topic has not finished yet, in records and in event
//! time: the lag that keeps growing while a destination is down (when nothing leaves a
//! sink, lag measured on departures says nothing).
//!
//! The ledger reads every such node's committed positions and input ends each tick
//! ([`hifi_ledger::Backlog`]); here the first unfinished record of each partition is read
//! for its event time.

use std::time::Duration;

use hifi_log::ReadLimits;
use hifi_pipeline::event::EventMeta;
use serde::Serialize;

use crate::admin::AdminState;

/// One node's backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeBacklog {
    /// The node.
    pub node: String,
    /// Records of its input it has not finished (not committed past).
    pub records: u64,
    /// Now minus the event time of the oldest unfinished record, ms (0 without backlog).
    pub age_ms: i64,
}

/// Longest time `/metrics` and `/v1/stats` wait for the engine in all: while a Kafka
/// cluster is away each request would otherwise wait its own timeout (10 s), and a
/// scrape would fail exactly when it matters. Past it, what needs the engine is left
/// out (ages from the records read so far; dead-letter counts of the nodes not reached).
const ENGINE_WAIT: Duration = Duration::from_secs(2);

/// Every reading node's backlog now.
pub async fn measure(s: &AdminState) -> Vec<NodeBacklog> {
    let now_ms = hifi_pipeline::now_ms();
    let until = tokio::time::Instant::now() + ENGINE_WAIT;
    let mut out = Vec::new();
    for b in s.ledger.backlogs() {
        let mut oldest: Option<i64> = None;
        for (p, (at, end)) in b.positions.iter().enumerate() {
            if at >= end {
                continue;
            }
            let limits = ReadLimits {
                max_records: 1,
                max_bytes: 1,
                wait: Duration::ZERO,
            };
            let read = s.log.read(&b.input, p as u32, *at, limits);
            if let Ok(Ok(records)) = tokio::time::timeout_at(until, read).await {
                if let Some(r) = records.first() {
                    let t = EventMeta::of(&b.input, p as u32, r).time_ms;
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        out.push(NodeBacklog {
            records: b.records(),
            age_ms: oldest.map_or(0, |t| (now_ms - t).max(0)),
            node: b.node,
        });
    }
    out
}

/// Records retained in each sink's and stage's dead-letter topic (`__dlq.<node>`): what
/// waits there to be looked at or re-driven (re-driven letters stay until retention).
pub async fn dead_letters(s: &AdminState) -> Vec<(String, u64)> {
    let nodes = s
        .sinks
        .iter()
        .map(|k| k.name.clone())
        .chain(s.stages.iter().map(|k| k.name.clone()))
        .chain(s.sources_with_dead_letters.iter().cloned());
    let until = tokio::time::Instant::now() + ENGINE_WAIT;
    let mut out = Vec::new();
    for node in nodes {
        let topic = hifi_pipeline::retry::dlq_topic(&node);
        let count = async {
            let parts = s.log.partitions(&topic).await?;
            let mut n = 0;
            for p in 0..parts {
                let o = s.log.offsets(&topic, p).await?;
                n += o.end.saturating_sub(o.start);
            }
            Ok::<_, hifi_log::LogError>(n)
        };
        let Ok(Ok(n)) = tokio::time::timeout_at(until, count).await else {
            continue;
        };
        out.push((node, n));
    }
    out
}
