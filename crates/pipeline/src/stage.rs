//! The stage node: topic → transforms → topic, one worker per input partition.
//!
//! A worker reads a batch from its committed position, transforms each event, appends
//! the kept ones to the output topic (input partition `p` goes to output partition
//! `p % output partitions`, keeping per-partition order) and only then commits the input
//! position: a crash between the append and the commit re-processes the batch
//! (at-least-once, duplicates carry the same origin and id), never skips it.
//!
//! Output records keep every header and gain `hifi-origin` when they come from the first
//! durable topic, so the origin travels with the event through every stage.
//!
//! # Dead letters
//! An event the stage cannot handle is never passed on unchanged and never dropped: a
//! value that is not readable JSON (its filters and redactions cannot apply), or one its
//! transforms grew past `record_bytes_max`, goes — as it was read, with the reason in
//! `hifi-dlq-reason` — to the stage's dead-letter topic `__dlq.<stage>` (outcome
//! `dead_lettered`), in the same cycle as the output append and before the input
//! position moves. `hifi dlq list|show|redrive <stage>` work as for a sink; a re-drive
//! appends the letters to `__redrive.<stage>`, which the stage reads like its input (the
//! events go through the transforms again: redactions are never skipped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hifi_ledger::{NodeLedger, Origin, Outcome};
use hifi_log::{Log, LogError, ReadLimits, Record, StoredRecord};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::consumer::{retry_until_ok, sleep_or_cancel, Cursor};
use crate::event::{header, EventMeta};
use crate::retry::retry_header::DLQ_REASON;
use crate::transform::{Applied, Transforms};

/// Counters of one stage.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Events read.
    pub read_events_total: AtomicU64,
    /// Events written to the output topic (outcome `passed`).
    pub passed_events_total: AtomicU64,
    /// Events dropped on purpose by a filter (outcome `filtered`).
    pub filtered_events_total: AtomicU64,
    /// Transforms that could not apply (the event passed unchanged).
    pub transform_errors_total: AtomicU64,
    /// Events a transform grew past `record_bytes_max` (dead-lettered).
    pub oversize_events_total: AtomicU64,
    /// Events dead-lettered (unreadable or oversize).
    pub dead_lettered_events_total: AtomicU64,
    /// Its readers' time waiting for input (the busy ratio of `/v1/scale`).
    pub busy: crate::scale::Busy,
}

/// A running stage's settings.
#[derive(Debug)]
pub struct Stage {
    /// Node name.
    pub name: String,
    /// Topic read.
    pub input: String,
    /// Topic written.
    pub output: String,
    /// Compiled transforms.
    pub transforms: Arc<Transforms>,
    /// The SQL query run instead of transforms (`sql = "…"`).
    pub query: Option<Arc<crate::sql::RowQuery>>,
    /// A window stage's settings and query (`window = { … }` with `sql`).
    pub window: Option<Arc<crate::window::WindowRun>>,
    /// Records per batch.
    pub batch_max_events: usize,
    /// Largest record the engine takes (bytes of key, value and headers).
    pub record_bytes_max: usize,
    /// The engine.
    pub log: Arc<dyn Log>,
    /// Counters.
    pub stats: Arc<StageStats>,
    /// Outcomes and lag.
    pub ledger: NodeLedger,
    /// The consumer group holding its input positions (`stage.NAME`, or a version's).
    pub group: String,
    /// The stage this runs a candidate version of (`candidate_of`): a window stage's
    /// results carry that name in their ids, the same in every version.
    pub candidate_of: Option<String>,
    /// Input records to pass over (after a publish of the stage's input; see
    /// [`crate::versions`]).
    pub skip: Option<Arc<crate::versions::Cut>>,
    /// Most input events per second (a candidate version's backfill:
    /// `versions.backfill_max_rate`, `versions.live_e2e_p95_max`).
    pub rate: Option<Arc<std::sync::Mutex<crate::delivery::RateLimit>>>,
    /// Test builds only: ids dropped without an outcome (simulated bug).
    #[cfg(feature = "test-hooks")]
    pub test_drop_ids: Option<regex::Regex>,
    /// Test builds only: ids that make the stage panic (simulated bug).
    #[cfg(feature = "test-hooks")]
    pub test_panic_ids: Option<regex::Regex>,
}

/// Topic a stage's dead letters are re-driven into (read by the stage like its input).
pub fn redrive_topic(stage: &str) -> String {
    format!("__redrive.{stage}")
}

