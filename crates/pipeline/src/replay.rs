//! `hifi replay SINK --from T [--to T]`: delivers again what a sink read over a range of
//! event time — batch as a special case of the stream (a destination that lost a day,
//! a new destination to fill).
//!
//! The sink's input is scanned from the first record stored at or after `from` (a
//! record's timestamp is when hifi stored it, never before its event time, so no event
//! of the range is earlier) to the end it has now, one chunk at a time (bounded memory),
//! and every event whose event time is in `[from, to)` is appended to the sink's first
//! retry tier, due now, with its id, event time and origin: the sink's retrier delivers
//! it (paced by `retry.global.rate`; failures go on through the tiers as usual). The
//! ledger keeps outcomes as sets of origins, so an event delivered again is neither a
//! duplicate nor a new event there. A replay is not remembered: asking twice delivers
//! twice (destinations de-duplicate by event id, which stays the same).

use std::sync::Arc;

use hifi_log::{Log, LogError, Record};
use serde::Serialize;

use crate::event::EventMeta;
use crate::retry::{due_now, retry_topic};

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct Replayed {
    /// Records of the input scanned.
    pub scanned: u64,
    /// Events in the range, sent to the retry tier (none on a dry run).
    pub matched: u64,
    /// Their ids (the first 1 000).
    pub ids: Vec<String>,
}

const IDS_SHOWN: usize = 1000;

/// Replays the events of `input` with event times in `[from_ms, to_ms)` through `sink`.
pub async fn replay(
    log: &Arc<dyn Log>,
    sink: &str,
    input: &str,
    from_ms: i64,
    to_ms: i64,
    dry_run: bool,
    now_ms: i64,
) -> Result<Replayed, LogError> {
    let target = retry_topic(sink, 0);
    let mut done = Replayed::default();
    for p in 0..log.partitions(input).await? {
        let Some(first) = log.offset_for_time(input, p, from_ms).await? else {
            continue; // nothing stored since `from`
        };
        let mut chunks = hifi_log::ChunksToEnd::start(log.as_ref(), input, p, first).await?;
        while let Some(chunk) = chunks.next().await? {
            done.scanned += chunk.len() as u64;
            let records: Vec<Record> = chunk
                .iter()
                .filter_map(|r| {
                    let meta = EventMeta::of(input, p, r);
                    if meta.time_ms < from_ms || meta.time_ms >= to_ms {
                        return None;
                    }
                    if done.ids.len() < IDS_SHOWN {
                        done.ids.push(meta.id.as_str().to_owned());
                    }
                    Some(due_now(
                        &r.record,
                        &meta.origin.to_string(),
                        now_ms,
                        "replayed",
                    ))
                })
                .collect();
            done.matched += records.len() as u64;
            if !dry_run && !records.is_empty() {
                log.append(&target, 0, records).await?;
            }
        }
    }
    Ok(done)
}
