//! The HTTP sink: topic → CloudEvents batches → destination, with failure classes,
//! two tiers of retries and dead letters.
//!
//! ```text
//! reader per partition ──(bounded queue)──▶ batcher ──▶ up to `concurrency` deliveries
//!        │ registers offsets                               │ each ends with a fate per event:
//!        └──────────────── tracker per partition ◀─────────┤   delivered / retry topic / DLQ
//!                              │ every 100 ms: flush the ledger, then commit the lowest
//!                              ▼ offset below which every event has its fate durable
//!                           log.commit
//! retrier per tier: head of __retry.<sink>.<tier> ──(when due, rate-limited)──▶ delivery
//! ```
//!
//! A delivery tries a batch up to `retry.local.attempts` times (exponential backoff with
//! full jitter, at least the destination's `Retry-After`). A non-recoverable answer is
//! split in four, the parts sent at once, and refused parts again, to isolate the failing
//! events (about 2·log2(batch) extra requests per bad event, in log4(batch) rounds): the
//! good ones are delivered, the bad ones dead-lettered. While refusals are frequent,
//! batches shrink so that few good events share a request with a bad one. A batch whose
//! first request fails leaves the fast lane (`concurrency` request slots) for the
//! recovery lane (slots of its own), so its retries never hold up fresh events. Events
//! still failing after the local attempts go to the first retry tier (durably, before
//! the input position moves past them) and the sink moves on: one bad batch never
//! blocks the events behind it. The retriers re-deliver them when due, moving them up
//! the tiers, until `retry.global.max_age` after the first failure, then dead-letter them.
//!
//! The circuit breaker: after `breaker.failures` consecutive failed requests it opens;
//! deliveries then wait (using no attempts and no CPU, logging once) while one probe goes
//! every `breaker.probe_min`, backing off to `breaker.probe`; lag grows visibly meanwhile. Deliveries complete out of order;
//! positions commit in order, so a crash re-sends (at-least-once, `Idempotency-Key` and
//! event ids for de-duplication) and never skips.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hifi_ledger::{NodeLedger, Origin, Outcome};
use hifi_log::{Bytes, Log, LogError, ReadLimits, Record};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ce_binary::{self, BinaryMessage};
use crate::config::{SinkConfig, SinkFormat};
use crate::delivery::{backoff, parse_retry_after, Breaker, Class, Classifier, Gate, RateLimit};
use crate::event::{cloudevent_body, rfc3339_ms, EventMeta, Text};
use crate::retry::{
    annotate, dlq_topic, due_ms, retry_header, retry_state, retry_topic, DlqReason, RetryState,
};
use crate::stage::{retry_until_ok, sleep_or_cancel, start_position};

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events the destination acknowledged (outcome `delivered`).
    pub delivered_events_total: AtomicU64,
    /// Requests that succeeded.
    pub requests_total: AtomicU64,
    /// Requests that failed (refused ones included).
    pub failed_requests_total: AtomicU64,
    /// Requests answered with a status that is not retried (a 4xx, by default).
    pub refused_requests_total: AtomicU64,
    /// Local retries made (requests sent again).
    pub local_retries_total: AtomicU64,
    /// Events moved to a retry topic (global retries).
    pub retried_events_total: AtomicU64,
    /// Events in retry topics now (waiting for a global retry).
    pub retrying_events: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered_events_total: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opens_total: AtomicU64,
    /// 1 while the circuit breaker is open.
    pub breaker_open: AtomicU64,
}

/// One event on its way to the destination.
#[derive(Debug, Clone)]
struct Item {
    /// Where it was read: input partition (main path) or retry tier.
    from: From,
    offset: u64,
    id: Text,
    origin: Origin,
    event_time_ms: i64,
    /// When the sink read it, µs.
    arrival_us: i64,
    /// The event rendered as a CloudEvent (JSON object); a stored CloudEvent is the
    /// record's value itself (shared, not copied).
    body: Bytes,
    /// The stored record (for the retry topic or the DLQ).
    record: Record,
    /// Earlier attempts (retried events).
    retry: Option<RetryState>,
    /// The trace context of its ingest request.
    trace: Option<crate::event::Trace>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Partition(u32),
    Tier(usize),
}

/// What finally happened to one event of a delivery.
#[derive(Debug, Clone)]
enum Fate {
    Delivered,
    Retry {
        reason: String,
        attempts: u32,
    },
    Dead {
        status: u16,
        body: String,
        attempts: u32,
    },
}

/// Offsets read but without a durable fate yet, per partition.
#[derive(Debug, Default)]
struct Tracker {
    outstanding: BTreeSet<u64>,
    /// The next offset the reader will register.
    next: u64,
    /// Last committed position.
    committed: u64,
    /// Whether this process works on the partition (only owned positions are committed).
    owned: bool,
}

