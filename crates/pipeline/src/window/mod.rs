//! Window stages: a SQL query run once per closed event-time window, over all of that
//! window's events from every input partition (one task reads them all).
//!
//! **Watermark.** Each input partition's watermark is the largest event time read from
//! it; the stage's is the smallest over the partitions that are not idle (a partition
//! that got nothing for `idle_timeout` and whose reader found nothing more to read — the
//! engine's end reached — does not hold windows open; one whose reader is behind, or
//! whose reads fail, before or after reaching its end, does, however long it gives
//! nothing, until it is read to its end again), minus
//! `allowed_lateness`; when every partition is idle it is the wall clock minus
//! `allowed_lateness`. A window `[start, end)` closes when the watermark reaches `end`:
//! its query runs, and each output row becomes an event with the window's end as its
//! event time, `window_start`/`window_end` columns, and an id made of the stage (its
//! name, the same for a candidate version of it), the
//! window's start, the row's key (its group) and the revision — the same each time the
//! same window is computed, so a destination can drop a re-sent row or upsert a revision.
//!
//! **Crash safety without a state store.** The stage commits each input partition only up
//! to the first event of the oldest window not yet emitted: a crash re-reads those events
//! and rebuilds the windows. After each emission it appends a checkpoint to
//! `__window.<stage>` — the boundary below which every window was emitted, and how far
//! each partition was read — so that, after a restart, an event of an emitted window read
//! again is known to be in that window's result already (skipped), while one read for the
//! first time is late. A checkpoint keeps what earlier runs had read (with their
//! boundary) until the stage has read back past it: an event is skipped only if the run
//! that read it had emitted its window.
//!
//! **Late events** (for a window already emitted): `late = "dead-letter"` sends them to
//! `__dlq.<stage>`; `late = "update"` computes the window again with them and emits its
//! rows as the next revision. Emitted windows are kept for updates until the watermark is
//! one window length past their end (and not across a restart: a late event for a window
//! no longer kept is dead-lettered, saying so).
//!
//! **Reading a versioned stage's output.** After a publish of its input, the stage reads
//! the previous version's topic to where it ended (a drain: its open windows held events
//! of it), then the new version's from its oldest record, passing over what the previous
//! one had (the cut). Each topic partition read is a `Place` of its windows; the
//! checkpoint keeps how far each topic was read, and the input's positions stay put
//! until the drain is done (the ledger judges progress by them).
//!
//! **Ledger.** Input events get the outcome `aggregated` when their window is emitted (or
//! `dead_lettered`); output events are new origins (their own place in the output topic),
//! recorded `passed` by the stage, so lag and loss are followed from there to the sinks.

mod windows;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hifi_ledger::{Origin, Outcome};
use hifi_log::{Header, LogError, ReadLimits, Record, StoredRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::LateMode;
use crate::consumer::{retry_until_ok, sleep_or_cancel, Cursor, Polled, Read};
use crate::event::{header, rfc3339_ms, EventFormat, EventMeta};
use crate::sql::WindowEvents;
use crate::sql::WindowQuery;
use crate::stage::Stage;
use windows::{Arriving, Due, Meta, Refused, Timing, Window, Windows};

/// A window stage's settings (`window = { … }` and its compiled query).
#[derive(Debug)]
pub struct WindowRun {
    /// The query run on each window.
    pub query: Arc<WindowQuery>,
    /// Window length.
    pub size_ms: i64,
    /// How far behind the largest event time a window still takes events.
    pub lateness_ms: i64,
    /// What late events become.
    pub late: LateMode,
    /// When a silent partition read to its end stops holding windows open.
    pub idle: Duration,
    /// Most events held in open windows; past it the oldest window closes early.
    pub max_held: usize,
}

/// The topic of a window stage's checkpoints.
pub fn checkpoint_topic(stage: &str) -> String {
    format!("__window.{stage}")
}

/// The checkpoints topic of the window stage running as `stage`: kept (its last record
/// is the stage's state, however long its input is idle; Kafka's default retention
/// would delete it after a week).
pub fn checkpoint_spec(stage: &str) -> hifi_log::TopicSpec {
    hifi_log::TopicSpec {
        retention: Some(hifi_log::Retention {
            age: Some(Duration::from_secs(100 * 365 * 86_400)),
            bytes: None,
            ignore_consumers: false,
        }),
        ..hifi_log::TopicSpec::new(checkpoint_topic(stage), 1)
    }
}

/// What a restart needs to tell emitted events from late ones.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// Every window ending at or before this (epoch ms) was emitted.
    closed_below: i64,
    /// Per input partition: the offset read up to when the checkpoint was written (as
    /// stored: of the input topic; in [`Windows`], of each [`Place`]).
    read_to: Vec<u64>,
    /// The same per topic read (the input, and the topic of a previous version of it
    /// being read to its end). Absent in a checkpoint of an older hifi: `read_to` is
    /// then of the input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    read_to_by_topic: BTreeMap<String, Vec<u64>>,
    /// Earlier runs' checkpoints whose reads a restart has not read back yet: an event
    /// read again below one of them, of a window emitted by then, is in that window's
    /// result already (a restart reads from the committed positions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replays: Vec<Replay>,
}