/// What one batch became: records for the output topic, dead letters, and each input
/// event's fate.
#[derive(Default)]
struct Transformed {
    out: Vec<Record>,
    dead: Vec<Record>,
    fates: Vec<Fate>,
}

/// What happened to one input event, recorded once the output is durable.
struct Fate {
    origin: Origin,
    event_time_ms: i64,
    outcome: Outcome,
}

impl Stage {
    /// The consumer group holding this stage's input positions.
    pub fn group(&self) -> String {
        self.group.clone()
    }

    /// Creates the stage's dead-letter, re-drive bookkeeping and re-drive topics.
    pub async fn prepare(&self) -> Result<(), LogError> {
        crate::retry::ensure_topics(self.log.as_ref(), &self.name, 0, Duration::ZERO).await?;
        self.log
            .ensure_topic(&hifi_log::TopicSpec::new(redrive_topic(&self.name), 1))
            .await?;
        if self.window.is_some() {
            self.log
                .ensure_topic(&crate::window::checkpoint_spec(&self.name))
                .await?;
        }
        Ok(())
    }

    /// Runs one worker per input partition this process owns, and one for the re-drive
    /// topic, until `shutdown`; each finishes its batch.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), LogError> {
        if let Some(w) = &self.window {
            // One task reads every input partition: a window covers them all.
            return crate::window::run(&self, w, shutdown).await;
        }
        // Its topics exist (prepare); the engine may be away for a while now (a Kafka
        // cluster restarting): wait for it instead of stopping the stage.
        let count = || self.log.partitions(&self.output);
        let Some(out_partitions) =
            retry_until_ok(&shutdown, &self.name, "read the output's partitions", count).await
        else {
            return Ok(());
        };
        let group = self.group();
        let redrive = redrive_topic(&self.name);
        let owned = |topic: String| {
            let (stage, group, shutdown) = (self.clone(), group.clone(), shutdown.clone());
            async move {
                crate::owned::run_owned(
                    stage.log.as_ref(),
                    &stage.name,
                    &group,
                    &topic,
                    &shutdown,
                    |p, stop| {
                        let (stage, topic) = (stage.clone(), topic.clone());
                        async move {
                            if let Err(e) = stage.worker(&topic, p, p % out_partitions, stop).await
                            {
                                error!(stage = %stage.name, %e, "stage worker stopped");
                            }
                        }
                    },
                )
                .await // each worker committed its last batch; the group is left here
            }
        };
        tokio::join!(owned(self.input.clone()), owned(redrive));
        Ok(())
    }

    async fn worker(
        &self,
        input: &str,
        p: u32,
        out_p: u32,
        shutdown: CancellationToken,
    ) -> Result<(), LogError> {
        let group = self.group();
        let limits = ReadLimits {
            max_records: self.batch_max_events,
            max_bytes: 4 << 20,
            wait: Duration::from_millis(500),
        };
        let log = self.log.as_ref();
        let Some(input_at) =
            Cursor::open(log, &self.name, &group, input, p, limits, &shutdown).await
        else {
            return Ok(());
        };
        // The re-drive topic's worker is not counted: it waits nearly always.
        let mut input_at = if input == self.input {
            input_at.measured(&self.stats.busy)
        } else {
            input_at
        };
        let cel_root = cel_interpreter::Context::default();
        while let Some(mut batch) = input_at.next(&shutdown).await {
            let last = batch.last().map_or(input_at.position(), |r| r.offset);
            if let Some(rate) = self.rate.as_ref().filter(|_| input == self.input) {
                if !crate::delivery::pace(rate, batch.len() as u64, &shutdown).await {
                    return Ok(()); // not processed, not committed
                }
            }
            if let Some(cut) = self.skip.as_ref().filter(|_| input == self.input) {
                batch.retain(|r| {
                    let meta = EventMeta::of(input, p, r);
                    !cut.passes_over(&meta.origin, meta.time_ms, &r.record)
                });
                if batch.is_empty() {
                    input_at.seek(last + 1);
                    if !input_at.commit(&group, &self.ledger, &shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            let arrival_us = self.ledger.now_us();
            let span = tracing::info_span!(target: crate::otel::TARGET, "stage",
                stage = %self.name, partition = p, events = batch.len());
            if !span.is_disabled() {
                let traces: Vec<_> = batch
                    .iter()
                    .filter_map(|r| crate::event::EventMeta::of(input, p, r).trace)
                    .collect();
                crate::otel::link(&span, traces.iter());
            }
            let by_query = match &self.query {
                Some(q) => {
                    let values: Vec<&[u8]> = batch.iter().map(|r| &r.record.value[..]).collect();
                    let run = crate::sql::run(q, &values);
                    Some(tracing::Instrument::instrument(run, span.clone()).await)
                }
                None => None,
            };
            let Transformed {
                out,
                dead,
                mut fates,
            } = span.in_scope(|| self.transform_batch(input, p, batch, by_query, &cel_root));
            if !out.is_empty() {
                let append = self.append_until_done(out_p, out, &shutdown);
                let Some(dropped) = tracing::Instrument::instrument(append, span.clone()).await
                else {
                    break; // shut down before the output was durable: do not commit
                };
                if !dropped.is_empty() {
                    fates.retain(|f| {
                        !(f.outcome == Outcome::Passed && dropped.contains(&f.origin.to_string()))
                    });
                }
            }
            if !dead.is_empty() {
                let topic = crate::retry::dlq_topic(&self.name);
                let dlq = || self.log.append(&topic, 0, dead.clone());
                if retry_until_ok(&shutdown, &self.name, "store dead letters", dlq)
                    .await
                    .is_none()
                {
                    break; // not durable: do not commit
                }
            }
            let departure_us = self.ledger.now_us();
            self.ledger.outcomes(
                fates
                    .iter()
                    .map(|f| (f.outcome, f.origin.as_ref(), f.event_time_ms)),
            );
            self.ledger.lags(
                fates.iter().map(|f| (f.event_time_ms, arrival_us)),
                departure_us,
            );
            // The output is durable already: retry only what failed, never the batch.
            input_at.seek(last + 1);
            if !input_at.commit(&group, &self.ledger, &shutdown).await {
                return Ok(());
            }
        }
        Ok(())
    }

    fn transform_batch(
        &self,
        input: &str,
        p: u32,
        batch: Vec<StoredRecord>,
        by_query: Option<Vec<Applied>>,
        cel_root: &cel_interpreter::Context<'_>,
    ) -> Transformed {
        let mut t = Transformed {
            out: Vec::with_capacity(batch.len()),
            fates: Vec::with_capacity(batch.len()),
            dead: Vec::new(),
        };
        let mut errors = Vec::new();
        self.stats
            .read_events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let now_ms = crate::now_ms();
        let mut by_query = by_query.map(Vec::into_iter);
        for r in batch {
            let applied = match by_query.as_mut() {
                Some(results) => results.next().expect("one query result per event"),
                None => self
                    .transforms
                    .apply(cel_root, &r.record.value, &mut errors),
            };
            let meta = EventMeta::of(input, p, &r);
            let origin_missing = r.record.header(header::ORIGIN).is_none();
            let mut rec = r.record;
            #[cfg(feature = "test-hooks")]
            if self
                .test_drop_ids
                .as_ref()
                .is_some_and(|re| re.is_match(&meta.id))
            {
                continue; // simulated bug: no output, no outcome
            }
            #[cfg(feature = "test-hooks")]
            if self
                .test_panic_ids
                .as_ref()
                .is_some_and(|re| re.is_match(&meta.id))
            {
                panic!("test hook: event {} makes this stage panic", meta.id);
            }
            let fate = |outcome| Fate {
                origin: meta.origin.clone(),
                event_time_ms: meta.time_ms,
                outcome,
            };
            let mut dead_letter = |rec: &Record, class: &str, why: String| {
                warn!(stage = %self.name, id = %meta.id, origin = %meta.origin, reason = %why,
                    "event dead-lettered at this stage");
                t.dead.push(dead_letter(
                    rec,
                    &meta.origin.to_string(),
                    class,
                    why,
                    now_ms,
                ));
                t.fates.push(fate(Outcome::DeadLettered));
            };
            match applied {
                Applied::Filtered => {
                    self.stats
                        .filtered_events_total
                        .fetch_add(1, Ordering::Relaxed);
                    t.fates.push(fate(Outcome::Filtered));
                    continue;
                }
                Applied::Unreadable(why) => {
                    dead_letter(&rec, "unreadable", why);
                    continue;
                }
                Applied::Refused(why) => {
                    dead_letter(&rec, "sql", why);
                    continue;
                }
                Applied::Keep(value) => {
                    let original = std::mem::replace(&mut rec.value, value);
                    if rec.frame_bytes() > self.record_bytes_max {
                        let why = format!(
                            "the transforms grew the event to {} bytes, over record_bytes_max ({})",
                            rec.frame_bytes(),
                            self.record_bytes_max
                        );
                        rec.value = original; // the letter keeps the event as it was read
                        self.stats
                            .oversize_events_total
                            .fetch_add(1, Ordering::Relaxed);
                        dead_letter(&rec, "oversize", why);
                        continue;
                    }
                }
            }
            // Re-driven letters carry retry/DLQ headers: the output is the event alone. A
            // query's output is a plain JSON object, whatever the input's format.
            let sql = self.query.is_some();
            rec.headers.retain(|h| {
                !h.name.starts_with("hifi-retry-")
                    && h.name != DLQ_REASON
                    && !(sql && h.name == header::FORMAT)
            });
            if sql {
                rec.headers.push(hifi_log::Header {
                    name: header::FORMAT.into(),
                    value: crate::event::EventFormat::Json.as_str().into(),
                });
            }
            t.fates.push(fate(Outcome::Passed));
            if input != self.input && rec.header(header::REDRIVEN).is_none() {
                rec.headers.push(hifi_log::Header {
                    name: header::REDRIVEN.into(),
                    value: "1".into(),
                });
            }
            if origin_missing {
                let value = meta.origin.to_string().into();
                rec.headers.push(hifi_log::Header {
                    name: header::ORIGIN.into(),
                    value,
                });
            }
            t.out.push(rec);
        }
        if !errors.is_empty() {
            self.stats
                .transform_errors_total
                .fetch_add(errors.len() as u64, Ordering::Relaxed);
            warn!(stage = %self.name, count = errors.len(), first = %errors[0],
                "transforms could not apply; events passed unchanged");
        }
        self.stats
            .passed_events_total
            .fetch_add(t.out.len() as u64, Ordering::Relaxed);
        self.stats
            .dead_lettered_events_total
            .fetch_add(t.dead.len() as u64, Ordering::Relaxed);
        t
    }

    /// Appends until durable; retries transient engine errors. Records the engine still
    /// refuses as too large (oversize events are dead-lettered before this; an engine
    /// with a lower limit than configured) are left out, logged and counted; their
    /// origins are returned so that no outcome is recorded for them (the ledger then
    /// shows them lost at this stage). `None` if shut down first.
    async fn append_until_done(
        &self,
        out_p: u32,
        mut records: Vec<Record>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<String>> {
        let mut backoff = Duration::from_millis(100);
        let mut dropped = Vec::new();
        loop {
            if records.is_empty() {
                return Some(dropped);
            }
            match self.log.append(&self.output, out_p, records.clone()).await {
                Ok(_) => return Some(dropped),
                Err(LogError::RecordTooLarge { max, .. }) => {
                    let (fit, too_big): (Vec<Record>, Vec<Record>) =
                        records.into_iter().partition(|r| r.frame_bytes() <= max);
                    for r in &too_big {
                        let origin = r
                            .header(header::ORIGIN)
                            .map(|o| String::from_utf8_lossy(o).into_owned())
                            .unwrap_or_default();
                        let id = r
                            .header(header::ID)
                            .map(|o| String::from_utf8_lossy(o).into_owned())
                            .unwrap_or_default();
                        error!(stage = %self.name, %id, %origin, bytes = r.frame_bytes(), max,
                            "transformed event is larger than record_bytes_max and cannot be written; it is LOST at this stage (the ledger shows it)");
                        dropped.push(origin);
                    }
                    self.stats
                        .oversize_events_total
                        .fetch_add(too_big.len() as u64, Ordering::Relaxed);
                    if too_big.is_empty() {
                        return Some(dropped); // cannot happen: the limit applies per record
                    }
                    records = fit;
                }
                Err(e) => {
                    error!(stage = %self.name, %e, "cannot append output; retrying");
                    if !sleep_or_cancel(shutdown, backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A dead letter of this stage: the event as it was read, with its origin and why.
pub(crate) fn dead_letter(
    rec: &Record,
    origin: &str,
    class: &str,
    why: String,
    now_ms: i64,
) -> Record {
    let at = crate::event::rfc3339_ms(now_ms);
    let reason = crate::retry::DlqReason {
        class: class.into(),
        status: 0,
        body: why,
        attempts: 0,
        first_attempt: at.clone(),
        last_attempt: at,
    };
    let mut letter = crate::retry::annotate(
        rec,
        origin,
        vec![(
            DLQ_REASON,
            serde_json::to_string(&reason).unwrap_or_default(),
        )],
    );
    letter.timestamp_ms = now_ms;
    letter
}
