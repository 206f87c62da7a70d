//! Fingerprinting a node's output topic (`[sources.X.fingerprint]`,
//! `[stages.X.fingerprint]`): a reader of every partition of the topic that keeps, per
//! event-time bucket, the figures of `hifi_fingerprint` (count, nulls, distinct values,
//! number ranges, entropy), served by `GET /v1/fingerprints`.
//!
//! **Exact across crashes.** The figures are made durable together with the position
//! they reflect: every `checkpoint_every` a record in `__fingerprint.<topic>` holds the
//! offset read up to per partition and the whole state of each bucket that changed since
//! the record before. A restart replays those records (later states of a bucket replace
//! earlier ones) and reads on from the positions of the last one, so no event is counted
//! twice or missed. A checkpoint larger than a record is written as a group of records
//! in one append, and replay applies a group only when all its parts are there. When the
//! checkpoints cannot be read back whole (a record unreadable, the last snapshot past
//! their retention after a long stop), the topic is counted again from its oldest record.
//!
//! **Bounded.** Memory holds the buckets within `keep` of the newest (an event for an
//! older one is counted in `too_old`). Every hour, and once what was written since the
//! last snapshot outgrows it, a snapshot (every bucket) is written and later records
//! name it as where replay starts; the topic keeps a day of records.
//!
//! The reader is apart from the node writing the topic: fingerprints never slow the path
//! of events, and trail it by about a read (`read_to` says how far they are).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hifi_fingerprint::{Bucket, Settings, Summary};
use hifi_ledger::Ledger;
use hifi_log::{Log, LogError, ReadLimits, Record, Retention, StoredRecord, TopicSpec};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::audit::{Audit, Verdict};
use crate::config::FingerprintConfig;
use crate::consumer::{retry_until_ok, Cursor, Read};
use crate::event::{EventFormat, EventMeta};
use crate::signals::Signals;

mod complete;
pub use complete::Writer;

/// The topic of a fingerprinted topic's checkpoints.
pub fn checkpoint_topic(topic: &str) -> String {
    format!("__fingerprint.{topic}")
}

/// A snapshot at least this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(3600);
/// How long checkpoint records are kept (more than [`SNAPSHOT_EVERY`]).
const CHECKPOINTS_KEPT: Duration = Duration::from_secs(86_400);

/// One topic's fingerprints.
#[derive(Debug)]
pub struct Fingerprinter {
    /// The node writing the topic (`sources.X`, `stages.X`).
    pub node: String,
    /// The topic.
    pub topic: String,
    /// Bucket length, ms.
    pub bucket_ms: i64,
    /// Fields whose entropy is computed.
    pub entropy: Vec<String>,
    settings: Settings,
    keep_ms: i64,
    lateness_ms: i64,
    /// How long nothing read makes the topic quiet (with its writer caught up).
    idle: Duration,
    writer: Writer,
    every: Duration,
    record_bytes_max: usize,
    log: Arc<dyn Log>,
    /// Where bucket signals go, and the ledger saying when a bucket's events settled.
    signals: Option<(Arc<Signals>, Option<Arc<Ledger>>)>,
    /// Checks on each complete bucket.
    audits: Vec<Audit>,
    /// The fingerprint of a stage's input topic, when it has one running here.
    pub input: std::sync::OnceLock<Arc<Fingerprinter>>,
    /// For a candidate version of a stage: the published version's fingerprint.
    pub published: std::sync::OnceLock<Arc<Fingerprinter>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: BTreeMap<i64, Bucket>,
    dirty: BTreeSet<i64>,
    /// Per partition: the next offset to read (everything before is counted).
    read_to: Vec<u64>,
    too_old: u64,
    /// The largest event time read.
    max_time_ms: i64,
    /// Per partition, the largest event time read since start (not kept in
    /// checkpoints: a partition read again after a restart holds completeness back until
    /// it is read to its end or past the bucket).
    partition_max_ms: Vec<i64>,
    /// Complete buckets, with their figures as last signalled.
    completed: BTreeMap<i64, Summary>,
    /// Audit verdicts of complete buckets.
    verdicts: BTreeMap<i64, Vec<Verdict>>,
    /// Where the last complete snapshot starts in the checkpoint topic.
    replay_from: u64,
    snapshot_bytes: u64,
    since_snapshot_bytes: u64,
    snapshot_at: Option<Instant>,
    /// Positions as of the last checkpoint written.
    written_read_to: Vec<u64>,
    /// When the reader last got records (or started).
    last_read_at: Option<Instant>,
}

