//! What the ledger reports: loss tables, lag reports, traces, backlogs and fates
//! (the types the admin API serves as JSON).

use super::*;

/// One node's row of a loss table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeLoss {
    pub node: String,
    pub kind: NodeKind,
    /// Distinct events with any outcome here.
    pub seen: u64,
    /// Passed on by the upstream nodes, no outcome here.
    pub lost: u64,
    pub passed: u64,
    pub delivered: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    /// Still waiting for a retry (no delivered or dead-lettered outcome yet).
    pub retrying: u64,
    /// Taken into a window's result (window stages).
    #[serde(default)]
    pub aggregated: u64,
    /// Delivered again by a version's re-delivery (`hifi publish --redeliver-from`;
    /// sinks): also in `delivered`, never a duplicate or loss.
    #[serde(default)]
    pub redelivered: u64,
}

/// A lost origin and the node it was lost at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostOrigin {
    pub origin: String,
    pub node: String,
    /// Why, when known: `"corrupt"` — its record was quarantined as damaged in its
    /// origin topic, so no node could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a sink and its shadow acknowledged in one bucket, compared per event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowDiff {
    /// The sink.
    pub primary: String,
    /// Its shadow (the same events, delivered to another destination).
    pub shadow: String,
    /// Events both destinations acknowledged.
    pub both: u64,
    /// Events only the primary's destination acknowledged.
    pub only_primary: u64,
    /// Their origins, the first [`crate::SHADOW_EXAMPLES`].
    pub only_primary_examples: Vec<String>,
    /// Events only the shadow's destination acknowledged.
    pub only_shadow: u64,
    /// Their origins, the first [`crate::SHADOW_EXAMPLES`].
    pub only_shadow_examples: Vec<String>,
    /// Events the primary dead-lettered (refused by its destination).
    pub primary_dead_lettered: u64,
    /// Events the shadow dead-lettered.
    pub shadow_dead_lettered: u64,
}

/// The loss table of one bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LossTable {
    /// Bucket start, RFC 3339.
    pub start: String,
    /// Bucket start, ms since the epoch.
    pub start_ms: i64,
    /// Whether the figures are final.
    pub settled: bool,
    /// Distinct events the sources stored in this bucket.
    pub events: u64,
    /// Of those, per origin topic: the path each took in (a source's topic;
    /// `standby:ingest.SOURCE` for events ingest appended to the standby while the engine was
    /// unavailable; `kafka:TOPIC` for a Kafka source's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origin_topics: BTreeMap<String, u64>,
    pub nodes: Vec<NodeLoss>,
    /// Events with no terminal outcome on some source → sink path.
    pub e2e_lost: u64,
    pub e2e_loss_percent: f64,
    /// Where each lost event was lost (up to [`LOST_LIST_MAX`]).
    pub lost: Vec<LostOrigin>,
    /// Whether `lost` lists every lost event.
    pub lost_complete: bool,
    /// Journal end when this table was written (replay skips older records of it).
    #[serde(default)]
    pub journal_end: u64,
    /// Where replay must start to rebuild the buckets still open then.
    #[serde(default)]
    pub replay_from: u64,
    /// First journal offset holding this bucket's records: when late outcomes re-open
    /// the bucket, its sets are read back from here so the new table counts every event.
    /// `None` in tables written before hifi kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_from: Option<u64>,
    /// Events still waiting in a node's backlog when the bucket settled after
    /// `settle_max_wait` (not counted as lost; the bucket re-settles when they move).
    #[serde(default)]
    pub backlog: u64,
    /// Each shadowed sink against its shadow (`[sinks.X] shadow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowDiff>,
}

/// Counters of the ledger.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Events recorded with an event time after their arrival (lag clamped).
    pub skewed_events_total: AtomicU64,
    /// Buckets settled.
    pub settled_buckets_total: AtomicU64,
    /// Settled buckets over the loss alarm threshold.
    pub loss_alarms_total: AtomicU64,
    /// Events lost in settled buckets.
    pub lost_events_total: AtomicU64,
    /// Journal appends that failed (the node's commit waits and retries).
    pub journal_errors_total: AtomicU64,
    /// Outcomes not tracked because [`OPEN_BUCKETS_MAX`] buckets were open.
    pub untracked_events_total: AtomicU64,
}

/// Where a node that reads a topic is in it (as of the ledger's last tick, about every
/// second): what it has not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// The node.
    pub node: String,
    /// Its input topic.
    pub input: String,
    /// Per partition: (committed position, end offset).
    pub positions: Vec<(u64, u64)>,
    /// When they were read (ledger clock, ms).
    pub at_ms: i64,
}

impl Backlog {
    /// Records not yet finished by the node.
    pub fn records(&self) -> u64 {
        self.positions
            .iter()
            .map(|(at, end)| end.saturating_sub(*at))
            .sum()
    }
}

/// What the ledger knows of one event's end (see [`Ledger::fates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Its bucket is open: the outcomes recorded for it at any node (without `Passed`).
    Open(Vec<Outcome>),
    /// Its bucket settled and lists it as lost at this node.
    Lost(String),
    /// Its bucket settled without it among the lost (it had a terminal outcome).
    NotLost,
    /// Its bucket settled losing more events than it lists; this one is not listed.
    Unlisted,
    /// No tallies for its bucket (outside the kept history).
    Unknown,
}

/// `GET /v1/lag`.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    pub window_s: u64,
    pub nodes: Vec<NodeLag>,
    pub e2e_ms: Quantiles,
    pub history: Vec<HistoryPoint>,
}

/// One node's lag since start.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLag {
    pub node: String,
    pub kind: NodeKind,
    pub skewed_events: u64,
    #[serde(flatten)]
    pub lag: LagSummary,
}

/// One 10-second window of the history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryPoint {
    /// Window end, RFC 3339.
    pub t: String,
    /// Largest sink lag-out p95 in the window.
    pub e2e_p95_ms: f64,
    pub nodes: BTreeMap<String, HistoryNode>,
}

/// One node in one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryNode {
    pub events: u64,
    pub process_p50_ms: f64,
    pub lag_out_p95_ms: f64,
}

/// `GET /v1/events/{origin}/trace`.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub bucket: String,
    pub settled: bool,
    pub nodes: Vec<TraceNode>,
    pub note: Option<String>,
}

/// One node of a trace.
#[derive(Debug, Clone, Serialize)]
pub struct TraceNode {
    pub node: String,
    pub kind: NodeKind,
    /// Outcomes recorded for the event here (open buckets).
    pub outcomes: Vec<Outcome>,
    /// Passed on to this node and no outcome here.
    pub lost_here: bool,
}
