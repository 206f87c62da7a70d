//! A standby for ingest (`[engine.standby]`): where sources append while the Kafka
//! cluster cannot take their appends, and the task that moves those records into the
//! cluster once it is back.
//!
//! The standby is a local embedded log (a spool on this machine's disk) or a second
//! Kafka cluster. Each source (and instance) has its own topic there, `ingest.SOURCE`. An
//! append to the cluster that fails, or takes longer than `failover_after`, is made to
//! the standby instead, and the request is acknowledged once that is durable; from then
//! on appends go to the standby until the mover finds the cluster answering and taking
//! an append again (checked every `probe_every`).
//!
//! Records in the standby have their own origins, `standby:ingest.SOURCE/partition/
//! offset`, so the ledger counts each event once and shows the path it took. The mover
//! appends them to the cluster's topic with that origin in their `hifi-origin` header (a
//! record that already has one keeps it), marks their offsets there as tallied (the
//! spool's lane recorded them), then commits its position in the standby: a crash
//! between the two moves them again (duplicates, counted, never loss). While the standby
//! holds records not yet moved, the ledger settles nothing (up to `settle_max_wait`):
//! those events are on their way, not lost.
//!
//! Stages and sinks read only the cluster: while it is away they cannot commit or write
//! anyway, so what went through the standby is delivered once the cluster is back.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hifi_ledger::{Ledger, Origin};
use hifi_log::{EmbeddedLog, Log, LogError, ReadLimits, Record};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{EngineKind, LoadedConfig, StandbyConfig};
use crate::event::header;
use crate::runtime::StartError;
use crate::source::{HttpSource, Lane};

/// A source's topic in the standby: one per source and instance, so that each spool is
/// moved by exactly one mover (`ingest.api`, `ingest.api.a1`).
pub fn spool_topic(source: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("ingest.{source}.{i}"),
        None => format!("ingest.{source}"),
    }
}

/// How the ledger names a spool topic's partitions (`standby:ingest.api`).
pub fn origin_topic(spool: &str) -> String {
    format!("standby:{spool}")
}

/// How the spool topic of a source whose engine topic is `topic` is created. An embedded
/// spool keeps moved records an hour (unmoved ones are kept however old: its retention
/// never deletes what the mover has not committed past); a Kafka standby keeps them as
/// long as the topic would (Kafka's retention does not wait for consumers).
pub fn spool_spec(
    name: String,
    topic: &hifi_log::TopicSpec,
    kind: EngineKind,
) -> hifi_log::TopicSpec {
    let retention = match kind {
        EngineKind::Embedded => Some(hifi_log::Retention {
            age: Some(Duration::from_secs(3600)),
            bytes: None,
            ignore_consumers: false,
        }),
        EngineKind::Kafka => topic.retention,
    };
    hifi_log::TopicSpec {
        name,
        partitions: topic.partitions,
        retention,
    }
}

/// The standby engine, open for the process's life (like the engine itself).
#[derive(Debug, Clone)]
pub struct StandbyEngine {
    /// The engine as sources use it.
    pub log: Arc<dyn Log>,
    /// The spool, when it is an embedded log (closed with the engine).
    embedded: Option<EmbeddedLog>,
    /// `[engine.standby]`.
    pub cfg: StandbyConfig,
    /// Where it is, for start-up messages.
    place: String,
}

