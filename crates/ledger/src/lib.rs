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
//! Outcomes arriving for a settled bucket re-open it; when it settles again, origins now
//! seen leave the lost list (exact while the list is complete).
//!
//! # Lag
//! See [`lag`]: per node HDR histograms of lag-in, lag-out and process duration,
//! cumulative and per 10-second window. E2E lag is lag-out at the sinks.
#![forbid(unsafe_code)]

pub mod clock;
pub mod lag;
pub mod tally;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hifi_log::{Log, LogError, Record, Retention, TopicSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

pub use clock::{Clock, ManualClock, SystemClock};
pub use lag::{LagRecorder, LagSummary, Quantiles, WindowSummary};
use tally::{bucket_of, count, difference, union_into, Delta, OriginSet};
pub use tally::{Origin, OriginRef, Outcome};

/// Internal topic carrying node tallies (one partition).
pub const JOURNAL_TOPIC: &str = "__ledger";
/// Internal topic keeping settled loss tables.
pub const SETTLED_TOPIC: &str = "__ledger_settled";
/// Internal topic carrying lag histograms between processes sharing the engine.
pub const LAG_TOPIC: &str = "__ledger_lag";
/// Lost origins kept per settled bucket (beyond it only counts are kept).
pub const LOST_LIST_MAX: usize = 10_000;

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
}

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
    /// Events still waiting in a node's backlog when the bucket settled after
    /// `settle_max_wait` (not counted as lost; the bucket re-settles when they move).
    #[serde(default)]
    pub backlog: u64,
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
}

/// Where the gated nodes are: input ends and committed positions, read once per tick.
#[derive(Debug, Default)]
struct Progress {
    /// Input topic → end offset per partition.
    ends: BTreeMap<String, Vec<u64>>,
    /// Node → committed position per partition of its input.
    committed: BTreeMap<String, Vec<u64>>,
}

impl Progress {
    /// The first gated node that has not committed past `ends`, if any.
    fn behind<'a>(
        &self,
        nodes: &'a [NodeSpec],
        ends: &BTreeMap<String, Vec<u64>>,
    ) -> Option<&'a str> {
        nodes.iter().find_map(|n| {
            let (input, _) = (n.input.as_ref()?, n.group.as_ref()?);
            let end = ends.get(input)?;
            let pos = self.committed.get(&n.name)?;
            let behind = end
                .iter()
                .enumerate()
                .any(|(p, e)| pos.get(p).copied().unwrap_or(0) < *e);
            behind.then_some(n.name.as_str())
        })
    }
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
    alarms: broadcast::Sender<LossTable>,
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

