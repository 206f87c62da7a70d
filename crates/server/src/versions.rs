//! `GET /v1/versions?stage=` — each versioned stage's versions: hash, topic, state
//! (`published`, `candidate`, `retired`), definition and its diff against the
//! published one, the candidate's backfill progress and ETA, blocking audits that
//! failed, and a fingerprint summary per version running here.
//!
//! `POST /v1/versions/{stage}/{version}/publish` — asks `hifi run` to publish the
//! stage's candidate: it stops the nodes (draining), records the publish and starts
//! them again on it; answers 202 at once (the admin API goes away for that moment).
//! It changes state: it needs a token of `[admin.auth]` when configured.
//!
//! `POST /v1/versions/gc` (body optional: `{"stage"?: S, "dry_run"?: true,
//! "with_dead_letters"?: true}`) — deletes retired versions' topics and consumer groups
//! (see [`hifi_pipeline::versions::gc`]); answers what it collected and what it kept. A
//! dry run changes nothing (and needs no token).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hifi_pipeline::versions::Live;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::AdminState;
use crate::ingest::error;

#[derive(Debug, Deserialize)]
pub struct VersionsQuery {
    stage: Option<String>,
}

/// The fingerprinted node of `version` of versioned stage `stage` running here: the
/// stage's own while published, its candidate's beside it; why not otherwise.
pub fn fingerprint_node(live: &Live, stage: &str, version: &str) -> Result<String, String> {
    let version = version.trim_start_matches('v');
    let plan = live
        .plans
        .iter()
        .find(|p| p.stage == stage)
        .ok_or_else(|| {
            format!("stages.{stage} has no versions here (`versions = {{ … }}` on the stage)")
        })?;
    let registry = live.registry.lock().unwrap_or_else(|e| e.into_inner());
    let v = registry
        .stages
        .get(stage)
        .and_then(|sv| sv.versions.get(version))
        .ok_or_else(|| {
            format!("stages.{stage} has no version {version} (hifi versions {stage})")
        })?;
    let state = hifi_pipeline::versions::state_of(plan, v);
    if let Some(node) = running_node(stage, version, state) {
        return Ok(node);
    }
    match state {
        "collected" => Err(format!(
            "version {version} of stages.{stage} was collected (hifi versions gc): its fingerprint went with its topics"
        )),
        state => Err(format!(
            "version {version} of stages.{stage} is {state}: its fingerprint is not running"
        )),
    }
}

/// The node that runs `version` of `stage` in `state`: the stage's own while published,
/// its candidate's beside it; none in any other state.
fn running_node(stage: &str, version: &str, state: &str) -> Option<String> {
    match state {
        "published" => Some(format!("stages.{stage}")),
        "candidate" => Some(format!(
            "stages.{}",
            hifi_pipeline::versions::candidate_name(stage, version)
        )),
        _ => None,
    }
}

/// The versions of every versioned stage (or of `stage`).
pub fn describe(
    live: &Live,
    fingerprints: &[Arc<hifi_pipeline::fingerprint::Fingerprinter>],
    only: Option<&str>,
) -> Vec<Value> {
    let registry = live
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let status = live
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = Vec::new();
    for plan in live
        .plans
        .iter()
        .filter(|p| only.is_none_or(|s| s == p.stage))
    {
        let Some(sv) = registry.stages.get(&plan.stage) else {
            continue;
        };
        let published_def = sv
            .versions
            .get(&plan.published)
            .map(|v| v.definition.clone())
            .unwrap_or_default();
        let mut versions: Vec<&hifi_pipeline::versions::registry::Version> =
            sv.versions.values().collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.created_ms));
        let versions: Vec<Value> = versions
            .into_iter()
            .map(|v| {
                let state = hifi_pipeline::versions::state_of(plan, v);
                let fingerprint = running_node(&plan.stage, &v.version, state)
                    .and_then(|node| fingerprints.iter().find(|f| f.node == node))
                    .map(|f| {
                        let r = f.report(i64::MIN, i64::MAX);
                        json!({
                            "node": f.node,
                            "buckets": r.buckets.len(),
                            "count": r.buckets.iter().map(|(_, s, _)| s.count).sum::<u64>(),
                        })
                    });
                let diff = similar::TextDiff::from_lines(&published_def, &v.definition)
                    .unified_diff()
                    .header(&format!("v{}", plan.published), &format!("v{}", v.version))
                    .to_string();
                json!({
                    "version": v.version,
                    "state": state,
                    "topic": v.topic,
                    "created": hifi_pipeline::event::rfc3339_ms(v.created_ms),
                    "published_at": v.published_ms.map(hifi_pipeline::event::rfc3339_ms),
                    "collected_at": v.collected_ms.map(hifi_pipeline::event::rfc3339_ms),
                    "backfill_from": v.backfill_from_ms.map(hifi_pipeline::event::rfc3339_ms),
                    "definition": v.definition,
                    "input_schema": v.input_schema,
                    "input_version": v.input_version,
                    "diff_against_published": diff,
                    "fingerprint": fingerprint,
                    "status": (state == "candidate").then(|| status.get(&plan.stage).cloned()).flatten(),
                })
            })
            .collect();
        let failure = live
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&plan.stage)
            .cloned();
        out.push(json!({
            "last_publish_failure": failure.map(|f| json!({
                "version": f.version, "error": f.error,
                "at": hifi_pipeline::event::rfc3339_ms(f.at_ms), "at_ms": f.at_ms,
            })),
            "stage": plan.stage,
            "output": plan.output,
            "published": plan.published,
            "candidate": plan.candidate,
            "publish": plan.publish,
            "versions": versions,
        }));
    }
    out
}

