//! `POST /v1/sinks/{sink}/replay` with `{"from": T, "to": T, "dry_run": bool}`: delivers
//! again the events of the sink's input whose event time is in `[from, to)` (`to`
//! defaults to now), through the sink's first retry tier (`hifi_pipeline::replay`).
//! Answers `{"scanned", "matched", "ids"}`. It changes state: it needs a token of
//! `[admin.auth]` when configured, as a re-drive does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{parse_time, AdminState};
use crate::ingest::error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    from: String,
    to: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Answers `POST /v1/sinks/{sink}/replay`.
pub async fn replay(
    State(s): State<Arc<AdminState>>,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = crate::admin::may_change_state(&s, &headers) {
        return *r;
    }
    let Some(node) = s.sinks.iter().find(|k| k.name == sink) else {
        let known: Vec<&str> = s.sinks.iter().map(|k| k.name.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            &format!("{sink:?} is not a sink running here ({})", known.join(", ")),
            json!({}),
        );
    };
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be {{\"from\": T, \"to\"?: T, \"dry_run\"?: bool}}: {e}"),
                json!({}),
            )
        }
    };
    let now = s.ledger.clock().now_ms();
    let (from, to) = match (
        parse_time(&b.from),
        b.to.as_deref().map_or(Some(now), parse_time),
    ) {
        (Some(f), Some(t)) if f < t => (f, t),
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`from` must be before `to`",
                json!({}),
            )
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`from` and `to` must be RFC 3339 or epoch milliseconds",
                json!({}),
            )
        }
    };
    if node.cfg.retry.global.schedule.is_empty() {
        return error(
            StatusCode::CONFLICT,
            &format!("sink {sink:?} has no retry tier (retry.global.schedule is empty): a replay goes through the first"),
            json!({}),
        );
    }
    match hifi_pipeline::replay::replay(&s.log, &sink, &node.input, from, to, b.dry_run, now).await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("replay failed: {e}; part of the range may have been sent (a second replay sends it again: destinations de-duplicate by id)"),
            json!({}),
        ),
    }
}