/// Quarantined offset ranges per origin (topic, partition).
type Quarantined = BTreeMap<(String, u32), Vec<std::ops::Range<u64>>>;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
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
                ignore_consumers: false,
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
            alarms: broadcast::channel(64).0,
            journal_gate: tokio::sync::RwLock::new(()),
            journal_read: tokio::sync::Mutex::new(0),
            process_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32,
            lag_read: tokio::sync::Mutex::new(0),
            quarantined: Mutex::new(BTreeMap::new()),
            backlogs: Mutex::new(Vec::new()),
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

    async fn load(&self) -> Result<(), LogError> {
        let mut settled = BTreeMap::new();
        let mut replay_from = 0;
        hifi_log::read_to_end(self.log.as_ref(), SETTLED_TOPIC, 0, 0, |r| {
            match serde_json::from_slice::<LossTable>(&r.record.value) {
                Ok(t) => {
                    replay_from = t.replay_from;
                    settled.insert(t.start_ms / 60_000, t);
                }
                Err(e) => warn!(%e, "unreadable settled loss table skipped"),
            }
        })
        .await?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).settled = settled;
        let end = self.log.offsets(JOURNAL_TOPIC, 0).await?.end;
        *self.journal_read.lock().await = replay_from;
        let replayed = self.follow_journal(end).await?;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        info!(
            replayed,
            open_buckets = st.open.len(),
            settled_buckets = st.settled.len(),
            "ledger loaded"
        );
        Ok(())
    }

    /// Merges the journal's entries from where the last call ended up to `end` (those of
    /// other processes sharing the engine; this process's own are merged already, and
    /// merging a set twice changes nothing). Returns the entries merged.
    async fn follow_journal(&self, end: u64) -> Result<usize, LogError> {
        let mut read = self.journal_read.lock().await;
        if *read >= end {
            return Ok(0);
        }
        let mut entries = Vec::new();
        let mut last = None;
        hifi_log::read_to_end(self.log.as_ref(), JOURNAL_TOPIC, 0, *read, |r| {
            last = Some(r.offset);
            if let Some(e) = tally::decode_entry(&r.record.value) {
                entries.push((r.offset, e));
            }
        })
        .await?;
        let now = self.clock.now_ms();
        let merged = entries.len();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (offset, e) in entries {
            if st
                .settled
                .get(&e.bucket)
                .is_some_and(|t| offset < t.journal_end)
            {
                continue; // already counted in that settled table
            }
            let b = st.open.entry(e.bucket).or_insert_with(|| OpenBucket {
                first_journal_offset: offset,
                ..OpenBucket::default()
            });
            let set = b
                .nodes
                .entry(e.node)
                .or_default()
                .entry(e.outcome)
                .or_default();
            let before = count(set);
            union_into(set, &BTreeMap::from([(e.origin_partition, e.offsets)]));
            if count(set) != before {
                b.last_change_ms = now;
            }
        }
        if let Some(l) = last {
            *read = (*read).max(l + 1);
        }
        Ok(merged)
    }

    /// Publishes the lag this process recorded since the last call on [`LAG_TOPIC`] and
    /// adds what other processes published, so every process shows every node's lag.
    async fn share_lag(&self) -> Result<(), LogError> {
        let now = self.clock.now_ms();
        let mut records = Vec::new();
        for (node, rec) in &self.lag {
            let out = rec.lock().unwrap_or_else(|p| p.into_inner()).take_outbox();
            if let Some(set) = out {
                let v = serde_json::json!({"process": self.process_id, "node": node, "lag": set.encode()});
                records.push(Record::new(v.to_string(), now));
            }
        }
        if !records.is_empty() {
            // A sample lost to an error here only leaves other processes' lag views short.
            self.log.append(LAG_TOPIC, 0, records).await?;
        }
        let mut read = self.lag_read.lock().await;
        let mut remote = Vec::new();
        let mut next = *read;
        hifi_log::read_to_end(self.log.as_ref(), LAG_TOPIC, 0, *read, |r| {
            next = r.offset + 1;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.record.value) else {
                return;
            };
            if v["process"].as_u64() == Some(self.process_id) {
                return;
            }
            if let (Some(node), Some(set)) = (v["node"].as_str(), lag::LagSet::decode(&v["lag"])) {
                remote.push((node.to_owned(), set));
            }
        })
        .await?;
        *read = next;
        for (node, set) in remote {
            if let Some(rec) = self.lag.get(&node) {
                rec.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add_remote(&set, now);
            }
        }
        Ok(())
    }

    /// A handle for one node.
    pub fn node(self: &Arc<Self>, name: &str) -> NodeLedger {
        NodeLedger {
            ledger: self.clone(),
            node: name.to_owned(),
            pending: Mutex::new(Delta::default()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Alarms (settled buckets over the threshold) as they happen.
    pub fn subscribe_alarms(&self) -> broadcast::Receiver<LossTable> {
        self.alarms.subscribe()
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

    /// Settles every bucket unchanged for `settle_after`: computes and persists its loss
    /// table, raises alarms, drops its bitmaps. Call it periodically (the runtime does,
    /// every second).
    pub async fn tick(&self) -> Result<(), LogError> {
        if self.cfg.follow_journal {
            if let Err(e) = self.share_lag().await {
                warn!(%e, "cannot share lag with the other processes; retrying");
            }
        }
        // Read before the gate: it may wait on the engine (Kafka). A bucket that changes
        // after this read is snapshotted again at the next tick (`inputs_end_at_ms` is
        // the time of the read, not of the snapshot), so no snapshot misses its events.
        let progress_at = self.clock.now_ms();
        let progress = self.progress().await?;
        self.keep_backlogs(&progress, progress_at);
        self.read_quarantined().await;
        let now = self.clock.now_ms();
        let settle = self.cfg.settle_after.as_millis() as i64;
        let max_wait = self.cfg.settle_max_wait.as_millis() as i64;
        // The gate is held only while the tables are computed: flushes hold it from
        // their journal append to their merge, so no table misses a delta that is below
        // its journal end. Storing the tables (engine I/O) happens after, with flushes
        // going on; a bucket that changed meanwhile stays open (see `version`).
        let settling: Vec<(i64, LossTable, Option<LossTable>, u64)> = {
            let _exclusive = self.journal_gate.write().await;
            // Flushes of this process are excluded while this runs, so the journal end
            // cannot move but by other processes sharing the engine; their entries below
            // it are merged before anything settles.
            let journal_end = self.log.offsets(JOURNAL_TOPIC, 0).await?.end;
            if self.cfg.follow_journal {
                self.follow_journal(journal_end).await?;
            }
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // (bucket, settled with events still in a backlog)
            let mut due = Vec::new();
            for (k, b) in st.open.iter_mut() {
                if b.inputs_end.is_none() || b.last_change_ms >= b.inputs_end_at_ms {
                    b.inputs_end = Some(progress.ends.clone());
                    b.inputs_end_at_ms = progress_at;
                }
                if b.last_change_ms + settle > now {
                    continue;
                }
                let ends = b.inputs_end.as_ref().expect("set above");
                match progress.behind(&self.nodes, ends) {
                    None => due.push((*k, false)),
                    Some(_) if b.last_change_ms.saturating_add(max_wait) <= now => {
                        due.push((*k, true))
                    }
                    Some(_) => {} // its events may still be waiting in a backlog
                }
            }
            let mut settling = Vec::with_capacity(due.len());
            for (bucket, backlog) in due {
                let Some(open) = st.open.get(&bucket) else {
                    continue;
                };
                let previous = st.settled.get(&bucket).cloned();
                let mut table = match &previous {
                    Some(old) => self.resettle(old, open),
                    None => self.table(bucket, open, true),
                };
                if backlog {
                    // Waited settle_max_wait for a backlog: what is missing may still
                    // come; it is not reported as lost.
                    table.backlog = table.e2e_lost;
                    table.e2e_lost = 0;
                    table.e2e_loss_percent = 0.0;
                    table.lost.clear();
                    for n in &mut table.nodes {
                        n.lost = 0;
                    }
                    warn!(bucket = %table.start, waiting = table.backlog,
                        "bucket settled after settle_max_wait with events still in a backlog (not counted as lost)");
                }
                table.journal_end = journal_end;
                table.replay_from = st
                    .open
                    .iter()
                    .filter(|(k, _)| **k != bucket)
                    .map(|(_, b)| b.first_journal_offset)
                    .min()
                    .unwrap_or(journal_end);
                settling.push((bucket, table, previous, open.version));
            }
            settling
        };
        for (bucket, table, previous, version) in settling {
            // Durable first; only then does the bucket leave the open set.
            let value = serde_json::to_vec(&table).expect("loss tables serialise");
            self.log
                .append(SETTLED_TOPIC, 0, vec![Record::new(value, now)])
                .await?;
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.open.get(&bucket).is_some_and(|b| b.version == version) {
                    st.open.remove(&bucket);
                } // else: a delta came in while storing; the bucket re-settles later
                st.settled.insert(bucket, table.clone());
            }
            let old_lost = previous.as_ref().map_or(0, |t| t.e2e_lost);
            if previous.is_none() {
                self.stats
                    .settled_buckets_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            if table.e2e_lost > old_lost {
                self.stats
                    .lost_events_total
                    .fetch_add(table.e2e_lost - old_lost, Ordering::Relaxed);
            }
            let over = table.e2e_lost > 0 && table.e2e_loss_percent > self.cfg.loss_alarm_percent;
            if over && table.e2e_lost > old_lost {
                self.stats.loss_alarms_total.fetch_add(1, Ordering::Relaxed);
                let at: Vec<_> = table
                    .nodes
                    .iter()
                    .filter(|n| n.lost > 0)
                    .map(|n| format!("{} lost {}", n.node, n.lost))
                    .collect();
                error!(bucket = %table.start, e2e_lost = table.e2e_lost, e2e_loss_percent = table.e2e_loss_percent,
                    where_lost = %at.join(", "), first = ?table.lost.first(), "LOSS ALARM: events lost in a settled bucket");
                let _ = self.alarms.send(table.clone());
            }
        }
        let keep_after = (now - self.cfg.history.as_millis() as i64) / 60_000;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.settled.retain(|b, _| *b >= keep_after);
        Ok(())
    }

    /// The quarantined ranges of every origin topic. Only an annotation of lost
    /// origins: a topic that cannot be asked (not created yet, engine away) is left out.
    async fn read_quarantined(&self) {
        let mut q = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.kind == NodeKind::Source) {
            let Some(topic) = &n.output else { continue };
            let Ok(partitions) = self.log.partitions(topic).await else {
                continue;
            };
            for p in 0..partitions {
                match self.log.quarantined(topic, p).await {
                    Ok(ranges) if !ranges.is_empty() => {
                        q.insert((topic.clone(), p), ranges);
                    }
                    _ => {}
                }
            }
        }
        *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()) = q;
    }

    /// The gated nodes' backlogs as of the last tick, in node order.
    pub fn backlogs(&self) -> Vec<Backlog> {
        self.backlogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn keep_backlogs(&self, progress: &Progress, at_ms: i64) {
        let backlogs = self
            .nodes
            .iter()
            .filter_map(|n| {
                let input = n.input.as_ref()?;
                let ends = progress.ends.get(input)?;
                let at = progress.committed.get(&n.name)?;
                Some(Backlog {
                    node: n.name.clone(),
                    input: input.clone(),
                    positions: ends
                        .iter()
                        .enumerate()
                        .map(|(p, end)| (at.get(p).copied().unwrap_or(0).min(*end), *end))
                        .collect(),
                    at_ms,
                })
            })
            .collect();
        *self.backlogs.lock().unwrap_or_else(|p| p.into_inner()) = backlogs;
    }

    /// Input ends and committed positions of the gated nodes (nodes with a group).
    async fn progress(&self) -> Result<Progress, LogError> {
        let mut pr = Progress::default();
        for n in &self.nodes {
            let (Some(input), Some(group)) = (&n.input, &n.group) else {
                continue;
            };
            let partitions = self.log.partitions(input).await?;
            if !pr.ends.contains_key(input) {
                let mut ends = Vec::with_capacity(partitions as usize);
                for p in 0..partitions {
                    ends.push(self.log.offsets(input, p).await?.end);
                }
                pr.ends.insert(input.clone(), ends);
            }
            let mut pos = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let mut at = self.log.committed(group, input, p).await?.unwrap_or(0);
                // A consumer cannot commit past a quarantined region at the end of its
                // input (there is no record after it to read yet): it is past it.
                let holes = self.log.quarantined(input, p).await.unwrap_or_default();
                if let Some(h) = holes.iter().find(|h| h.contains(&at)) {
                    at = h.end;
                }
                pos.push(at);
            }
            pr.committed.insert(n.name.clone(), pos);
        }
        Ok(pr)
    }

    /// Computes a bucket's table from its tallies.
    fn table(&self, bucket: i64, open: &OpenBucket, settled: bool) -> LossTable {
        let empty = BTreeMap::new();
        let outcomes = |node: &str| open.nodes.get(node).unwrap_or(&empty);
        let get = |node: &str, o: Outcome| outcomes(node).get(&o).cloned().unwrap_or_default();
        let mut rows = Vec::new();
        let mut lost_list = Vec::new();
        let mut lost_total = 0usize;
        for n in &self.nodes {
            let mut seen = OriginSet::new();
            for set in outcomes(&n.name).values() {
                union_into(&mut seen, set);
            }
            let upstream = self.upstream_passed(n, &open.nodes);
            let lost = difference(&upstream, &seen);
            let mut terminal = get(&n.name, Outcome::Delivered);
            union_into(&mut terminal, &get(&n.name, Outcome::DeadLettered));
            lost_total += count(&lost) as usize;
            let quarantined = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            for o in tally::examples(&lost, LOST_LIST_MAX.saturating_sub(lost_list.len())) {
                let corrupt = o.parse::<Origin>().is_ok_and(|o| {
                    quarantined
                        .get(&(o.topic.clone(), o.partition))
                        .is_some_and(|r| r.iter().any(|r| r.contains(&o.offset)))
                });
                lost_list.push(LostOrigin {
                    origin: o,
                    node: n.name.clone(),
                    reason: corrupt.then(|| "corrupt".to_owned()),
                });
            }
            drop(quarantined);
            rows.push(NodeLoss {
                node: n.name.clone(),
                kind: n.kind,
                seen: count(&seen),
                lost: count(&lost),
                passed: count(&get(&n.name, Outcome::Passed)),
                delivered: count(&get(&n.name, Outcome::Delivered)),
                filtered: count(&get(&n.name, Outcome::Filtered)),
                dead_lettered: count(&get(&n.name, Outcome::DeadLettered)),
                retrying: count(&difference(&get(&n.name, Outcome::Retrying), &terminal)),
            });
        }
        let mut events = OriginSet::new();
        let mut e2e_lost = OriginSet::new();
        for path in &self.paths {
            let source = &self.nodes[path[0]];
            let stored = get(&source.name, Outcome::Passed);
            union_into(&mut events, &stored);
            let mut terminal = OriginSet::new();
            for &i in &path[1..path.len() - 1] {
                // A stage ends an event's path on purpose (filtered) or into its dead
                // letters (listed, re-drivable): neither is loss.
                for o in [Outcome::Filtered, Outcome::DeadLettered] {
                    union_into(&mut terminal, &get(&self.nodes[i].name, o));
                }
            }
            let sink = &self.nodes[path[path.len() - 1]].name;
            for o in [Outcome::Delivered, Outcome::DeadLettered, Outcome::Retrying] {
                union_into(&mut terminal, &get(sink, o));
            }
            union_into(&mut e2e_lost, &difference(&stored, &terminal));
        }
        let (events, lost) = (count(&events), count(&e2e_lost));
        let start_ms = bucket * 60_000;
        LossTable {
            start: rfc3339(start_ms),
            start_ms,
            settled,
            events,
            nodes: rows,
            e2e_lost: lost,
            e2e_loss_percent: if events == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / events as f64
            },
            lost: lost_list,
            lost_complete: lost_total <= LOST_LIST_MAX,
            journal_end: 0,
            replay_from: 0,
            backlog: 0,
        }
    }

    /// Late outcomes for a settled bucket: origins now seen leave the lost list.
    fn resettle(&self, old: &LossTable, late: &OpenBucket) -> LossTable {
        let mut t = old.clone();
        let seen_at = |node: &str, o: &Origin| {
            late.nodes
                .get(node)
                .is_some_and(|outs| outs.values().any(|s| tally::contains(s, o)))
        };
        let mut recovered: BTreeMap<String, u64> = BTreeMap::new();
        t.lost.retain(|l| {
            let found = l
                .origin
                .parse::<Origin>()
                .is_ok_and(|o| seen_at(&l.node, &o));
            if found {
                *recovered.entry(l.node.clone()).or_default() += 1;
            }
            !found
        });
        for row in &mut t.nodes {
            let r = recovered.get(&row.node).copied().unwrap_or(0);
            row.lost -= r.min(row.lost);
            row.seen += r;
        }
        let sinks: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Sink)
            .map(|n| n.name.as_str())
            .collect();
        let delivered_late: u64 = recovered
            .iter()
            .filter(|(n, _)| sinks.contains(n.as_str()))
            .map(|(_, c)| *c)
            .sum();
        t.e2e_lost -= delivered_late.min(t.e2e_lost);
        t.e2e_loss_percent = if t.events == 0 {
            0.0
        } else {
            t.e2e_lost as f64 * 100.0 / t.events as f64
        };
        t
    }

    /// Origins passed on by the nodes writing `n`'s input topic.
    fn upstream_passed(
        &self,
        n: &NodeSpec,
        tallies: &BTreeMap<String, BTreeMap<Outcome, OriginSet>>,
    ) -> OriginSet {
        let mut out = OriginSet::new();
        let Some(input) = &n.input else { return out };
        for w in self
            .nodes
            .iter()
            .filter(|w| w.output.as_ref() == Some(input))
        {
            if let Some(set) = tallies.get(&w.name).and_then(|o| o.get(&Outcome::Passed)) {
                union_into(&mut out, set);
            }
        }
        out
    }

    /// Loss tables of buckets starting in `[from_ms, to_ms)`, newest first: settled ones
    /// as stored, open ones computed now (`settled: false`).
    pub fn loss(&self, from_ms: i64, to_ms: i64) -> Vec<LossTable> {
        let (from, to) = (from_ms.div_euclid(60_000), to_ms.div_euclid(60_000));
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<i64, LossTable> = st
            .settled
            .range(from..to)
            .map(|(k, t)| (*k, t.clone()))
            .collect();
        for (k, b) in st.open.range(from..to) {
            if !out.contains_key(k) {
                out.insert(*k, self.table(*k, b, false));
            }
        }
        out.into_values().rev().collect()
    }

    /// Open buckets and settled tables held in memory.
    pub fn bucket_counts(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.open.len(), st.settled.len())
    }

    /// Shows `f` each node's lag histograms since start (under that node's lock: keep
    /// `f` short), in node order.
    pub fn visit_lag(&self, mut f: impl FnMut(&str, NodeKind, &lag::LagSet)) {
        for n in &self.nodes {
            let rec = self.lag[&n.name].lock().unwrap_or_else(|p| p.into_inner());
            f(&n.name, n.kind, &rec.cumulative);
        }
    }

    /// Lag per node.
    pub fn lag(&self) -> LagReport {
        let now = self.clock.now_ms();
        let mut nodes = Vec::new();
        let mut e2e = None::<hdrhistogram::Histogram<u64>>;
        let mut history: BTreeMap<i64, HistoryPoint> = BTreeMap::new();
        for n in &self.nodes {
            let mut rec = self.lag[&n.name].lock().unwrap_or_else(|p| p.into_inner());
            rec.roll(now);
            let summary = rec.cumulative.summary();
            if n.kind == NodeKind::Sink {
                match &mut e2e {
                    Some(h) => {
                        let _ = h.add(&rec.cumulative.lag_out);
                    }
                    None => e2e = Some(rec.cumulative.lag_out.clone()),
                }
            }
            for w in rec.history() {
                let p = history.entry(w.start_ms).or_insert_with(|| HistoryPoint {
                    t: rfc3339(w.start_ms + lag::WINDOW_MS),
                    ..Default::default()
                });
                p.nodes.insert(
                    n.name.clone(),
                    HistoryNode {
                        events: w.lag.events,
                        process_p50_ms: w.lag.process_ms.p50,
                        lag_out_p95_ms: w.lag.lag_out_ms.p95,
                    },
                );
                if n.kind == NodeKind::Sink {
                    p.e2e_p95_ms = p.e2e_p95_ms.max(w.lag.lag_out_ms.p95);
                }
            }
            nodes.push(NodeLag {
                node: n.name.clone(),
                kind: n.kind,
                skewed_events: rec.skewed_events,
                lag: summary,
            });
        }
        LagReport {
            window_s: (lag::WINDOW_MS / 1000) as u64,
            nodes,
            e2e_ms: e2e.as_ref().map(Quantiles::of).unwrap_or_default(),
            history: history.into_values().collect(),
        }
    }

    /// What the ledger knows of one event: its bucket (from its event time) and, per
    /// node, its outcomes (open bucket) or whether it was lost there (settled bucket).
    pub fn trace(&self, origin: &Origin, event_time_ms: i64) -> Trace {
        let bucket = bucket_of(event_time_ms);
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        if let Some(b) = st.open.get(&bucket) {
            for n in &self.nodes {
                let outcomes: Vec<Outcome> = b
                    .nodes
                    .get(&n.name)
                    .map(|o| {
                        o.iter()
                            .filter(|(_, s)| tally::contains(s, origin))
                            .map(|(k, _)| *k)
                            .collect()
                    })
                    .unwrap_or_default();
                let upstream = self.upstream_passed(n, &b.nodes);
                let lost_here = outcomes.is_empty() && tally::contains(&upstream, origin);
                nodes.push(TraceNode {
                    node: n.name.clone(),
                    kind: n.kind,
                    outcomes,
                    lost_here,
                });
            }
            // A settled bucket re-opened by later outcomes holds only those: an event
            // it does not know is answered from the settled table.
            let unknown = nodes.iter().all(|n| n.outcomes.is_empty() && !n.lost_here);
            if !(unknown && st.settled.contains_key(&bucket)) {
                return Trace {
                    bucket: rfc3339(bucket * 60_000),
                    settled: false,
                    nodes,
                    note: None,
                };
            }
            nodes.clear();
        }
        if let Some(t) = st.settled.get(&bucket) {
            let lost_at: Option<&str> = t
                .lost
                .iter()
                .find(|l| l.origin == origin.to_string())
                .map(|l| l.node.as_str());
            for n in &self.nodes {
                nodes.push(TraceNode {
                    node: n.name.clone(),
                    kind: n.kind,
                    outcomes: Vec::new(),
                    lost_here: lost_at == Some(n.name.as_str()),
                });
            }
            let note = match lost_at {
                Some(node) => format!("lost at {node} (bucket settled)"),
                None if t.lost_complete => {
                    "not lost: the bucket settled and this event is not in its lost list".into()
                }
                None => {
                    "not in the kept lost list (the bucket lost more events than are listed)".into()
                }
            };
            return Trace {
                bucket: t.start.clone(),
                settled: true,
                nodes,
                note: Some(note),
            };
        }
        Trace {
            bucket: rfc3339(bucket * 60_000),
            settled: false,
            nodes,
            note: Some(
                "no tallies for this event's bucket (outside history, or not yet recorded)".into(),
            ),
        }
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

impl Ledger {
    /// The fates of many events (origin, event time ms) under one lock — what a load
    /// test asks about the events that did not arrive. Cheap per event: set lookups, no
    /// upstream sets are built.
    pub fn fates(&self, events: &[(Origin, i64)]) -> Vec<Fate> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost_lists: HashMap<i64, HashMap<String, &str>> = HashMap::new();
        events
            .iter()
            .map(|(origin, time_ms)| {
                let bucket = bucket_of(*time_ms);
                if let Some(b) = st.open.get(&bucket) {
                    let mut outcomes: Vec<Outcome> = b
                        .nodes
                        .values()
                        .flat_map(|o| {
                            o.iter()
                                .filter(|(_, s)| tally::contains(s, origin))
                                .map(|(k, _)| *k)
                        })
                        .collect();
                    // A re-opened settled bucket holds only the later outcomes: an event
                    // it does not know is answered from the settled table.
                    if !(outcomes.is_empty() && st.settled.contains_key(&bucket)) {
                        outcomes.retain(|o| *o != Outcome::Passed);
                        outcomes.sort_unstable_by_key(|o| *o as u8);
                        outcomes.dedup();
                        return Fate::Open(outcomes);
                    }
                }
                let Some(t) = st.settled.get(&bucket) else {
                    return Fate::Unknown;
                };
                let lost = lost_lists.entry(bucket).or_insert_with(|| {
                    t.lost
                        .iter()
                        .map(|l| (l.origin.clone(), l.node.as_str()))
                        .collect()
                });
                match lost.get(&origin.to_string()) {
                    Some(node) => Fate::Lost((*node).to_owned()),
                    None if t.lost_complete => Fate::NotLost,
                    None => Fate::Unlisted,
                }
            })
            .collect()
    }
}

