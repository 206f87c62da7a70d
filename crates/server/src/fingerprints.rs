//! `GET /v1/fingerprints?node=&version=&from=&to=`: the summary statistics of the topics that
//! nodes fingerprint (`[sources.X.fingerprint]`, `[stages.X.fingerprint]`), per
//! event-time bucket: events, per field nulls, null rate, distinct values (estimated),
//! numeric count, min, max and mean, and entropy for the fields asked (exact, or an
//! estimate with bounds). Without `node`: every fingerprinted node. With `version` (of
//! the versioned stage `node`): that version's fingerprint — the stage's own while it
//! is published, its candidate's beside it. The default range is the last day.
//!
//! `GET /v1/signals?type=&limit=`: the newest signals that buckets of fingerprinted
//! topics are complete or were updated by late events (`hifi_pipeline::signals`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::AdminState;

/// `node` (`sources.X` or `stages.X`), `version` (of stage `node`), `from` and `to`
/// (RFC 3339 or epoch ms).
#[derive(Debug, Deserialize)]
pub struct FingerprintQuery {
    node: Option<String>,
    version: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Answers `GET /v1/fingerprints`.
pub async fn fingerprints(
    State(s): State<Arc<AdminState>>,
    Query(q): Query<FingerprintQuery>,
) -> Response {
    let day_ago = (s.ledger.clock().now_ms() - 86_400_000).to_string();
    let from = q.from.as_deref().unwrap_or(&day_ago);
    let (from, to) = match crate::admin::range(&s, Some(from), q.to.as_deref()) {
        Ok(r) => r,
        Err(why) => return crate::admin::bad_request(&why),
    };
    let node = match (&q.node, &q.version) {
        (None, Some(_)) => {
            return crate::admin::bad_request(
                "`version` needs `node`: the versioned stage (node=stages.big&version=3f2a9c1d)",
            )
        }
        (Some(node), Some(_)) if node.starts_with("sources.") => {
            return crate::admin::bad_request(&format!(
                "`version` is for a versioned stage (node=stages.X), not {node}"
            ))
        }
        (Some(node), Some(version)) => {
            let stage = node.strip_prefix("stages.").unwrap_or(node);
            match crate::versions::fingerprint_node(&s.versions, stage, version) {
                Ok(n) => Some(n),
                Err(why) => return crate::ingest::error(StatusCode::NOT_FOUND, &why, json!({})),
            }
        }
        (node, None) => node.clone(),
    };
    let chosen: Vec<_> = s
        .fingerprints
        .iter()
        .filter(|f| node.as_deref().is_none_or(|n| n == f.node))
        .collect();
    if let (Some(node), true) = (&node, chosen.is_empty()) {
        let known: Vec<&str> = s.fingerprints.iter().map(|f| f.node.as_str()).collect();
        return crate::ingest::error(
            StatusCode::NOT_FOUND,
            &format!(
                "{node:?} is not a fingerprinted node running here ({})",
                if known.is_empty() {
                    "none is: add [sources.X.fingerprint] or [stages.X.fingerprint]".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            json!({}),
        );
    }
    let nodes: Vec<_> = chosen
        .iter()
        .map(|f| {
            let r = f.report(from, to);
            let buckets: Vec<_> = r
                .buckets
                .iter()
                .map(|(start, sum, verdicts)| {
                    json!({
                        "complete": verdicts.is_some(),
                        "audits": verdicts,
                        "start": hifi_pipeline::event::rfc3339_ms(*start),
                        "start_ms": start,
                        "end_ms": start + r.bucket_ms,
                        "count": sum.count,
                        "not_objects": sum.not_objects,
                        "untracked": sum.untracked,
                        "fields": sum.fields,
                    })
                })
                .collect();
            json!({
                "node": r.node,
                "topic": r.topic,
                "bucket_ms": r.bucket_ms,
                "entropy_fields": r.entropy_fields,
                "read_to": r.read_to,
                "too_old": r.too_old,
                "buckets": buckets,
            })
        })
        .collect();
    Json(json!({"from_ms": from, "to_ms": to, "nodes": nodes})).into_response()
}

/// `type` (`complete`, `updated`, or a full type) and `limit` (default 100, at most
/// 10 000).
#[derive(Debug, Deserialize)]
pub struct SignalsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// Answers `GET /v1/signals`: the newest signals of `__signals`, oldest first.
pub async fn signals(State(s): State<Arc<AdminState>>, Query(q): Query<SignalsQuery>) -> Response {
    let kind = q.kind.map(|k| match k.as_str() {
        "complete" | "updated" => format!("hifi.bucket.{k}"),
        _ => k,
    });
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    match hifi_pipeline::signals::recent(s.log.as_ref(), kind.as_deref(), limit).await {
        Ok(v) => Json(json!({"signals": v})).into_response(),
        Err(e) => crate::ingest::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot read the signals: {e}"),
            json!({}),
        ),
    }
}
