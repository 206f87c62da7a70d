//! The pipeline file: one TOML document describing the engine, the admin API, topics and
//! the three kinds of nodes. The doc comments on these structs are the reference
//! (docs/configuration.md repeats them with examples).
//!
//! Parsing rejects unknown keys (with the line and the valid keys, from the TOML parser);
//! [`crate::topology`] then checks the graph (unknown topics, cycles, a topic nobody
//! writes), naming the file, the key and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{Dur, Size};

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where topics live.
    pub engine: EngineConfig,
    /// The admin API (health, metrics, operator commands).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Per-topic settings; topics not listed here are created on first use with the
    /// engine's defaults.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// Ingest nodes: outside → topic.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Transform nodes: topic → topic.
    #[serde(default)]
    pub stages: BTreeMap<String, StageConfig>,
    /// Delivery nodes: topic → outside.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The fidelity ledger (lag and loss).
    #[serde(default)]
    pub ledger: LedgerSection,
    /// OpenTelemetry: spans exported over OTLP.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (e.g. `"http://127.0.0.1:4318"`; spans go to `/v1/traces`
    /// under it). Absent: no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans. Default `"hifi"`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of traces recorded (0 to 1) when the producer sent no sampling decision.
    /// Default 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

fn default_service_name() -> String {
    "hifi".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

/// `[ledger]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// Record lag and loss. Default true (turn off only to measure the ledger's cost).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A bucket settles when its tallies have not changed this long and every stage
    /// and sink has committed past its input as it was then. Default `"3m"`.
    #[serde(default = "default_settle_after")]
    pub settle_after: Dur,
    /// Longest a bucket waits for a node's backlog (destination down, stage behind)
    /// before it settles anyway, with the waiting events reported as `backlog`, not
    /// lost. Default `"1h"`.
    #[serde(default = "default_settle_max_wait")]
    pub settle_max_wait: Dur,
    /// Alarm when a settled bucket's end-to-end loss % is above this. Default 0.0 (any loss).
    #[serde(default)]
    pub loss_alarm_percent: f64,
    /// How long settled loss tables are kept. Default `"7d"`.
    #[serde(default = "default_retention")]
    pub history: Dur,
    /// POST each alarm's loss table (JSON) to this URL. Default none.
    pub alarm_webhook: Option<String>,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            enabled: true,
            settle_after: default_settle_after(),
            settle_max_wait: default_settle_max_wait(),
            loss_alarm_percent: 0.0,
            history: default_retention(),
            alarm_webhook: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_settle_after() -> Dur {
    Dur(Duration::from_secs(180))
}
fn default_open_segment_files() -> usize {
    256
}
fn default_retention_hold() -> Size {
    Size(10 << 30)
}
fn default_retention_check() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_settle_max_wait() -> Dur {
    Dur(Duration::from_secs(3600))
}

/// `engine.on_corruption`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorruptionMode {
    /// Copy the damaged bytes aside, skip them, report them.
    #[default]
    Quarantine,
    /// Readers stop at the damage.
    Stop,
}

