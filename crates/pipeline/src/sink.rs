//! The HTTP sink: topic → CloudEvents batches → destination.
//!
//! ```text
//! reader per partition ──(bounded queue)──▶ batcher ──▶ up to `concurrency` deliveries
//!        │ registers offsets                               │ on 2xx: complete offsets
//!        └──────────────── tracker per partition ◀─────────┘
//!                              │ every 100 ms: commit the lowest offset below which
//!                              ▼ every event is delivered
//!                           log.commit
//! ```
//! Deliveries complete out of order; positions commit in order, so a crash re-sends
//! (at-least-once; receivers de-duplicate with `Idempotency-Key` or event ids) and never
//! skips. Batching happens while busy: with a free request slot a batch leaves at once,
//! otherwise it fills for up to `batch.max_wait`. A failed delivery is retried with exponential backoff and full jitter until it
//! succeeds: events are never dropped here. Memory is bounded by the queue
//! (`2 × batch.max_events` events) plus `concurrency` batches of `batch.max_bytes`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hifi_ledger::{NodeLedger, Origin, Outcome};
use hifi_log::{Log, LogError, ReadLimits};
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::SinkConfig;
use crate::event::{write_cloudevent, EventMeta};
use crate::stage::{sleep_or_cancel, start_position};

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events the destination acknowledged (outcome `delivered`).
    pub delivered_events_total: AtomicU64,
    /// Requests that succeeded.
    pub requests_total: AtomicU64,
    /// Requests that failed and were retried.
    pub failed_requests_total: AtomicU64,
    /// Events waiting for a retry right now.
    pub retrying_events: AtomicU64,
}

/// One event on its way to the destination.
#[derive(Debug)]
struct Item {
    partition: u32,
    offset: u64,
    id: String,
    /// The event's origin (ledger key).
    origin: Origin,
    /// Event time, ms.
    event_time_ms: i64,
    /// When the sink read it, µs.
    arrival_us: i64,
    /// The event rendered as a CloudEvent (JSON object).
    body: Vec<u8>,
}

/// Offsets read but not yet delivered, per partition.
#[derive(Debug, Default)]
struct Tracker {
    outstanding: BTreeSet<u64>,
    /// The next offset the reader will register.
    next: u64,
    /// Last committed position.
    committed: u64,
}

impl Tracker {
    /// Everything below this is delivered.
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
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// Outcomes and lag (flushed before every commit).
    pub ledger: NodeLedger,
}

impl HttpSink {
    /// Creates a sink (no I/O yet).
    pub fn new(
        name: &str,
        cfg: &SinkConfig,
        log: Arc<dyn Log>,
        ledger: NodeLedger,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout.0)
            .connect_timeout(cfg.request_timeout.0.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(cfg.concurrency)
            .build()?;
        Ok(HttpSink {
            name: name.to_owned(),
            input: cfg.input.get_ref().clone(),
            cfg: cfg.clone(),
            log,
            client,
            stats: Arc::new(SinkStats::default()),
            ledger,
        })
    }

    /// The consumer group holding this sink's positions.
    pub fn group(&self) -> String {
        format!("sink.{}", self.name)
    }

