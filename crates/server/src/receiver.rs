//! `hifi receiver`: a destination for tests and demos. It accepts CloudEvents (a batch
//! array or one event) on any path and appends one JSON line per event to a record file:
//! `{"id", "source", "time", "event_time_ms", "received_at_ms", "received_at_us",
//! "idempotency_key"}` (and `"data"` with `--record-data`).
//! The file is flushed before the 2xx is sent, so every acknowledged event is in it even
//! if the receiver is killed. It counts received, distinct and duplicate events.
//!
//! In-process (the load test), an [`Observer`] can take each accepted request's events
//! instead of the record file: no line is written or read back.
//!
//! It can fail on purpose ([`Faults`]): a share of requests answered with an error
//! status, requests containing matching event ids refused whole (as real destinations
//! do), added latency, `Retry-After` on failures, the first N requests failed, limited
//! capacity (so many requests at once, a queue, then 503). Refused requests record
//! nothing.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hifi_pipeline::dedup::{DedupKeyer, PreHashed};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Counts kept by a receiver.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ReceiverSummary {
    /// Events received (with repeats).
    pub received: u64,
    /// Distinct (source, id) pairs.
    pub distinct: u64,
    /// Repeats of an already received (source, id).
    pub duplicates: u64,
    /// Requests answered 2xx.
    pub requests: u64,
}

/// One accepted event, as an [`Observer`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The event's `id` ("" when it has none).
    pub id: &'a str,
    /// The event's `source` ("" when it has none).
    pub source: &'a str,
    /// The event's `time` in ms since the epoch, when it has a valid one.
    pub event_time_ms: Option<i64>,
    /// When the request arrived, ms since the epoch.
    pub received_at_ms: i64,
}

/// Takes the events of each accepted request before the request is answered.
pub type Observer = Box<dyn FnMut(&[Delivery<'_>]) + Send>;

/// Where accepted events go.
enum Recording {
    /// One JSON line per event, flushed before the answer.
    File(std::io::BufWriter<std::fs::File>),
    /// Handed to a function before the answer.
    Observer(Observer),
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recording::File(file) => f.debug_tuple("File").field(file.get_ref()).finish(),
            Recording::Observer(_) => f.write_str("Observer"),
        }
    }
}

#[derive(Debug)]
struct Inner {
    recording: Recording,
    /// Hashes of (source, id) seen, for the distinct count (record file only: an
    /// observer counts repeats itself).
    seen: HashSet<u128, PreHashed>,
    /// Counts.
    summary: ReceiverSummary,
    /// Receive time − event time (ms) since the last [`Receiver::take_delays`].
    delays: hdrhistogram::Histogram<u64>,
    /// Per answered request: arrival to answer (µs), all run long.
    handling_us: hdrhistogram::Histogram<u64>,
}

/// Percentiles of receive time − event time, in milliseconds (recorded up to 24 h;
/// longer delays count as 24 h).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Delays {
    /// Events measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Failures a receiver injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share of requests (0.0–1.0) answered with `fail_status`.
    pub fail_rate: f64,
    /// Status for `fail_rate` and `fail_first` failures (default 503).
    pub fail_status: u16,
    /// The first this-many requests fail with `fail_status`.
    pub fail_first: u64,
    /// A request containing an event id matching this is refused whole.
    pub reject_ids: Option<regex::Regex>,
    /// Status for rejected requests (default 422).
    pub reject_status: u16,
    /// Added latency per request: uniform in [min, max].
    pub latency: Option<(std::time::Duration, std::time::Duration)>,
    /// `Retry-After` seconds sent with failures.
    pub retry_after_s: Option<u64>,
    /// Limited capacity: at most this many requests handled at once (each taking
    /// `latency`), the next ones queued, and past the queue answered 503.
    pub capacity: Option<Capacity>,
}

/// A destination's capacity: like a server with `workers` threads and a backlog queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Requests handled at once.
    pub workers: usize,
    /// Requests waiting for a worker; past them, 503.
    pub queue: usize,
}

/// The workers and queue of a receiver with [`Capacity`].
#[derive(Debug)]
struct Workers {
    workers: tokio::sync::Semaphore,
    queue: usize,
    waiting: std::sync::atomic::AtomicUsize,
    /// Requests answered 503 because the queue was full.
    turned_away: std::sync::atomic::AtomicU64,
}

impl Workers {
    /// A worker for the request, after waiting in the queue; `None` if the queue is full.
    async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        use std::sync::atomic::Ordering::SeqCst;
        if let Ok(p) = self.workers.try_acquire() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, SeqCst);
            self.turned_away.fetch_add(1, SeqCst);
            return None;
        }
        let p = self.workers.acquire().await.ok();
        self.waiting.fetch_sub(1, SeqCst);
        p
    }
}

