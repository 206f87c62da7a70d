//! The ingest node: turns validated events into records and appends them durably.
//!
//! One request = one append to one partition (round-robin over partitions), so a request
//! is acknowledged only when all its events are durable together. De-duplication: an
//! event whose (source, id) was accepted within `dedup_window` is acknowledged again
//! without being stored again. The window is rebuilt from the topic's tail on start, so
//! it survives restarts. Ids are remembered only once their append is durable: two
//! concurrent requests with the same new id may both be stored (a duplicate, counted
//! downstream), but an id is never acknowledged without being stored.
//!
//! Memory: the window keeps at most `dedup_max_ids` keyed 128-bit hashes (about 26 bytes
//! each, see [`crate::dedup`]); past it the oldest are forgotten early (counted in
//! [`SourceStats::dedup_evicted_total`]).

mod lane;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hifi_log::{Bytes, Log, LogError, Record};
use tracing::{info, warn};

use hifi_ledger::NodeLedger;

use crate::config::SourceConfig;
use crate::dedup::{Dedup, DedupKeyer, PreHashed};
use crate::event::header;
use crate::event::{EventFormat, Text, Trace};
use crate::now_ms;
use crate::parse::{ParseOptions, ParsedEvent};
pub(crate) use lane::Lane;

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Events stored.
    pub accepted_events_total: AtomicU64,
    /// Events acknowledged again without storing (already accepted).
    pub duplicate_events_total: AtomicU64,
    /// Requests refused for invalid input (4xx).
    pub rejected_requests_total: AtomicU64,
    /// Requests refused because of backpressure (503).
    pub backpressure_rejections_total: AtomicU64,
    /// Requests that failed because the engine failed (503).
    pub engine_errors_total: AtomicU64,
    /// Ids forgotten before their window ended (memory bound).
    pub dedup_evicted_total: AtomicU64,
    /// Event times outside `event_time_window`, clamped to it (`outside = "clamp"`).
    pub clamped_event_times_total: AtomicU64,
    /// Records of a Kafka source that were not valid events (dead-lettered).
    pub dead_lettered_events_total: AtomicU64,
    /// How long `POST /v1/events` requests took, by status.
    pub request_durations: crate::durations::Durations,
}

/// The result of one accepted request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// Events in the request (stored now or before).
    pub accepted: usize,
    /// Of those, events already accepted earlier (not stored again).
    pub duplicates: usize,
    /// Every event's id, in request order.
    pub ids: Vec<Text>,
}

/// A source's de-duplication window handed from one start of the nodes to the next in
/// the same process (a reload, a publish): the next start reads only the records its
/// topics gained since, not the whole window again (0.27 s for 720 000 ids on a 2-core
/// machine, while ingest requests wait for the nodes).
#[derive(Debug)]
pub struct KeptWindow {
    dedup: Dedup,
    keyer: DedupKeyer,
    /// Each lane partition's end (topic, partition) when the window was kept.
    ends: BTreeMap<(String, u32), u64>,
}

/// An HTTP source node (the HTTP side lives in the server crate).
#[derive(Debug)]
pub struct HttpSource {
    /// Node name (`api` for `[sources.api]`).
    pub name: String,
    /// The topic appended to.
    pub topic: String,
    /// The topic in the engine.
    pub(crate) primary: Lane,
    /// The topic in the standby (`[engine.standby]`), and when to use it.
    pub standby: Option<crate::standby::Standby>,
    /// How bodies are read.
    pub parse: ParseOptions,
    /// Event times accepted around the ingest time.
    event_time_window: crate::config::EventTimeWindow,
    /// Recently accepted ids.
    dedup: Mutex<Dedup>,
    /// The secret key of the de-duplication hashes (new at every start of the process).
    keyer: DedupKeyer,
    /// Counters.
    pub stats: SourceStats,
    /// Outcomes (`passed`) and lag.
    ledger: NodeLedger,
    /// The consumer group whose positions say up to where this process's `passed`
    /// outcomes are durable: `ledger.<source>`, or `ledger.<source>.<instance>` when
    /// several processes ingest the source.
    pub(crate) tally_group: String,
    /// The topic's schema (`[topics.X] schema`): events that do not fit are refused.
    pub schema: Option<Arc<hifi_sql::Schema>>,
    /// Samples accepted events for values that look like PII (`[pii]`).
    pub pii: crate::pii::detect::Detector,
    /// Largest record accepted: the engine's limit minus [`RECORD_HEADROOM_BYTES`].
    record_bytes_max: usize,
    /// Longest wait for the engine's acknowledgement before answering 503.
    ack_timeout: Option<std::time::Duration>,
}