/// What an earlier run had read and emitted (see [`Checkpoint::replays`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Replay {
    closed_below: i64,
    /// Per place in [`Windows`]; stored per topic.
    #[serde(skip)]
    read_to: Vec<u64>,
    read_to_by_topic: BTreeMap<String, Vec<u64>>,
}

/// Per topic (as stored) → per place: where each was read up to (0 for one not in it).
fn per_place(by: &BTreeMap<String, Vec<u64>>, places: &[Place]) -> Vec<u64> {
    places
        .iter()
        .map(|pl| {
            by.get(&pl.topic)
                .and_then(|v| v.get(pl.partition as usize).copied())
                .unwrap_or(0)
        })
        .collect()
}

/// Per place → per topic (as stored).
fn per_topic(read_to: &[u64], places: &[Place]) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (pl, at) in places.iter().zip(read_to) {
        let v = by.entry(pl.topic.clone()).or_default();
        let p = pl.partition as usize;
        if v.len() <= p {
            v.resize(p + 1, 0);
        }
        v[p] = *at;
    }
    by
}

impl Checkpoint {
    /// As stored → per place. A checkpoint of an older hifi is of the topic read
    /// before any publish of the input (an older hifi did not run a window stage
    /// reading a versioned output): the first place's.
    fn replay(mut self, places: &[Place]) -> Checkpoint {
        if self.read_to_by_topic.is_empty() {
            if let Some(first) = places.first() {
                let read_to = std::mem::take(&mut self.read_to);
                self.read_to_by_topic.insert(first.topic.clone(), read_to);
            }
        }
        self.read_to = per_place(&self.read_to_by_topic, places);
        for r in &mut self.replays {
            r.read_to = per_place(&r.read_to_by_topic, places);
        }
        self
    }

    /// Per place → as stored.
    fn by_topic(mut self, input: &str, places: &[Place]) -> Checkpoint {
        let by = per_topic(&self.read_to, places);
        self.read_to = by.get(input).cloned().unwrap_or_default();
        self.read_to_by_topic = by;
        for r in &mut self.replays {
            r.read_to_by_topic = per_topic(&r.read_to, places);
        }
        self
    }
}

/// One topic partition a window stage reads, its place in the stage's windows: each of
/// its input's, after those of the topic of the version of its input published before
/// (when a publish left it some to read: its open windows held events of it).
#[derive(Debug, Clone)]
struct Place {
    topic: String,
    partition: u32,
    /// Where reading starts (the committed position, else the oldest record).
    start: u64,
    /// Read up to here (a previous version's topic: where that version ended).
    end: Option<u64>,
}