impl StandbyEngine {
    /// Opens `[engine.standby]`, if configured (blocking: an embedded spool's recovery
    /// reads the disk).
    pub fn open(loaded: &LoadedConfig) -> Result<Option<StandbyEngine>, StartError> {
        let Some(cfg) = loaded.config.engine.standby.clone() else {
            return Ok(None);
        };
        match cfg.kind {
            EngineKind::Embedded => {
                let dir = loaded.resolve(&cfg.data_dir);
                let place = format!("a spool in {}", dir.display());
                // An acknowledgement from the spool is durable whatever `[engine] fsync`
                // says (a setting that does not apply to the Kafka engine).
                let config = hifi_log::LogConfig {
                    fsync: hifi_log::FsyncPolicy::Always,
                    ..crate::runtime::log_config(loaded)
                };
                let log = EmbeddedLog::open(dir, config)?;
                Ok(Some(StandbyEngine {
                    log: Arc::new(log.clone()),
                    embedded: Some(log),
                    cfg,
                    place,
                }))
            }
            #[cfg(not(feature = "kafka"))]
            EngineKind::Kafka => Err(StartError::Config(format!(
                "engine.standby.kind: {}",
                crate::runtime::NO_KAFKA
            ))),
            #[cfg(feature = "kafka")]
            EngineKind::Kafka => {
                let brokers = cfg.brokers.clone().unwrap_or_default();
                let kafka = hifi_kafka::KafkaConfig {
                    brokers: brokers.clone(),
                    topic_prefix: cfg
                        .topic_prefix
                        .clone()
                        .unwrap_or_else(|| loaded.config.engine.topic_prefix.clone()),
                    replication_factor: cfg.replication_factor,
                    client: cfg.client.clone(),
                };
                let log = hifi_kafka::KafkaLog::connect(kafka)?;
                Ok(Some(StandbyEngine {
                    log: Arc::new(log),
                    embedded: None,
                    cfg,
                    place: format!("the Kafka cluster at {brokers}"),
                }))
            }
        }
    }

    /// Where it is (`a spool in ./standby`).
    pub fn describe(&self) -> &str {
        &self.place
    }

    /// Flushes and closes a spool.
    pub async fn close(&self) {
        if let Some(e) = &self.embedded {
            e.close().await;
        }
    }
}

/// A source's standby: its topic there and whether the cluster takes appends.
#[derive(Debug)]
pub struct Standby {
    /// The source's topic in the standby.
    pub(crate) lane: Lane,
    /// When appends go to the standby.
    pub failover: Failover,
    /// Longest wait for the standby's acknowledgement (a Kafka standby: `failover_after`;
    /// a spool waits for its fsync).
    pub(crate) ack_timeout: Option<Duration>,
}

impl Standby {
    pub(crate) fn new(lane: Lane, cfg: &StandbyConfig) -> Standby {
        Standby {
            lane,
            failover: Failover {
                up: AtomicBool::new(true),
                after: cfg.failover_after.0,
                probe_every: cfg.probe_every.0,
                last_warned_ms: AtomicI64::new(i64::MIN),
                failovers_total: AtomicU64::new(0),
                standby_events_total: AtomicU64::new(0),
                moved_events_total: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
            },
            ack_timeout: match cfg.kind {
                EngineKind::Embedded => None,
                EngineKind::Kafka => Some(cfg.failover_after.0),
            },
        }
    }
}

/// Whether ingest appends to the cluster or to the standby, with its counters.
#[derive(Debug)]
pub struct Failover {
    /// The cluster takes appends (as far as ingest knows).
    up: AtomicBool,
    /// `failover_after`.
    pub(crate) after: Duration,
    /// `probe_every`.
    probe_every: Duration,
    /// Times ingest turned to the standby.
    pub failovers_total: AtomicU64,
    /// Events appended to the standby.
    pub standby_events_total: AtomicU64,
    /// Events moved from the standby into the cluster.
    pub moved_events_total: AtomicU64,
    /// Records in the standby not moved yet (as of the mover's last look).
    pub waiting: AtomicU64,
    /// When "the standby failed too" was last logged (once a minute at most).
    last_warned_ms: AtomicI64,
}