/// Which lane an append goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// The engine.
    Primary,
    /// The standby.
    Standby,
}

/// One request's new records, with what is recorded once they are durable.
#[derive(Debug, Clone)]
struct Batch {
    records: Vec<Record>,
    keys: Vec<u128>,
    event_times: Vec<i64>,
    origins: Vec<Option<hifi_ledger::Origin>>,
}

/// Room kept under the engine's record limit at ingest, so that what later hops add to a
/// record (origin header, retry headers, a dead-letter reason of up to 1 KiB) always fits.
pub const RECORD_HEADROOM_BYTES: usize = 4096;

impl HttpSource {
    /// The engine the source appends to.
    pub fn log(&self) -> &Arc<dyn Log> {
        &self.primary.log
    }

    fn lane(&self, which: Which) -> &Lane {
        match (which, &self.standby) {
            (Which::Standby, Some(s)) => &s.lane,
            _ => &self.primary,
        }
    }

    /// The engine's lane, then the standby's if there is one.
    fn lanes(&self) -> impl Iterator<Item = &Lane> {
        std::iter::once(&self.primary).chain(self.standby.as_ref().map(|s| &s.lane))
    }

    /// Counts records dead-lettered by a Kafka source.
    /// Records records kept aside as dead letters before they became events (a Kafka
    /// source's invalid records): counted, and in the ledger as dead-lettered here
    /// under their first place (origin, event time ms). Durable in the ledger only
    /// after [`HttpSource::flush_ledger`].
    pub fn dead_lettered(&self, dead: &[(hifi_ledger::Origin, i64)]) {
        self.stats
            .dead_lettered_events_total
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        self.ledger.outcomes(
            dead.iter()
                .map(|(o, t)| (hifi_ledger::Outcome::DeadLettered, o.as_ref(), *t)),
        );
    }

    /// Makes the outcomes recorded so far durable in the ledger.
    pub async fn flush_ledger(&self) -> Result<(), LogError> {
        self.ledger.flush().await
    }

    /// Creates the source and rebuilds its de-duplication window from the topic's tail,
    /// or goes on with `kept`, the window of its previous start in this process, and
    /// what its topics gained since. `instance` names this process among several
    /// ingesting the same source; with a `standby`, the topic (created there
    /// beforehand) is its second lane.
    pub async fn start(
        name: &str,
        cfg: &SourceConfig,
        log: Arc<dyn Log>,
        ledger: NodeLedger,
        engine: &crate::config::EngineConfig,
        (instance, standby): (Option<&str>, Option<&crate::standby::StandbyEngine>),
        kept: Option<KeptWindow>,
    ) -> Result<Self, LogError> {
        let engine_record_bytes_max = engine.record_bytes_max.0 as usize;
        let topic = cfg.topic.get_ref().clone();
        let tally_group = match instance {
            Some(i) => format!("ledger.{name}.{i}"),
            None => format!("ledger.{name}"),
        };
        let primary = Lane::open(log, &topic, topic.clone(), &tally_group, name, instance).await?;
        let standby = match standby {
            None => None,
            Some(sb) => {
                let spool = crate::standby::spool_topic(name, instance);
                let origin = crate::standby::origin_topic(&spool);
                let lane = Lane::open(sb.log.clone(), &spool, origin, &tally_group, name, instance)
                    .await?;
                Some(crate::standby::Standby::new(lane, &sb.cfg))
            }
        };
        let source = HttpSource {
            name: name.to_owned(),
            topic,
            primary,
            standby,
            parse: ParseOptions {
                event_time: cfg.event_time.clone(),
                id_field: cfg.id_field.clone(),
                default_source: format!("hifi/{name}"),
                event_type: cfg.event_type.clone(),
                max_events: cfg.max_events_per_request,
            },
            event_time_window: cfg.event_time_window,
            dedup: Mutex::new(Dedup::new(
                cfg.dedup_window.0.as_millis() as i64,
                cfg.dedup_max_ids,
            )),
            keyer: kept
                .as_ref()
                .map_or_else(DedupKeyer::random, |k| k.keyer.clone()),
            stats: SourceStats::default(),
            ledger,
            schema: None,
            pii: crate::pii::detect::Detector::new(0),
            record_bytes_max: engine_record_bytes_max
                .saturating_sub(RECORD_HEADROOM_BYTES)
                .max(1024),
            ack_timeout: engine.ack_timeout(),
            tally_group,
        };
        match kept {
            Some(kept) => source.go_on_with(kept).await?,
            None => source.rebuild_dedup().await?,
        }
        source.catch_up_tallies().await?;
        Ok(source)
    }