/// Which engine holds the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The on-disk log in `data_dir` (one process).
    Embedded,
    /// A Kafka-protocol cluster at `brokers` (any number of processes).
    Kafka,
}

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync before every acknowledgement (group commit). Zero loss on power failure.
    #[default]
    Always,
    /// fsync every `fsync_interval`; a power failure may lose up to that much.
    Interval,
    /// Never fsync (tests and throw-away data only).
    Never,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `"embedded"` or `"kafka"`.
    pub kind: EngineKind,
    /// The embedded log's data directory (relative paths are relative to the pipeline
    /// file's folder). Default `"./data"`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `"always"` (default), `"interval"` or `"never"`.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: how often. Default `"1s"`.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: Dur,
    /// Partitions of topics created on first use. Default 4.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Segment size. Default `"128MiB"`.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: Size,
    /// Largest record. Default `"1MiB"`.
    #[serde(default = "default_record_bytes")]
    pub record_bytes_max: Size,
    /// Zeroes kept ahead of each written partition's appends, so that their fsyncs need
    /// not change the file size. Default `"1MiB"`; `"0"` turns it off.
    #[serde(default = "default_preallocate_bytes")]
    pub preallocate_bytes: Size,
    /// How long topics keep records by default. Default `"7d"`.
    #[serde(default = "default_retention")]
    pub retention: Dur,
    /// Most bytes per partition retention may keep only because a stage or sink has not
    /// read them yet; past it appends to that partition are refused (ingest: 507) until
    /// the consumer catches up. Default `"10GiB"`.
    #[serde(default = "default_retention_hold")]
    pub retention_hold_bytes_max: Size,
    /// Files of sealed segments kept open for readers, over all partitions; the least
    /// recently read is closed first. Default 256.
    #[serde(default = "default_open_segment_files")]
    pub open_segment_files_max: usize,
    /// How often retention runs. Default `"60s"`.
    #[serde(default = "default_retention_check")]
    pub retention_check_interval: Dur,
    /// A record that fails its checksum: `"quarantine"` (default: copied aside, skipped
    /// by readers, reported lost; everything else keeps flowing) or `"stop"` (readers
    /// of that partition stop at it with an error).
    #[serde(default)]
    pub on_corruption: OnCorruptionMode,
    /// Kafka: bootstrap brokers, `"host:port,host:port"` (required with `kind = "kafka"`).
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: prefix of every topic and consumer group name. Default `"hifi."`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Kafka: replication factor of the topics hifi creates. Default 3.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Kafka: client settings passed to librdkafka as they are (TLS, SASL, timeouts),
    /// e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// Longest time an ingest request waits for the engine to acknowledge its events;
    /// past it the request is answered 503 (nothing acknowledged) while the append goes
    /// on in the background: if it still succeeds, its events are kept, counted and
    /// de-duplicated against a retry. Default `"2s"` with `kind = "kafka"` (while no
    /// broker is reachable a produce would otherwise wait `message.timeout.ms`); none
    /// with `kind = "embedded"` (an append waits for its fsync, however slow the disk).
    #[serde(default)]
    pub ack_timeout: Option<Dur>,
}

impl EngineConfig {
    /// [`EngineConfig::ack_timeout`] with its default for the engine kind.
    pub fn ack_timeout(&self) -> Option<Duration> {
        match (self.ack_timeout, &self.kind) {
            (Some(d), _) => Some(d.0),
            (None, EngineKind::Kafka) => Some(Duration::from_secs(2)),
            (None, EngineKind::Embedded) => None,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API. Default `127.0.0.1:8081`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens for the routes that change state (re-drive); absent = none. Beyond
    /// loopback those routes are refused unless tokens are configured.
    pub auth: Option<AuthConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            auth: None,
        }
    }
}

/// `[topics.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Partitions (fixed at creation). Default: `engine.partitions`.
    pub partitions: Option<u32>,
    /// Retention by age. Default: `engine.retention`.
    pub retention: Option<Dur>,
    /// Retention by size per partition. Default: none.
    pub retention_bytes: Option<Size>,
    /// Delete by retention even records a stage or sink has not read yet. Default
    /// false: a segment is kept until every consumer has committed past it (up to
    /// `engine.retention_hold_bytes_max`, then appends get 507).
    #[serde(default)]
    pub retention_ignore_consumers: bool,
}

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

/// `[stages.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Topic read.
    pub input: Spanned<String>,
    /// Topic written.
    pub output: Spanned<String>,
    /// Transforms applied in order; none = pass-through.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Records read per batch. Default 1000.
    #[serde(default = "default_stage_batch")]
    pub batch_max_events: usize,
    /// Test builds only (cargo feature `test-hooks`, never in a release build): silently
    /// drop events whose id matches this regex, recording no outcome — a simulated bug,
    /// so tests can prove the ledger finds the loss. Without the feature the key is
    /// unknown and refused like any other.
    #[cfg(feature = "test-hooks")]
    pub test_drop_ids_matching: Option<String>,
}