/// The stage's [`Place`]s; `None` if shut down first.
async fn places(
    stage: &Stage,
    group: &str,
    partitions: u32,
    shutdown: &CancellationToken,
) -> Option<Vec<Place>> {
    let log = stage.log.as_ref();
    let mut places = Vec::new();
    if let Some(drain) = stage.skip.as_ref().and_then(|c| c.drain.as_ref()) {
        for (p, &end) in drain.ends.iter().enumerate() {
            let p = p as u32;
            let start = || async move {
                match crate::consumer::start_position(log, group, &drain.topic, p).await {
                    Err(LogError::TopicNotFound { .. }) => Ok(None),
                    other => other.map(Some),
                }
            };
            let what = "read where it is in the previous version of its input";
            match retry_until_ok(shutdown, &stage.name, what, start).await? {
                Some(start) => places.push(Place {
                    topic: drain.topic.clone(),
                    partition: p,
                    start,
                    end: Some(end),
                }),
                None => {
                    error!(stage = %stage.name, topic = %drain.topic,
                        "the previous version of its input was deleted before this stage had read it to its end (hifi versions gc?): the events its open windows held of it are not counted");
                    break;
                }
            }
        }
    }
    for p in 0..partitions {
        let start = || crate::consumer::start_position(log, group, &stage.input, p);
        let start = retry_until_ok(shutdown, &stage.name, "read the start position", start).await?;
        places.push(Place {
            topic: stage.input.clone(),
            partition: p,
            start,
            end: None,
        });
    }
    Some(places)
}

