//! `GET /v1/scale`: per stage and sink, the autoscaling signals and the recommended
//! replica count with its reason ([`hifi_pipeline::scale`]), with the backlog's age in
//! event time, and this process's CPU use.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::admin::AdminState;

/// Answers `GET /v1/scale`.
pub async fn scale(State(s): State<Arc<AdminState>>) -> Response {
    let backlogs = crate::backlog::measure(&s).await;
    let nodes: Vec<Value> = s
        .scale
        .nodes()
        .into_iter()
        .map(|n| {
            let age_ms = backlogs
                .iter()
                .find(|b| b.node == n.node)
                .map_or(0, |b| b.age_ms);
            let mut v = serde_json::to_value(&n).unwrap_or_default();
            v["backlog_seconds"] = json!(age_ms as f64 / 1000.0);
            v
        })
        .collect();
    let p = s.scale.policy();
    Json(json!({
        "policy": {
            "headroom": p.headroom,
            "drain_within_seconds": p.drain_within.0.as_secs_f64(),
            "scale_down_after_seconds": p.scale_down_after.0.as_secs_f64(),
        },
        "process": s.scale.process(),
        "nodes": nodes,
    }))
    .into_response()
}