impl Failover {
    /// Whether ingest appends to the cluster.
    pub fn primary_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// An append to the cluster failed or took too long: appends go to the standby.
    pub(crate) fn primary_failed(&self, source: &str, e: &LogError) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.failovers_total.fetch_add(1, Ordering::Relaxed);
            warn!(source, %e, "the engine did not take an append; ingest appends to the standby until it is back");
        }
    }

    /// Whether to log a failure of the standby now (once a minute at most).
    pub(crate) fn warn_now(&self) -> bool {
        let now = crate::now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 60_000
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn primary_back(&self, source: &str) {
        if !self.up.swap(true, Ordering::Relaxed) {
            info!(
                source,
                "the engine answers again; ingest appends to it, and the standby's records are moved into it"
            );
        }
    }
}

/// Records moved per append.
const MOVE_BATCH: usize = 1000;

/// Moves the standby's records into the cluster while it takes appends; while ingest is
/// on the standby, checks every `probe_every` whether the cluster is back — every
/// partition of the topic answering within `failover_after`, and then an append of the
/// spool's records (or, with none waiting, the answers alone) — so that a cluster that
/// answers but refuses appends does not draw ingest back to it. Holds the ledger's
/// settling while records wait.
pub async fn move_records(source: Arc<HttpSource>, ledger: Arc<Ledger>, token: CancellationToken) {
    let Some(sb) = &source.standby else { return };
    let holder = format!("sources.{}.standby", source.name);
    let group = source.tally_group.replacen("ledger.", "standby.", 1);
    let mut positions: Option<Vec<u64>> = None;
    let mut warned_at: Option<tokio::time::Instant> = None;
    let mut next_probe = tokio::time::Instant::now();
    // Unknown until the first look: held.
    ledger.hold(&holder, true);
    loop {
        let pass = async {
            let pos = match &mut positions {
                Some(p) => p,
                None => positions.insert(start_positions(sb, &group).await?),
            };
            let waiting = look(&source, sb, pos).await?;
            sb.failover.waiting.store(waiting, Ordering::Relaxed);
            ledger.hold(&holder, waiting > 0);
            if !sb.failover.primary_up() {
                let now = tokio::time::Instant::now();
                if now < next_probe {
                    return Ok(0);
                }
                next_probe = now + sb.failover.probe_every;
                if !primary_answers(&source, sb.failover.after).await {
                    return Ok(0);
                }
                if waiting > 0 {
                    let tried = move_once(&source, sb, &group, pos);
                    match tokio::time::timeout(sb.failover.after, tried).await {
                        Ok(Ok(moved)) if moved > 0 => {}
                        _ => return Ok(0), // still refusing appends
                    }
                }
                sb.failover.primary_back(&source.name);
                return Ok(1);
            }
            if waiting == 0 {
                return Ok(0);
            }
            move_once(&source, sb, &group, pos).await
        };
        let pause = match pass.await {
            Ok(0) => Duration::from_millis(200),
            Ok(_) => Duration::ZERO,
            Err(e) => {
                // The hold stays as it was: the records are where they were.
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warn!(source = %source.name, %e, "cannot move the standby's records into the engine yet; retrying");
                    warned_at = Some(tokio::time::Instant::now());
                }
                Duration::from_secs(1)
            }
        };
        if token.is_cancelled() || !crate::consumer::sleep_or_cancel(&token, pause).await {
            return;
        }
    }
}

/// Whether every partition of the source's topic answers in the cluster within `within`.
async fn primary_answers(source: &HttpSource, within: Duration) -> bool {
    let lane = &source.primary;
    let answers = async {
        for p in 0..lane.partitions {
            lane.log.offsets(&lane.topic, p).await?;
        }
        Ok::<_, LogError>(())
    };
    matches!(tokio::time::timeout(within, answers).await, Ok(Ok(())))
}

/// The mover's positions, committed at once so that the spool's retention keeps every
/// record it has not moved.
async fn start_positions(sb: &Standby, group: &str) -> Result<Vec<u64>, LogError> {
    let lane = &sb.lane;
    let mut out = Vec::with_capacity(lane.partitions as usize);
    for p in 0..lane.partitions {
        out.push(crate::consumer::start_position(lane.log.as_ref(), group, &lane.topic, p).await?);
    }
    let all: Vec<(u32, u64)> = out
        .iter()
        .enumerate()
        .map(|(p, o)| (p as u32, *o))
        .collect();
    lane.log.commit_many(group, &lane.topic, &all).await?;
    Ok(out)
}