/// One record of a checkpoint: written with the buckets borrowed (`Part<&Bucket>`),
/// read back owning them.
#[derive(Debug, Serialize, Deserialize)]
struct Part<B = Bucket> {
    /// Its place in its group (parts of one checkpoint, written in one append).
    part: u32,
    parts: u32,
    /// Whether the group holds every bucket.
    snapshot: bool,
    /// Where replay starts (the last complete snapshot known when written).
    replay_from: u64,
    read_to: Vec<u64>,
    too_old: u64,
    #[serde(default)]
    max_time_ms: i64,
    #[serde(default)]
    completed: BTreeMap<i64, Summary>,
    #[serde(default)]
    verdicts: BTreeMap<i64, Vec<Verdict>>,
    buckets: Vec<(i64, B)>,
}

/// The figures of a range of buckets, for `/v1/fingerprints`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node: String,
    pub topic: String,
    pub bucket_ms: i64,
    pub entropy_fields: Vec<String>,
    /// Per partition: offsets counted up to.
    pub read_to: Vec<u64>,
    /// Events older than `keep` behind the newest bucket, counted in none.
    pub too_old: u64,
    /// Start (epoch ms) and figures of each bucket in the range, oldest first, with the
    /// audits' verdicts once complete (`None` before).
    pub buckets: Vec<(i64, Summary, Option<Vec<Verdict>>)>,
}

