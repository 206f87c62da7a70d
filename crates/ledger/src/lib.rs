//! hifi's fidelity ledger: how late every event is at every node (lag) and exactly which
//! events went missing where (loss).
//!
//! # Loss
//! Each node records, per 1-minute event-time bucket, the set of origins it saw, split by
//! outcome ([`tally`]). A node's records reach the ledger through [`NodeLedger::flush`],
//! which appends them durably to the internal topic `__ledger` — and a node flushes
//! **before** it commits its input position. After a crash, everything not committed is
//! processed again and recorded again; records are sets, so nothing counts twice and
//! nothing recorded is forgotten: a crash neither makes delivered events look lost nor
//! lost events look delivered.
//!
//! A bucket **settles** when its tallies have not changed for `settle_after`. Its loss
//! table is then computed: for each node, the events seen, the events lost there (passed
//! by the nodes writing its input topic, with no outcome here), filtered, dead-lettered,
//! delivered and still-retrying counts; and end to end, for each source → sink path, the
//! source's events with no terminal outcome (filtered or dead-lettered on the path, or delivered /
//! dead-lettered / retrying at the sink). The table is kept durably in
//! `__ledger_settled` (with the origins lost, up to [`LOST_LIST_MAX`] per bucket) for
//! `history`, and the bucket's bitmaps are dropped: memory holds only open buckets.
//! Outcomes arriving for a settled bucket re-open it: its earlier sets are read back from
//! the journal (from the table's `journal_from`), and when it settles again its table is
//! computed over everything it ever saw — late deliveries leave the lost list, events new
//! to it are counted.
//!
//! # Lag
//! See [`lag`]: per node HDR histograms of lag-in, lag-out and process duration,
//! cumulative and per 10-second window. E2E lag is lag-out at the sinks.
//!
//! # Files
//! `node.rs` (a node's handle: record, flush), `journal.rs` (replay at start, following
//! other processes, sharing lag), `settle.rs` (the tick: progress of the gated nodes,
//! loss tables), `query.rs` (loss, lag, trace, fates), `report.rs` (the types served),
//! `tally.rs` (origin sets per bucket), `lag.rs` (histograms), `clock.rs`.
#![forbid(unsafe_code)]

pub mod clock;
mod journal;
pub mod lag;
mod node;
mod query;
mod report;
mod settle;
pub mod tally;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hifi_log::{Log, LogError, Record, Retention, TopicSpec};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use clock::{Clock, ManualClock, SystemClock};
pub use lag::{LagRecorder, LagSummary, Quantiles, WindowSummary};
pub use node::NodeLedger;
pub use report::{
    Backlog, Fate, HistoryNode, HistoryPoint, LagReport, LedgerStats, LossTable, LostOrigin,
    NodeLag, NodeLoss, ShadowDiff, Trace, TraceNode,
};
use tally::{bucket_of, count, difference, union_into, Delta, OriginSet};
pub use tally::{Origin, OriginRef, Outcome};

/// Internal topic carrying node tallies (one partition).
pub const JOURNAL_TOPIC: &str = "__ledger";
/// Internal topic keeping settled loss tables.
pub const SETTLED_TOPIC: &str = "__ledger_settled";
/// Whether `table` is over a loss alarm threshold of `percent` ([`Ledger::alarming`]).
pub fn alarming(table: &LossTable, percent: f64) -> bool {
    table.e2e_lost > 0 && table.e2e_loss_percent > percent
}

/// Internal topic carrying lag histograms between processes sharing the engine.
pub const LAG_TOPIC: &str = "__ledger_lag";
/// Lost origins kept per settled bucket (beyond it only counts are kept).
pub const LOST_LIST_MAX: usize = 10_000;
/// Events listed per side of a shadow comparison ([`ShadowDiff`]) per bucket.
pub const SHADOW_EXAMPLES: usize = 20;

/// `[ledger]` settings.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Record anything at all (off only to measure the ledger's cost).
    pub enabled: bool,
    /// A bucket settles when unchanged this long.
    pub settle_after: Duration,
    /// Alarm when a settled bucket's E2E loss % is above this (0.0: any loss).
    pub loss_alarm_percent: f64,
    /// How long settled tables are kept.
    pub history: Duration,
    /// Merge the tallies other processes append to the journal (an engine shared by
    /// several processes), so every process's tables cover the whole pipeline.
    pub follow_journal: bool,
    /// Longest a bucket waits for a node's backlog (a destination down, a stage behind)
    /// before it settles anyway; its missing events are then reported as `backlog`, not
    /// as lost.
    pub settle_max_wait: Duration,
    /// Sink pairs (primary, shadow) whose deliveries each table compares.
    pub shadows: Vec<(String, String)>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            enabled: true,
            settle_after: Duration::from_secs(180),
            loss_alarm_percent: 0.0,
            history: Duration::from_secs(7 * 24 * 3600),
            follow_journal: false,
            settle_max_wait: Duration::from_secs(3600),
            shadows: Vec::new(),
        }
    }
}

/// Node kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Source,
    Stage,
    Sink,
}

