//! `POST /v1/outcomes`: what became of many events, by id — how a load test (or an
//! operator with a list of ids a partner says never arrived) learns which were filtered
//! or dead-lettered on purpose, which are still being retried, and which were lost.
//!
//! The ids are looked up in the source topics from `since` ago (one scan, whatever
//! their number), then each found event's fate is read from the ledger.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hifi_ledger::{Fate, Origin, Outcome};
use hifi_log::ReadLimits;
use hifi_pipeline::event::{header as hdr, EventMeta};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::AdminState;
use crate::ingest::error;

/// Most ids in one request.
pub const IDS_MAX: usize = 100_000;

/// Examples kept per class in the answer.
const EXAMPLES: usize = 20;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesQuery {
    /// Event ids (as ingested).
    pub ids: Vec<String>,
    /// How far back the source topics are searched, e.g. `"30m"`. Default `"1h"`.
    pub since: Option<String>,
}

/// One event's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A sink's destination acknowledged it.
    Delivered,
    /// A stage's filter dropped it on purpose.
    Filtered,
    /// A window stage took it into a window's result.
    Aggregated,
    /// Refused for good (a stage could not read it, or a destination refused it).
    DeadLettered,
    /// Waiting in a sink's retry topics.
    Retrying,
    /// Its bucket is open and it has no terminal outcome yet: still on its way.
    InFlight,
    /// The ledger lists it as lost.
    Lost,
    /// Its bucket settled without listing it as lost (it had a terminal outcome).
    SettledNotLost,
    /// Its bucket lost more events than it lists, or is outside the kept history.
    Unknown,
    /// Not in any source topic since `since`.
    NotFound,
}

fn class(fate: &Fate) -> Class {
    match fate {
        Fate::Open(outcomes) => {
            let has = |o: Outcome| outcomes.contains(&o);
            if has(Outcome::Filtered) {
                Class::Filtered
            } else if has(Outcome::Aggregated) {
                Class::Aggregated
            } else if has(Outcome::DeadLettered) {
                Class::DeadLettered
            } else if has(Outcome::Retrying) && !has(Outcome::Delivered) {
                Class::Retrying
            } else if has(Outcome::Delivered) {
                Class::Delivered
            } else {
                Class::InFlight
            }
        }
        Fate::Lost(_) => Class::Lost,
        Fate::NotLost => Class::SettledNotLost,
        Fate::Unlisted | Fate::Unknown => Class::Unknown,
    }
}

/// The answer.
pub async fn outcomes(
    State(s): State<std::sync::Arc<AdminState>>,
    Json(q): Json<OutcomesQuery>,
) -> Response {
    if q.ids.len() > IDS_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{} ids; at most {IDS_MAX} per request", q.ids.len()),
            json!({}),
        );
    }
    let since = match q.since.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(3600),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("`since` must be a duration like 30m or 2h: {e}"),
                json!({}),
            )
        }
    };
    let from_ms = s.ledger.clock().now_ms() - since.as_millis() as i64;
    let mut wanted: HashSet<&[u8]> = q.ids.iter().map(|i| i.as_bytes()).collect();
    let mut found: Vec<(String, Origin, i64)> = Vec::new();
    for src in &s.sources {
        let Ok(parts) = s.log.partitions(&src.topic).await else {
            continue;
        };
        for p in 0..parts {
            if wanted.is_empty() {
                break;
            }
            if let Err(e) = scan(&s, &src.topic, p, from_ms, &mut wanted, &mut found).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot read {}/{p}: {e}", src.topic),
                    json!({}),
                );
            }
        }
    }
    let events: Vec<(Origin, i64)> = found.iter().map(|(_, o, t)| (o.clone(), *t)).collect();
    let fates = s.ledger.fates(&events);
    let mut counts: HashMap<Class, u64> = HashMap::new();
    let mut examples: HashMap<Class, Vec<String>> = HashMap::new();
    let mut note = |c: Class, id: &str| {
        *counts.entry(c).or_default() += 1;
        let e = examples.entry(c).or_default();
        if e.len() < EXAMPLES {
            e.push(id.to_owned());
        }
    };
    for ((id, _, _), fate) in found.iter().zip(&fates) {
        note(class(fate), id);
    }
    for id in &q.ids {
        if wanted.contains(id.as_bytes()) {
            note(Class::NotFound, id);
        }
    }
    Json(json!({ "counts": counts, "examples": examples })).into_response()
}

/// Finds the wanted ids in one partition from `from_ms` on, moving them to `found`.
async fn scan(
    s: &AdminState,
    topic: &str,
    p: u32,
    from_ms: i64,
    wanted: &mut HashSet<&[u8]>,
    found: &mut Vec<(String, Origin, i64)>,
) -> Result<(), hifi_log::LogError> {
    let Some(mut pos) = s.log.offset_for_time(topic, p, from_ms).await? else {
        return Ok(());
    };
    let end = s.log.offsets(topic, p).await?.end;
    while pos < end && !wanted.is_empty() {
        let limits = ReadLimits {
            max_records: 10_000,
            max_bytes: 8 << 20,
            wait: Duration::ZERO,
        };
        let batch = s.log.read(topic, p, pos, limits).await?;
        let Some(last) = batch.last().map(|r| r.offset) else {
            break;
        };
        for r in &batch {
            let Some(id) = r.record.header(hdr::ID) else {
                continue;
            };
            if wanted.remove(id) {
                let meta = EventMeta::of(topic, p, r);
                let origin = Origin {
                    topic: topic.to_owned(),
                    partition: p,
                    offset: r.offset,
                };
                found.push((meta.id.to_string(), origin, meta.time_ms));
            }
        }
        pos = last + 1;
    }
    Ok(())
}