impl Fingerprinter {
    pub fn new(
        (node, writer): (String, Writer),
        topic: String,
        cfg: &FingerprintConfig,
        record_bytes_max: usize,
        log: Arc<dyn Log>,
        signals: Option<(Arc<Signals>, Option<Arc<Ledger>>)>,
        audits: Vec<Audit>,
    ) -> Fingerprinter {
        Fingerprinter {
            node,
            topic,
            bucket_ms: cfg.bucket.0.as_millis().max(1) as i64,
            entropy: cfg.entropy.clone(),
            settings: Settings {
                fields_max: cfg.fields_max,
                entropy: cfg.entropy.clone(),
            },
            keep_ms: cfg.keep().as_millis() as i64,
            lateness_ms: cfg.lateness.0.as_millis() as i64,
            idle: cfg.idle_timeout.0,
            writer,
            every: cfg.checkpoint_every.0,
            record_bytes_max,
            log,
            signals,
            audits,
            input: std::sync::OnceLock::new(),
            published: std::sync::OnceLock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// Creates the checkpoint topic.
    pub async fn prepare(&self) -> Result<(), LogError> {
        let spec = TopicSpec {
            retention: Some(Retention {
                age: Some(CHECKPOINTS_KEPT),
                bytes: None,
                ignore_consumers: false,
            }),
            ..TopicSpec::new(checkpoint_topic(&self.topic), 1)
        };
        self.log.ensure_topic(&spec).await.map(|_| ())
    }

    /// The buckets starting within `from..=to` (epoch ms).
    pub fn report(&self, from: i64, to: i64) -> Report {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = from
            .div_euclid(self.bucket_ms)
            .saturating_mul(self.bucket_ms);
        Report {
            node: self.node.clone(),
            topic: self.topic.clone(),
            bucket_ms: self.bucket_ms,
            entropy_fields: self.entropy.clone(),
            read_to: st.read_to.clone(),
            too_old: st.too_old,
            buckets: st
                .buckets
                .range(first..=to)
                .map(|(b, f)| (*b, f.summary(), st.verdicts.get(b).cloned()))
                .collect(),
        }
    }

    /// Reads the topic and keeps the figures until `shutdown` (then writes a last
    /// checkpoint).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let log = self.log.as_ref();
        let (node, topic) = (self.node.as_str(), self.topic.as_str());
        let Some(partitions) = retry_until_ok(
            &shutdown,
            node,
            "read the fingerprinted topic's partitions",
            || log.partitions(topic),
        )
        .await
        else {
            return;
        };
        let loaded = retry_until_ok(&shutdown, node, "read its fingerprint checkpoints", || {
            self.load(partitions)
        })
        .await;
        let Some(starts) = loaded else { return };
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_read_at = Some(Instant::now());
        let limits = ReadLimits {
            max_records: 1000,
            max_bytes: 4 << 20,
            wait: Duration::from_millis(500),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u32, Vec<StoredRecord>, Option<u64>)>(2);
        let readers =
            futures_util::future::join_all(starts.into_iter().enumerate().map(|(p, at)| {
                let (tx, shutdown) = (tx.clone(), &shutdown);
                async move {
                    let mut cursor = Cursor::at(log, node, topic, p as u32, at, limits)
                        .retention_hint(" (their fingerprints miss them)");
                    while let Some(read) = cursor.next_or_skip(shutdown).await {
                        let batch = match read {
                            Read::Batch(batch) => batch,
                            // Retention moved past records never counted: read from
                            // there (its end is reached without them).
                            Read::Skipped { to } => {
                                if tx.send((p as u32, Vec::new(), Some(to))).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        };
                        let last = batch.last().map_or(cursor.position(), |r| r.offset);
                        cursor.seek(last + 1);
                        if tx.send((p as u32, batch, None)).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        drop(tx);
        let counting = async {
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    got = rx.recv() => match got {
                        Some((p, batch, None)) => self.count(p, &batch),
                        Some((p, _, Some(to))) => self.skipped_to(p, to),
                        None => break,
                    },
                    _ = tick.tick() => {
                        if let Err(e) = self.signal().await {
                            error!(node, topic, %e, "cannot write bucket signals; retrying at the next checkpoint");
                            continue;
                        }
                        if let Err(e) = self.checkpoint().await {
                            error!(node, topic, %e, "cannot write its fingerprint checkpoint; retrying at the next");
                        }
                    }
                }
            }
            // Readers waiting to hand over a batch give up (they would wait forever).
            rx.close();
            // What was counted before the stop is kept (nothing after it was).
            if let Err(e) = self.checkpoint().await {
                warn!(node, topic, %e, "cannot write its last fingerprint checkpoint; the events since the one before will be read again");
            }
        };
        tokio::join!(readers, counting);
    }

    /// Partition `p` is read on from `to` (retention deleted what was before).
    fn skipped_to(&self, p: u32, to: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = st.read_to.get_mut(p as usize) {
            *at = (*at).max(to);
        }
    }

    /// Counts a batch read from partition `p`.
    fn count(&self, p: u32, batch: &[StoredRecord]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !batch.is_empty() {
            st.last_read_at = Some(Instant::now());
        }
        if st.partition_max_ms.len() <= p as usize {
            st.partition_max_ms.resize(p as usize + 1, i64::MIN);
        }
        for r in batch {
            let meta = EventMeta::of(&self.topic, p, r);
            st.max_time_ms = st.max_time_ms.max(meta.time_ms);
            st.partition_max_ms[p as usize] = st.partition_max_ms[p as usize].max(meta.time_ms);
            let bucket = meta.time_ms.div_euclid(self.bucket_ms) * self.bucket_ms;
            let newest = st.buckets.last_key_value().map_or(bucket, |(b, _)| *b);
            if bucket < newest - self.keep_ms {
                st.too_old += 1;
                continue;
            }
            let value = &r.record.value;
            let data = match meta.format {
                EventFormat::CloudEvent => Some(cloudevent_data(value)),
                EventFormat::Json => None,
            };
            st.buckets
                .entry(bucket)
                .or_default()
                .add(data.as_deref().unwrap_or(value), &self.settings);
            st.dirty.insert(bucket);
            if bucket > newest {
                let keep_from = bucket - self.keep_ms;
                st.buckets = st.buckets.split_off(&keep_from);
                st.dirty = st.dirty.split_off(&keep_from);
                st.completed = st.completed.split_off(&keep_from);
                st.verdicts = st.verdicts.split_off(&keep_from);
            }
        }
        if let Some(last) = batch.last() {
            st.read_to[p as usize] = last.offset + 1;
        }
    }

    /// A complete bucket's figures as last signalled.
    pub fn completed(&self, start: i64) -> Option<Summary> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.completed.get(&start).cloned()
    }

    /// Whether it has counted events in the bucket starting at `start`.
    pub fn has_bucket(&self, start: i64) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.buckets.contains_key(&start)
    }

    /// Makes the figures durable with the positions they reflect, if they moved.
    async fn checkpoint(&self) -> Result<(), LogError> {
        let (parts, snapshot, read_to) = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.dirty.is_empty() && st.read_to == st.written_read_to && st.snapshot_at.is_some() {
                return Ok(());
            }
            let snapshot = st.snapshot_at.is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY)
                || st.since_snapshot_bytes > st.snapshot_bytes.max(1 << 20);
            let names: Vec<i64> = if snapshot {
                st.buckets.keys().copied().collect()
            } else {
                st.dirty.iter().copied().collect()
            };
            let buckets: Vec<(i64, &Bucket)> = names
                .iter()
                .filter_map(|b| st.buckets.get(b).map(|f| (*b, f)))
                .collect();
            let parts = self.encode(&st, snapshot, buckets)?;
            st.dirty.clear();
            (parts, snapshot, st.read_to.clone())
        };
        let bytes: u64 = parts.iter().map(|r| r.value.len() as u64).sum();
        let offsets = self
            .log
            .append(&checkpoint_topic(&self.topic), 0, parts)
            .await
            .inspect_err(|_| {
                // Not written: every bucket is written with the next one.
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.snapshot_at = None;
            })?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot {
            st.replay_from = offsets.first().copied().unwrap_or(st.replay_from);
            st.snapshot_bytes = bytes;
            st.since_snapshot_bytes = 0;
            st.snapshot_at = Some(Instant::now());
        } else {
            st.since_snapshot_bytes += bytes;
        }
        st.written_read_to = read_to;
        Ok(())
    }

    /// A checkpoint's records: its buckets split in halves until each record fits.
    fn encode(
        &self,
        st: &State,
        snapshot: bool,
        buckets: Vec<(i64, &Bucket)>,
    ) -> Result<Vec<Record>, LogError> {
        let limit = (self.record_bytes_max / 2).max(4096);
        let mut groups = vec![buckets];
        loop {
            let n = groups.len() as u32;
            let encoded: Vec<Vec<u8>> = groups
                .iter()
                .enumerate()
                .map(|(i, g)| encode_part(st, snapshot, i as u32, n, g))
                .collect::<Result<_, _>>()?;
            match encoded.iter().position(|e| e.len() > limit) {
                Some(i) if groups[i].len() > 1 => {
                    let mut g = std::mem::take(&mut groups[i]);
                    let half = g.split_off(g.len() / 2);
                    groups.splice(i..=i, [g, half]);
                }
                Some(i) => {
                    return Err(LogError::RecordTooLarge {
                        bytes: encoded[i].len(),
                        max: limit,
                    })
                }
                None => {
                    let now = crate::now_ms();
                    return Ok(encoded.into_iter().map(|v| Record::new(v, now)).collect());
                }
            }
        }
    }

    /// Replays the checkpoints; returns where to read each partition from.
    async fn load(&self, partitions: u32) -> Result<Vec<u64>, LogError> {
        let topic = checkpoint_topic(&self.topic);
        let log = self.log.as_ref();
        let end = log.offsets(&topic, 0).await?.end;
        let mut st = State::default();
        if end > 0 {
            let limits = ReadLimits {
                max_records: 1,
                max_bytes: self.record_bytes_max.max(1 << 20),
                wait: Duration::ZERO,
            };
            let last = log.read(&topic, 0, end - 1, limits).await?;
            let from = last
                .last()
                .and_then(|r| decode_part(&r.record.value).ok())
                .map_or(0, |p| p.replay_from);
            let start = log.offsets(&topic, 0).await?.start;
            let mut group: Vec<Part> = Vec::new();
            let mut bad = 0u64;
            hifi_log::read_to_end(log, &topic, 0, from.max(start), |r| {
                let Ok(part) = decode_part(&r.record.value) else {
                    bad += 1;
                    group.clear();
                    return;
                };
                if part.part != group.len() as u32 {
                    group.clear(); // an incomplete group before: never applied
                    if part.part != 0 {
                        return;
                    }
                }
                let last = part.part + 1 == part.parts;
                group.push(part);
                if !last {
                    return;
                }
                for p in group.drain(..) {
                    if p.snapshot && p.part == 0 {
                        st.replay_from = r.offset + 1 - u64::from(p.parts);
                        st.buckets.clear();
                    }
                    st.read_to = p.read_to;
                    st.too_old = p.too_old;
                    st.max_time_ms = p.max_time_ms;
                    st.completed = p.completed;
                    st.verdicts = p.verdicts;
                    st.buckets.extend(p.buckets);
                }
            })
            .await?;
            // Figures that cannot be read back whole are counted again from the topic:
            // exact for what it still holds, never counted twice.
            let why = if from < start {
                Some("its last snapshot is older than the checkpoints kept (one day)".to_owned())
            } else if bad > 0 {
                Some(format!("{bad} of its checkpoint records cannot be read"))
            } else {
                None
            };
            if let Some(why) = why {
                error!(node = %self.node, topic = %self.topic, "fingerprint: {why}; counting the topic again from its oldest record");
                st = State::default();
            }
        }
        let mut starts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let oldest = log.offsets(&self.topic, p).await?.start;
            starts.push(st.read_to.get(p as usize).copied().unwrap_or(0).max(oldest));
        }
        if let Some(newest) = st.buckets.last_key_value().map(|(b, _)| *b) {
            st.buckets = st.buckets.split_off(&(newest - self.keep_ms));
            st.completed = st.completed.split_off(&(newest - self.keep_ms));
            st.verdicts = st.verdicts.split_off(&(newest - self.keep_ms));
        }
        info!(node = %self.node, topic = %self.topic, buckets = st.buckets.len(),
            read_to = ?starts, "fingerprints loaded");
        st.read_to = starts.clone();
        let mut now = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *now = st;
        Ok(starts)
    }
}

