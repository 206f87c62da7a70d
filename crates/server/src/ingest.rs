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
//! | 415 | unknown `Content-Type` or `Content-Encoding` |
//! | 503 | in-flight bytes over `max_inflight_bytes`, or the engine failed (disk full, fsync error): nothing acknowledged; `Retry-After` says when to retry |

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hifi_log::LogError;
use hifi_pipeline::config::SourceConfig;
use hifi_pipeline::health::Health;
use hifi_pipeline::ingest::{parse_body, BodyFormat, ParseError, ACCEPTED_CONTENT_TYPES};
use hifi_pipeline::source::HttpSource;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::auth::Tokens;

/// In-flight bytes are counted in units of this many bytes (semaphore permits).
const PERMIT_BYTES: u64 = 1024;

/// Everything the ingest handlers need.
#[derive(Debug)]
pub struct IngestState {
    /// The source node.
    pub source: Arc<HttpSource>,
    /// Largest body, compressed or decompressed.
    pub max_body_bytes: u64,
    /// Accepted bearer tokens (`None`: no authentication).
    pub tokens: Option<Tokens>,
    /// Bounds the bytes of requests being processed.
    pub inflight: Arc<Semaphore>,
    /// Started, failed, disk full: what `/readyz` answers.
    pub health: Arc<Health>,
}

impl IngestState {
    /// State for a source with its tokens ([`Tokens::load`]).
    pub fn new(
        source: Arc<HttpSource>,
        cfg: &SourceConfig,
        tokens: Option<Tokens>,
        health: Arc<Health>,
    ) -> Self {
        let permits = (cfg.max_inflight_bytes.0 / PERMIT_BYTES)
            .clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        IngestState {
            source,
            max_body_bytes: cfg.max_body_bytes.0,
            tokens,
            inflight: Arc::new(Semaphore::new(permits)),
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

#[derive(Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

async fn ingest(State(s): State<Arc<IngestState>>, req: Request) -> Response {
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
    let Some(format) = BodyFormat::from_content_type(content_type) else {
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
    if declared.is_some_and(|n| n > s.max_body_bytes) {
        return reject(too_large(s.max_body_bytes));
    }
    // Reserve the bytes this request may hold (compressed + decompressed) before reading.
    let reserve = declared.unwrap_or(s.max_body_bytes).max(1);
    let reserve = match encoding {
        Encoding::Identity => reserve,
        _ => reserve + s.max_body_bytes,
    };
    let permits = reserve.div_ceil(PERMIT_BYTES).min(u32::MAX as u64) as u32;
    let Ok(_permit) = s.inflight.clone().try_acquire_many_owned(permits) else {
        stats
            .backpressure_rejections_total
            .fetch_add(1, Ordering::Relaxed);
        return retry_later("too many bytes in flight; retry after the Retry-After delay");
    };
    let limited = http_body_util::Limited::new(req.into_body(), s.max_body_bytes as usize);
    let raw = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return reject(too_large(s.max_body_bytes))
        }
        Err(e) => {
            return reject(error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the body: {e}"),
                json!({}),
            ))
        }
    };
    let body = match decode(encoding, raw, s.max_body_bytes) {
        Ok(b) => b,
        Err(DecodeError::TooLarge) => return reject(too_large(s.max_body_bytes)),
        Err(DecodeError::Bad(msg)) => {
            return reject(error(StatusCode::BAD_REQUEST, &msg, json!({})))
        }
    };
    let mut events = match parse_body(&body, format, &s.source.parse) {
        Ok(ev) => ev,
        Err(ParseError::Invalid(errors)) => {
            let msg = format!("{} invalid event(s); nothing was written", errors.len());
            return reject(error(
                StatusCode::BAD_REQUEST,
                &msg,
                json!({ "errors": errors }),
            ));
        }
        Err(ParseError::TooManyEvents { count, max }) => {
            let msg =
                format!("{count} events in one request; at most {max} (max_events_per_request)");
            return reject(error(StatusCode::PAYLOAD_TOO_LARGE, &msg, json!({})));
        }
    };
    if let Err(errors) = s
        .source
        .check_event_times(&mut events, hifi_pipeline::now_ms())
    {
        let msg = format!("{} invalid event(s); nothing was written", errors.len());
        return reject(error(
            StatusCode::BAD_REQUEST,
            &msg,
            json!({ "errors": errors }),
        ));
    }
    match s.source.ingest(events).await {
        Ok(outcome) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Err(LogError::RecordTooLarge { bytes, max }) => reject(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("an event of {bytes} bytes is larger than the engine's record_bytes_max ({max}); nothing was written"),
            json!({}),
        )),
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

/// Why a body could not be decompressed.
enum DecodeError {
    TooLarge,
    Bad(String),
}

/// Decompresses with a bound on the output (a zip bomb is a 413, not an allocation).
fn decode(encoding: Encoding, raw: bytes::Bytes, max: u64) -> Result<bytes::Bytes, DecodeError> {
    let reader: Box<dyn Read> = match encoding {
        Encoding::Identity => return Ok(raw),
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(std::io::Cursor::new(raw))),
        Encoding::Zstd => match zstd::stream::read::Decoder::new(std::io::Cursor::new(raw)) {
            Ok(d) => Box::new(d),
            Err(e) => return Err(DecodeError::Bad(format!("invalid zstd body: {e}"))),
        },
    };
    let mut out = Vec::new();
    match reader.take(max + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > max => Err(DecodeError::TooLarge),
        Ok(_) => Ok(out.into()),
        Err(e) => Err(DecodeError::Bad(format!(
            "could not decompress the body: {e}"
        ))),
    }
}
