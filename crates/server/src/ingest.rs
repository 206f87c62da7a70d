//! `POST /v1/events` for one HTTP source, plus `GET /healthz` and `GET /readyz`.
//!
//! Every failure becomes a status code and a JSON body `{"error": ..., ...}` saying
//! what was wrong and what to do; nothing is written unless the whole request is valid.
//!
//! | status | when |
//! |---|---|
//! | 200 | every event durable (or already accepted): `{"accepted", "duplicates", "ids"}` |
//! | 400 | invalid JSON or events: `{"error", "errors": [{"index", "reason"}]}`; bad compression |
//! | 401 | missing or wrong bearer token (when `auth` is configured) |
//! | 413 | body (compressed or decompressed) over `max_body_bytes`, too many events, a record too large — refused before reading the body when `Content-Length` says so |
//! | 415 | unknown `Content-Type` (outside CloudEvents binary mode) or `Content-Encoding` |
//! | 503 | in-flight bytes over `max_inflight_bytes`, or the engine failed (disk full, fsync error): nothing acknowledged; `Retry-After` says when to retry |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hifi_log::LogError;
use hifi_pipeline::ce_binary;
use hifi_pipeline::config::SourceConfig;
use hifi_pipeline::event::Trace;
use hifi_pipeline::health::Health;
use hifi_pipeline::otel;
use hifi_pipeline::parse::{parse_body, BodyFormat, ParseError, ACCEPTED_CONTENT_TYPES};
use hifi_pipeline::source::HttpSource;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::auth::LiveTokens;
use crate::body::{self, BodyError, Budget, DecodeError, Encoding, PERMIT_BYTES};

/// Everything the ingest handlers need.
#[derive(Debug)]
pub struct IngestState {
    /// The source node.
    pub source: Arc<HttpSource>,
    /// Largest body, compressed or decompressed.
    pub max_body_bytes: u64,
    /// Accepted bearer tokens (`None`: no authentication).
    pub tokens: Option<Arc<LiveTokens>>,
    /// Bounds the bytes of requests being processed.
    pub inflight: Arc<Semaphore>,
    /// Longest time for a body to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Started, failed, disk full: what `/readyz` answers.
    pub health: Arc<Health>,
}

impl IngestState {
    /// State for a source with its tokens ([`Tokens::load`]).
    pub fn new(
        source: Arc<HttpSource>,
        cfg: &SourceConfig,
        tokens: Option<Arc<LiveTokens>>,
        health: Arc<Health>,
    ) -> Self {
        let permits = (cfg.max_inflight_bytes.0 / PERMIT_BYTES)
            .clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        IngestState {
            source,
            max_body_bytes: cfg.max_body_bytes.0,
            tokens,
            inflight: Arc::new(Semaphore::new(permits)),
            body_read_timeout: cfg.body_read_timeout.0,
            health,
        }
    }
}

/// The router of one source's listener.
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; POST events to /v1/events",
                json!({}),
            )
        })
        .with_state(state)
}

async fn readyz(State(s): State<Arc<IngestState>>) -> Response {
    readiness(&s.health)
}

/// `GET /readyz` of every listener: 200 once the engine is open, every node running and
/// every listener bound; 503 with the reason while starting, after a node failed, or
/// while the disk is full.
pub fn readiness(health: &Health) -> Response {
    match health.not_ready(hifi_pipeline::now_ms()) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// A JSON error response: `{"error": message, ...extra}`.
pub fn error(status: StatusCode, message: &str, extra: serde_json::Value) -> Response {
    let mut body = json!({ "error": message });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (status, axum::Json(body)).into_response()
}

fn retry_later(message: &str) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        message,
        json!({ "retry": true }),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn ingest(State(s): State<Arc<IngestState>>, req: Request) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!(target: otel::TARGET, "ingest",
        source = %s.source.name, http.response.status_code = tracing::field::Empty);
    let trace = Trace::from_headers(
        req.headers().get("traceparent").map(|v| v.as_bytes()),
        req.headers().get("tracestate").map(|v| v.as_bytes()),
    );
    if let Some(t) = &trace {
        otel::set_parent(&span, t);
    }
    let answer = handle(&s, req, trace).instrument(span.clone()).await;
    let status = answer.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    s.source
        .stats
        .request_durations
        .record(status, started.elapsed());
    answer
}