    /// Takes the de-duplication window, with the ends of its lanes' partitions, for the
    /// next start of the nodes in this process; ingest must have stopped. `None` (the
    /// next start reads the whole window from the log) when an end cannot be read, or
    /// when an append is still under way (one that outlived its request: its id may be
    /// below the ends read and not remembered yet).
    pub async fn keep_window(&self) -> Option<KeptWindow> {
        let ends = self.lane_ends().await.ok()?;
        let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        // Under the window's lock: an append ended before this has its ids in it; one
        // begun after the ends were read is read again by the next start.
        if self.lanes().any(Lane::appending) {
            info!(source = %self.name, "an append is under way: the next start reads the de-duplication window from the log");
            return None;
        }
        let (window, max) = d.bounds();
        let dedup = std::mem::replace(&mut *d, Dedup::new(window, max));
        Some(KeptWindow {
            dedup,
            keyer: self.keyer.clone(),
            ends,
        })
    }

    /// The end of every partition of its lanes, by (topic, partition).
    async fn lane_ends(&self) -> Result<BTreeMap<(String, u32), u64>, LogError> {
        let mut ends = BTreeMap::new();
        for lane in self.lanes() {
            for p in 0..lane.partitions {
                let end = lane.log.offsets(&lane.topic, p).await?.end;
                ends.insert((lane.topic.clone(), p), end);
            }
        }
        Ok(ends)
    }

    /// Goes on with a kept window: reads the ids its lanes' partitions gained since it
    /// was kept (another process's appends to a shared topic, a late append). The whole
    /// window is read again instead when its bounds changed or a partition is not as
    /// it was ([`catch_up_from`]).
    async fn go_on_with(&self, kept: KeptWindow) -> Result<(), LogError> {
        let bounds = self
            .dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bounds();
        let ends = self.lane_ends().await?;
        let reads = match catch_up_from(&kept.ends, &ends) {
            Some(reads) if kept.dedup.bounds() == bounds => reads,
            _ => return self.rebuild_dedup().await,
        };
        let mut gained = Vec::new();
        for ((topic, p), from) in reads {
            if let Some(lane) = self.lanes().find(|l| l.topic == topic) {
                gained.extend(read_ids(lane.log.as_ref(), &self.keyer, &topic, p, from).await?);
            }
        }
        let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        *d = kept.dedup;
        gained.sort_unstable_by_key(|e| e.0);
        for &(at, key) in &gained {
            d.insert(key, at);
        }
        d.expire(now_ms());
        info!(source = %self.name, read = gained.len(), remembered = d.len(),
            "de-duplication window kept from the previous start");
        Ok(())
    }

    /// Records `passed` for records stored before a crash whose tallies were not yet
    /// durable (from the tally position to the end), so the ledger is exact.
    async fn catch_up_tallies(&self) -> Result<(), LogError> {
        let mut caught_up = 0u64;
        for lane in self.lanes() {
            caught_up += lane.catch_up(&self.ledger, &self.tally_group).await?;
        }
        self.flush_tallies().await?;
        if caught_up > 0 {
            info!(source = %self.name, events = caught_up, "recorded outcomes lost in a crash");
        }
        Ok(())
    }