/// One transform of a stage (`[[stages.NAME.transforms]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keep events for which the CEL `condition` is true (the event's JSON is `event`,
    /// e.g. `event.amount > 100 && event.country == "DE"`); others get the outcome
    /// `filtered`.
    Filter {
        /// A CEL expression evaluating to a boolean.
        condition: String,
    },
    /// Set a field (JSON pointer) to a JSON value, creating objects on the way.
    Set {
        /// JSON pointer, e.g. `"/meta/pipeline"`.
        field: String,
        /// Any TOML value (converted to JSON).
        value: toml::Value,
    },
    /// Move a field.
    Rename {
        /// JSON pointer of the field to move.
        from: String,
        /// JSON pointer of its new place.
        to: String,
    },
    /// Remove fields (missing fields are fine).
    Remove {
        /// JSON pointers.
        fields: Vec<String>,
    },
    /// Replace a field's value with a salted SHA-256 hash (`mode = "hash"`, hex) or a
    /// mask (`mode = "mask"`: `"****"` keeping the last `keep_last` characters).
    Redact {
        /// JSON pointer.
        field: String,
        /// `"hash"` or `"mask"`.
        mode: RedactMode,
        /// Salt for `hash` (required for `hash`).
        salt: Option<String>,
        /// Characters left visible by `mask`. Default 0.
        #[serde(default)]
        keep_last: usize,
    },
}

/// How `redact` hides a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// Salted SHA-256, hex.
    Hash,
    /// `****` plus the last characters.
    Mask,
}

/// Sink node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// HTTP delivery of CloudEvents batches.
    Http,
    /// Produced to a Kafka topic (any cluster, whichever engine hifi runs on).
    Kafka,
}

/// `[sinks.NAME] format`: how events are put in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// A JSON array of structured CloudEvents
    /// (`application/cloudevents-batch+json`).
    #[default]
    Batch,
    /// Structured CloudEvents, one per line (`application/x-ndjson`).
    Ndjson,
    /// One structured CloudEvent per request (`application/cloudevents+json`).
    Structured,
    /// One event per request in CloudEvents binary mode: attributes as `ce-*` headers,
    /// the data as the body.
    Binary,
    /// One event per request: the data alone (the producer's JSON), no CloudEvents
    /// attributes.
    Raw,
}

impl SinkFormat {
    /// Whether a request carries exactly one event.
    pub fn one_per_request(self) -> bool {
        matches!(
            self,
            SinkFormat::Structured | SinkFormat::Binary | SinkFormat::Raw
        )
    }
}

impl SinkConfig {
    /// The format, with the sink type's default.
    pub fn format(&self) -> SinkFormat {
        match (self.format_set, self.kind) {
            (Some(f), _) => f,
            (None, SinkType::Http) => SinkFormat::Batch,
            (None, SinkType::Kafka) => SinkFormat::Structured,
        }
    }
}

/// `[sinks.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `"http"` or `"kafka"`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Topic delivered.
    pub input: Spanned<String>,
    /// HTTP: destination URL (`http://` or `https://`); batches are POSTed to it.
    #[serde(default)]
    pub url: String,
    /// HTTP: extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What a request (HTTP) or a record (Kafka) carries. Default `"batch"` (HTTP),
    /// `"structured"` (Kafka); see [`SinkConfig::format`].
    #[serde(default, rename = "format")]
    pub format_set: Option<SinkFormat>,
    /// Kafka: bootstrap brokers of the destination cluster, `"host:port,host:port"`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: the topic produced to (its exact name; it must exist).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: JSON pointer into the CloudEvent (e.g. `"/data/user"`) whose value is the
    /// record key; events without it get no key. Default: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Kafka: librdkafka producer settings passed as they are (TLS, SASL,
    /// `compression.type`); `acks` and `enable.idempotence` cannot be changed.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// How events are grouped into requests.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Requests of fresh batches in flight at once; batches that failed once use as many
    /// again of their own (the recovery lane). Default 8.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A request that takes longer fails (and is retried). Default `"10s"`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Local and global retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Failure-class overrides.
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// `[sinks.NAME.batch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events per request. Default 500.
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    /// Most body bytes per request. Default `"1MiB"`.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: Size,
    /// While all `concurrency` requests are busy, a batch keeps filling for up to this
    /// long; with a free request slot it is sent at once. Default `"50ms"`.
    #[serde(default = "default_batch_wait")]
    pub max_wait: Dur,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_events(),
            max_bytes: default_batch_bytes(),
            max_wait: default_batch_wait(),
        }
    }
}

