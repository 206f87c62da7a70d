//! `[sources.*]`: where events come from (HTTP listeners, Kafka topics), their limits, authentication and event-time window.

use super::*;

/// Source node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// HTTP ingest: `POST /v1/events`.
    Http,
    /// Records of Kafka topics (any cluster, whichever engine hifi runs on).
    Kafka,
}

/// `[sources.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `"http"`.
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_ingest_listen")]
    pub listen: SocketAddr,
    /// The topic events are appended to.
    pub topic: Spanned<String>,
    /// Largest request body, compressed or not (413 beyond). Default `"4MiB"`.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: Size,
    /// Most events in one request. Default 10 000.
    #[serde(default = "default_max_events")]
    pub max_events_per_request: usize,
    /// JSON pointer to the event time in plain JSON events (RFC 3339 string or epoch
    /// milliseconds), e.g. `"/ts"`. When set, an event without it is rejected. When
    /// unset, plain JSON events get their ingest time as event time. CloudEvents use
    /// their `time` attribute (ingest time when absent).
    pub event_time: Option<String>,
    /// JSON pointer to the event id in plain JSON events, e.g. `"/id"` (string or
    /// integer). Events without one get an id from hifi (a UUID v7).
    pub id_field: Option<String>,
    /// Top-level fields of its events that hold personal data (e.g. `["email", "card"]`):
    /// they are PII wherever lineage carries them, and every sink they reach must allow
    /// them (`allow_pii`). Default none.
    #[serde(default)]
    pub pii: Vec<String>,
    /// Summary statistics of its topic per event-time bucket (`GET /v1/fingerprints`),
    /// e.g. `fingerprint = { entropy = ["country"] }`.
    pub fingerprint: Option<FingerprintConfig>,
    /// Checks on each complete bucket of its fingerprint (needs `fingerprint`).
    #[serde(default)]
    pub audits: Vec<AuditConfig>,
    /// The CloudEvents `type` given to plain JSON events. Default `"hifi.event"`.
    #[serde(default = "default_event_type")]
    pub event_type: String,
    /// An event whose (source, id) was accepted within this window is acknowledged
    /// again but not stored again (also across restarts). Default `"10m"`.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: Dur,
    /// Most ids remembered for de-duplication (memory bound; ~26 bytes each); past it
    /// the oldest are forgotten early. Default 1 000 000.
    #[serde(default = "default_dedup_max")]
    pub dedup_max_ids: usize,
    /// Request bytes being processed at once; beyond it requests get 503 with
    /// `Retry-After`. Default `"64MiB"`.
    #[serde(default = "default_inflight")]
    pub max_inflight_bytes: Size,
    /// Bearer-token authentication; absent = no authentication.
    pub auth: Option<AuthConfig>,
    /// Most connections open at once on this listener; at the cap new clients wait in
    /// the accept queue. Default 1 024 (keep it under the process's file limit minus
    /// what the engine needs).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest time for a request's headers to arrive; also how long an idle keep-alive
    /// connection stays open. Default `"10s"`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Longest time for a request's body to arrive (408 after it). Default `"30s"`.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Dur,
    /// Event times accepted, relative to the ingest time. Default 7 days in the past,
    /// 5 minutes in the future, others refused (400; a Kafka source dead-letters them).
    #[serde(default)]
    pub event_time_window: EventTimeWindow,
    /// Kafka: bootstrap brokers of the cluster read, `"host:port,host:port"`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: the topics read (they must exist).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Kafka: the consumer group whose committed positions say what was taken. Default
    /// `"hifi.<source name>"`.
    #[serde(default)]
    pub group: Option<String>,
    /// Kafka: librdkafka consumer settings as they are (TLS, SASL,
    /// `auto.offset.reset`); automatic commits cannot be turned on.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// `[sources.NAME.event_time_window]`: a producer's event times decide which loss buckets
/// the ledger opens, so they are bounded.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeWindow {
    /// How far before the ingest time an event time may be. Default `"7d"`.
    #[serde(default = "default_time_past")]
    pub past: Dur,
    /// How far after the ingest time an event time may be. Default `"5m"`.
    #[serde(default = "default_time_future")]
    pub future: Dur,
    /// What happens to an event outside: `"reject"` (default: 400 with the reason,
    /// nothing of the request written) or `"clamp"` (its event time is set to the nearest
    /// bound and counted in `hifi_source_clamped_event_times_total`; the value is kept).
    #[serde(default)]
    pub outside: OutsideWindow,
}

impl Default for EventTimeWindow {
    fn default() -> Self {
        EventTimeWindow {
            past: default_time_past(),
            future: default_time_future(),
            outside: OutsideWindow::default(),
        }
    }
}

/// What happens to an event time outside [`EventTimeWindow`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutsideWindow {
    /// 400 with the reason; nothing of the request is written.
    #[default]
    Reject,
    /// The event time is set to the nearest bound (and counted).
    Clamp,
}

/// `[sources.NAME.auth]`: accepted bearer tokens (inline, from a file, or both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens accepted in `Authorization: Bearer <token>`.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// A file with one token per line (blank lines and `#` comments ignored).
    pub tokens_file: Option<PathBuf>,
}

fn default_ingest_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> Size {
    Size(4 << 20)
}

fn default_max_events() -> usize {
    10_000
}

fn default_event_type() -> String {
    "hifi.event".into()
}

fn default_max_connections() -> usize {
    1024
}

fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_body_read_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_time_past() -> Dur {
    Dur(Duration::from_secs(7 * 24 * 3600))
}

fn default_time_future() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_dedup_window() -> Dur {
    Dur(Duration::from_secs(600))
}

fn default_dedup_max() -> usize {
    1_000_000
}

fn default_inflight() -> Size {
    Size(64 << 20)
}
