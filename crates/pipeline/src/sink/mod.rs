//! The sink: topic → CloudEvents batches → destination (an HTTP endpoint, or a Kafka
//! topic through `kafka_sink.rs`: only the request differs), with failure classes, two
//! tiers of retries and dead letters.
//!
//! ```text
//! reader per partition ──(bounded queue)──▶ batcher ──▶ up to `concurrency` deliveries
//!                                                          (fixed, or adaptive: adaptive.rs)
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
//!
//! The parts of the diagram, one file each: `read.rs` (readers), `batch.rs` (batcher,
//! lanes, refusal rate), `deliver.rs` (one delivery: breaker gate, request, local
//! retries, splitting), `settle.rs` (fates made durable: retry tiers, dead letters),
//! `retrier.rs` (the tiers' retriers), `commit.rs` (trackers and the committer),
//! `adaptive.rs` (the fast lane's request slots: a fixed number, or AIMD on response
//! times and back-pressure).

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
use crate::config::{Concurrency, SinkConfig, SinkFormat};
use crate::consumer::{retry_until_ok, sleep_or_cancel, start_position, Cursor, Read};
use crate::delivery::{backoff, parse_retry_after, Breaker, Class, Classifier, Gate, RateLimit};
use crate::event::{cloudevent_body, rfc3339_ms, EventMeta, Text};
use crate::retry::{
    annotate, dlq_topic, due_ms, retry_header, retry_state, retry_topic, DlqReason, RetryState,
};

mod adaptive;
mod batch;
mod commit;
mod deliver;
mod read;
mod retrier;
mod settle;

use adaptive::Slot;
pub use adaptive::{Reason as ConcurrencyReason, Slots};
use batch::{acquire, Lane, RefusalRate, RECOVERING_PER_SLOT};
use commit::Tracker;

/// Bytes of a destination's answer kept with a failure (logs, dead-letter reasons).
const BODY_SNIPPET_BYTES: usize = 1024;

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
    /// Its main readers' time waiting for input (the busy ratio of `/v1/scale`).
    pub busy: crate::scale::Busy,
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

/// A running sink.
#[derive(Debug)]
pub struct Sink {
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
    #[cfg(feature = "kafka")]
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
    /// Request slots of the fast lane (fresh batches): fixed, or an adaptive limit;
    /// public for its gauges.
    pub slots: Arc<Slots>,
    /// Request slots of the recovery lane (retries and splitting refused batches), apart
    /// from the batcher's, so failing events never take slots from fresh ones. With an
    /// adaptive `concurrency` they follow the destination too (a limit of their own):
    /// retries at a fixed width would flood the destination that is turning requests
    /// away, and keep the fast lane's limit at one.
    recovery_slots: Arc<Slots>,
    /// Events in the recovery lane at once, `RECOVERING_PER_SLOT` full batches per
    /// request slot (bounds the memory taken while many batches fail).
    recovering_events: Arc<Semaphore>,
}

impl Sink {
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
            .pool_max_idle_per_host(cfg.concurrency_limit_max())
            .build()
            .map_err(|e| e.to_string())?;
        #[cfg(not(feature = "kafka"))]
        if cfg.kind == crate::config::SinkType::Kafka {
            return Err(crate::runtime::NO_KAFKA.to_owned());
        }
        #[cfg(feature = "kafka")]
        let kafka = match cfg.kind {
            crate::config::SinkType::Http => None,
            crate::config::SinkType::Kafka => Some(hifi_kafka::TopicProducer::new(
                cfg.brokers.as_deref().unwrap_or_default(),
                cfg.topic.as_deref().unwrap_or_default(),
                &cfg.client,
            )?),
        };
        Ok(Sink {
            name: name.to_owned(),
            input: cfg.input.get_ref().clone(),
            cfg: cfg.clone(),
            log,
            client,
            #[cfg(feature = "kafka")]
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
            slots: Slots::new(cfg.concurrency, cfg.concurrency_max),
            recovery_slots: Slots::new(
                match cfg.concurrency {
                    Concurrency::Fixed(n) => Concurrency::Fixed(n * RECOVERING_PER_SLOT),
                    Concurrency::Adaptive => Concurrency::Adaptive,
                },
                cfg.concurrency_limit_max() * RECOVERING_PER_SLOT,
            ),
            recovering_events: Arc::new(Semaphore::new(
                (cfg.concurrency_limit_max() * cfg.batch.max_events * RECOVERING_PER_SLOT)
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
    /// commits what has a durable fate. Call [`Sink::prepare`] first.
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
        let mut body = cloudevent_body(&meta, &r.record.value);
        if let Some(v) = &self.cfg.version {
            body = crate::event::with_extension(&body, "hifiversion", v);
        }
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
}