/// `[sinks.NAME.retry]`: two tiers of retries.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries inside the sink.
    #[serde(default)]
    pub local: LocalRetry,
    /// Retries through the sink's retry topics.
    #[serde(default)]
    pub global: GlobalRetry,
}

/// `[sinks.NAME.retry.local]`: exponential backoff with full jitter, at least the
/// destination's `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRetry {
    /// Attempts of one batch before its events go to the retry topic. Default 3.
    #[serde(default = "default_local_attempts")]
    pub attempts: u32,
    /// First backoff. Default `"100ms"`.
    #[serde(default = "default_backoff_min")]
    pub backoff_min: Dur,
    /// Longest backoff. Default `"5s"`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
}

impl Default for LocalRetry {
    fn default() -> Self {
        LocalRetry {
            attempts: default_local_attempts(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
        }
    }
}

/// `[sinks.NAME.retry.global]`: delay tiers (one retry topic each); an event moves up a
/// tier after each failed global retry and stays in the last one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRetry {
    /// Delays. Default `["30s", "2m", "10m", "30m", "1h", "2h"]`.
    #[serde(default = "default_schedule")]
    pub schedule: Vec<Dur>,
    /// Dead-letter events still failing this long after their first failure. Default `"24h"`.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Global retries per second at most (a recovering destination is not flooded). Default 1000.
    #[serde(default = "default_retry_rate")]
    pub rate: u64,
}

impl Default for GlobalRetry {
    fn default() -> Self {
        GlobalRetry {
            schedule: default_schedule(),
            max_age: default_max_age(),
            rate: default_retry_rate(),
        }
    }
}

/// `[sinks.NAME.classify]`: move HTTP statuses between the failure classes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Statuses to retry although non-recoverable by default (e.g. `[404]`).
    #[serde(default)]
    pub recoverable: Vec<u16>,
    /// Statuses to dead-letter although recoverable by default (e.g. `[501]`).
    #[serde(default)]
    pub non_recoverable: Vec<u16>,
}

/// `[sinks.NAME.breaker]`: the circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open it. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// While open, one probe request at most this far apart. Default `"5s"`.
    #[serde(default = "default_breaker_probe")]
    pub probe: Dur,
    /// The first probe this soon after it opens; the gap doubles after each failed probe
    /// up to `probe`, so a short outage pauses delivery briefly and a long one costs one
    /// request per `probe`. Default `"250ms"` (at most `probe`).
    #[serde(default = "default_breaker_probe_min")]
    pub probe_min: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_breaker_failures(),
            probe: default_breaker_probe(),
            probe_min: default_breaker_probe_min(),
        }
    }
}

fn default_local_attempts() -> u32 {
    3
}
fn default_schedule() -> Vec<Dur> {
    [30, 120, 600, 1800, 3600, 7200]
        .iter()
        .map(|s| Dur(Duration::from_secs(*s)))
        .collect()
}
fn default_max_age() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_retry_rate() -> u64 {
    1000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_probe() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_breaker_probe_min() -> Dur {
    Dur(Duration::from_millis(250))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_fsync_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_topic_prefix() -> String {
    "hifi.".into()
}
fn default_replication_factor() -> u16 {
    3
}
fn default_partitions() -> u32 {
    4
}
fn default_segment_bytes() -> Size {
    Size(128 << 20)
}
fn default_record_bytes() -> Size {
    Size(1 << 20)
}
fn default_preallocate_bytes() -> Size {
    Size(1 << 20)
}
fn default_retention() -> Dur {
    Dur(Duration::from_secs(7 * 24 * 3600))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
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
fn default_stage_batch() -> usize {
    1000
}
fn default_concurrency() -> usize {
    8
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_batch_events() -> usize {
    500
}
fn default_batch_bytes() -> Size {
    Size(1 << 20)
}
fn default_batch_wait() -> Dur {
    Dur(Duration::from_millis(50))
}
fn default_backoff_min() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(5))
}

/// A configuration error: the file, where, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The pipeline file.
    pub file: String,
    /// Line number, when known.
    pub line: Option<usize>,
    /// The key, as a dotted path (`sinks.partner.input`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Masks the values of keys that hold secrets even when written literally:
/// `Authorization`, `*token*`, `*password*`, `*secret*` (a string, or strings in a list).
fn mask_secret_keys(text: &str) -> String {
    static KEYS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?im)((?:^|[\s{,])"?[\w-]*(?:authorization|token|password|secret)[\w-]*"?\s*=\s*)("(?:[^"\\]|\\.)*"|\[[^\]]*\])"#,
        )
        .expect("a valid regex")
    });
    static STRING: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("a valid regex")
    });
    KEYS.replace_all(text, |c: &regex::Captures<'_>| {
        let key = c[1]
            .trim_end()
            .trim_end_matches('=')
            .trim_end()
            .trim_end_matches('"');
        if key.to_ascii_lowercase().ends_with("_file") {
            return c[0].to_owned(); // a path, not a secret
        }
        format!("{}{}", &c[1], STRING.replace_all(&c[2], "\"****\""))
    })
    .into_owned()
}