impl Tracker {
    fn position(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

/// A running sink.
#[derive(Debug)]
pub struct HttpSink {
    /// Node name.
    pub name: String,
    /// Topic delivered.
    pub input: String,
    /// Settings.
    pub cfg: SinkConfig,
    /// The engine.
    pub log: Arc<dyn Log>,
    /// HTTP client (connection pool shared by deliveries).
    client: reqwest::Client,
    /// The producer of a Kafka sink (`type = "kafka"`); HTTP sinks have none.
    kafka: Option<hifi_kafka::TopicProducer>,
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// Outcomes and lag (flushed before every commit).
    pub ledger: NodeLedger,
    /// Status-code classes.
    classifier: Classifier,
    /// Opens while the destination is down.
    breaker: Mutex<Breaker>,
    /// Wakes the deliveries waiting behind the breaker when it closes.
    breaker_closed: tokio::sync::Notify,
    /// Recent share of events the destination refused; shrinks batches while high.
    refusals: Mutex<RefusalRate>,
    /// Paces global retries.
    retry_rate: Mutex<RateLimit>,
    /// Request slots of the recovery lane (retries and splitting refused batches), apart
    /// from the batcher's, so failing events never take slots from fresh ones.
    recovery_requests: Arc<Semaphore>,
    /// Events in the recovery lane at once, `RECOVERING_PER_SLOT` full batches per
    /// request slot (bounds the memory taken while many batches fail).
    recovering_events: Arc<Semaphore>,
}

/// Full batches per request slot that may be in the recovery lane at once, and its
/// requests in flight per request slot.
const RECOVERING_PER_SLOT: usize = 4;
/// Parts a refused batch is split into.
const SPLIT_WAYS: usize = 4;

/// Where a delivery's requests take their slots (see [`HttpSink::deliver`]). The permit
/// a lane holds is kept until the batch's fates are durable.
enum Lane {
    /// A fresh batch, holding one of the batcher's `concurrency` slots.
    Fast { _slot: OwnedSemaphorePermit },
    /// A batch that has failed once (with its place in the recovery lane, or none for a
    /// split-off part or a global retry); each request takes a recovery slot.
    Recovering {
        _place: Option<OwnedSemaphorePermit>,
    },
}

/// The share of recent events a destination refused (non-recoverably), over roughly the
/// last `RefusalRate::WINDOW` events. While it is high, batches shrink so that few good
/// events share a request with a bad one: a destination refuses the whole request, so
/// they would wait for the split that isolates the bad one.
#[derive(Debug, Default)]
struct RefusalRate {
    delivered: f64,
    refused: f64,
    /// When a refusal was last logged, and refusals since.
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalRate {
    /// Events after which the counts are halved (older outcomes fade).
    const WINDOW: f64 = 5_000.0;
    /// Refused events per batch aimed at (measured with `scripts/bench-failures`: 0.2
    /// made so many requests that fresh batches queued for slots; 0.5 kept the events
    /// never in a failed request as fast as without failures).
    const REFUSED_PER_BATCH: f64 = 0.5;

    fn record(&mut self, delivered: usize, refused: usize) {
        self.delivered += delivered as f64;
        self.refused += refused as f64;
        if self.delivered + self.refused > Self::WINDOW {
            self.delivered /= 2.0;
            self.refused /= 2.0;
        }
    }

    /// Whether this refusal gets a log line (at most one a second); if so, how many
    /// refusals went unlogged since the last line, this one included.
    fn take_log_turn(&mut self, now: tokio::time::Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// The batch size to use now, at most `max_events`.
    fn batch_limit(&self, max_events: usize) -> usize {
        let seen = self.delivered + self.refused;
        if self.refused < 1.0 || seen <= 0.0 {
            return max_events;
        }
        let rate = self.refused / seen;
        ((Self::REFUSED_PER_BATCH / rate).ceil() as usize).clamp(1, max_events)
    }
}

impl Lane {
    /// The lane of a split-off part or a global retry (no place of its own).
    fn part() -> Lane {
        Lane::Recovering { _place: None }
    }
}

const BODY_SNIPPET_BYTES: usize = 1024;
/// How long a revoked partition's events in flight may take before it is released.
const REVOKE_DRAIN: Duration = Duration::from_secs(15);

impl HttpSink {
    /// Creates a sink (no I/O yet).
    pub fn new(
        name: &str,
        cfg: &SinkConfig,
        log: Arc<dyn Log>,
        ledger: NodeLedger,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout.0)
            .connect_timeout(cfg.request_timeout.0.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(cfg.concurrency)
            .build()
            .map_err(|e| e.to_string())?;
        let kafka = match cfg.kind {
            crate::config::SinkType::Http => None,
            crate::config::SinkType::Kafka => Some(hifi_kafka::TopicProducer::new(
                cfg.brokers.as_deref().unwrap_or_default(),
                cfg.topic.as_deref().unwrap_or_default(),
                &cfg.client,
            )?),
        };
        Ok(HttpSink {
            name: name.to_owned(),
            input: cfg.input.get_ref().clone(),
            cfg: cfg.clone(),
            log,
            client,
            kafka,
            stats: Arc::new(SinkStats::default()),
            ledger,
            classifier: Classifier {
                recoverable: cfg.classify.recoverable.clone(),
                non_recoverable: cfg.classify.non_recoverable.clone(),
            },
            breaker: Mutex::new(Breaker::new(
                cfg.breaker.failures,
                cfg.breaker.probe_min.0,
                cfg.breaker.probe.0,
            )),
            breaker_closed: tokio::sync::Notify::new(),
            refusals: Mutex::new(RefusalRate::default()),
            retry_rate: Mutex::new(RateLimit::new(
                cfg.retry.global.rate,
                tokio::time::Instant::now(),
            )),
            recovery_requests: Arc::new(Semaphore::new(cfg.concurrency * RECOVERING_PER_SLOT)),
            recovering_events: Arc::new(Semaphore::new(
                (cfg.concurrency * cfg.batch.max_events * RECOVERING_PER_SLOT)
                    .min(Semaphore::MAX_PERMITS)
                    .min(u32::MAX as usize),
            )),
        })
    }

    /// The consumer group holding this sink's positions.
    pub fn group(&self) -> String {
        format!("sink.{}", self.name)
    }

    fn tiers(&self) -> usize {
        self.cfg.retry.global.schedule.len()
    }

    /// Creates the sink's retry, dead-letter and re-drive topics (before it runs, so that
    /// its admin routes work from the start).
    pub async fn prepare(&self) -> Result<(), LogError> {
        let g = &self.cfg.retry.global;
        let keep = g.max_age.0 + g.schedule.iter().map(|d| d.0).max().unwrap_or_default();
        crate::retry::ensure_topics(self.log.as_ref(), &self.name, self.tiers(), keep).await
    }

    /// Runs until `shutdown`, then drains in-flight deliveries for at most `drain` and
    /// commits what has a durable fate. Call [`HttpSink::prepare`] first.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Result<(), LogError> {
        // Its topics exist (prepare). The engine may be away for a while now (a Kafka
        // cluster restarting): running waits for it instead of stopping the sink.
        // Only a gauge, updated as retries come and go: not worth waiting for.
        if let Err(e) = self.count_waiting_retries().await {
            warn!(sink = %self.name, %e, "cannot count the events waiting for a retry");
        }
        let count = || self.log.partitions(&self.input);
        let Some(partitions) =
            retry_until_ok(&shutdown, &self.name, "read the input's partitions", count).await
        else {
            return Ok(());
        };
        let trackers: Arc<Vec<Mutex<Tracker>>> =
            Arc::new((0..partitions).map(|_| Mutex::default()).collect());
        // Each message is one read's items (at most `max_events`, one send and one tracker
        // lock per read instead of per event): the queue holds two reads, the batcher
        // takes one apart, so at most `3 * max_events` events wait (was `2 *`).
        let (tx, rx) = mpsc::channel::<Vec<Item>>(2);
        let read_stop = shutdown.child_token();
        let readers = {
            let (sink, trackers, stop) = (self.clone(), trackers.clone(), read_stop.clone());
            tokio::spawn(async move {
                let (group, shutdown) = (sink.group(), stop.clone());
                crate::owned::run_owned(
                    sink.log.as_ref(),
                    &sink.name,
                    &group,
                    &sink.input,
                    &shutdown,
                    |p, stop| {
                        let (sink, tx, trackers) = (sink.clone(), tx.clone(), trackers.clone());
                        let shutdown = shutdown.clone();
                        async move { sink.partition_worker(p, tx, trackers, stop, shutdown).await }
                    },
                )
                .await
            })
        };
        let mut retriers = tokio::task::JoinSet::new();
        for tier in 0..self.tiers() {
            let (sink, shutdown) = (self.clone(), shutdown.clone());
            retriers.spawn(async move {
                let (group, topic) = (sink.retry_group(tier), retry_topic(&sink.name, tier));
                crate::owned::run_owned(
                    sink.log.as_ref(),
                    &sink.name,
                    &group,
                    &topic,
                    &shutdown,
                    |_, stop| {
                        let sink = sink.clone();
                        async move { sink.retrier(tier, stop).await }
                    },
                )
                .await
            });
        }
        // Deliveries get their own token: they keep going through the drain period.
        let deliver_stop = CancellationToken::new();
        let committer = {
            let (sink, trackers, stop) = (self.clone(), trackers.clone(), deliver_stop.clone());
            tokio::spawn(async move { sink.committer(trackers, stop).await })
        };
        let mut in_flight = self
            .clone()
            .batcher(rx, trackers.clone(), shutdown.clone(), deliver_stop.clone())
            .await;
        // The input group's membership is kept through the drain and the last commit, so
        // another process takes these partitions over only from the final positions.
        let membership = readers.await.ok().flatten();
        while retriers.join_next().await.is_some() {}
        let deadline = tokio::time::sleep(drain);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    warn!(sink = %self.name, left = in_flight.len(), "drain time over; undelivered events will be re-sent after restart");
                    break;
                }
                next = in_flight.join_next() => if next.is_none() { break },
            }
        }
        deliver_stop.cancel();
        in_flight.shutdown().await;
        let _ = committer.await;
        self.commit_positions(&trackers).await;
        drop(membership);
        Ok(())
    }