/// Records in the standby past the mover's positions. Positions below what the spool
/// still holds (retention deleted records before they were moved: lost, and said so) or
/// inside a quarantined range move past them.
async fn look(source: &HttpSource, sb: &Standby, positions: &mut [u64]) -> Result<u64, LogError> {
    let lane = &sb.lane;
    let mut n = 0;
    for (p, at) in positions.iter_mut().enumerate() {
        let p = p as u32;
        let offsets = lane.log.offsets(&lane.topic, p).await?;
        if *at < offsets.start {
            error!(source = %source.name, topic = %lane.topic, partition = p, from = *at, to = offsets.start,
                "records of the standby were deleted before they were moved into the engine (those events are lost; the ledger reports them)");
            *at = offsets.start;
        }
        let holes = lane
            .log
            .quarantined(&lane.topic, p)
            .await
            .unwrap_or_default();
        if let Some(h) = holes.iter().find(|h| h.contains(at)) {
            *at = h.end;
        }
        n += offsets.end.saturating_sub(*at);
    }
    Ok(n)
}

/// Moves up to one batch per partition; returns how many records moved.
async fn move_once(
    source: &HttpSource,
    sb: &Standby,
    group: &str,
    positions: &mut [u64],
) -> Result<u64, LogError> {
    let from = &sb.lane;
    let to_partitions = source.primary.partitions.max(1);
    let mut moved = 0;
    for (p, at) in positions.iter_mut().enumerate() {
        let p = p as u32;
        let limits = ReadLimits {
            max_records: MOVE_BATCH,
            ..ReadLimits::default()
        };
        let batch = from.log.read(&from.topic, p, *at, limits).await?;
        let Some(last) = batch.last().map(|r| r.offset) else {
            continue;
        };
        let records: Vec<(Record, Origin, i64)> = batch
            .into_iter()
            .map(|r| {
                let meta = crate::event::EventMeta::of(&from.origin_topic, p, &r);
                let mut record = r.record;
                if record.header(header::ORIGIN).is_none() {
                    record = record.with_header(header::ORIGIN, meta.origin.to_string());
                }
                (record, meta.origin, meta.time_ms)
            })
            .collect();
        let n = records.len() as u64;
        append_moved(source, p % to_partitions, records).await?;
        from.log.commit(group, &from.topic, p, last + 1).await?;
        *at = last + 1;
        moved += n;
        sb.failover
            .moved_events_total
            .fetch_add(n, Ordering::Relaxed);
    }
    Ok(moved)
}

/// Appends moved records to partition `q` of the cluster's topic. Records the cluster
/// refuses (too large for it, not allowed: no retry can mend that) are dead-lettered —
/// counted and in the ledger as such, and left in the spool — one by one, so that the
/// others still move.
async fn append_moved(
    source: &HttpSource,
    q: u32,
    records: Vec<(Record, Origin, i64)>,
) -> Result<(), LogError> {
    let to = &source.primary;
    let all: Vec<Record> = records.iter().map(|(r, _, _)| r.clone()).collect();
    match to.log.append(&to.topic, q, all).await {
        Ok(offsets) => {
            to.mark_recorded(q, &offsets);
            return Ok(());
        }
        Err(e) if e.is_transient() => return Err(e),
        Err(_) => {}
    }
    for (record, origin, time_ms) in records {
        match to.log.append(&to.topic, q, vec![record]).await {
            Ok(offsets) => to.mark_recorded(q, &offsets),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                error!(source = %source.name, %origin, %e,
                    "the engine refuses a record of the standby; dead-lettered (it stays in the standby's topic until its retention)");
                source.dead_lettered(&[(origin, time_ms)]);
            }
        }
    }
    Ok(())
}