/// A node as the ledger sees it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Name as in the configuration.
    pub name: String,
    /// Kind.
    pub kind: NodeKind,
    /// Topic read (stages, sinks).
    pub input: Option<String>,
    /// Topic written (sources, stages).
    pub output: Option<String>,
    /// Consumer group whose committed positions on `input` say what the node has
    /// handled (stages, sinks). A bucket settles only once every such node has committed
    /// past its input as it was when the bucket last changed; `None`: no such gate.
    pub group: Option<String>,
    /// A window stage: its input events end there (`aggregated`) and its output events
    /// are new origins, so source → sink paths also start at it.
    pub aggregates: bool,
}

/// Most loss buckets open at once (two weeks of minutes). Sources refuse event times
/// outside their window (default 7 days back, 5 minutes ahead), so this is reached only
/// with a wider window; beyond it outcomes are counted in
/// [`LedgerStats::untracked_events_total`] and not kept.
pub const OPEN_BUCKETS_MAX: usize = 20_160;

#[derive(Debug, Default)]
struct OpenBucket {
    /// node → outcome → origins.
    nodes: BTreeMap<String, BTreeMap<Outcome, OriginSet>>,
    /// Last time a tally changed (ms, ledger clock).
    last_change_ms: i64,
    /// First journal offset holding records of this bucket.
    first_journal_offset: u64,
    /// Each gated node's input end offsets (topic → per partition), read at the first
    /// tick after the bucket last changed: the bucket's events are all below them.
    inputs_end: Option<BTreeMap<String, Vec<u64>>>,
    /// When `inputs_end` was read (ms, ledger clock).
    inputs_end_at_ms: i64,
    /// Bumped by every merge: a settle computed from one version removes the bucket
    /// only if no delta came in while its table was being stored.
    version: u64,
    /// For a bucket re-opened after it settled: whether the sets it settled with are
    /// merged back from the journal (see [`Ledger::restore_reopened`]).
    restore: Restore,
}

/// Where a re-opened bucket's earlier sets are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// Not read back yet: the bucket does not settle until they are.
    #[default]
    Pending,
    /// Merged back from the journal: the bucket holds everything it ever saw.
    Done,
    /// Not in the journal any more (trimmed, or a table from before `journal_from`):
    /// the new table is the old one with late outcomes applied.
    Unavailable,
}

#[derive(Debug, Default)]
struct State {
    open: BTreeMap<i64, OpenBucket>,
    settled: BTreeMap<i64, LossTable>,
}

/// The ledger of one pipeline.
#[derive(Debug)]
pub struct Ledger {
    cfg: LedgerConfig,
    nodes: Vec<NodeSpec>,
    /// Source → sink paths as node indices.
    paths: Vec<Vec<usize>>,
    log: Arc<dyn Log>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    lag: BTreeMap<String, Mutex<LagRecorder>>,
    /// Counters.
    pub stats: LedgerStats,
    /// Flushes hold it shared from journal append to merge; `tick` holds it exclusively,
    /// so a settled table never misses a delta that is appended but not yet merged.
    journal_gate: tokio::sync::RwLock<()>,
    /// The next journal offset [`Ledger::follow_journal`] reads.
    journal_read: tokio::sync::Mutex<u64>,
    /// This process, in [`LAG_TOPIC`] records.
    process_id: u64,
    /// The next [`LAG_TOPIC`] offset [`Ledger::share_lag`] reads.
    lag_read: tokio::sync::Mutex<u64>,
    /// Quarantined offset ranges of the origin topics (sources' outputs), read each
    /// tick: lost origins in them are reported with the reason `corrupt`.
    quarantined: Mutex<Quarantined>,
    /// The gated nodes' positions as of the last tick.
    backlogs: Mutex<Vec<Backlog>>,
    /// Holders of events no gated node can see yet (a standby's records not yet moved
    /// into the engine): while any is set, nothing settles.
    holds: Mutex<BTreeSet<String>>,
    /// Other processes' holds (shared through [`LAG_TOPIC`]): process → (holders, when
    /// this process read them, ms). A process says its holds every second
    /// ([`Ledger::say_holds`]); unsaid for [`REMOTE_HOLD_TTL_MS`] of this process's own
    /// successful reads (it died), its holds lapse.
    remote_holds: Mutex<BTreeMap<u64, (BTreeSet<String>, i64)>>,
    /// When this process last read [`LAG_TOPIC`] successfully, ms.
    lag_read_ok_ms: std::sync::atomic::AtomicI64,
    /// Whether this process's last shared holds were non-empty (so that a release is
    /// shared once).
    holds_shared: std::sync::atomic::AtomicBool,
}

/// How long another process's hold counts without being said again.
pub(crate) const REMOTE_HOLD_TTL_MS: i64 = 10_000;