/// Answers `GET /v1/versions`.
pub async fn versions(
    State(s): State<Arc<AdminState>>,
    Query(q): Query<VersionsQuery>,
) -> Response {
    if let Some(stage) = &q.stage {
        if !s.versions.plans.iter().any(|p| &p.stage == stage) {
            return error(
                StatusCode::NOT_FOUND,
                &format!("stages.{stage} has no versions here (`versions = {{ … }}` on the stage)"),
                json!({}),
            );
        }
    }
    Json(json!({ "stages": describe(&s.versions, &s.fingerprints, q.stage.as_deref()) }))
        .into_response()
}

/// A JSON body that may be empty (then the default); 400 naming `shape` otherwise.
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("the body must be {shape} (or empty): {e}"),
            json!({}),
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    redeliver_from: Option<String>,
}

/// Answers `POST /v1/versions/{stage}/{version}/publish` (body optional:
/// `{"redeliver_from": T}`).
pub async fn publish(
    State(s): State<Arc<AdminState>>,
    Path((stage, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = crate::admin::may_change_state(&s, &headers) {
        return *r;
    }
    let b: PublishBody = match optional_body(&body, r#"{"redeliver_from"?: T}"#) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let redeliver_from = match b.redeliver_from.as_deref().map(crate::admin::parse_time) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`redeliver_from` must be RFC 3339 or epoch milliseconds",
                json!({}),
            )
        }
    };
    let version = version.strip_prefix('v').unwrap_or(&version).to_owned();
    match s
        .versions
        .request(&stage, &version, "hifi publish", redeliver_from)
    {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(
                json!({"stage": stage, "version": version, "state": "publishing",
                "redeliver_from_ms": redeliver_from}),
            ),
        )
            .into_response(),
        Err(e) => {
            let code = if s.versions.plans.iter().any(|p| p.stage == stage) {
                StatusCode::CONFLICT
            } else {
                StatusCode::NOT_FOUND
            };
            error(code, &e, json!({}))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcBody {
    stage: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    with_dead_letters: bool,
}

/// Answers `POST /v1/versions/gc`.
pub async fn gc(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let b: GcBody = match optional_body(
        &body,
        r#"{"stage"?: S, "dry_run"?: bool, "with_dead_letters"?: bool}"#,
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if !b.dry_run {
        if let Err(r) = crate::admin::may_change_state(&s, &headers) {
            return *r;
        }
    }
    if let Some(stage) = &b.stage {
        if !s.versions.plans.iter().any(|p| &p.stage == stage) {
            return error(
                StatusCode::NOT_FOUND,
                &format!("stages.{stage} has no versions here (`versions = {{ … }}` on the stage)"),
                json!({}),
            );
        }
    }
    match hifi_pipeline::versions::gc::collect(
        s.log.as_ref(),
        &s.versions,
        b.stage.as_deref(),
        b.dry_run,
        b.with_dead_letters,
    )
    .await
    {
        Ok(c) => Json(json!({"dry_run": b.dry_run, "collected": c.collected, "kept": c.kept}))
            .into_response(),
        Err(e) => {
            tracing::error!("hifi versions gc: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, &e, json!({}))
        }
    }
}
