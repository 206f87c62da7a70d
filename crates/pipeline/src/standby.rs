//! A standby for ingest (`[engine.standby]`): where sources append while the Kafka
//! cluster cannot take their appends, and the task that moves those records into the
//! cluster once it is back.
//!
//! The standby is a local embedded log (a spool on this machine's disk) or a second
//! Kafka cluster. It holds each source's topic under the same name. An append to the
//! cluster that fails, or takes longer than `failover_after`, is made to the standby
//! instead, and the request is acknowledged once that is durable; from then on appends
//! go to the standby until a probe (every `probe_every`) finds every partition of the
//! topic answering again.
//!
//! Records in the standby have their own origins, `standby:TOPIC/partition/offset`, so
//! the ledger counts each event once and shows the path it took. The mover appends them
//! to the cluster's topic with that origin in their `hifi-origin` header (a record that
//! already has one, from a Kafka source, keeps it), then commits its position in the
//! standby: a crash between the two moves them again (duplicates, counted, never loss).
//! While the standby holds records not yet moved, the ledger settles nothing: those
//! events are on their way, not lost.
//!
//! Stages and sinks read only the cluster: while it is away they cannot commit or write
//! anyway, so what went through the standby is delivered once the cluster is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hifi_ledger::Ledger;
use hifi_log::{EmbeddedLog, Log, LogError, ReadLimits, Record};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{EngineKind, LoadedConfig, StandbyConfig};
use crate::event::header;
use crate::runtime::StartError;
use crate::source::{HttpSource, Lane};

/// How the ledger names the partitions of `topic` in the standby.
pub fn origin_topic(topic: &str) -> String {
    format!("standby:{topic}")
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
                let log = EmbeddedLog::open(dir, crate::runtime::log_config(loaded))?;
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

    fn primary_back(&self, source: &str) {
        if !self.up.swap(true, Ordering::Relaxed) {
            info!(
                source,
                "the engine answers again; ingest appends to it, and the standby's records are moved into it"
            );
        }
    }
}

/// While ingest appends to the standby: checks every `probe_every` whether every
/// partition of the source's topic answers in the cluster within `failover_after`.
pub async fn probe(source: Arc<HttpSource>, token: CancellationToken) {
    let Some(sb) = &source.standby else { return };
    let f = &sb.failover;
    while crate::consumer::sleep_or_cancel(&token, f.probe_every).await {
        if f.primary_up() {
            continue;
        }
        let log = &source.primary.log;
        let answers = async {
            for p in 0..source.primary.partitions {
                log.offsets(&source.topic, p).await?;
            }
            Ok::<_, LogError>(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(f.after, answers).await {
            f.primary_back(&source.name);
        }
    }
}

/// Records moved per append.
const MOVE_BATCH: usize = 1000;

/// Moves the standby's records into the cluster while it takes appends, and holds the
/// ledger's settling while any wait in the standby.
pub async fn move_records(source: Arc<HttpSource>, ledger: Arc<Ledger>, token: CancellationToken) {
    let Some(sb) = &source.standby else { return };
    let holder = format!("sources.{}.standby", source.name);
    let group = source.tally_group.replacen("ledger.", "standby.", 1);
    let mut positions: Option<Vec<u64>> = None;
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        let pass = async {
            let pos = match &mut positions {
                Some(p) => p,
                None => positions.insert(start_positions(sb, &source.topic, &group).await?),
            };
            let waiting = waiting(sb, &source.topic, pos).await?;
            sb.failover.waiting.store(waiting, Ordering::Relaxed);
            ledger.hold(&holder, waiting > 0);
            if waiting == 0 || !sb.failover.primary_up() {
                return Ok(0);
            }
            move_once(&source, sb, &group, pos).await
        };
        let pause = match pass.await {
            Ok(0) => Duration::from_millis(200),
            Ok(_) => Duration::ZERO,
            Err(e) => {
                // Still held: the records are where they were.
                ledger.hold(&holder, true);
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

async fn start_positions(sb: &Standby, topic: &str, group: &str) -> Result<Vec<u64>, LogError> {
    let mut out = Vec::with_capacity(sb.lane.partitions as usize);
    for p in 0..sb.lane.partitions {
        out.push(crate::consumer::start_position(sb.lane.log.as_ref(), group, topic, p).await?);
    }
    Ok(out)
}

/// Records in the standby past the mover's positions.
async fn waiting(sb: &Standby, topic: &str, positions: &[u64]) -> Result<u64, LogError> {
    let mut n = 0;
    for (p, at) in positions.iter().enumerate() {
        let end = sb.lane.log.offsets(topic, p as u32).await?.end;
        n += end.saturating_sub(*at);
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
    let topic = &source.topic;
    let to_partitions = source.primary.partitions.max(1);
    let mut moved = 0;
    for (p, at) in positions.iter_mut().enumerate() {
        let p = p as u32;
        let limits = ReadLimits {
            max_records: MOVE_BATCH,
            ..ReadLimits::default()
        };
        let batch = sb.lane.log.read(topic, p, *at, limits).await?;
        let Some(last) = batch.last().map(|r| r.offset) else {
            continue;
        };
        let records: Vec<Record> = batch
            .into_iter()
            .map(|r| {
                let mut record = r.record;
                if record.header(header::ORIGIN).is_none() {
                    let origin = format!("{}/{p}/{}", sb.lane.origin_topic, r.offset);
                    record = record.with_header(header::ORIGIN, origin);
                }
                record
            })
            .collect();
        let n = records.len() as u64;
        source
            .primary
            .log
            .append(topic, p % to_partitions, records)
            .await?;
        sb.lane.log.commit(group, topic, p, last + 1).await?;
        *at = last + 1;
        moved += n;
        sb.failover
            .moved_events_total
            .fetch_add(n, Ordering::Relaxed);
    }
    Ok(moved)
}