    /// Runs until `shutdown`, then drains in-flight deliveries for at most `drain` and
    /// commits what was delivered.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Result<(), LogError> {
        let partitions = self.log.partitions(&self.input).await?;
        let group = self.group();
        let mut trackers = Vec::new();
        for p in 0..partitions {
            let pos = start_position(self.log.as_ref(), &group, &self.input, p).await?;
            trackers.push(Mutex::new(Tracker {
                outstanding: BTreeSet::new(),
                next: pos,
                committed: pos,
            }));
        }
        let trackers = Arc::new(trackers);
        let (tx, rx) = mpsc::channel::<Item>(self.cfg.batch.max_events * 2);
        let read_stop = shutdown.child_token();
        let mut readers = tokio::task::JoinSet::new();
        for p in 0..partitions {
            let (sink, tx, trackers, stop) = (
                self.clone(),
                tx.clone(),
                trackers.clone(),
                read_stop.clone(),
            );
            readers.spawn(async move { sink.reader(p, tx, trackers, stop).await });
        }
        drop(tx);
        // Deliveries get their own token: they keep retrying through the drain period.
        let deliver_stop = CancellationToken::new();
        let committer = {
            let (sink, trackers, stop) = (self.clone(), trackers.clone(), deliver_stop.clone());
            tokio::spawn(async move { sink.committer(trackers, stop).await })
        };
        let in_flight = self
            .clone()
            .batcher(rx, trackers.clone(), shutdown.clone(), deliver_stop.clone())
            .await;
        // The batcher returns at shutdown; queued events it did not send stay outstanding.
        while readers.join_next().await.is_some() {}
        let deadline = tokio::time::sleep(drain);
        tokio::pin!(deadline);
        let mut in_flight = in_flight;
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
        Ok(())
    }

    async fn reader(
        &self,
        p: u32,
        tx: mpsc::Sender<Item>,
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
            let arrival_us = self.ledger.now_us();
            for r in batch {
                let meta = EventMeta::of(&self.input, p, &r);
                let mut body = Vec::with_capacity(r.record.value.len() + 200);
                write_cloudevent(&mut body, &meta, &r.record.value);
                {
                    let mut t = trackers[p as usize]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    t.outstanding.insert(r.offset);
                    t.next = r.offset + 1;
                }
                pos = r.offset + 1;
                let item = Item {
                    partition: p,
                    offset: r.offset,
                    id: meta.id,
                    origin: meta.origin,
                    event_time_ms: meta.time_ms,
                    arrival_us,
                    body,
                };
                // Backpressure: waits while the batcher and deliveries are full. An item
                // abandoned here stays outstanding, so its offset is never committed.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    sent = tx.send(item) => if sent.is_err() { return },
                }
            }
        }
    }

    /// Groups queued events into batches and starts deliveries; returns the deliveries
    /// still in flight once the queue is closed and empty.
    async fn batcher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Item>,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) -> tokio::task::JoinSet<()> {
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut in_flight = tokio::task::JoinSet::new();
        let max_events = self.cfg.batch.max_events;
        let max_bytes = self.cfg.batch.max_bytes.0 as usize;
        let mut pending: Option<Item> = None;
        loop {
            let first = match pending.take() {
                Some(i) => i,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return in_flight,
                    next = rx.recv() => match next {
                        Some(i) => i,
                        None => return in_flight,
                    },
                },
            };
            // Batch while busy: with a free request slot, send what is queued at once;
            // with every slot busy, keep filling for up to `max_wait`.
            let deadline = tokio::time::Instant::now() + self.cfg.batch.max_wait.0;
            let mut bytes = first.body.len() + 2;
            let mut batch = vec![first];
            while batch.len() < max_events {
                let next = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) if permits.available_permits() > 0 => {
                        None
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let Some(item) = next else { break };
                if bytes + item.body.len() + 1 > max_bytes {
                    pending = Some(item);
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
                if sink.deliver(&batch, &stop).await {
                    for item in &batch {
                        let mut t = trackers[item.partition as usize]
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        t.outstanding.remove(&item.offset);
                    }
                }
                drop(permit);
            });
            while in_flight.try_join_next().is_some() {}
        }
    }

    /// Sends one batch until the destination accepts it (true) or shutdown (false).
    async fn deliver(&self, batch: &[Item], stop: &CancellationToken) -> bool {
        let mut body =
            Vec::with_capacity(batch.iter().map(|i| i.body.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        let mut key = xxhash_rust::xxh3::Xxh3::new();
        for (i, item) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&item.body);
            key.update(item.id.as_bytes());
            key.update(&[0]);
        }
        body.push(b']');
        let idempotency_key = format!("{:032x}", key.digest128());
        let body = bytes::Bytes::from(body);
        let mut attempt = 0u32;
        let started = Instant::now();
        loop {
            let mut req = self
                .client
                .post(&self.cfg.url)
                .header("content-type", "application/cloudevents-batch+json")
                .header("idempotency-key", &idempotency_key)
                .body(body.clone());
            for (k, v) in &self.cfg.headers {
                req = req.header(k, v);
            }
            let failure = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let departure_us = self.ledger.now_us();
                    for item in batch {
                        self.ledger
                            .outcome(Outcome::Delivered, &item.origin, item.event_time_ms);
                        self.ledger
                            .lag(item.event_time_ms, item.arrival_us, departure_us);
                    }
                    self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .delivered_events_total
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if attempt > 0 {
                        self.stats
                            .retrying_events
                            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
                        info!(sink = %self.name, events = batch.len(), attempts = attempt + 1,
                            waited_ms = started.elapsed().as_millis() as u64, "delivered after retries");
                    }
                    return true;
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => format!("{e}"),
            };
            if attempt == 0 {
                self.stats
                    .retrying_events
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            self.stats
                .failed_requests_total
                .fetch_add(1, Ordering::Relaxed);
            let backoff = self.backoff(attempt);
            if attempt < 3 || attempt.is_multiple_of(20) {
                warn!(sink = %self.name, events = batch.len(), attempt = attempt + 1, error = %failure,
                    retry_in_ms = backoff.as_millis() as u64, "delivery failed; retrying");
            }
            attempt = attempt.saturating_add(1);
            if !sleep_or_cancel(stop, backoff).await {
                self.stats
                    .retrying_events
                    .fetch_sub(batch.len() as u64, Ordering::Relaxed);
                return false;
            }
        }
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, min·2^attempt)].
    fn backoff(&self, attempt: u32) -> Duration {
        let (min, max) = (self.cfg.retry.backoff_min.0, self.cfg.retry.backoff_max.0);
        let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }

    async fn committer(&self, trackers: Arc<Vec<Mutex<Tracker>>>, stop: CancellationToken) {
        while sleep_or_cancel(&stop, Duration::from_millis(100)).await {
            self.commit_positions(&trackers).await;
        }
    }

    async fn commit_positions(&self, trackers: &[Mutex<Tracker>]) {
        // Positions are read before the flush: every event below them has its outcome
        // recorded already, and the flush makes those records durable first.
        let positions: Vec<(u64, u64)> = trackers
            .iter()
            .map(|t| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                (t.position(), t.committed)
            })
            .collect();
        if let Err(e) = self.ledger.flush().await {
            error!(sink = %self.name, %e, "cannot record outcomes in the ledger; not committing this round");
            return;
        }
        let group = self.group();
        for (p, (t, (pos, committed))) in trackers.iter().zip(positions).enumerate() {
            if pos != committed {
                match self.log.commit(&group, &self.input, p as u32, pos).await {
                    Ok(()) => t.lock().unwrap_or_else(|e| e.into_inner()).committed = pos,
                    Err(e) => {
                        error!(sink = %self.name, partition = p, %e, "cannot commit position")
                    }
                }
            }
        }
    }
}