async fn handle(s: &Arc<IngestState>, req: Request, trace: Option<Trace>) -> Response {
    let stats = &s.source.stats;
    let reject = |r: Response| {
        stats
            .rejected_requests_total
            .fetch_add(1, Ordering::Relaxed);
        r
    };
    let headers = req.headers().clone();
    if s.tokens.as_ref().is_some_and(|t| !t.accepts(&headers)) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
            json!({ "hint": "send Authorization: Bearer <token>" }),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return reject(r);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // CloudEvents binary mode: attributes in ce-* headers, the data in the body (of any
    // content type); it is stored as the structured event it stands for.
    let binary = ce_binary::is_binary(headers.keys().map(|k| k.as_str())).then(|| Binary {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    });
    let format = match binary {
        Some(_) => Some(BodyFormat::CloudEvent),
        None => BodyFormat::from_content_type(content_type),
    };
    let Some(format) = format else {
        let msg = format!("unsupported Content-Type {content_type:?}");
        return reject(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &msg,
            json!({ "accepted": ACCEPTED_CONTENT_TYPES }),
        ));
    };
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") | Some("identity") => Encoding::Identity,
        Some("gzip") => Encoding::Gzip,
        Some("zstd") => Encoding::Zstd,
        Some(other) => {
            let msg = format!("unsupported Content-Encoding {other:?}");
            return reject(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &msg,
                json!({ "accepted": "identity, gzip, zstd" }),
            ));
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body = req.into_body();
    if declared.is_some_and(|n| n > s.max_body_bytes) {
        return reject(body::linger(body, expects_continue, too_large(s.max_body_bytes)).await);
    }
    // Bytes count against the listener's budget as they arrive (see body.rs).
    let mut budget = Budget::new(s.inflight.clone());
    let read = body::read(
        body,
        s.max_body_bytes,
        s.body_read_timeout,
        &mut budget,
        declared,
    );
    let raw = match read.await {
        Ok(b) => b,
        Err(BodyError::TooLarge(rest)) => {
            drop(budget);
            return reject(body::linger(rest, expects_continue, too_large(s.max_body_bytes)).await);
        }
        Err(BodyError::Busy(rest)) => {
            drop(budget);
            stats
                .backpressure_rejections_total
                .fetch_add(1, Ordering::Relaxed);
            let busy = retry_later("too many bytes in flight; retry after the Retry-After delay");
            return body::linger(rest, expects_continue, busy).await;
        }
        Err(BodyError::Timeout) => {
            let msg = format!(
                "the body did not arrive within {} (body_read_timeout); nothing was written",
                humantime::format_duration(s.body_read_timeout)
            );
            let mut r = error(StatusCode::REQUEST_TIMEOUT, &msg, json!({}));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return reject(r);
        }
        Err(BodyError::Read(e)) => {
            return reject(error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the body: {e}"),
                json!({}),
            ))
        }
    };
    // A compressed body may grow to max_body_bytes while it is decompressed.
    if encoding != Encoding::Identity && !budget.take(s.max_body_bytes) {
        stats
            .backpressure_rejections_total
            .fetch_add(1, Ordering::Relaxed);
        return retry_later("too many bytes in flight; retry after the Retry-After delay");
    }
    // Large bodies are decompressed and parsed off the async workers.
    let parsed = if raw.len() as u64 > BLOCKING_PARSE_BYTES || encoding != Encoding::Identity {
        let st = s.clone();
        match tokio::task::spawn_blocking(move || {
            decode_and_parse(&st, encoding, raw, format, binary.as_ref())
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                return reject(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("reading the body failed: {e}; nothing was written"),
                    json!({}),
                ))
            }
        }
    } else {
        decode_and_parse(s, encoding, raw, format, binary.as_ref())
    };
    let mut events = match parsed {
        Ok(ev) => ev,
        Err(r) => return reject(*r),
    };
    if let Err(errors) = s.source.check_events(&mut events, hifi_pipeline::now_ms()) {
        let msg = format!("{} invalid event(s); nothing was written", errors.len());
        return reject(error(
            StatusCode::BAD_REQUEST,
            &msg,
            json!({ "errors": errors }),
        ));
    }
    match s.source.store(events, trace.as_ref()).await {
        Ok(outcome) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Err(LogError::RecordTooLarge { bytes, max }) => reject(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("an event of {bytes} bytes is larger than the engine's record_bytes_max ({max}); nothing was written"),
            json!({}),
        )),
        Err(e @ LogError::RetentionHeld { .. }) => {
            warn!(source = %s.source.name, %e, "ingest refused: a consumer is far behind");
            let mut r = error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("{e}; nothing was acknowledged — retry later"),
                json!({ "retry": true }),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            r
        }
        Err(e) => {
            if matches!(e, LogError::NoSpace { .. }) {
                s.health.disk_full(hifi_pipeline::now_ms());
            }
            warn!(source = %s.source.name, %e, "ingest failed in the engine; answering 503");
            retry_later(&format!("could not store the events ({e}); nothing was acknowledged"))
        }
    }
}