/// A receiver's shared state.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Record file and counts.
    inner: Arc<Mutex<Inner>>,
    /// Failures to inject.
    faults: Arc<Faults>,
    /// `<record>.failures.jsonl`: one line per event of every request failed on purpose
    /// (`{"id", "status", "at_us"}`, plus `"rejected": true` for the events that matched
    /// `--reject-ids-matching`; the others only shared the refused request).
    failures: Arc<Mutex<Option<std::fs::File>>>,
    /// Requests seen (including failed ones).
    requests_seen: Arc<std::sync::atomic::AtomicU64>,
    /// The key of the (source, id) hashes (ids come from outside).
    keyer: DedupKeyer,
    /// Whether accepted events are written as record lines (else observed).
    writes_lines: bool,
    /// Whether record lines hold each event's `data` too (`--record-data`).
    records_data: bool,
    /// With [`Faults::capacity`]: its workers and queue.
    workers: Option<Arc<Workers>>,
}

impl Receiver {
    /// Record lines also hold each event's `data` (as received).
    pub fn recording_data(mut self) -> Self {
        self.records_data = true;
        self
    }

    /// Opens (appending to) the record file.
    pub fn open(record: &PathBuf) -> std::io::Result<Self> {
        Self::with_faults(record, Faults::default())
    }