/// Runs a window stage until `shutdown`.
pub(crate) async fn run(
    stage: &Stage,
    w: &WindowRun,
    shutdown: CancellationToken,
) -> Result<(), LogError> {
    let log = stage.log.as_ref();
    let (input, output) = (stage.input.as_str(), stage.output.as_str());
    let name = stage.name.as_str();
    let Some(partitions) = retry_until_ok(&shutdown, name, "read the input's partitions", || {
        log.partitions(input)
    })
    .await
    else {
        return Ok(());
    };
    let Some(out_partitions) =
        retry_until_ok(&shutdown, name, "read the output's partitions", || {
            log.partitions(output)
        })
        .await
    else {
        return Ok(());
    };
    let Some(ck) = read_checkpoint(stage, &shutdown).await else {
        return Ok(());
    };
    let group = stage.group();
    let Some(places) = places(stage, &group, partitions, &shutdown).await else {
        return Ok(());
    };
    let places = &places[..];
    let starts: Vec<u64> = places.iter().map(|pl| pl.start).collect();
    let limits = ReadLimits {
        max_records: stage.batch_max_events,
        max_bytes: 4 << 20,
        wait: Duration::from_millis(500),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u32, Got)>(2 * places.len());
    let readers = futures_util::future::join_all(places.iter().enumerate().map(|(i, pl)| {
        let (tx, shutdown) = (tx.clone(), &shutdown);
        let i = i as u32;
        async move {
            // Nothing more to read there (for now; a drained place's end is for good).
            let done = || async { tx.send((i, Got::AtEnd)).await.is_ok() };
            if pl.end.is_some_and(|end| pl.start >= end) {
                done().await;
                return; // read to its end before
            }
            let cursor = Cursor::at(log, name, &pl.topic, pl.partition, pl.start, limits);
            let mut cursor = cursor.measured(&stage.stats.busy);
            while let Some(polled) = cursor.next_or_at_end(shutdown).await {
                let read = match polled {
                    Polled::Read(read) => read,
                    Polled::AtEnd => {
                        if !done().await {
                            return;
                        }
                        continue;
                    }
                    Polled::Failing => {
                        if tx.send((i, Got::Failing)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let mut batch = match read {
                    Read::Batch(batch) => batch,
                    // Deleted by retention under it (said where): read past them.
                    Read::Skipped { to } => {
                        let to = pl.end.map_or(to, |end| end.min(to));
                        if tx.send((i, Got::Read(Vec::new(), to))).await.is_err() {
                            return;
                        }
                        if pl.end.is_some_and(|end| to >= end) {
                            done().await;
                            return;
                        }
                        continue;
                    }
                };
                // A candidate version's backfill is paced (`versions.backfill_max_rate`).
                if let Some(rate) = &stage.rate {
                    if !crate::delivery::pace(rate, batch.len() as u64, shutdown).await {
                        return;
                    }
                }
                let last = batch.last().map_or(cursor.position(), |r| r.offset);
                cursor.seek(last + 1);
                if let Some(end) = pl.end {
                    batch.retain(|r| r.offset < end);
                } else if let Some(cut) = &stage.skip {
                    // After a publish of its input: what the previous version had comes
                    // from it (above), the rest from the new one — once (a re-delivery
                    // asked for is for sinks).
                    batch.retain(|r| {
                        let meta = EventMeta::of(&pl.topic, pl.partition, r);
                        !cut.passes_over_once(&meta.origin, &r.record, pl.partition, r.offset)
                    });
                }
                let read_to = pl.end.map_or(last + 1, |end| end.min(last + 1));
                if tx.send((i, Got::Read(batch, read_to))).await.is_err() {
                    return;
                }
                if pl.end.is_some_and(|end| last + 1 >= end) {
                    done().await;
                    return;
                }
            }
        }
    }));
    drop(tx);
    let timing = Timing {
        size: w.size_ms,
        lateness: w.lateness_ms,
        idle: w.idle,
        update: w.late == LateMode::Update,
        max_held: w.max_held,
    };
    let ck = ck.map(|ck| ck.replay(places));
    let mut st = Windows::new(timing, starts.clone(), ck, Instant::now());
    let new = || w.query.events();
    let mut committed = starts.clone();
    let windows = async {
        let run = async {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => {
                        let Some((p, got)) = got else { return };
                        let (batch, read_to) = match got {
                            Got::Read(batch, read_to) => (batch, read_to),
                            Got::AtEnd => {
                                st.at_end(p);
                                continue;
                            }
                            Got::Failing => {
                                st.not_at_end(p);
                                continue;
                            }
                        };
                        let refused = if batch.is_empty() {
                            Vec::new()
                        } else {
                            let arriving = arriving(stage, &places[p as usize], p, batch);
                            st.add(p, arriving, Instant::now(), &new)
                        };
                        st.read_past(p, read_to, Instant::now());
                        if !refused.is_empty() && !dead_letter_refused(stage, refused, &shutdown).await {
                            return;
                        }
                    }
                    _ = tick.tick() => {}
                }
                let due = st.due(Instant::now(), crate::now_ms());
                for d in &due {
                    let Some(mut window) = st.take(*d) else {
                        continue;
                    };
                    if !emit(stage, w, places, out_partitions, *d, &mut window, &shutdown).await {
                        return; // shut down before the output was durable: nothing committed
                    }
                    st.emitted(*d, window);
                }
                let mut pos = st.commit_positions();
                hold_input_while_draining(places, &starts, &mut pos);
                if due.is_empty() && pos == committed {
                    continue;
                }
                let ck = st.checkpoint().by_topic(stage.input.as_str(), places);
                if !save_checkpoint(stage, &ck, &shutdown).await {
                    return;
                }
                for (p, at) in pos.iter().enumerate() {
                    if committed[p] == *at {
                        continue;
                    }
                    let pl = &places[p];
                    let commit = || log.commit(&group, &pl.topic, pl.partition, *at);
                    if retry_until_ok(&shutdown, name, "commit the position", commit)
                        .await
                        .is_none()
                    {
                        return;
                    }
                    committed[p] = *at;
                }
            }
        };
        run.await;
        // Readers waiting to hand over a batch give up (they would wait forever).
        rx.close();
    };
    tokio::join!(readers, windows);
    Ok(())
}

/// What a place's reader hands the stage.
enum Got {
    /// Records to hold, and the position after them (records passed over count as
    /// read: the committed position passes them).
    Read(Vec<StoredRecord>, u64),
    /// Nothing more to read there for now: the place may become idle.
    AtEnd,
    /// Its reads fail since it was at its end: it holds windows again (what it has may
    /// belong in them).
    Failing,
}

/// While the stage has events of the previous version of its input still to read or
/// in open windows (a place with an end not reached), its input's positions stay where
/// they were at start: the ledger tells that a node still has events to handle by its
/// input's committed positions, and the previous version's topic is not its input.
fn hold_input_while_draining(places: &[Place], starts: &[u64], pos: &mut [u64]) {
    let draining = places
        .iter()
        .zip(pos.iter())
        .any(|(pl, at)| pl.end.is_some_and(|end| *at < end));
    if !draining {
        return;
    }
    for ((pl, start), at) in places.iter().zip(starts).zip(pos.iter_mut()) {
        if pl.end.is_none() {
            *at = (*at).min(*start);
        }
    }
}

/// A batch's events as read (counted as read), before they are held; `at` is where they
/// were read, its place `i` among the stage's [`Place`]s.
fn arriving(stage: &Stage, at: &Place, i: u32, batch: Vec<StoredRecord>) -> Vec<Arriving> {
    stage
        .stats
        .read_events_total
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let arrival_us = stage.ledger.now_us();
    batch
        .into_iter()
        .map(|r| {
            let meta = EventMeta::of(&at.topic, at.partition, &r);
            // Its own origin is told by the place (see `Meta::origin`).
            let own = meta.origin.partition == at.partition
                && meta.origin.offset == r.offset
                && meta.origin.topic == stage.input
                && at.topic == stage.input
                && at.partition == i;
            Arriving {
                meta: Meta {
                    partition: i,
                    offset: r.offset,
                    time_ms: meta.time_ms,
                    arrival_us,
                    origin: (!own).then(|| Box::new(meta.origin)),
                },
                record: r.record,
            }
        })
        .collect()
}

/// Runs a window's query and makes its output, dead letters and outcomes durable; false
/// if shut down first.
async fn emit(
    stage: &Stage,
    w: &WindowRun,
    places: &[Place],
    out_partitions: u32,
    d: Due,
    window: &mut Window<WindowEvents>,
    shutdown: &CancellationToken,
) -> bool {
    let (start, end) = (d.start, d.start + w.size_ms);
    let result = w.query.run_held(&mut window.events).await;
    let events = &window.meta;
    let input = stage.input.as_str();
    let now_ms = crate::now_ms();
    let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    let rows = result.rows.len() as u64;
    // Every version of the stage gives a window's row the same id (a destination
    // upserts a corrected result over the one before).
    let named = stage.candidate_of.as_deref().unwrap_or(&stage.name);
    for row in result.rows {
        let mut value = row.value;
        value.insert(
            hifi_sql::output::WINDOW_START.into(),
            rfc3339_ms(start).into(),
        );
        value.insert(hifi_sql::output::WINDOW_END.into(), rfc3339_ms(end).into());
        let stem = xxhash_rust::xxh3::xxh3_64(format!("{named}\n{start}\n{}", row.key).as_bytes());
        let id = format!("{named}-{start}-{stem:016x}-r{}", d.revision);
        let value = serde_json::to_vec(&serde_json::Value::Object(value)).unwrap_or_default();
        let h = |name: &'static str, value: String| Header {
            name: name.into(),
            value: value.into(),
        };
        let record = Record {
            key: None,
            value: value.into(),
            headers: vec![
                h(header::ID, id),
                h(header::TIME, end.to_string()),
                h(header::FORMAT, EventFormat::Json.as_str().to_owned()),
            ],
            timestamp_ms: now_ms,
        };
        let p = (stem % u64::from(out_partitions.max(1))) as u32;
        by_partition.entry(p).or_default().push(record);
    }
    let mut passed = Vec::new();
    for (p, records) in by_partition {
        let Some(offsets) = append_until_done(stage, p, records, shutdown).await else {
            return false;
        };
        passed.extend(offsets.into_iter().map(|offset| Origin {
            topic: stage.output.clone(),
            partition: p,
            offset,
        }));
    }
    let refused: BTreeMap<usize, String> = result.refused.into_iter().collect();
    let mut dead: Vec<Record> = Vec::with_capacity(refused.len());
    for (i, why) in &refused {
        let Some(e) = events.get(*i) else {
            error!(stage = %stage.name, place = i, held = events.len(),
                "a refused window event has no bookkeeping; it cannot be dead-lettered");
            continue;
        };
        let origin = e.origin(input).to_string();
        warn!(stage = %stage.name, %origin, reason = %why,
            "event dead-lettered at this window stage");
        let Some(record) = read_back(stage, &places[e.partition as usize], e, shutdown).await
        else {
            return false;
        };
        dead.push(crate::stage::dead_letter(
            &record,
            &origin,
            "sql",
            why.clone(),
            now_ms,
        ));
    }
    if !dead.is_empty() && !store_dead_letters(stage, dead, shutdown).await {
        return false;
    }
    let departure_us = stage.ledger.now_us();
    let inputs = events.iter().enumerate().map(|(i, e)| {
        let o = if refused.contains_key(&i) {
            Outcome::DeadLettered
        } else {
            Outcome::Aggregated
        };
        (o, e.origin(input), e.time_ms)
    });
    let outputs = passed.iter().map(|o| (Outcome::Passed, o.as_ref(), end));
    stage.ledger.outcomes(inputs.chain(outputs));
    stage.ledger.lags(
        events.iter().map(|e| (e.time_ms, e.arrival_us)),
        departure_us,
    );
    let flush = || stage.ledger.flush();
    if retry_until_ok(
        shutdown,
        &stage.name,
        "record outcomes in the ledger",
        flush,
    )
    .await
    .is_none()
    {
        return false;
    }
    // The window no longer holds the refused events (kept for an update, it runs without):
    // the query's side dropped the same places.
    let mut i = 0;
    window.meta.retain(|_| {
        i += 1;
        !refused.contains_key(&(i - 1))
    });
    if window.meta.len() != window.events.len() {
        error!(stage = %stage.name, meta = window.meta.len(), rows = window.events.len(),
            "a window's events and their bookkeeping disagree; it is not kept for updates");
        window.meta.clear();
        window.events = w.query.events();
    }
    let s = &stage.stats;
    s.passed_events_total.fetch_add(rows, Ordering::Relaxed);
    s.dead_lettered_events_total
        .fetch_add(refused.len() as u64, Ordering::Relaxed);
    true
}