    async fn count_waiting_retries(&self) -> Result<(), LogError> {
        let mut waiting = 0;
        for tier in 0..self.tiers() {
            let topic = retry_topic(&self.name, tier);
            let pos = start_position(self.log.as_ref(), &self.retry_group(tier), &topic, 0).await?;
            waiting += self.log.offsets(&topic, 0).await?.end - pos;
        }
        self.stats.retrying_events.store(waiting, Ordering::Relaxed);
        Ok(())
    }

    fn retry_group(&self, tier: usize) -> String {
        format!("sink.{}.retry.{tier}", self.name)
    }

    fn item(
        &self,
        topic: &str,
        p: u32,
        from: From,
        r: hifi_log::StoredRecord,
        arrival_us: i64,
    ) -> Item {
        let meta = EventMeta::of(topic, p, &r);
        let body = cloudevent_body(&meta, &r.record.value);
        Item {
            from,
            offset: r.offset,
            id: meta.id,
            origin: meta.origin,
            event_time_ms: meta.time_ms,
            arrival_us,
            body,
            retry: retry_state(&r.record),
            trace: meta.trace,
            record: r.record,
        }
    }

    /// Works on one owned partition: reads it from the committed position until `stop`.
    /// When the partition is revoked (not at shutdown, which drains everything), waits
    /// for its events in flight (bounded) and commits what is done before it is released.
    async fn partition_worker(
        self: Arc<Self>,
        p: u32,
        tx: mpsc::Sender<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let group = self.group();
        let start = || start_position(self.log.as_ref(), &group, &self.input, p);
        let Some(pos) = retry_until_ok(&stop, &self.name, "read the start position", start).await
        else {
            return;
        };
        *trackers[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Tracker {
            outstanding: BTreeSet::new(),
            next: pos,
            committed: pos,
            owned: true,
        };
        self.reader(p, tx, trackers.clone(), stop).await;
        if shutdown.is_cancelled() {
            return;
        }
        let deadline = tokio::time::Instant::now() + REVOKE_DRAIN;
        while tokio::time::Instant::now() < deadline {
            let idle = trackers[p as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .outstanding
                .is_empty();
            if idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.commit_positions(&trackers).await;
        trackers[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .owned = false;
    }

    async fn reader(
        &self,
        p: u32,
        tx: mpsc::Sender<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        stop: CancellationToken,
    ) {
        let limits = ReadLimits {
            max_records: self.cfg.batch.max_events,
            max_bytes: 4 << 20,
            wait: Duration::from_millis(500),
        };
        let mut pos = trackers[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next;
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.log.read(&self.input, p, pos, limits) => r,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(LogError::OffsetOutOfRange { start, .. }) if pos < start => {
                    error!(sink = %self.name, partition = p, from = pos, to = start,
                        "records were deleted by retention before delivery; skipping ahead (events lost to retention)");
                    pos = start;
                    trackers[p as usize]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .next = start;
                    continue;
                }
                Err(e) => {
                    error!(sink = %self.name, partition = p, offset = pos, %e, "cannot read input; retrying in 5 s");
                    sleep_or_cancel(&stop, Duration::from_secs(5)).await;
                    continue;
                }
            };
            let Some(first) = batch.first().map(|r| r.offset) else {
                continue;
            };
            let arrival_us = self.ledger.now_us();
            let items: Vec<Item> = batch
                .into_iter()
                .map(|r| self.item(&self.input, p, From::Partition(p), r, arrival_us))
                .collect();
            pos = items.last().map_or(first, |i| i.offset + 1);
            {
                let mut t = trackers[p as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                t.outstanding.extend(items.iter().map(|i| i.offset));
                t.next = pos;
            }
            // Backpressure: waits while the batcher and deliveries are full. Items
            // abandoned here are never committed: the position stays at or before them.
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                sent = tx.send(items) => sent.is_ok(),
            };
            if !sent {
                let mut t = trackers[p as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                t.outstanding.retain(|&o| o < first);
                t.next = first;
                return;
            }
        }
    }

    /// Groups queued events into batches and starts deliveries; returns the deliveries
    /// still in flight at shutdown.
    async fn batcher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Vec<Item>>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) -> tokio::task::JoinSet<()> {
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut in_flight = tokio::task::JoinSet::new();
        let max_bytes = self.cfg.batch.max_bytes.0 as usize;
        // Items received and not yet batched (the rest of one read, in order).
        let mut pending: VecDeque<Item> = VecDeque::new();
        loop {
            let first = match pending.pop_front() {
                Some(i) => i,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return in_flight,
                    next = rx.recv() => match next {
                        Some(items) => {
                            pending.extend(items);
                            continue;
                        }
                        None => return in_flight,
                    },
                },
            };
            // Batch while busy: with a free request slot, send what is queued at once;
            // with every slot busy, keep filling for up to `max_wait`.
            let deadline = tokio::time::Instant::now() + self.cfg.batch.max_wait.0;
            let mut bytes = first.body.len() + 2;
            let mut batch = vec![first];
            let max_events = self
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .batch_limit(
                    if self.kafka.is_none() && self.cfg.format().one_per_request() {
                        1
                    } else {
                        self.cfg.batch.max_events
                    },
                );
            while batch.len() < max_events {
                if pending.is_empty() {
                    let next = match rx.try_recv() {
                        Ok(items) => Some(items),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                        Err(mpsc::error::TryRecvError::Empty)
                            if permits.available_permits() > 0 =>
                        {
                            None
                        }
                        Err(mpsc::error::TryRecvError::Empty) => {
                            tokio::time::timeout_at(deadline, rx.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                    };
                    let Some(items) = next else { break };
                    pending.extend(items);
                }
                let Some(item) = pending.pop_front() else {
                    continue;
                };
                if bytes + item.body.len() + 1 > max_bytes {
                    pending.push_front(item);
                    break;
                }
                bytes += item.body.len() + 1;
                batch.push(item);
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return in_flight,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return in_flight,
                },
            };
            let (sink, trackers, stop) = (self.clone(), trackers.clone(), stop.clone());
            in_flight.spawn(async move {
                // Held until the fates are durable (memory stays bounded).
                let mut lane = Lane::Fast { _slot: permit };
                if let Some(fates) = sink.deliver(&batch, &stop, &mut lane).await {
                    if sink.settle_until_done(&batch, &fates, 0, &stop).await {
                        // One lock per run of one partition's items (reads come whole).
                        for run in batch.chunk_by(|a, b| a.from == b.from) {
                            let From::Partition(p) = run[0].from else {
                                continue;
                            };
                            let mut t = trackers[p as usize]
                                .lock()
                                .unwrap_or_else(|e| e.into_inner());
                            for item in run {
                                t.outstanding.remove(&item.offset);
                            }
                        }
                    }
                }
            });
            while in_flight.try_join_next().is_some() {}
        }
    }

    /// Waits until the breaker lets a request go; false at shutdown. A waiting delivery
    /// goes as soon as the breaker closes, not at the next probe time: fresh events must
    /// not overtake it while the destination is up (the committed position would stay
    /// behind, and a crash would re-send everything delivered since).
    async fn gate(&self, stop: &CancellationToken) -> bool {
        loop {
            if stop.is_cancelled() {
                return false;
            }
            // Registered before the breaker is read, so a close in between still wakes it.
            let closed = self.breaker_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let gate = self
                .breaker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gate(tokio::time::Instant::now());
            match gate {
                Gate::Go => return true,
                Gate::WaitUntil(t) => {
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep_until(t) => {}
                        _ = &mut closed => {}
                    }
                }
            }
        }
    }

    fn breaker_result(&self, ok: bool) {
        let changed = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(ok, tokio::time::Instant::now());
        match changed {
            Some(true) => {
                self.stats
                    .breaker_opens_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.breaker_open.store(1, Ordering::Relaxed);
                warn!(sink = %self.name, first_probe_in = ?self.cfg.breaker.probe_min.0.min(self.cfg.breaker.probe.0),
                    probes_at_most_every = ?self.cfg.breaker.probe.0,
                    "destination keeps failing: circuit breaker open, pausing delivery and probing");
            }
            Some(false) => {
                self.breaker_closed.notify_waiters();
                self.stats.breaker_open.store(0, Ordering::Relaxed);
                info!(sink = %self.name, "destination answers again: circuit breaker closed");
            }
            None => {}
        }
    }

    /// Sends one request; returns its class.
    async fn send(&self, batch: &[Item]) -> Class {
        let span = tracing::info_span!(target: crate::otel::TARGET, "deliver",
            sink = %self.name, events = batch.len(), outcome = tracing::field::Empty);
        if !span.is_disabled() {
            crate::otel::link(&span, batch.iter().filter_map(|i| i.trace.as_ref()));
        }
        let class = tracing::Instrument::instrument(self.send_request(batch), span.clone()).await;
        span.record(
            "outcome",
            match &class {
                Class::Success => "success",
                Class::Recoverable { .. } => "failed",
                Class::NonRecoverable { .. } => "refused",
            },
        );
        class
    }

    async fn send_request(&self, batch: &[Item]) -> Class {
        if let Some(producer) = &self.kafka {
            let bodies = batch.iter().map(|i| &i.body[..]);
            let timeout = self.cfg.request_timeout.0;
            return crate::kafka_sink::send(producer, &self.cfg, bodies, timeout).await;
        }
        let mut key = xxhash_rust::xxh3::Xxh3::new();
        for item in batch {
            key.update(item.id.as_bytes());
            key.update(&[0]);
        }
        let req = match self.request(batch) {
            Ok(r) => r,
            // A stored event that cannot be put in this format (never decided by the
            // destination, and never going to work): dead-lettered like a refusal.
            Err(reason) => return Class::NonRecoverable { status: 0, reason },
        };
        let mut req = req.header("idempotency-key", format!("{:032x}", key.digest128()));
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let snippet = if resp.status().is_success() {
                    String::new()
                } else {
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let cut = &bytes[..bytes.len().min(BODY_SNIPPET_BYTES)];
                    String::from_utf8_lossy(cut).trim().to_owned()
                };
                self.classifier.status(status, &snippet, retry_after)
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("timeout after {:?}", self.cfg.request_timeout.0)
                } else {
                    error_chain(&e)
                };
                self.classifier.transport(&what)
            }
        }
    }

    /// The request carrying `batch` in the sink's format (single-event formats get
    /// batches of one).
    fn request(&self, batch: &[Item]) -> Result<reqwest::RequestBuilder, String> {
        let post = self.client.post(&self.cfg.url);
        let joined = |open: &[u8], sep: u8, close: &[u8]| {
            let size = batch.iter().map(|i| i.body.len() + 1).sum::<usize>() + 2;
            let mut body = Vec::with_capacity(size);
            body.extend_from_slice(open);
            for (i, item) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(sep);
                }
                body.extend_from_slice(&item.body);
            }
            body.extend_from_slice(close);
            body
        };
        // The trace context goes as W3C headers in single-event formats.
        let traced = |mut req: reqwest::RequestBuilder, m: &BinaryMessage| {
            for (name, value) in m.headers.iter().filter(|(n, _)| !n.starts_with("ce-")) {
                req = req.header(name, value);
            }
            req
        };
        let typed = |req: reqwest::RequestBuilder, m: &BinaryMessage| match &m.content_type {
            Some(ct) => req.header("content-type", ct),
            None => req,
        };
        Ok(match self.cfg.format() {
            SinkFormat::Batch => post
                .header("content-type", "application/cloudevents-batch+json")
                .body(joined(b"[", b',', b"]")),
            SinkFormat::Ndjson => post
                .header("content-type", "application/x-ndjson")
                .body(joined(b"", b'\n', b"\n")),
            SinkFormat::Structured => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                traced(post, &m)
                    .header("content-type", "application/cloudevents+json")
                    .body(batch[0].body.clone())
            }
            SinkFormat::Binary => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                let mut req = typed(traced(post, &m), &m);
                for (name, value) in m.headers.iter().filter(|(n, _)| n.starts_with("ce-")) {
                    req = req.header(name, value);
                }
                req.body(m.body)
            }
            SinkFormat::Raw => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                typed(traced(post, &m), &m).body(m.body)
            }
        })
    }

    /// Delivers a batch: local retries, splitting of non-recoverable answers. Returns a
    /// fate per event, or `None` at shutdown (nothing decided; the events stay pending).
    ///
    /// A fresh batch comes in `Lane::Fast`, holding one of the batcher's request slots.
    /// Once a request fails, the batch gives that slot back and goes on (backoff,
    /// splitting) in the recovery lane, whose requests take slots of their own: events
    /// behind a failing batch are not held up by its retries (no head-of-line blocking).
    async fn deliver(
        &self,
        batch: &[Item],
        stop: &CancellationToken,
        lane: &mut Lane,
    ) -> Option<Vec<Fate>> {
        let attempts_max = self.cfg.retry.local.attempts.max(1);
        let mut attempt = 0u32;
        loop {
            if !self.gate(stop).await {
                return None;
            }
            let class = match lane {
                Lane::Fast { .. } => self.send(batch).await,
                Lane::Recovering { .. } => {
                    let _slot = acquire(&self.recovery_requests, 1, stop).await?;
                    self.send(batch).await
                }
            };
            if matches!(lane, Lane::Fast { .. }) && !matches!(class, Class::Success) {
                // Wait for room in the recovery lane while still holding the fast slot,
                // so a destination failing everything slows the batcher instead of
                // piling up batches.
                *lane = Lane::Recovering {
                    _place: Some(acquire(&self.recovering_events, batch.len(), stop).await?),
                };
            }
            attempt += 1;
            let prior = batch
                .iter()
                .map(|i| i.retry.map_or(0, |r| r.attempts))
                .max()
                .unwrap_or(0);
            match class {
                Class::Success => {
                    self.breaker_result(true);
                    self.on_delivered(batch);
                    self.refusals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(batch.len(), 0);
                    return Some(vec![Fate::Delivered; batch.len()]);
                }
                Class::NonRecoverable { status, reason } => {
                    self.breaker_result(true); // the destination is up; the data is bad
                    self.stats
                        .failed_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .refused_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    if batch.len() == 1 {
                        let unlogged = {
                            let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
                            r.record(0, 1);
                            r.take_log_turn(tokio::time::Instant::now())
                        };
                        // At most one line a second: a destination refusing everything
                        // (an expired token) must not flood the log.
                        if let Some(more) = unlogged {
                            warn!(sink = %self.name, id = %batch[0].id, %reason, refused_since_last_line = more,
                                "event refused; dead-lettering it");
                        }
                        return Some(vec![Fate::Dead {
                            status,
                            body: reason,
                            attempts: prior + attempt,
                        }]);
                    }
                    // Split into SPLIT_WAYS parts, all sent at once: isolating a bad event
                    // takes about log4(batch) rounds, half of halving's, for as many
                    // requests (k·log_k(n) is the same for k = 2 and 4).
                    let parts = batch.chunks(batch.len().div_ceil(SPLIT_WAYS));
                    let fates = futures_util::future::join_all(parts.map(|part| async move {
                        Box::pin(self.deliver(part, stop, &mut Lane::part())).await
                    }))
                    .await;
                    let mut all = Vec::with_capacity(batch.len());
                    for f in fates {
                        all.extend(f?);
                    }
                    return Some(all);
                }
                Class::Recoverable {
                    reason,
                    retry_after,
                    transport,
                } => {
                    self.breaker_result(false);
                    self.stats
                        .failed_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    if transport {
                        // Unreachable: wait behind the breaker; the attempts are for
                        // failures that may be this batch's own.
                        attempt -= 1;
                    }
                    if attempt >= attempts_max {
                        warn!(sink = %self.name, events = batch.len(), attempts = attempt, %reason,
                            "local retries exhausted; moving the events to the retry topic");
                        return Some(vec![
                            Fate::Retry {
                                reason,
                                attempts: prior + attempt
                            };
                            batch.len()
                        ]);
                    }
                    let local = &self.cfg.retry.local;
                    let wait = backoff(
                        local.backoff_min.0,
                        local.backoff_max.0,
                        attempt.saturating_sub(1),
                        retry_after,
                    );
                    self.stats
                        .local_retries_total
                        .fetch_add(1, Ordering::Relaxed);
                    if !sleep_or_cancel(stop, wait).await {
                        return None;
                    }
                }
            }
        }
    }

    fn on_delivered(&self, batch: &[Item]) {
        let departure_us = self.ledger.now_us();
        self.ledger.outcomes(
            batch
                .iter()
                .map(|i| (Outcome::Delivered, i.origin.as_ref(), i.event_time_ms)),
        );
        self.ledger.lags(
            batch.iter().map(|i| (i.event_time_ms, i.arrival_us)),
            departure_us,
        );
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        self.stats
            .delivered_events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    /// Makes the fates of a delivery durable: retried events to the retry tier
    /// `next_tier` (dead letters past `max_age`), refused ones to the DLQ; records the
    /// outcomes. An error leaves the events pending (they are re-sent later).
    async fn settle(
        &self,
        batch: &[Item],
        fates: &[Fate],
        next_tier: usize,
    ) -> Result<(), LogError> {
        let now = crate::now_ms();
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for (item, fate) in batch.iter().zip(fates) {
            match fate {
                Fate::Delivered => {}
                Fate::Retry { reason, attempts } => {
                    let first = item.retry.map_or(now, |r| r.first_ms);
                    if now - first >= self.cfg.retry.global.max_age.0.as_millis() as i64 {
                        let why = format!(
                            "retries exhausted after {:?}: {reason}",
                            self.cfg.retry.global.max_age.0
                        );
                        dead.push((
                            item,
                            self.dlq_record(
                                item,
                                "retries_exhausted",
                                0,
                                &why,
                                *attempts,
                                first,
                                now,
                            ),
                        ));
                    } else {
                        let tier = next_tier.min(self.tiers() - 1);
                        let due = now + self.cfg.retry.global.schedule[tier].0.as_millis() as i64;
                        let rec = annotate(
                            &item.record,
                            &item.origin.to_string(),
                            vec![
                                (retry_header::ATTEMPTS, attempts.to_string()),
                                (retry_header::FIRST_MS, first.to_string()),
                                (retry_header::DUE_MS, due.to_string()),
                                (retry_header::REASON, reason.clone()),
                            ],
                        );
                        let mut rec = rec;
                        rec.timestamp_ms = now; // retention judges retry records by when they were written
                        retries.push((item, tier, rec));
                    }
                }
                Fate::Dead {
                    status,
                    body,
                    attempts,
                } => {
                    let first = item.retry.map_or(now, |r| r.first_ms);
                    dead.push((
                        item,
                        self.dlq_record(
                            item,
                            "non_recoverable",
                            *status,
                            body,
                            *attempts,
                            first,
                            now,
                        ),
                    ));
                }
            }
        }
        for tier in 0..self.tiers() {
            let recs: Vec<Record> = retries
                .iter()
                .filter(|r| r.1 == tier)
                .map(|r| r.2.clone())
                .collect();
            if !recs.is_empty() {
                self.log
                    .append(&retry_topic(&self.name, tier), 0, recs)
                    .await?;
            }
        }
        if !dead.is_empty() {
            self.log
                .append(
                    &dlq_topic(&self.name),
                    0,
                    dead.iter().map(|d| d.1.clone()).collect(),
                )
                .await?;
        }
        let retrying = retries.iter().map(|(i, _, _)| (Outcome::Retrying, *i));
        let dead_lettered = dead.iter().map(|(i, _)| (Outcome::DeadLettered, *i));
        self.ledger.outcomes(
            retrying
                .chain(dead_lettered)
                .map(|(o, i)| (o, i.origin.as_ref(), i.event_time_ms)),
        );
        let from_retry = batch
            .iter()
            .filter(|i| matches!(i.from, From::Tier(_)))
            .count() as u64;
        self.stats
            .retried_events_total
            .fetch_add(retries.len() as u64, Ordering::Relaxed);
        self.stats
            .dead_lettered_events_total
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        // Concurrent deliveries settle at once: update the gauge atomically.
        let gauge = &self.stats.retrying_events;
        gauge.fetch_add(retries.len() as u64, Ordering::Relaxed);
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(from_retry))
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dlq_record(
        &self,
        item: &Item,
        class: &str,
        status: u16,
        body: &str,
        attempts: u32,
        first: i64,
        now: i64,
    ) -> Record {
        let mut snippet = body.to_owned();
        if snippet.len() > BODY_SNIPPET_BYTES {
            let mut cut = BODY_SNIPPET_BYTES;
            while !snippet.is_char_boundary(cut) {
                cut -= 1;
            }
            snippet.truncate(cut);
        }
        let reason = DlqReason {
            class: class.into(),
            status,
            body: snippet,
            attempts,
            first_attempt: rfc3339_ms(first),
            last_attempt: rfc3339_ms(now),
        };
        let mut rec = annotate(
            &item.record,
            &item.origin.to_string(),
            vec![(
                retry_header::DLQ_REASON,
                serde_json::to_string(&reason).unwrap_or_default(),
            )],
        );
        rec.timestamp_ms = now;
        rec
    }

    /// Re-delivers the events of one retry tier when they are due, rate-limited.
    async fn retrier(&self, tier: usize, stop: CancellationToken) {
        let topic = retry_topic(&self.name, tier);
        let group = self.retry_group(tier);
        let start = || start_position(self.log.as_ref(), &group, &topic, 0);
        let Some(mut pos) =
            retry_until_ok(&stop, &self.name, "read the retry position", start).await
        else {
            return;
        };
        let limits = ReadLimits {
            max_records: self.cfg.batch.max_events,
            max_bytes: 4 << 20,
            wait: Duration::from_secs(1),
        };
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.log.read(&topic, 0, pos, limits) => r,
            };
            let batch = match batch {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => continue,
                Err(LogError::OffsetOutOfRange { start, .. }) if pos < start => {
                    error!(sink = %self.name, tier, from = pos, to = start,
                        "retry records were deleted by retention before they were due; skipping ahead (events lost to retention: raise the retention of the retry topics)");
                    pos = start;
                    continue;
                }
                Err(e) => {
                    error!(sink = %self.name, tier, %e, "cannot read the retry topic; retrying in 5 s");
                    sleep_or_cancel(&stop, Duration::from_secs(5)).await;
                    continue;
                }
            };
            // Records of one tier become due in order: wait for the head, take what is due.
            let now = crate::now_ms();
            let head_due = due_ms(&batch[0].record);
            if head_due > now {
                sleep_or_cancel(&stop, Duration::from_millis((head_due - now) as u64)).await;
                continue;
            }
            let arrival_us = self.ledger.now_us();
            let due: Vec<Item> = batch
                .into_iter()
                .take_while(|r| due_ms(&r.record) <= now)
                .map(|r| self.item(&topic, 0, From::Tier(tier), r, arrival_us))
                .collect();
            if !self.pace(due.len() as u64, &stop).await {
                return;
            }
            let Some(fates) = self.deliver(&due, &stop, &mut Lane::part()).await else {
                return;
            };
            if !self.settle_until_done(&due, &fates, tier + 1, &stop).await {
                return;
            }
            // The fates are durable: retry only the bookkeeping, never the deliveries.
            let flushed =
                retry_until_ok(&stop, &self.name, "record outcomes in the ledger", || {
                    self.ledger.flush()
                });
            if flushed.await.is_none() {
                return;
            }
            pos = due.last().map_or(pos, |i| i.offset + 1);
            let commit = || self.log.commit(&group, &topic, 0, pos);
            if retry_until_ok(&stop, &self.name, "commit the retry position", commit)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// [`Self::settle`] until it succeeds (e.g. after a disk-full) or shutdown (false:
    /// the events stay pending and are re-sent after a restart).
    async fn settle_until_done(
        &self,
        batch: &[Item],
        fates: &[Fate],
        next_tier: usize,
        stop: &CancellationToken,
    ) -> bool {
        let settle = || self.settle(batch, fates, next_tier);
        retry_until_ok(
            stop,
            &self.name,
            "store the fate of delivered/failed events",
            settle,
        )
        .await
        .is_some()
    }

    /// Waits for rate-limit tokens for `n` global retries; false at shutdown.
    async fn pace(&self, n: u64, stop: &CancellationToken) -> bool {
        loop {
            let r = self
                .retry_rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(n, tokio::time::Instant::now());
            match r {
                Ok(()) => return true,
                Err(wait) => {
                    if !sleep_or_cancel(stop, wait).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn committer(&self, trackers: Arc<Vec<Mutex<Tracker>>>, stop: CancellationToken) {
        while sleep_or_cancel(&stop, Duration::from_millis(100)).await {
            self.commit_positions(&trackers).await;
        }
    }

    async fn commit_positions(&self, trackers: &[Mutex<Tracker>]) {
        // Positions are read before the flush: every event below them has its fate
        // recorded already, and the flush makes those records durable first.
        let positions: Vec<(u64, u64)> = trackers
            .iter()
            .map(|t| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                (
                    t.position(),
                    if t.owned { t.committed } else { t.position() },
                )
            })
            .collect();
        if let Err(e) = self.ledger.flush().await {
            error!(sink = %self.name, %e, "cannot record outcomes in the ledger; not committing this round");
            return;
        }
        // Every moved position in one commit: one fsync for all partitions (each of its
        // own competed with the appends' fsyncs for the disk).
        let moved: Vec<(u32, u64)> = positions
            .into_iter()
            .enumerate()
            .filter(|(_, (pos, committed))| pos != committed)
            .map(|(p, (pos, _))| (p as u32, pos))
            .collect();
        if moved.is_empty() {
            return;
        }
        match self
            .log
            .commit_many(&self.group(), &self.input, &moved)
            .await
        {
            Ok(()) => {
                for (p, pos) in moved {
                    trackers[p as usize]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .committed = pos;
                }
            }
            Err(e) => error!(sink = %self.name, %e, "cannot commit positions"),
        }
    }
}

/// An error with its causes ("error sending request: connection refused").
/// `n` permits from `sem` (at least one); `None` at shutdown.
async fn acquire(
    sem: &Arc<Semaphore>,
    n: usize,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    tokio::select! {
        _ = stop.cancelled() => None,
        p = sem.clone().acquire_many_owned(n) => p.ok(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::RefusalRate;
    use std::time::Duration;

    #[test]
    fn batches_shrink_while_refusals_are_frequent_and_grow_back_after() {
        let mut r = RefusalRate::default();
        assert_eq!(r.batch_limit(500), 500, "no history: full batches");
        // 1 % refused: about 50 events per batch (half a refused event per batch).
        for _ in 0..50 {
            r.record(99, 1);
        }
        assert_eq!(r.batch_limit(500), 50);
        assert_eq!(r.batch_limit(10), 10, "never above the configured size");
        // Everything refused: one event per request.
        for _ in 0..100 {
            r.record(0, 50);
        }
        assert_eq!(r.batch_limit(500), 1);
        // Refusals stop: the old ones fade and batches grow back to full size.
        let mut sizes = Vec::new();
        for _ in 0..100 {
            r.record(500, 0);
            sizes.push(r.batch_limit(500));
        }
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 500, "{sizes:?}");
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_a_count() {
        let mut r = RefusalRate::default();
        let t0 = tokio::time::Instant::now();
        assert_eq!(r.take_log_turn(t0), Some(1));
        for i in 1..=99u64 {
            assert_eq!(r.take_log_turn(t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(r.take_log_turn(t0 + Duration::from_millis(1001)), Some(100));
    }
}
