//! The admin API (its own listener, `[admin] listen`).
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz`, `/readyz` | process up / ready: engine open, listeners bound, every node running, disk not full (503 with the reason otherwise) |
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics when `Accept` asks — see [`crate::metrics`] |
//! | `GET /v1/lag` | lag per node and E2E, cumulative and per 10-second window |
//! | `GET /v1/loss?from=&to=&lost=` | loss tables per 1-minute bucket, newest first |
//! | `GET /v1/stats` | counters per node, backlog (records, age of the oldest in event time) and breaker state |
//! | `GET /v1/shadow?from=&to=` | each sink against its shadow (`[sinks.X] shadow`): events both destinations acknowledged, only one, per bucket — see [`crate::shadow`] |
//! | `GET /v1/fingerprints?node=&from=&to=` | summary statistics of fingerprinted topics per event-time bucket (counts, nulls, distinct values, number ranges, entropy) — see [`crate::fingerprints`] |
//! | `GET /v1/signals?type=&limit=` | the newest bucket signals (`hifi.bucket.complete`, `hifi.bucket.updated`) as CloudEvents — see [`crate::fingerprints`] |
//! | `GET /v1/versions?stage=` | versioned stages: each version's hash, topic, state, definition and diff, a candidate's backfill progress and ETA and failed blocking audits — see [`crate::versions`] |
//! | `POST /v1/versions/{stage}/{version}/publish` | publishes a candidate version (202; the nodes stop, it is recorded, they start on it) |
//! | `POST /v1/versions/gc` | deletes retired versions' topics and groups (`{"stage"?, "dry_run"?}`); answers what it collected |
//! | `POST /v1/sinks/{sink}/replay` | delivers again the events of a range of event time the sink read — see [`crate::replay`] |
//! | `GET /v1/scale` | autoscaling signals per stage and sink: rates, busy ratio, backlog, sustainable rate per replica, recommended replicas and why — see [`crate::scale`] |
//! | `GET /v1/events/{origin}/trace` | where one event went (`origin` = `topic/partition/offset`, URL-encoded) |
//! | `GET /v1/trace?id=&since=` | the same, found by event id in the source topics |
//! | `POST /v1/outcomes` | what became of many events by id: counts per class — see [`crate::outcomes`] |
//! | `GET /` | the dashboard |

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hifi_ledger::{Ledger, Origin};
use hifi_log::{EmbeddedLog, Log, ReadLimits};
use hifi_pipeline::event::{header as hdr, EventMeta};
use hifi_pipeline::health::Health;
use hifi_pipeline::runtime::Pipeline;
use hifi_pipeline::sink::Sink;
use hifi_pipeline::source::HttpSource;
use hifi_pipeline::stage::Stage;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Tokens;
use crate::ingest::error;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The fidelity ledger.
    pub ledger: Arc<Ledger>,
    /// The engine.
    pub log: Arc<dyn Log>,
    /// The embedded engine, for its counters.
    pub engine: Option<EmbeddedLog>,
    /// Nodes.
    pub sources: Vec<Arc<HttpSource>>,
    /// Sources with dead letters (Kafka sources: records that were not events).
    pub sources_with_dead_letters: Vec<String>,
    /// Nodes.
    pub stages: Vec<Arc<Stage>>,
    /// Nodes.
    pub sinks: Vec<Arc<Sink>>,
    /// Started, failed, disk full: what `/readyz` answers.
    pub health: Arc<Health>,
    /// Field-level lineage of the pipeline (`/v1/lineage`).
    pub lineage: Arc<hifi_pipeline::lineage::Graph>,
    /// Declared PII and where it goes (`/v1/pii`).
    pub pii: Arc<hifi_pipeline::pii::Policy>,
    /// Autoscaling signals (`/v1/scale`).
    pub scale: Arc<hifi_pipeline::scale::Scale>,
    /// Fingerprinted topics (`/v1/fingerprints`).
    pub fingerprints: Vec<Arc<hifi_pipeline::fingerprint::Fingerprinter>>,
    /// Versioned stages (`/v1/versions`).
    pub versions: Arc<hifi_pipeline::versions::Live>,
    /// Tokens for the routes that change state (`[admin.auth]`).
    pub tokens: Option<Tokens>,
    /// Whether the admin API listens on a loopback address only (then the routes that
    /// change state need no token when none is configured).
    pub loopback: bool,
}

impl AdminState {
    /// The admin view of a running pipeline, listening on loopback without tokens (set
    /// [`AdminState::tokens`] and [`AdminState::loopback`] otherwise).
    pub fn new(p: &Pipeline, engine: Option<EmbeddedLog>) -> Self {
        AdminState {
            ledger: p.ledger.clone(),
            log: p.log.clone(),
            engine,
            sources: p.sources.iter().map(|(s, _)| s.clone()).collect(),
            sources_with_dead_letters: p
                .sources
                .iter()
                .filter(|(_, c)| c.kind == hifi_pipeline::config::SourceType::Kafka)
                .map(|(s, _)| s.name.clone())
                .collect(),
            stages: p.stages.clone(),
            sinks: p.sinks.clone(),
            health: p.health.clone(),
            lineage: Arc::new(p.topology.lineage.clone()),
            pii: Arc::new(p.topology.pii.clone()),
            scale: p.scale.clone(),
            fingerprints: p.fingerprints.clone(),
            versions: p.versions.clone(),
            tokens: None,
            loopback: true,
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/lag", get(lag))
        .route("/v1/loss", get(loss))
        .route("/v1/stats", get(stats))
        .route("/v1/scale", get(crate::scale::scale))
        .route("/v1/shadow", get(crate::shadow::shadow))
        .route("/v1/fingerprints", get(crate::fingerprints::fingerprints))
        .route("/v1/signals", get(crate::fingerprints::signals))
        .route("/v1/versions", get(crate::versions::versions))
        .route("/v1/versions/gc", axum::routing::post(crate::versions::gc))
        .route(
            "/v1/versions/{stage}/{version}/publish",
            axum::routing::post(crate::versions::publish),
        )
        .route("/v1/lineage", get(lineage))
        .route("/v1/pii", get(pii))
        .route("/v1/events/{*origin}", get(trace_origin))
        .route("/v1/trace", get(trace_id))
        .route(
            "/v1/outcomes",
            axum::routing::post(crate::outcomes::outcomes),
        )
        .route("/v1/sinks/{sink}/dlq", get(dlq_list))
        .route(
            "/v1/sinks/{sink}/dlq/redrive",
            axum::routing::post(dlq_redrive),
        )
        .route(
            "/v1/sinks/{sink}/replay",
            axum::routing::post(crate::replay::replay),
        )
        .route("/v1/sinks/{sink}/dlq/{id}", get(dlq_show))
        .merge(crate::dashboard::router())
        .layer(axum::middleware::from_fn(body_not_query))
        .with_state(Arc::new(state))
}

/// Every admin `POST` (publish, gc, replay, re-drive, outcomes) takes its parameters in
/// its JSON body: one with a query string is refused, not run with the query ignored —
/// `POST /v1/versions/gc?dry_run=true` would otherwise delete.
async fn body_not_query(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && req.uri().query().is_some_and(|q| !q.is_empty())
    {
        return bad_request(&format!(
            "POST {} takes its parameters in a JSON body (docs/api.md), not in the query string ({:?})",
            req.uri().path(),
            req.uri().query().unwrap_or_default()
        ));
    }
    next.run(req).await
}

type S = State<Arc<AdminState>>;

async fn readyz(State(s): S) -> Response {
    crate::ingest::readiness(&s.health)
}

async fn metrics(State(s): S, headers: axum::http::HeaderMap) -> Response {
    use crate::metrics::exposition::{encode, Format};
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::for_accept(accept);
    let (backlogs, dead_letters) = tokio::join!(
        crate::backlog::measure(&s),
        crate::backlog::dead_letters(&s)
    );
    let text = encode(
        &crate::metrics::families(&s, &backlogs, &dead_letters),
        format,
    );
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

async fn lag(State(s): S) -> Response {
    Json(s.ledger.lag()).into_response()
}

#[derive(Debug, Deserialize)]
struct LossQuery {
    /// RFC 3339 or epoch ms; default one hour ago.
    from: Option<String>,
    /// RFC 3339 or epoch ms; default now + 1 minute.
    to: Option<String>,
    /// Include every lost origin (default: the first 20 per bucket).
    #[serde(default)]
    lost: bool,
}

/// Parses an RFC 3339 time or epoch milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

async fn loss(State(s): S, Query(q): Query<LossQuery>) -> Response {
    let (from, to) = match range(&s, q.from.as_deref(), q.to.as_deref()) {
        Ok(r) => r,
        Err(why) => return bad_request(&why),
    };
    let mut buckets = s.ledger.loss(from, to);
    if !q.lost {
        for b in &mut buckets {
            b.lost.truncate(20);
        }
    }
    // journal_end / replay_from are the ledger's own bookkeeping.
    let buckets: Vec<serde_json::Value> = buckets
        .into_iter()
        .map(|b| {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("journal_end");
                o.remove("replay_from");
            }
            v
        })
        .collect();
    Json(json!({ "buckets": buckets })).into_response()
}

#[derive(Deserialize)]
struct LineageQuery {
    /// What this `node.field` comes from.
    upstream: Option<String>,
    /// What this `node.field` reaches.
    impact: Option<String>,
}

/// The lineage graph, or one field's upstream or impact.
async fn lineage(State(s): S, Query(q): Query<LineageQuery>) -> Response {
    let reached = match (q.upstream, q.impact) {
        (Some(_), Some(_)) => Err("ask for `upstream` or `impact`, not both".to_owned()),
        (Some(f), None) => s.lineage.upstream(&f).map(|r| (f, "upstream", r)),
        (None, Some(f)) => s.lineage.impact(&f).map(|r| (f, "impact", r)),
        (None, None) => return Json(&*s.lineage).into_response(),
    };
    match reached {
        Ok((field, what, r)) => {
            let mut body = serde_json::Map::new();
            body.insert("field".into(), field.into());
            body.insert(what.into(), json!(r));
            Json(body).into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why, json!({})),
    }
}

/// Declared PII, what each sink receives, the detector's counts and the alarms.
async fn pii(State(s): S) -> Response {
    Json(hifi_pipeline::pii::report::of_sources(
        &s.pii, &s.lineage, &s.sources,
    ))
    .into_response()
}

async fn stats(State(s): S) -> Response {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let backlogs = crate::backlog::measure(&s).await;
    let backlog = |node: &str| {
        backlogs
            .iter()
            .find(|b| b.node == node)
            .map_or((0, 0), |b| (b.records, b.age_ms))
    };
    let mut nodes = Vec::new();
    for src in &s.sources {
        let st = &src.stats;
        nodes.push(json!({"node": src.name, "kind": "source", "events_in_total": r(&st.accepted_events_total) + r(&st.duplicate_events_total),
            "events_out_total": r(&st.accepted_events_total), "duplicates_total": r(&st.duplicate_events_total),
            "rejected_requests_total": r(&st.rejected_requests_total), "backpressure_rejections_total": r(&st.backpressure_rejections_total),
            "filtered_total": 0, "delivered_total": 0, "retrying": 0, "dead_lettered_total": 0,
            "standby": src.standby.as_ref().map(|sb| {
                let f = &sb.failover;
                json!({"on_standby": !f.primary_up(), "failovers_total": r(&f.failovers_total),
                    "events_total": r(&f.standby_events_total), "moved_total": r(&f.moved_events_total),
                    "waiting": r(&f.waiting)})
            })}));
    }
    for st in &s.stages {
        let c = &st.stats;
        let (records, age_ms) = backlog(&st.name);
        nodes.push(json!({"node": st.name, "kind": "stage", "events_in_total": r(&c.read_events_total), "events_out_total": r(&c.passed_events_total),
            "filtered_total": r(&c.filtered_events_total), "transform_errors_total": r(&c.transform_errors_total),
            "delivered_total": 0, "retrying": 0, "dead_lettered_total": 0,
            "backlog_records": records, "backlog_age_ms": age_ms}));
    }
    for sk in &s.sinks {
        let c = &sk.stats;
        let (records, age_ms) = backlog(&sk.name);
        nodes.push(json!({"node": sk.name, "kind": "sink", "events_in_total": r(&c.delivered_events_total), "events_out_total": r(&c.delivered_events_total),
            "delivered_total": r(&c.delivered_events_total), "requests_total": r(&c.requests_total), "failed_requests_total": r(&c.failed_requests_total),
            "local_retries_total": r(&c.local_retries_total), "retried_events_total": r(&c.retried_events_total),
            "retrying": r(&c.retrying_events), "dead_lettered_total": r(&c.dead_lettered_events_total),
            "breaker_open": r(&c.breaker_open) == 1, "filtered_total": 0,
            "concurrency_limit": r(&sk.slots.limit), "concurrency_reason": sk.slots.reason().as_str(),
            "backlog_records": records, "backlog_age_ms": age_ms}));
    }
    Json(json!({ "nodes": nodes })).into_response()
}

/// `from`/`to` of a query over buckets (RFC 3339 or epoch ms; default the last hour),
/// or what is wrong with them.
pub(crate) fn range(
    s: &AdminState,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(i64, i64), String> {
    let now = s.ledger.clock().now_ms();
    let at = |v: Option<&str>, default: i64, name: &str| match v.map(parse_time) {
        None => Ok(default),
        Some(Some(t)) => Ok(t),
        Some(None) => Err(format!("`{name}` must be RFC 3339 or epoch milliseconds")),
    };
    let (from, to) = (
        at(from, now - 3_600_000, "from")?,
        at(to, now + 60_000, "to")?,
    );
    if from > to {
        return Err(format!("`from` ({from}) is after `to` ({to})"));
    }
    Ok((from, to))
}

/// The 400 answer for a bad query.
pub(crate) fn bad_request(why: &str) -> Response {
    error(StatusCode::BAD_REQUEST, why, json!({}))
}

/// Reads the event at `at` (its position in a source's topic) and traces it through the
/// ledger.
async fn trace(s: &AdminState, at: Origin) -> Response {
    let limits = ReadLimits {
        max_records: 1,
        max_bytes: 1,
        wait: Duration::ZERO,
    };
    let rec = match s.log.read(&at.topic, at.partition, at.offset, limits).await {
        Ok(mut v) if !v.is_empty() && v[0].offset == at.offset => v.remove(0),
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no event at origin {at}"),
                json!({}),
            )
        }
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no event at origin {at}: {e}"),
                json!({}),
            )
        }
    };
    // The ledger names the event by where it was first held (a Kafka source's record:
    // its place in the user's cluster).
    let meta = EventMeta::of(&at.topic, at.partition, &rec);
    let origin = meta.origin.clone();
    let ingest_ms: Option<i64> = rec
        .record
        .header(hdr::INGEST_TIME)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok());
    let t = s.ledger.trace(&origin, meta.time_ms);
    Json(json!({
        "origin": origin.to_string(),
        "id": meta.id,
        "source": meta.source,
        "event_time": hifi_pipeline::event::rfc3339_ms(meta.time_ms),
        "ingest_time": ingest_ms.map(hifi_pipeline::event::rfc3339_ms),
        "bucket": t.bucket,
        "settled": t.settled,
        "nodes": t.nodes,
        "note": t.note,
    }))
    .into_response()
}

async fn trace_origin(State(s): S, Path(rest): Path<String>) -> Response {
    let Some(origin) = rest.strip_suffix("/trace") else {
        return error(
            StatusCode::NOT_FOUND,
            "use /v1/events/{topic/partition/offset}/trace",
            json!({}),
        );
    };
    let origin = match origin.parse::<Origin>() {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e, json!({})),
    };
    if !origin.topic.starts_with("kafka:") && !origin.topic.starts_with("standby:") {
        return trace(&s, origin).await;
    }
    // A Kafka source's record, or one moved from the standby: found by its origin
    // (its `hifi-origin` header) among the last hour's events.
    let from_ms = s.ledger.clock().now_ms() - 3_600_000;
    let wanted = origin.to_string();
    match find_in_sources(&s, from_ms, hdr::ORIGIN, &wanted).await {
        Some(at) => trace(&s, at).await,
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no event from {wanted} in the source topics in the last hour"),
            json!({}),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct TraceQuery {
    id: String,
    /// How far back to search the source topics (default 1 h).
    since: Option<String>,
}

async fn trace_id(State(s): S, Query(q): Query<TraceQuery>) -> Response {
    let since = match q.since.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(3600),
        Some(Ok(d)) => d,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`since` must be a duration like 30m or 2h",
                json!({}),
            )
        }
    };
    let back = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    let from_ms = s.ledger.clock().now_ms().saturating_sub(back);
    if let Some(at) = find_in_sources(&s, from_ms, hdr::ID, &q.id).await {
        return trace(&s, at).await;
    }
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no event with id {:?} in the source topics since {since:?}",
            q.id
        ),
        json!({}),
    )
}

/// The position of the first event since `from_ms` in the sources' topics whose header
/// `name` is `value`.
async fn find_in_sources(s: &AdminState, from_ms: i64, name: &str, value: &str) -> Option<Origin> {
    for src in &s.sources {
        let Ok(parts) = s.log.partitions(&src.topic).await else {
            continue;
        };
        for p in 0..parts {
            if let Some(at) = find(s, &src.topic, p, from_ms, name, value).await {
                return Some(at);
            }
        }
    }
    None
}

/// Scans one partition from `from_ms` for a header value (bounded by the time range).
async fn find(
    s: &AdminState,
    topic: &str,
    p: u32,
    from_ms: i64,
    name: &str,
    value: &str,
) -> Option<Origin> {
    let mut pos = s.log.offset_for_time(topic, p, from_ms).await.ok()??;
    let end = s.log.offsets(topic, p).await.ok()?.end;
    while pos < end {
        let batch = s
            .log
            .read(
                topic,
                p,
                pos,
                ReadLimits {
                    max_records: 10_000,
                    max_bytes: 8 << 20,
                    wait: Duration::ZERO,
                },
            )
            .await
            .ok()?;
        let last = batch.last()?.offset;
        for r in &batch {
            if r.record.header(name) == Some(value.as_bytes()) {
                return Some(Origin {
                    topic: topic.to_owned(),
                    partition: p,
                    offset: r.offset,
                });
            }
        }
        pos = last + 1;
    }
    None
}

/// Sinks, stages and Kafka sources have dead letters; the names of those that do.
fn has_dead_letters(s: &AdminState, node: &str) -> Result<(), Box<Response>> {
    let sinks = s.sinks.iter().map(|k| k.name.as_str());
    let stages = s.stages.iter().map(|k| k.name.as_str());
    let sources = s.sources_with_dead_letters.iter().map(String::as_str);
    if sinks
        .clone()
        .chain(stages.clone())
        .chain(sources.clone())
        .any(|n| n == node)
    {
        Ok(())
    } else {
        let names: Vec<&str> = sinks.chain(stages).chain(sources).collect();
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!(
                "no node {node:?} with dead letters; those with dead letters: {}",
                names.join(", ")
            ),
            json!({}),
        )))
    }
}

#[derive(Debug, Deserialize)]
struct DlqQuery {
    /// Most recent N (default 1000).
    limit: Option<usize>,
}

async fn dlq_list(State(s): S, Path(sink): Path<String>, Query(q): Query<DlqQuery>) -> Response {
    if let Err(r) = has_dead_letters(&s, &sink) {
        return *r;
    }
    // Keeps only the newest `limit` while scanning: memory is bounded by the answer.
    let limit = q.limit.unwrap_or(1000);
    let mut newest = std::collections::VecDeque::with_capacity(limit.min(10_000));
    let mut total = 0usize;
    let scan = hifi_pipeline::retry::scan_dead_letters(s.log.as_ref(), &sink, |d, _| {
        total += 1;
        if limit > 0 {
            if newest.len() == limit {
                newest.pop_front();
            }
            newest.push_back(d);
        }
    })
    .await;
    match scan {
        Ok(()) => {
            let items: Vec<_> = newest.into_iter().rev().collect();
            Json(json!({ "sink": sink, "total": total, "dead_letters": items })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot read the dead-letter queue: {e}"),
            json!({}),
        ),
    }
}

async fn dlq_show(State(s): S, Path((sink, id)): Path<(String, String)>) -> Response {
    if let Err(r) = has_dead_letters(&s, &sink) {
        return *r;
    }
    // The newest dead letter with that id.
    let mut found = None;
    let scan = hifi_pipeline::retry::scan_dead_letters(s.log.as_ref(), &sink, |d, rec| {
        if d.id == id {
            found = Some((d, rec));
        }
    })
    .await;
    match scan {
        Ok(()) => match found {
            Some((d, rec)) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&rec.value).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&rec.value).into_owned())
                    });
                Json(json!({ "dead_letter": d, "value": value })).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no dead letter with id {id:?} in sink {sink:?}"),
                json!({}),
            ),
        },
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot read the dead-letter queue: {e}"),
            json!({}),
        ),
    }
}

/// Routes that change state need a bearer token of `[admin.auth]`; without tokens they
/// are served on loopback only.
pub(crate) fn may_change_state(s: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    match &s.tokens {
        Some(t) if t.accepts(headers) => Ok(()),
        Some(_) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token for the admin API",
                json!({ "hint": "send Authorization: Bearer <token> (hifi: --token or HIFI_ADMIN_TOKEN)" }),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(Box::new(r))
        }
        None if s.loopback => Ok(()),
        None => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this admin API listens beyond loopback without [admin.auth] tokens; routes that change state are refused",
            json!({ "hint": "configure [admin.auth] tokens, or listen on 127.0.0.1" }),
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    since: Option<String>,
    reason_contains: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn dlq_redrive(
    State(s): S,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Option<Json<RedriveBody>>,
) -> Response {
    if let Err(r) = may_change_state(&s, &headers) {
        return *r;
    }
    if let Err(r) = has_dead_letters(&s, &sink) {
        return *r;
    }
    if s.sources_with_dead_letters.contains(&sink) {
        return error(
            StatusCode::CONFLICT,
            &format!("the dead letters of source {sink:?} are records of its Kafka topics that are not valid events: hifi cannot make them valid; fix them where they are produced and produce them again"),
            json!({}),
        );
    }
    if s.stages
        .iter()
        .any(|st| st.name == sink && st.window.is_some())
    {
        return error(
            StatusCode::CONFLICT,
            &format!("{sink:?} is a window stage: its windows were emitted without these events, and re-driving cannot add them to a window's result; read them with `hifi dlq show`"),
            json!({}),
        );
    }
    let b = body.map(|Json(b)| b).unwrap_or(RedriveBody {
        since: None,
        reason_contains: None,
        dry_run: false,
    });
    let since_ms = match b.since.as_deref().map(parse_time) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`since` must be RFC 3339 or epoch milliseconds",
                json!({}),
            )
        }
    };
    let filter = hifi_pipeline::retry::RedriveFilter {
        since_ms,
        reason_contains: b.reason_contains,
        dry_run: b.dry_run,
    };
    // A sink's letters go to its first retry tier; a stage's to its re-drive topic.
    let target = if s.stages.iter().any(|st| st.name == sink) {
        hifi_pipeline::stage::redrive_topic(&sink)
    } else {
        hifi_pipeline::retry::retry_topic(&sink, 0)
    };
    let now = s.ledger.clock().now_ms();
    match hifi_pipeline::retry::redrive(&s.log, &sink, &target, &filter, now).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("re-drive failed: {e}; nothing was marked re-driven"),
            json!({}),
        ),
    }
}