/// Events not held (late, or not of the input schema) into the dead letters, their
/// outcomes durable; false if shut down first.
async fn dead_letter_refused(
    stage: &Stage,
    refused: Vec<Refused>,
    shutdown: &CancellationToken,
) -> bool {
    let now_ms = crate::now_ms();
    let input = stage.input.as_str();
    warn!(stage = %stage.name, count = refused.len(), first = %refused[0].why,
        "events dead-lettered at this window stage");
    let dead = refused
        .iter()
        .map(|r| {
            let origin = r.event.meta.origin(input).to_string();
            crate::stage::dead_letter(&r.event.record, &origin, r.class, r.why.clone(), now_ms)
        })
        .collect();
    if !store_dead_letters(stage, dead, shutdown).await {
        return false;
    }
    stage.ledger.outcomes(refused.iter().map(|r| {
        let m = &r.event.meta;
        (Outcome::DeadLettered, m.origin(input), m.time_ms)
    }));
    stage
        .stats
        .dead_lettered_events_total
        .fetch_add(refused.len() as u64, Ordering::Relaxed);
    let flush = || stage.ledger.flush();
    retry_until_ok(
        shutdown,
        &stage.name,
        "record outcomes in the ledger",
        flush,
    )
    .await
    .is_some()
}

/// A held event's stored record, read back from the input for its dead letter (a window
/// holds only its values; the input is not committed past it, so it is still there). If
/// it cannot be read, the dead letter says so in place of the event. `None` if shut down
/// first.
async fn read_back(
    stage: &Stage,
    at: &Place,
    e: &Meta,
    shutdown: &CancellationToken,
) -> Option<Record> {
    let limits = ReadLimits {
        max_records: 1,
        max_bytes: 64 << 20,
        wait: Duration::ZERO,
    };
    let (log, input) = (stage.log.as_ref(), at.topic.as_str());
    // Deleted by retention: not there (any other error is retried).
    let read = || async move {
        match log.read(input, at.partition, e.offset, limits).await {
            Err(LogError::OffsetOutOfRange { .. }) => Ok(Vec::new()),
            other => other,
        }
    };
    let got = retry_until_ok(shutdown, &stage.name, "read back a refused event", read).await?;
    Some(match got.into_iter().find(|r| r.offset == e.offset) {
        Some(r) => r.record,
        None => {
            error!(stage = %stage.name, topic = input, partition = at.partition, offset = e.offset,
                "a refused window event is no longer in the input (removed by retention?); its dead letter holds no event");
            Record::new(
                format!(
                    "(the event at {}/{}/{} was no longer in the input when it was dead-lettered)",
                    input, at.partition, e.offset
                ),
                e.time_ms,
            )
        }
    })
}