    /// Opens the record file; the receiver injects `faults`.
    pub fn with_faults(record: &PathBuf, faults: Faults) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(record)?;
        let failures = if faults.fail_rate > 0.0
            || faults.fail_first > 0
            || faults.reject_ids.is_some()
            || faults.capacity.is_some()
        {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(record.with_extension("failures.jsonl"))?,
            )
        } else {
            None
        };
        Ok(Self::new(
            Recording::File(std::io::BufWriter::new(file)),
            faults,
            failures,
        ))
    }

    /// A receiver without a record file and without faults: `observer` takes the events
    /// of each accepted request before the request is answered. [`ReceiverSummary`]'s
    /// `distinct` and `duplicates` are not counted (the observer sees every repeat).
    pub fn observed(observer: Observer) -> Self {
        Self::new(Recording::Observer(observer), Faults::default(), None)
    }

    fn new(recording: Recording, faults: Faults, failures: Option<std::fs::File>) -> Self {
        Receiver {
            workers: faults.capacity.map(|c| {
                Arc::new(Workers {
                    workers: tokio::sync::Semaphore::new(c.workers.max(1)),
                    queue: c.queue,
                    waiting: 0.into(),
                    turned_away: 0.into(),
                })
            }),
            writes_lines: matches!(recording, Recording::File(_)),
            records_data: false,
            inner: Arc::new(Mutex::new(Inner {
                recording,
                seen: HashSet::default(),
                summary: ReceiverSummary::default(),
                delays: hdrhistogram::Histogram::new_with_bounds(1, 86_400_000, 3)
                    .expect("valid bounds"),
                handling_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid bounds"),
            })),
            failures: Arc::new(Mutex::new(failures)),
            faults: Arc::new(faults),
            requests_seen: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            keyer: DedupKeyer::random(),
        }
    }

    /// Requests answered 503 because every worker was busy and the queue full
    /// ([`Faults::capacity`]).
    pub fn turned_away(&self) -> u64 {
        self.workers.as_ref().map_or(0, |w| {
            w.turned_away.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The counts so far.
    pub fn summary(&self) -> ReceiverSummary {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).summary
    }

    /// How long answered requests took from arrival to answer (µs): (p50, p95, max).
    /// A sender that times deliveries by the answer sees each event this much later than
    /// the receive time recorded for it.
    pub fn handling_us(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = &inner.handling_us;
        (h.value_at_quantile(0.5), h.value_at_quantile(0.95), h.max())
    }

    /// Delay percentiles since the last call, and a fresh start.
    pub fn take_delays(&self) -> Delays {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = &inner.delays;
        let d = Delays {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        };
        inner.delays.reset();
        d
    }

    /// The router (POST on any path).
    pub fn router(&self) -> Router {
        Router::new().fallback(receive).with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        crate::serve(
            listener,
            self.router(),
            shutdown,
            crate::ServeLimits::default(),
        )
        .await
    }
}

/// Binds a listener with a clear error.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} for {what}: {e}"))
    })
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// An injected failure response.
fn failure(status: u16, faults: &Faults, why: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = (status, format!("{why}\n")).into_response();
    if let Some(s) = faults.retry_after_s {
        if let Ok(v) = s.to_string().parse() {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let received_at_us = now_us();
    let nth = r
        .requests_seen
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let f = &r.faults;
    // Held while the request is handled (the latency included).
    let _worker = match &r.workers {
        Some(w) => match w.admit().await {
            Some(worker) => Some(worker),
            None => {
                log_failure(&r, &ids_in(&body), 503, received_at_us);
                return failure(
                    503,
                    f,
                    "over capacity: every worker busy and the queue full",
                );
            }
        },
        None => None,
    };
    if let Some((min, max)) = f.latency {
        let ms = rand::Rng::gen_range(
            &mut rand::thread_rng(),
            min.as_millis() as u64..=max.as_millis().max(min.as_millis()) as u64,
        );
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if nth < f.fail_first || (f.fail_rate > 0.0 && rand::random::<f64>() < f.fail_rate) {
        log_failure(&r, &ids_in(&body), f.fail_status, received_at_us);
        return failure(f.fail_status, f, "injected failure");
    }
    let received_at = received_at_us / 1000;
    let events = match parse_events(&body) {
        Ok(events) => events,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    if let Some(re) = &f.reject_ids {
        let bad: Vec<&str> = events
            .iter()
            .filter_map(|e| e.id.0.as_deref())
            .filter(|id| re.is_match(id))
            .collect();
        if !bad.is_empty() {
            log_rejection(&r, &events, re, f.reject_status, received_at_us);
            return failure(
                f.reject_status,
                f,
                &format!("rejected event ids: {}", bad.join(", ")),
            );
        }
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The events of a request often share one time: each distinct one is parsed once.
    let mut last_time: Option<(&str, Option<i64>)> = None;
    let mut deliveries = Vec::with_capacity(events.len());
    for e in &events {
        let event_time_ms = match (e.time.0.as_deref(), last_time) {
            (None, _) => None,
            (Some(t), Some((seen, ms))) if seen == t => ms,
            (Some(t), _) => {
                let ms = chrono::DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|d| d.timestamp_millis());
                last_time = Some((t, ms));
                ms
            }
        };
        deliveries.push(Delivery {
            id: e.id.0.as_deref().unwrap_or(""),
            source: e.source.0.as_deref().unwrap_or(""),
            event_time_ms,
            received_at_ms: received_at,
        });
    }
    let mut lines = Vec::new();
    let mut ids = Vec::new();
    if r.writes_lines {
        lines.reserve(events.len() * 200);
        ids.reserve(events.len());
        for (e, d) in events.iter().zip(&deliveries) {
            let line = Line {
                id: d.id,
                source: d.source,
                time: e.time.0.as_deref(),
                event_time_ms: d.event_time_ms,
                received_at_ms: received_at,
                received_at_us,
                idempotency_key: key,
                data: e.data.filter(|_| r.records_data),
                hifiversion: e.hifiversion.0.as_deref(),
            };
            let _ = serde_json::to_writer(&mut lines, &line);
            lines.push(b'\n');
            ids.push(r.keyer.key(d.source.as_bytes(), d.id.as_bytes()));
        }
    }
    let mut guard = r.inner.lock().unwrap_or_else(|p| p.into_inner());
    let inner = &mut *guard;
    match &mut inner.recording {
        Recording::File(file) => {
            if let Err(e) = file.write_all(&lines).and_then(|()| file.flush()) {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot record events: {e}\n"),
                )
                    .into_response();
            }
            for h in ids {
                if inner.seen.insert(h) {
                    inner.summary.distinct += 1;
                } else {
                    inner.summary.duplicates += 1;
                }
            }
        }
        Recording::Observer(observe) => observe(&deliveries),
    }
    inner.summary.received += deliveries.len() as u64;
    inner.summary.requests += 1;
    for d in &deliveries {
        if let Some(t) = d.event_time_ms {
            inner
                .delays
                .saturating_record((received_at - t).max(0) as u64);
        }
    }
    inner
        .handling_us
        .saturating_record(now_us().saturating_sub(received_at_us).max(1) as u64);
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "received": events.len() })),
    )
        .into_response()
}

/// One line of the record file.
#[derive(Serialize)]
struct Line<'a> {
    id: &'a str,
    source: &'a str,
    time: Option<&'a str>,
    event_time_ms: Option<i64>,
    received_at_ms: i64,
    received_at_us: i64,
    idempotency_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::value::RawValue>,
    /// hifi's version extension, when the event has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    hifiversion: Option<&'a str>,
}