/// Quarantined offset ranges per origin (topic, partition).
type Quarantined = BTreeMap<(String, u32), Vec<std::ops::Range<u64>>>;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Source → sink paths through the topic graph, as node indices (a window stage starts
/// paths of its own: its output events).
fn paths(nodes: &[NodeSpec]) -> Vec<Vec<usize>> {
    fn walk(nodes: &[NodeSpec], path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        let last = &nodes[*path.last().expect("non-empty")];
        if last.kind == NodeKind::Sink {
            out.push(path.clone());
            return;
        }
        let Some(topic) = &last.output else { return };
        for (i, n) in nodes.iter().enumerate() {
            if n.input.as_ref() == Some(topic) && !path.contains(&i) {
                path.push(i);
                walk(nodes, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.kind == NodeKind::Source || n.aggregates {
            walk(nodes, &mut vec![i], &mut out);
        }
    }
    out
}

impl Ledger {
    /// Opens the ledger: creates its topics, loads settled history and replays the
    /// journal to rebuild open buckets.
    pub async fn open(
        cfg: LedgerConfig,
        nodes: Vec<NodeSpec>,
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Ledger>, LogError> {
        let journal = TopicSpec {
            retention: Some(Retention {
                age: Some(cfg.history.max(Duration::from_secs(24 * 3600))),
                bytes: None,
                ignore_consumers: false,
            }),
            ..TopicSpec::new(JOURNAL_TOPIC, 1)
        };
        let settled = TopicSpec {
            retention: Some(Retention {
                age: Some(cfg.history),
                bytes: None,
                // The alarm webhook's position holds nothing back.
                ignore_consumers: true,
            }),
            ..TopicSpec::new(SETTLED_TOPIC, 1)
        };
        log.ensure_topic(&journal).await?;
        log.ensure_topic(&settled).await?;
        let paths = paths(&nodes);
        let lag = nodes
            .iter()
            .map(|n| (n.name.clone(), Mutex::new(LagRecorder::default())))
            .collect();
        let ledger = Arc::new(Ledger {
            cfg,
            nodes,
            paths,
            log,
            clock,
            state: Mutex::new(State::default()),
            lag,
            stats: LedgerStats::default(),
            journal_gate: tokio::sync::RwLock::new(()),
            journal_read: tokio::sync::Mutex::new(0),
            process_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32,
            lag_read: tokio::sync::Mutex::new(0),
            quarantined: Mutex::new(BTreeMap::new()),
            backlogs: Mutex::new(Vec::new()),
            holds: Mutex::new(Default::default()),
            remote_holds: Mutex::new(BTreeMap::new()),
            lag_read_ok_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            holds_shared: std::sync::atomic::AtomicBool::new(false),
        });
        if ledger.cfg.follow_journal {
            let lag_topic = TopicSpec {
                retention: Some(Retention {
                    age: Some(Duration::from_secs(3600)),
                    bytes: None,
                    ignore_consumers: false,
                }),
                ..TopicSpec::new(LAG_TOPIC, 1)
            };
            ledger.log.ensure_topic(&lag_topic).await?;
            *ledger.lag_read.lock().await = ledger.log.offsets(LAG_TOPIC, 0).await?.end;
            for rec in ledger.lag.values() {
                rec.lock().unwrap_or_else(|p| p.into_inner()).share();
            }
        }
        ledger.load().await?;
        Ok(ledger)
    }

    /// A handle for one node.
    pub fn node(self: &Arc<Self>, name: &str) -> NodeLedger {
        NodeLedger {
            ledger: self.clone(),
            node: name.to_owned(),
            pending: Mutex::new(Delta::default()),
            flushing: tokio::sync::Mutex::new(()),
            detached: false,
        }
    }

    /// A handle that records nothing, for a node the ledger does not account for (a
    /// candidate version of a stage): its time and flushes still work.
    pub fn detached_node(self: &Arc<Self>, name: &str) -> NodeLedger {
        NodeLedger {
            detached: true,
            ..self.node(name)
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether a settled table is over the loss alarm threshold. A bucket raises the
    /// alarm when it settles over it with more events lost than it had before (its
    /// tables are kept in [`SETTLED_TOPIC`], which feeds `[ledger] alarm_webhook`).
    pub fn alarming(&self, table: &LossTable) -> bool {
        alarming(table, self.cfg.loss_alarm_percent)
    }

    fn merge(&self, node: &str, delta: &Delta, first_offset: u64) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for ((bucket, outcome), set) in &delta.sets {
            if st.open.len() >= OPEN_BUCKETS_MAX && !st.open.contains_key(bucket) {
                // Memory is bounded whatever the event times: such tallies are counted,
                // not kept (sources bound event times, so this takes a wide window).
                let n: u64 = set.values().map(|b| b.len()).sum();
                self.stats
                    .untracked_events_total
                    .fetch_add(n, Ordering::Relaxed);
                warn!(
                    bucket = bucket.saturating_mul(60_000),
                    node,
                    events = n,
                    max = OPEN_BUCKETS_MAX,
                    "too many open loss buckets; these outcomes are not tracked"
                );
                continue;
            }
            let b = st.open.entry(*bucket).or_insert_with(|| OpenBucket {
                first_journal_offset: first_offset,
                ..OpenBucket::default()
            });
            b.last_change_ms = now;
            b.version += 1;
            union_into(
                b.nodes
                    .entry(node.to_owned())
                    .or_default()
                    .entry(*outcome)
                    .or_default(),
                set,
            );
        }
    }
}