/// A parsed pipeline file with what is needed for error messages.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration.
    pub config: PipelineConfig,
    /// Path of the file (for messages and relative paths).
    pub path: PathBuf,
    /// The file's text with `${...}` resolved ([`crate::interpolate`]; to turn byte
    /// spans into line numbers).
    pub text: String,
    /// That text with secrets masked, for `hifi validate --print`.
    pub masked: String,
}

impl LoadedConfig {
    /// Reads and parses a pipeline file (syntax and unknown keys; the graph is checked
    /// by [`crate::topology::Topology::build`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read the pipeline file: {e}"),
        })?;
        Self::parse(path, text)
    }

    /// Parses pipeline text as if read from `path`, after resolving its `${...}` from
    /// the environment and from files beside it.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolved =
            crate::interpolate::interpolate(&text, dir, &|name: &str| std::env::var(name).ok())
                .map_err(|e| ConfigError {
                    file: path.display().to_string(),
                    line: Some(e.line),
                    key: "(interpolation)".into(),
                    message: e.message,
                })?;
        let masked = mask_secret_keys(&resolved.masked());
        let text = resolved.text;
        let config: PipelineConfig = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            ConfigError {
                file: path.display().to_string(),
                line,
                key: "(syntax)".into(),
                message: e.message().trim().to_owned(),
            }
        })?;
        Ok(LoadedConfig {
            config,
            path: path.to_path_buf(),
            text,
            masked,
        })
    }

    /// Line number (1-based) of a byte position in the file.
    pub fn line(&self, pos: usize) -> usize {
        line_of(&self.text, pos)
    }

    /// An error at a spanned value.
    pub fn error_at<T>(
        &self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.display().to_string(),
            line: Some(self.line(at.span().start)),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error without a known line.
    pub fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.display().to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A path from the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A product build (without the `test-hooks` feature) knows no test-only key. Runs with
/// `cargo test -p hifi-pipeline`; `cargo test --workspace` turns the feature on for the
/// binary's integration tests, and skips this.
#[cfg(all(test, not(feature = "test-hooks")))]
mod product_build {
    #[test]
    fn the_test_only_drop_hook_is_an_unknown_key() {
        let text = "[stages.s]\ninput = \"a\"\noutput = \"b\"\ntest_drop_ids_matching = \".*\"\n";
        let e = super::LoadedConfig::parse(std::path::Path::new("p.toml"), text.into())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown field `test_drop_ids_matching`"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_hold_secrets_are_masked_however_written() {
        let text = "[sinks.p]\nheaders = { Authorization = \"Bearer abc\", \"X-Api-Token\" = \"t\\\"1\", Accept = \"a\" }\n\
                    [sources.api.auth]\ntokens = [\"one\", \"two\"]\ntokens_file = \"tokens.txt\"\npassword = \"pw\"\n";
        let masked = mask_secret_keys(text);
        assert_eq!(
            masked,
            "[sinks.p]\nheaders = { Authorization = \"****\", \"X-Api-Token\" = \"****\", Accept = \"a\" }\n\
             [sources.api.auth]\ntokens = [\"****\", \"****\"]\ntokens_file = \"tokens.txt\"\npassword = \"****\"\n"
        );
    }
}
