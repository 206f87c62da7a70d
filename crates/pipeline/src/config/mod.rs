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

mod fingerprint;
mod load;
mod sink;
mod source;
mod stage;

pub use fingerprint::*;
pub use load::{ConfigError, LoadedConfig};
pub use sink::*;
pub use source::*;
pub use stage::*;

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
    /// The PII detector.
    #[serde(default)]
    pub pii: PiiConfig,
    /// Lineage export.
    #[serde(default)]
    pub lineage: LineageConfig,
    /// Autoscaling signals (`GET /v1/scale`).
    #[serde(default)]
    pub scale: ScaleConfig,
    /// `[signals]`: where bucket signals go besides `__signals`.
    #[serde(default)]
    pub signals: SignalsConfig,
}

/// `[scale]`: how the recommended replica count of each stage and sink is worked out
/// (`GET /v1/scale`, [`crate::scale`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleConfig {
    /// Capacity asked beyond the input rate: 1.2 plans for 20 % more. Default 1.2 (1 … 10).
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    /// A backlog is planned to be drained within this. Default `"1m"`.
    #[serde(default = "default_drain_within")]
    pub drain_within: Dur,
    /// The need must stay lower this long before the recommendation goes down by one
    /// replica (and as long again for each further step). Default `"5m"`.
    #[serde(default = "default_scale_down_after")]
    pub scale_down_after: Dur,
    /// Records/s one replica of a node sustains, by node name (e.g. found with `hifi
    /// loadtest --find-rating`); a node not listed has its rate measured.
    #[serde(default)]
    pub ratings: BTreeMap<String, f64>,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            headroom: default_headroom(),
            drain_within: default_drain_within(),
            scale_down_after: default_scale_down_after(),
            ratings: BTreeMap::new(),
        }
    }
}

fn default_headroom() -> f64 {
    1.2
}

fn default_drain_within() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_scale_down_after() -> Dur {
    Dur(Duration::from_secs(300))
}

/// `[lineage]`: the pipeline's lineage sent to an OpenLineage backend (Marquez, DataHub,
/// …) as it starts and stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// The backend's base URL (e.g. `"http://127.0.0.1:5000"`); events are POSTed to
    /// `endpoint` under it. Absent: nothing is sent.
    pub openlineage_url: Option<String>,
    /// Path of the lineage endpoint under the URL. Default `"api/v1/lineage"`.
    #[serde(default = "default_openlineage_endpoint")]
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// The OpenLineage namespace of the jobs (one per node). Default `"hifi"`.
    #[serde(default = "default_lineage_namespace")]
    pub namespace: String,
    /// The namespace of the topics as datasets. Default: `kafka://HOST:PORT` (the first
    /// broker) with the Kafka engine, `hifi://` and the data directory's absolute path
    /// with the embedded one.
    pub dataset_namespace: Option<String>,
}

impl Default for LineageConfig {
    fn default() -> Self {
        LineageConfig {
            openlineage_url: None,
            endpoint: default_openlineage_endpoint(),
            api_key: None,
            namespace: default_lineage_namespace(),
            dataset_namespace: None,
        }
    }
}

fn default_openlineage_endpoint() -> String {
    "api/v1/lineage".into()
}

fn default_lineage_namespace() -> String {
    "hifi".into()
}

/// `[pii]`: the detector that samples ingested events for values that look like personal
/// data (card numbers, emails, phone numbers, IBANs) in fields not declared PII.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Look at one event in this many per source; 0 turns the detector off. Default 100.
    #[serde(default = "default_pii_sample_every")]
    pub sample_every: u64,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            sample_every: default_pii_sample_every(),
        }
    }
}

fn default_pii_sample_every() -> u64 {
    100
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
    /// Kafka: where ingest appends while the cluster cannot take its appends
    /// (`[engine.standby]`); none by default.
    #[serde(default)]
    pub standby: Option<StandbyConfig>,
}

/// `[engine.standby]`: a second place for ingest's appends while the Kafka cluster is
/// unavailable — a local embedded log (a spool) or a second Kafka cluster. Its records
/// are moved into the cluster once it is back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// `"embedded"` (a spool on this machine's disk) or `"kafka"` (a second cluster).
    pub kind: EngineKind,
    /// Embedded: the spool's directory (relative to the pipeline file's folder).
    /// Default `"./standby"`.
    #[serde(default = "default_standby_dir")]
    pub data_dir: PathBuf,
    /// Kafka: the standby cluster's bootstrap brokers.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: prefix of its topic and group names. Default: `engine.topic_prefix`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Kafka: replication factor of its topics. Default 3.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Kafka: librdkafka settings of the standby cluster's clients.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// How long an append to the cluster may take before ingest appends to the standby
    /// instead. Default `"2s"`.
    #[serde(default = "default_failover_after")]
    pub failover_after: Dur,
    /// While ingest uses the standby: how often it checks whether the cluster is back.
    /// Default `"1s"`.
    #[serde(default = "default_probe_every")]
    pub probe_every: Dur,
}

fn default_standby_dir() -> PathBuf {
    PathBuf::from("./standby")
}

fn default_failover_after() -> Dur {
    Dur(Duration::from_secs(2))
}

fn default_probe_every() -> Dur {
    Dur(Duration::from_secs(1))
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
    /// The top-level fields of the topic's events and their types, e.g.
    /// `{ id = "string", ts = "timestamp", amount = "float64", note = "string?" }`
    /// (see [`hifi_sql::schema`]). Sources writing the topic refuse events that do not
    /// fit (400, nothing written); SQL stages reading it plan against it.
    pub schema: Option<Spanned<BTreeMap<String, String>>>,
    /// Top-level fields of the topic's events that hold personal data, as with
    /// `sources.X.pii` (for a stage's output topic: fields the stage computes). Default
    /// none.
    #[serde(default)]
    pub pii: Vec<String>,
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