async fn store_dead_letters(
    stage: &Stage,
    dead: Vec<Record>,
    shutdown: &CancellationToken,
) -> bool {
    let topic = crate::retry::dlq_topic(&stage.name);
    let dlq = || stage.log.append(&topic, 0, dead.clone());
    retry_until_ok(shutdown, &stage.name, "store dead letters", dlq)
        .await
        .is_some()
}

/// Appends until durable (transient errors retried); a record the engine refuses as too
/// large is left out and logged (its window's row is lost, and the ledger shows it as
/// never passed). `None` if shut down first.
async fn append_until_done(
    stage: &Stage,
    p: u32,
    mut records: Vec<Record>,
    shutdown: &CancellationToken,
) -> Option<Vec<u64>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match stage.log.append(&stage.output, p, records.clone()).await {
            Ok(offsets) => return Some(offsets),
            Err(LogError::RecordTooLarge { max, .. }) => {
                let before = records.len();
                records.retain(|r| r.frame_bytes() <= max);
                error!(stage = %stage.name, dropped = before - records.len(), max,
                    "window rows larger than record_bytes_max cannot be written; they are LOST");
                if records.is_empty() || records.len() == before {
                    return Some(Vec::new());
                }
            }
            Err(e) => {
                error!(stage = %stage.name, %e, "cannot append window rows; retrying");
                if !sleep_or_cancel(shutdown, backoff).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The last checkpoint, if any; `None` only if shut down first.
async fn read_checkpoint(
    stage: &Stage,
    shutdown: &CancellationToken,
) -> Option<Option<Checkpoint>> {
    let read = || last_checkpoint(stage.log.as_ref(), &stage.name);
    let value = retry_until_ok(shutdown, &stage.name, "read its checkpoint", read).await?;
    Some(value.and_then(|v| match serde_json::from_slice(&v) {
        Ok(ck) => Some(ck),
        Err(e) => {
            error!(stage = %stage.name, %e, "its last checkpoint cannot be read; starting without (events of windows emitted before may be emitted again, with the same ids)");
            None
        }
    }))
}

/// The last checkpoint the window stage running as `stage` wrote, as stored; `None`
/// before its first (or when its checkpoints topic does not exist).
async fn last_checkpoint(
    log: &dyn hifi_log::Log,
    stage: &str,
) -> Result<Option<bytes::Bytes>, LogError> {
    let topic = checkpoint_topic(stage);
    let (start, end) = match log.offsets(&topic, 0).await {
        Ok(o) => (o.start, o.end),
        Err(LogError::TopicNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if start >= end {
        return Ok(None); // none yet, or removed by retention
    }
    let limits = ReadLimits {
        max_records: 1,
        max_bytes: 1 << 20,
        wait: Duration::ZERO,
    };
    let recs = log.read(&topic, 0, end - 1, limits).await?;
    Ok(recs.into_iter().last().map(|r| r.record.value))
}

/// Up to where the window stage running as `stage` has emitted: every window ending at
/// or before this time (epoch ms) was, by its last checkpoint; `None` before its first.
pub async fn emitted_below(log: &dyn hifi_log::Log, stage: &str) -> Result<Option<i64>, LogError> {
    let Some(value) = last_checkpoint(log, stage).await? else {
        return Ok(None);
    };
    serde_json::from_slice::<Checkpoint>(&value)
        .map(|ck| Some(ck.closed_below))
        .map_err(|e| {
            LogError::Invalid(format!(
                "the last checkpoint of {stage} cannot be read: {e}"
            ))
        })
}

/// Makes the window stage running as `stage` start without window state: an empty
/// checkpoint (the last one counts).
pub async fn reset_checkpoint(log: &dyn hifi_log::Log, stage: &str) -> Result<(), LogError> {
    let topic = checkpoint_topic(stage);
    log.ensure_topic(&checkpoint_spec(stage)).await?;
    let value = serde_json::to_vec(&Checkpoint::default()).unwrap_or_default();
    log.append(&topic, 0, vec![Record::new(value, crate::now_ms())])
        .await?;
    Ok(())
}

async fn save_checkpoint(stage: &Stage, ck: &Checkpoint, shutdown: &CancellationToken) -> bool {
    let topic = checkpoint_topic(&stage.name);
    let value = serde_json::to_vec(ck).unwrap_or_default();
    let record = Record::new(value, crate::now_ms());
    let append = || stage.log.append(&topic, 0, vec![record.clone()]);
    retry_until_ok(shutdown, &stage.name, "write its checkpoint", append)
        .await
        .is_some()
}