/// Source → sink paths through the topic graph, as node indices.
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
        if n.kind == NodeKind::Source {
            walk(nodes, &mut vec![i], &mut out);
        }
    }
    out
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

/// One node's handle: records outcomes and lag, and flushes them durably.
#[derive(Debug)]
pub struct NodeLedger {
    ledger: Arc<Ledger>,
    node: String,
    pending: Mutex<Delta>,
    /// One flush at a time: a flush returns only when everything recorded before it is
    /// durable (a concurrent caller waits for the flush in progress, then flushes).
    flushing: tokio::sync::Mutex<()>,
}

impl NodeLedger {
    /// Whether the ledger records anything.
    pub fn enabled(&self) -> bool {
        self.ledger.cfg.enabled
    }

    /// Now in µs on the ledger's clock.
    pub fn now_us(&self) -> i64 {
        self.ledger.clock.now_us()
    }

    /// Records an outcome for an event.
    pub fn outcome(&self, outcome: Outcome, origin: &Origin, event_time_ms: i64) {
        self.outcomes([(outcome, origin.as_ref(), event_time_ms)]);
    }

    /// Records the (outcome, origin, event time ms) of each event of a batch, under one
    /// lock. A run of events with the same outcome and bucket at consecutive offsets of
    /// one partition (a stored request; most of a delivered batch) is added as a range.
    pub fn outcomes<'a>(&self, events: impl IntoIterator<Item = (Outcome, OriginRef<'a>, i64)>) {
        if !self.enabled() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_all(events);
    }

    /// Records an event's lag at this node (times in µs since the epoch).
    pub fn lag(&self, event_time_ms: i64, arrival_us: i64, departure_us: i64) {
        self.lags([(event_time_ms, arrival_us)], departure_us);
    }

    /// Records the lag of events that left this node together at `departure_us`: (event
    /// time ms, arrival µs) each, under one lock.
    pub fn lags(&self, events: impl IntoIterator<Item = (i64, i64)>, departure_us: i64) {
        if !self.enabled() {
            return;
        }
        let mut rec = self.ledger.lag[&self.node]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = rec.skewed_events;
        rec.record_batch(
            events.into_iter().map(|(event_time_ms, arrival_us)| {
                (event_time_ms.saturating_mul(1000), arrival_us)
            }),
            departure_us,
        );
        let skewed = rec.skewed_events - before;
        if skewed > 0 {
            self.ledger
                .stats
                .skewed_events_total
                .fetch_add(skewed, Ordering::Relaxed);
        }
    }

    /// Appends everything recorded so far to the journal, durably, and makes it part of
    /// the open buckets. Call before committing the input position. On error nothing is
    /// lost: the records stay pending for the next flush.
    pub async fn flush(&self) -> Result<(), LogError> {
        let _one_at_a_time = self.flushing.lock().await;
        let _not_while_settling = self.ledger.journal_gate.read().await;
        let delta = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if delta.is_empty() {
            return Ok(());
        }
        let now = self.ledger.clock.now_ms();
        let records: Vec<Record> = delta
            .encode(&self.node)
            .into_iter()
            .map(|v| Record::new(v, now))
            .collect();
        match self.ledger.log.append(JOURNAL_TOPIC, 0, records).await {
            Ok(offsets) => {
                self.ledger.merge(&self.node, &delta, offsets[0]);
                Ok(())
            }
            Err(e) => {
                self.ledger
                    .stats
                    .journal_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for ((b, o), set) in delta.sets {
                    union_into(p.sets.entry((b, o)).or_default(), &set);
                }
                Err(e)
            }
        }
    }
}