    /// Makes recorded `passed` outcomes durable and moves the tally positions past them.
    /// With a standby, each engine's positions are committed on their own: one that is
    /// away does not hold back the other's (once the ledger itself can be written).
    pub async fn flush_tallies(&self) -> Result<(), LogError> {
        let mut first_error = None;
        let mut positions = Vec::new();
        for lane in self.lanes() {
            if let Err(e) = lane.recover(&self.ledger).await {
                first_error.get_or_insert(e);
            }
            positions.push(lane.positions());
        }
        self.ledger.flush().await?;
        for (lane, positions) in self.lanes().zip(positions) {
            if let Err(e) = lane.commit(&self.tally_group, &positions).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Reads the ids stored within the window back into memory. Each partition is read
    /// at once (in parallel) and only as far back as the memory bound can keep: requests
    /// go round-robin over the partitions, so the newest `dedup_max_ids` events are about
    /// the newest `dedup_max_ids / partitions` of each (plus one request's worth). Reading
    /// the whole window instead took 7-8 s for 3.6 M events, all but 1 M then dropped.
    async fn rebuild_dedup(&self) -> Result<(), LogError> {
        let now = now_ms();
        let (window, max) = self
            .dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bounds();
        let mut readers = tokio::task::JoinSet::new();
        for (lane, p) in self
            .lanes()
            .flat_map(|l| (0..l.partitions).map(move |p| (l, p)))
        {
            let per_partition =
                (max.div_ceil(lane.partitions.max(1) as usize) + self.parse.max_events) as u64;
            let (log, topic, keyer) = (lane.log.clone(), lane.topic.clone(), self.keyer.clone());
            readers.spawn(async move {
                let end = log.offsets(&topic, p).await?.end;
                let Some(from) = log.offset_for_time(&topic, p, now - window).await? else {
                    return Ok(Vec::new());
                };
                let from = from.max(end.saturating_sub(per_partition));
                read_ids(log.as_ref(), &keyer, &topic, p, from).await
            });
        }
        let mut parts = Vec::new();
        while let Some(r) = readers.join_next().await {
            parts.push(r.map_err(|e| LogError::Invalid(format!("reading ids failed: {e}")))??);
        }
        // Sized once: growing these (and the map below) while reading a million ids
        // peaked at ~100 MB above the window's own size.
        let mut entries = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            entries.extend(part);
        }
        let ids = entries.len();
        entries.sort_unstable_by_key(|e| e.0);
        let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        // Only the newest `max` can stay (`expire` would drop the older ones at once).
        let keep = &entries[ids.saturating_sub(max)..];
        d.reserve(keep.len());
        for &(at, key) in keep {
            d.insert(key, at);
        }
        drop(entries);
        d.expire(now);
        info!(source = %self.name, ids, remembered = d.len(), "de-duplication window rebuilt from the log");
        Ok(())
    }

    /// What ingest checks beyond parsing: every value within the JSON limits stages
    /// need ([`crate::json_limits`]) and of the topic's schema, if it has one, and event
    /// times within the source's
    /// `event_time_window` around `now_ms` (refused, or clamped as configured). Every
    /// refused event with its reason.
    pub fn check_events(
        &self,
        events: &mut [ParsedEvent],
        now_ms: i64,
    ) -> Result<(), Vec<crate::parse::EventError>> {
        let unreadable: Vec<_> = events
            .iter()
            .enumerate()
            .filter_map(|(index, e)| {
                crate::json_limits::check(&e.value)
                    .err()
                    .map(|reason| crate::parse::EventError {
                        index: Some(index),
                        reason,
                    })
            })
            .collect();
        if !unreadable.is_empty() {
            return Err(unreadable);
        }
        if let Some(schema) = &self.schema {
            let unfit: Vec<_> = events
                .iter()
                .enumerate()
                .filter_map(|(index, e)| {
                    let why = match serde_json::from_slice::<serde_json::Value>(&e.value) {
                        Ok(v) => schema.check(&v).err()?,
                        Err(e) => format!("not JSON: {e}"),
                    };
                    Some(crate::parse::EventError {
                        index: Some(index),
                        reason: format!("does not fit the schema of topic {:?}: {why}", self.topic),
                    })
                })
                .collect();
            if !unfit.is_empty() {
                return Err(unfit);
            }
        }
        let key = format!("sources.{}.event_time_window", self.name);
        let clamped = crate::event_window::apply(&self.event_time_window, &key, events, now_ms)?;
        for e in events.iter() {
            self.pii.observe(&e.value);
        }
        self.stats
            .clamped_event_times_total
            .fetch_add(clamped, Ordering::Relaxed);
        Ok(())
    }

    /// Stores a request's events durably (all or nothing) and returns their ids.
    pub async fn store(
        self: &Arc<Self>,
        events: Vec<ParsedEvent>,
        trace: Option<&Trace>,
    ) -> Result<IngestOutcome, LogError> {
        self.store_within(events, trace, self.ack_timeout).await
    }

    /// [`HttpSource::store`], waiting at most `ack_timeout` for the engine (`None`: as
    /// long as the append takes, as a Kafka source does, which cannot answer early).
    pub async fn store_within(
        self: &Arc<Self>,
        events: Vec<ParsedEvent>,
        trace: Option<&Trace>,
        ack_timeout: Option<std::time::Duration>,
    ) -> Result<IngestOutcome, LogError> {
        let arrival_us = self.ledger.now_us();
        let now = arrival_us / 1000;
        let now_text = Bytes::from(now.to_string());
        let mut ids = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        let mut event_times = Vec::with_capacity(events.len());
        let mut origins = Vec::with_capacity(events.len());
        let mut duplicates = 0;
        {
            let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
            d.expire(now);
            let mut in_request: HashSet<u128, PreHashed> =
                HashSet::with_capacity_and_hasher(events.len(), PreHashed::default());
            for e in events {
                let id =
                    e.id.unwrap_or_else(|| Text::from(uuid::Uuid::now_v7().to_string()));
                let key = self.keyer.key(e.source.bytes(), id.bytes());
                if d.contains(key) || !in_request.insert(key) {
                    duplicates += 1;
                } else {
                    event_times.push(e.time_ms.unwrap_or(now));
                    let time = Bytes::from(e.time_ms.unwrap_or(now).to_string());
                    let mut headers = vec![
                        hdr(header::ID, id.bytes().clone()),
                        hdr(header::SOURCE, e.source.bytes().clone()),
                        hdr(header::TYPE, e.event_type.bytes().clone()),
                        hdr(header::TIME, time),
                        hdr(header::INGEST_TIME, now_text.clone()),
                        hdr(
                            header::FORMAT,
                            Bytes::from_static(e.format.as_str().as_bytes()),
                        ),
                    ];
                    if let Some(o) = &e.origin {
                        headers.push(hdr(header::ORIGIN, Bytes::from(o.to_string())));
                    }
                    origins.push(e.origin);
                    // A CloudEvent keeps its own extension attributes.
                    if let (Some(t), EventFormat::Json) = (trace, e.format) {
                        headers.push(hdr(header::TRACEPARENT, t.traceparent.bytes().clone()));
                        if let Some(state) = &t.tracestate {
                            headers.push(hdr(header::TRACESTATE, state.bytes().clone()));
                        }
                    }
                    records.push(Record {
                        key: Some(id.bytes().clone()),
                        value: e.value,
                        headers,
                        timestamp_ms: now,
                    });
                    keys.push(key);
                }
                ids.push(id);
            }
        }
        if let Some(big) = records
            .iter()
            .map(Record::frame_bytes)
            .find(|b| *b > self.record_bytes_max)
        {
            return Err(LogError::RecordTooLarge {
                bytes: big,
                max: self.record_bytes_max,
            });
        }
        let stored = records.len() as u64;
        if !records.is_empty() {
            let batch = Batch {
                records,
                keys,
                event_times,
                origins,
            };
            match (&self.standby, ack_timeout) {
                // A Kafka source (no timeout) waits for the engine: its input is durable.
                (Some(sb), Some(_)) => self.append_failing_over(sb, batch, arrival_us).await?,
                _ => {
                    self.append_within(Which::Primary, batch, arrival_us, ack_timeout)
                        .await?
                }
            }
        }
        self.stats
            .accepted_events_total
            .fetch_add(stored, Ordering::Relaxed);
        self.stats
            .duplicate_events_total
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        Ok(IngestOutcome {
            accepted: ids.len(),
            duplicates,
            ids,
        })
    }
}

impl HttpSource {
    /// Appends a batch to one lane, waiting at most `limit` for it (the append goes on
    /// in the background past it, and its bookkeeping with it).
    async fn append_within(
        self: &Arc<Self>,
        which: Which,
        batch: Batch,
        arrival_us: i64,
        limit: Option<std::time::Duration>,
    ) -> Result<(), LogError> {
        // In its own task: if the request is dropped (client gone) after the append
        // became durable, the bookkeeping below still happens.
        let me = self.clone();
        let span = tracing::info_span!(target: crate::otel::TARGET, "append",
            topic = %self.topic, events = batch.records.len());
        // One engine error per append: a timeout here, or the append's own failure.
        let counted = Arc::new(AtomicBool::new(false));
        let counted_by_task = counted.clone();
        let work = tokio::spawn(tracing::Instrument::instrument(
            async move {
                me.append_and_record(which, batch, arrival_us, &counted_by_task)
                    .await
            },
            span,
        ));
        let done = match limit {
            None => work.await,
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(done) => done,
                Err(_) => {
                    if !counted.swap(true, Ordering::Relaxed) {
                        self.stats
                            .engine_errors_total
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(LogError::Io {
                        context: format!("appending to {}", self.topic),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the engine did not acknowledge within {limit:?}; the events may still be stored"),
                        ),
                    });
                }
            },
        };
        done.map_err(|e| LogError::Invalid(format!("ingest task failed: {e}")))?
    }