fn encode_part(
    st: &State,
    snapshot: bool,
    part: u32,
    parts: u32,
    buckets: &[(i64, &Bucket)],
) -> Result<Vec<u8>, LogError> {
    let p = Part {
        part,
        parts,
        snapshot,
        replay_from: st.replay_from,
        read_to: st.read_to.clone(),
        too_old: st.too_old,
        max_time_ms: st.max_time_ms,
        completed: st.completed.clone(),
        verdicts: st.verdicts.clone(),
        buckets: buckets.to_vec(),
    };
    let json = serde_json::to_vec(&p).map_err(|e| LogError::Invalid(e.to_string()))?;
    zstd::bulk::compress(&json, 3).map_err(|source| LogError::Io {
        context: "compressing a fingerprint checkpoint".to_owned(),
        source,
    })
}

fn decode_part(v: &[u8]) -> Result<Part, String> {
    let json = zstd::stream::decode_all(v).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// A structured CloudEvent's `data` when it is a JSON object or array (`null`, which
/// has no fields, otherwise).
fn cloudevent_data(value: &[u8]) -> Vec<u8> {
    let mut data = b"null".to_vec();
    hifi_fingerprint::for_each_field(value, |name, v| {
        if let ("data", hifi_fingerprint::Value::Other(t)) = (name, v) {
            data = t.as_bytes().to_vec();
        }
    });
    data
}

/// Refuses fingerprint settings that are wrong, and two nodes fingerprinting one topic.
pub fn check(loaded: &crate::config::LoadedConfig) -> Result<(), crate::config::ConfigError> {
    let cfg = &loaded.config;
    if let Some(url) = &cfg.signals.webhook {
        if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            return Err(loaded.error(
                "signals.webhook",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let mut by_topic: BTreeMap<&str, String> = BTreeMap::new();
    let nodes: Vec<_> = cfg.writers().collect();
    for w in &nodes {
        let (node, topic) = (w.node_name(), w.topic);
        let Some(f) = w.fingerprint else { continue };
        if let Some(why) = f.problem() {
            return Err(loaded.error(format!("{node}.fingerprint"), why));
        }
        if let Some(other) = by_topic.insert(topic, node.clone()) {
            return Err(loaded.error(
                format!("{node}.fingerprint"),
                format!("topic {topic:?} is fingerprinted by {other} already (a topic has one fingerprint; keep one of the two)"),
            ));
        }
    }
    for w in &nodes {
        let (node, audits) = (w.node_name(), w.audits);
        if audits.is_empty() {
            continue;
        }
        if w.fingerprint.is_none() {
            return Err(loaded.error(
                format!("{node}.audits"),
                "audits check the node's fingerprint: add `fingerprint = {}` to it",
            ));
        }
        if let Some(i) = audits
            .iter()
            .position(|a| a.blocking)
            .filter(|_| !w.versioned)
        {
            return Err(loaded.error(
                format!("{node}.audits[{i}].blocking"),
                "a blocking audit keeps a candidate version unpublished: it needs `versions = { … }` on the stage (or drop `blocking`: every audit reports its failures)",
            ));
        }
        let compiled = crate::audit::compile(audits, w.versioned)
            .map_err(|(i, why)| loaded.error(format!("{node}.audits[{i}].check"), why))?;
        if let Some(i) = compiled.iter().position(|a| a.needs_input) {
            let why = match w.input {
                None => Some("a source has no input: `input` is for stages".to_owned()),
                Some(t) if !by_topic.contains_key(t) => Some(format!(
                    "`input` is the fingerprint of topic {t:?}, which has none: add `fingerprint` to the node writing it"
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Err(loaded.error(format!("{node}.audits[{i}].check"), why));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