fn too_large(max: u64) -> Response {
    let msg =
        format!("body larger than max_body_bytes ({max} bytes); split it into smaller requests");
    error(StatusCode::PAYLOAD_TOO_LARGE, &msg, json!({}))
}

/// What a CloudEvents binary-mode request carries outside its body.
#[derive(Debug)]
struct Binary {
    headers: Vec<(String, Vec<u8>)>,
    content_type: Option<String>,
}

/// Bodies larger than this are decompressed and parsed in the blocking pool.
const BLOCKING_PARSE_BYTES: u64 = 256 << 10;

/// Decompresses (bounded) and parses a body: its events, or the answer that refuses it.
fn decode_and_parse(
    s: &IngestState,
    encoding: Encoding,
    raw: bytes::Bytes,
    format: BodyFormat,
    binary: Option<&Binary>,
) -> Result<Vec<hifi_pipeline::parse::ParsedEvent>, Box<Response>> {
    let mut body = match body::decode(encoding, raw, s.max_body_bytes) {
        Ok(b) => b,
        Err(DecodeError::TooLarge) => return Err(Box::new(too_large(s.max_body_bytes))),
        Err(DecodeError::Bad(msg)) => {
            return Err(Box::new(error(StatusCode::BAD_REQUEST, &msg, json!({}))))
        }
    };
    if let Some(b) = binary {
        let headers = b.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        body = match ce_binary::to_structured(headers, b.content_type.as_deref(), &body) {
            Ok(structured) => bytes::Bytes::from(structured),
            Err(reason) => {
                let msg = format!("invalid binary-mode CloudEvent: {reason}; nothing was written");
                return Err(Box::new(error(StatusCode::BAD_REQUEST, &msg, json!({}))));
            }
        };
    }
    match parse_body(&body, format, &s.source.parse) {
        Ok(ev) => Ok(ev),
        Err(ParseError::Invalid(errors)) => {
            let msg = format!("{} invalid event(s); nothing was written", errors.len());
            Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                &msg,
                json!({ "errors": errors }),
            )))
        }
        Err(ParseError::TooManyEvents { count, max }) => {
            let msg =
                format!("{count} events in one request; at most {max} (max_events_per_request)");
            Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &msg,
                json!({}),
            )))
        }
    }
}