/// The attributes of a received CloudEvent that the receiver records; the rest (`data`
/// too) is skipped without being copied.
#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow, default)]
    id: LooseStr<'a>,
    #[serde(borrow, default)]
    source: LooseStr<'a>,
    #[serde(borrow, default)]
    time: LooseStr<'a>,
    /// Kept as its text (a borrowed slice; written only with `--record-data`).
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    hifiversion: LooseStr<'a>,
}

/// A string attribute, or nothing for any other JSON value: the receiver records what
/// it gets rather than refusing an event for the shape of one attribute.
#[derive(Default)]
struct LooseStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(s.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
        d.deserialize_any(V).map(LooseStr)
    }
}

/// The events of a body: a CloudEvents batch (array of objects) or one CloudEvent.
fn parse_events(body: &[u8]) -> Result<Vec<Received<'_>>, String> {
    let body = body.trim_ascii();
    // UTF-8 checked once for the whole body rather than string by string.
    let text = std::str::from_utf8(body).map_err(|e| format!("invalid JSON: {e}"))?;
    match body.first() {
        Some(b'[') => serde_json::from_str(text)
            .map_err(|e| format!("expected a CloudEvents batch (array of objects): {e}")),
        Some(b'{') => serde_json::from_str(text)
            .map(|e| vec![e])
            .map_err(|e| format!("invalid JSON: {e}")),
        _ => Err("expected a CloudEvents batch (array) or one CloudEvent".into()),
    }
}

/// Event ids of a request body.
fn ids_in(body: &[u8]) -> Vec<String> {
    parse_events(body)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.id.0.map(Cow::into_owned))
        .collect()
}

/// Appends `{"id", "status", "at_us"}` per event of a request failed with `fail_status`
/// (refused requests: [`log_rejection`]).
fn log_failure<S: AsRef<str>>(r: &Receiver, ids: &[S], status: u16, at_us: i64) {
    let lines = ids
        .iter()
        .map(|id| serde_json::json!({"id": id.as_ref(), "status": status, "at_us": at_us}));
    write_failures(r, lines);
}

/// Logs every event of a refused request, marking the ones that matched.
fn log_rejection(
    r: &Receiver,
    events: &[Received<'_>],
    re: &regex::Regex,
    status: u16,
    at_us: i64,
) {
    let lines = events.iter().filter_map(|e| e.id.0.as_deref()).map(|id| {
        let mut line = serde_json::json!({"id": id, "status": status, "at_us": at_us});
        if re.is_match(id) {
            line["rejected"] = true.into();
        }
        line
    });
    write_failures(r, lines);
}

fn write_failures(r: &Receiver, lines: impl Iterator<Item = serde_json::Value>) {
    let mut guard = r.failures.lock().unwrap_or_else(|p| p.into_inner());
    let Some(file) = guard.as_mut() else { return };
    let mut out = Vec::new();
    for line in lines {
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
    }
    let _ = file.write_all(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_their_attributes_and_odd_shapes_are_recorded_not_refused() {
        let body =
            br#" [{"id":"a","source":"s","time":"2026-01-01T00:00:00Z","data":{"x":[1,{"y":"z"}]}},
                         {"id":"q\"uote","source":7,"time":null},
                         {"id":{"nested":true},"source":["s"]}] "#;
        let events = parse_events(body).unwrap();
        let ids: Vec<Option<&str>> = events.iter().map(|e| e.id.0.as_deref()).collect();
        assert_eq!(ids, vec![Some("a"), Some("q\"uote"), None]);
        assert!(matches!(events[0].id.0, Some(Cow::Borrowed(_))), "no copy");
        assert_eq!(events[0].time.0.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(events[1].source.0, None);
        assert_eq!(events[1].time.0, None);
        assert_eq!(events[2].source.0, None);
        let one = parse_events(br#"{"id":"b"}"#).unwrap();
        assert_eq!(one[0].id.0.as_deref(), Some("b"));
        assert_eq!(ids_in(body), vec!["a".to_owned(), "q\"uote".to_owned()]);
    }

    #[test]
    fn bodies_that_are_not_cloudevents_are_refused_with_a_reason() {
        for (body, says) in [
            (&b"[1, 2]"[..], "array of objects"),
            (b"[{\"id\":\"a\"", "array of objects"),
            (b"{\"id\":", "invalid JSON"),
            (b"\"text\"", "expected a CloudEvents batch"),
            (b"", "expected a CloudEvents batch"),
            (b"[{\"id\":\"\xff\"}]", "invalid JSON"),
        ] {
            let err = parse_events(body).err().unwrap();
            assert!(err.contains(says), "{body:?}: {err}");
        }
    }
}