    /// Appends to the engine while it takes appends within `failover_after`, to the
    /// standby otherwise. An append to the engine that timed out may still land: its
    /// events are then stored twice (two origins, both delivered and counted).
    async fn append_failing_over(
        self: &Arc<Self>,
        sb: &crate::standby::Standby,
        batch: Batch,
        arrival_us: i64,
    ) -> Result<(), LogError> {
        if sb.failover.primary_up() {
            let tried = self
                .append_within(
                    Which::Primary,
                    batch.clone(),
                    arrival_us,
                    Some(sb.failover.after),
                )
                .await;
            match tried {
                Ok(()) => return Ok(()),
                // Refused records (too large for the cluster, not allowed): the standby
                // would take them, and its mover could never put them in the cluster.
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => sb.failover.primary_failed(&self.name, &e),
            }
        }
        let events = batch.records.len() as u64;
        self.append_within(Which::Standby, batch, arrival_us, sb.ack_timeout)
            .await
            .inspect_err(|e| {
                if sb.failover.warn_now() {
                    warn!(source = %self.name, %e, "the standby failed too; answering 503 (logged once a minute)");
                }
            })?;
        sb.failover
            .standby_events_total
            .fetch_add(events, Ordering::Relaxed);
        Ok(())
    }

    /// Appends one request's new records durably to a lane, then records their outcomes,
    /// lag and ids (runs to completion even if the request that started it is dropped).
    async fn append_and_record(
        &self,
        which: Which,
        batch: Batch,
        arrival_us: i64,
        counted: &AtomicBool,
    ) -> Result<(), LogError> {
        let Batch {
            records,
            keys,
            event_times,
            origins,
        } = batch;
        let now = arrival_us / 1000;
        let lane = self.lane(which);
        let partition = lane.next_partition.fetch_add(1, Ordering::Relaxed) % lane.partitions;
        lane.begin(partition);
        let offsets = match lane.log.append(&lane.topic, partition, records).await {
            Ok(o) => o,
            Err(e) => {
                lane.end(partition, None);
                if !counted.swap(true, Ordering::Relaxed) {
                    self.stats
                        .engine_errors_total
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        let departure_us = self.ledger.now_us();
        self.ledger
            .lags(event_times.iter().map(|&t| (t, arrival_us)), departure_us);
        self.ledger
            .outcomes(event_times.iter().zip(&offsets).zip(&origins).map(
                |((&t, &offset), first_held)| {
                    let origin = match first_held {
                        Some(o) => o.as_ref(),
                        None => hifi_ledger::OriginRef {
                            topic: &lane.origin_topic,
                            partition,
                            offset,
                        },
                    };
                    (hifi_ledger::Outcome::Passed, origin, t)
                },
            ));
        // Remembered before the append is marked ended: a window kept for the next
        // start ([`HttpSource::keep_window`]) holds every id whose append has ended.
        let mut d = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = keys.into_iter().filter(|&key| d.insert(key, now)).count();
        drop(d);
        lane.end(partition, Some(&offsets));
        self.stats
            .dedup_evicted_total
            .fetch_add(evicted as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Where to read to bring a kept window up to date: each partition whose end moved, from
/// its end when the window was kept. `None` when the window must be read whole again:
/// the partitions are not the same ones, or one has fewer records (a topic made anew).
fn catch_up_from(
    kept: &BTreeMap<(String, u32), u64>,
    now: &BTreeMap<(String, u32), u64>,
) -> Option<Vec<((String, u32), u64)>> {
    if kept.len() != now.len() {
        return None;
    }
    let mut reads = Vec::new();
    for (at, &end) in now {
        let &was = kept.get(at)?;
        if was > end {
            return None;
        }
        if was < end {
            reads.push((at.clone(), was));
        }
    }
    Some(reads)
}

/// (time, de-duplication key) of the records of one partition from `from` to its end.
async fn read_ids(
    log: &dyn Log,
    keyer: &DedupKeyer,
    topic: &str,
    p: u32,
    from: u64,
) -> Result<Vec<(i64, u128)>, LogError> {
    let mut out = Vec::new();
    hifi_log::read_to_end(log, topic, p, from, |r| {
        if let (Some(src), Some(id)) =
            (r.record.header(header::SOURCE), r.record.header(header::ID))
        {
            let key = keyer.key(src, id);
            out.push((r.record.timestamp_ms, key));
        }
    })
    .await?;
    Ok(out)
}

fn hdr(name: &'static str, value: Bytes) -> hifi_log::Header {
    hifi_log::Header {
        name: name.into(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(e: &[(&str, u32, u64)]) -> BTreeMap<(String, u32), u64> {
        e.iter().map(|&(t, p, o)| ((t.to_owned(), p), o)).collect()
    }

    #[test]
    fn a_kept_window_reads_only_what_each_partition_gained() {
        let kept = ends(&[("events", 0, 10), ("events", 1, 20), ("spool", 0, 5)]);
        let now = ends(&[("events", 0, 10), ("events", 1, 25), ("spool", 0, 7)]);
        assert_eq!(
            catch_up_from(&kept, &now),
            Some(vec![
                (("events".to_owned(), 1), 20),
                (("spool".to_owned(), 0), 5)
            ])
        );
        assert_eq!(catch_up_from(&kept, &kept), Some(vec![]));
    }

    #[test]
    fn a_kept_window_is_read_whole_again_when_its_partitions_are_not_the_same() {
        let kept = ends(&[("events", 0, 10), ("events", 1, 20)]);
        let fewer_records = ends(&[("events", 0, 10), ("events", 1, 3)]);
        let more_partitions = ends(&[("events", 0, 10), ("events", 1, 20), ("events", 2, 0)]);
        let other_topic = ends(&[("events", 0, 10), ("other", 1, 20)]);
        for now in [fewer_records, more_partitions, other_topic] {
            assert_eq!(catch_up_from(&kept, &now), None, "{now:?}");
        }
    }
}
