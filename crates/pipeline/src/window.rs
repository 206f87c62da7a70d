//! Window stages: a SQL query run once per closed event-time window, over all of that
//! window's events from every input partition (one task reads them all).
//!
//! **Watermark.** Each input partition's watermark is the largest event time read from
//! it; the stage's is the smallest over the partitions that are not idle (a partition
//! that got nothing for `idle_timeout` does not hold windows open), minus
//! `allowed_lateness`; when every partition is idle it is the wall clock minus
//! `allowed_lateness`. A window `[start, end)` closes when the watermark reaches `end`:
//! its query runs, and each output row becomes an event with the window's end as its
//! event time, `window_start`/`window_end` columns, and an id made of the stage, the
//! window's start, the row's key (its group) and the revision — the same each time the
//! same window is computed, so a destination can drop a re-sent row or upsert a revision.
//!
//! **Crash safety without a state store.** The stage commits each input partition only up
//! to the first event of the oldest window not yet emitted: a crash re-reads those events
//! and rebuilds the windows. After each emission it appends a checkpoint to
//! `__window.<stage>` — the boundary below which every window was emitted, and how far
//! each partition was read — so that, after a restart, an event of an emitted window read
//! again is known to be in that window's result already (skipped), while one read for the
//! first time is late.
//!
//! **Late events** (for a window already emitted): `late = "dead-letter"` sends them to
//! `__dlq.<stage>`; `late = "update"` computes the window again with them and emits its
//! rows as the next revision. Emitted windows are kept for updates until the watermark is
//! one window length past their end (and not across a restart: a late event for a window
//! no longer kept is dead-lettered, saying so).
//!
//! **Ledger.** Input events get the outcome `aggregated` when their window is emitted (or
//! `dead_lettered`); output events are new origins (their own place in the output topic),
//! recorded `passed` by the stage, so lag and loss are followed from there to the sinks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hifi_ledger::{Origin, Outcome};
use hifi_log::{Header, LogError, ReadLimits, Record, StoredRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::LateMode;
use crate::consumer::{retry_until_ok, sleep_or_cancel, Cursor};
use crate::event::{header, rfc3339_ms, EventFormat, EventMeta};
use crate::sql::WindowQuery;
use crate::stage::Stage;

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
    /// When a silent partition stops holding windows open.
    pub idle: Duration,
    /// Most events held in open windows; past it the oldest window closes early.
    pub max_held: usize,
}

/// The topic of a window stage's checkpoints.
pub fn checkpoint_topic(stage: &str) -> String {
    format!("__window.{stage}")
}

/// What a restart needs to tell emitted events from late ones.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// Every window ending at or before this (epoch ms) was emitted.
    closed_below: i64,
    /// Per input partition: the offset read up to when the checkpoint was written.
    read_to: Vec<u64>,
}

/// An input event held in a window.
#[derive(Debug, Clone)]
struct Held {
    partition: u32,
    offset: u64,
    time_ms: i64,
    origin: Origin,
    arrival_us: i64,
    record: Record,
}

/// The windows of one stage and what it knows of its input's progress.
#[derive(Debug)]
struct Windows {
    size: i64,
    lateness: i64,
    idle: Duration,
    /// Windows not emitted yet, by start.
    open: BTreeMap<i64, Vec<Held>>,
    /// Emitted windows kept for late updates: start → events and last revision.
    kept: BTreeMap<i64, (Vec<Held>, u32)>,
    /// Kept windows that got late events.
    dirty: BTreeSet<i64>,
    closed_below: i64,
    max_time: Vec<Option<i64>>,
    last_data: Vec<Instant>,
    read_to: Vec<u64>,
    /// From the checkpoint: events below these offsets were handled before a restart.
    replay_to: Vec<u64>,
    update: bool,
    /// Most events held in open windows, and how many are.
    max_held: usize,
    held: usize,
}

/// What to emit: a window's start and its revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    start: i64,
    revision: u32,
}

impl Windows {
    /// `starts`: where each input partition is read from (its committed position).
    fn new(w: &WindowRun, starts: Vec<u64>, ck: Option<Checkpoint>, now: Instant) -> Windows {
        let update = w.late == LateMode::Update;
        Windows::with(
            w.size_ms,
            w.lateness_ms,
            w.idle,
            update,
            w.max_held,
            starts,
            ck,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with(
        size: i64,
        lateness: i64,
        idle: Duration,
        update: bool,
        max_held: usize,
        starts: Vec<u64>,
        ck: Option<Checkpoint>,
        now: Instant,
    ) -> Windows {
        let n = starts.len();
        let ck = ck.unwrap_or_default();
        let mut replay_to = ck.read_to;
        replay_to.resize(n, 0);
        Windows {
            size,
            lateness,
            idle,
            max_held,
            held: 0,
            open: BTreeMap::new(),
            kept: BTreeMap::new(),
            dirty: BTreeSet::new(),
            closed_below: ck.closed_below,
            max_time: vec![None; n],
            last_data: vec![now; n],
            read_to: starts,
            replay_to,
            update,
        }
    }

    fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.size) * self.size
    }

    /// Places a batch's events in their windows; returns the late ones that are not taken
    /// (for the dead letters, with the reason).
    fn add(&mut self, p: u32, events: Vec<Held>, now: Instant) -> Vec<(Held, String)> {
        let i = p as usize;
        let mut late = Vec::new();
        self.last_data[i] = now;
        for e in events {
            self.read_to[i] = self.read_to[i].max(e.offset + 1);
            self.max_time[i] = Some(self.max_time[i].map_or(e.time_ms, |m| m.max(e.time_ms)));
            let start = self.start_of(e.time_ms);
            if start + self.size > self.closed_below {
                self.open.entry(start).or_default().push(e);
                self.held += 1;
                continue;
            }
            if e.offset < self.replay_to[i] {
                continue; // in that window's result already (read before a restart)
            }
            if let Some((held, _)) = self.kept.get_mut(&start) {
                held.push(e);
                self.dirty.insert(start);
                continue;
            }
            let why = format!(
                "late: its window [{}, {}) was emitted when the watermark passed its end{}",
                rfc3339_ms(start),
                rfc3339_ms(start + self.size),
                if self.update {
                    " and is no longer kept for updates"
                } else {
                    " (window.late = \"dead-letter\")"
                }
            );
            late.push((e, why));
        }
        late
    }

    /// The stage's watermark: `None` while a partition that is not idle has given
    /// nothing yet.
    fn watermark(&self, now: Instant, now_ms: i64) -> Option<i64> {
        let mut low: Option<i64> = None;
        let mut active = false;
        for (t, seen) in self.max_time.iter().zip(&self.last_data) {
            if now.duration_since(*seen) >= self.idle {
                continue;
            }
            active = true;
            let t = (*t)?;
            low = Some(low.map_or(t, |l| l.min(t)));
        }
        if !active {
            return Some(now_ms - self.lateness);
        }
        low.map(|l| l - self.lateness)
    }

    /// Windows to emit now, oldest first: the open ones the watermark passed, then kept
    /// ones with late events. Moves the closed boundary.
    fn due(&mut self, now: Instant, now_ms: i64) -> Vec<Due> {
        let mut out = Vec::new();
        if let Some(wm) = self.watermark(now, now_ms) {
            let boundary = self.start_of(wm);
            for (&start, _) in self.open.range(..boundary) {
                if start + self.size <= boundary {
                    out.push(Due { start, revision: 0 });
                }
            }
            self.closed_below = self.closed_below.max(boundary);
            let size = self.size;
            self.kept.retain(|start, _| start + 2 * size > wm);
        }
        // Bounded memory: past `max_held` events, the oldest windows close early (their
        // later events are late).
        let closing: usize = out
            .iter()
            .filter_map(|d| self.open.get(&d.start))
            .map(Vec::len)
            .sum();
        let mut held = self.held - closing;
        for (&start, events) in &self.open {
            if held <= self.max_held {
                break;
            }
            if out.iter().any(|d| d.start == start) {
                continue;
            }
            warn!(window = %rfc3339_ms(start), held, max = self.max_held,
                "open windows hold more events than window.max_held_events; closing the oldest early (later events for it are late)");
            out.push(Due { start, revision: 0 });
            held -= events.len();
            self.closed_below = self.closed_below.max(start + self.size);
        }
        for start in std::mem::take(&mut self.dirty) {
            if let Some((_, rev)) = self.kept.get(&start) {
                out.push(Due {
                    start,
                    revision: rev + 1,
                });
            }
        }
        out
    }

    /// The events of a window to emit (kept windows stay kept).
    fn events(&mut self, d: Due) -> Vec<Held> {
        match self.open.remove(&d.start) {
            Some(e) => {
                self.held -= e.len();
                e
            }
            None => self
                .kept
                .get(&d.start)
                .map(|(e, _)| e.clone())
                .unwrap_or_default(),
        }
    }

    /// After a window was emitted: keep it for late updates (when asked to).
    fn emitted(&mut self, d: Due, events: Vec<Held>) {
        if self.update {
            self.kept.insert(d.start, (events, d.revision));
        }
    }

    /// Per input partition, where its committed position may be: the first event of the
    /// oldest window not emitted, else how far it was read.
    fn commit_positions(&self) -> Vec<u64> {
        let mut pos = self.read_to.clone();
        let mut low: Vec<Option<u64>> = vec![None; pos.len()];
        for e in self.open.values().flatten() {
            let l = &mut low[e.partition as usize];
            *l = Some(l.map_or(e.offset, |o| o.min(e.offset)));
        }
        for (p, l) in pos.iter_mut().zip(low) {
            if let Some(l) = l {
                *p = l;
            }
        }
        pos
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            closed_below: self.closed_below,
            read_to: self.read_to.clone(),
        }
    }
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
    let mut starts = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let start = || crate::consumer::start_position(log, &group, input, p);
        let Some(at) = retry_until_ok(&shutdown, name, "read the start position", start).await
        else {
            return Ok(());
        };
        starts.push(at);
    }
    let limits = ReadLimits {
        max_records: stage.batch_max_events,
        max_bytes: 4 << 20,
        wait: Duration::from_millis(500),
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(u32, Vec<StoredRecord>)>(2 * partitions as usize);
    let readers = futures_util::future::join_all((0..partitions).map(|p| {
        let (tx, group, shutdown) = (tx.clone(), &group, &shutdown);
        async move {
            let Some(mut cursor) = Cursor::open(log, name, group, input, p, limits, shutdown).await
            else {
                return;
            };
            while let Some(batch) = cursor.next(shutdown).await {
                let last = batch.last().map_or(cursor.position(), |r| r.offset);
                cursor.seek(last + 1);
                if tx.send((p, batch)).await.is_err() {
                    return;
                }
            }
        }
    }));
    drop(tx);
    let mut st = Windows::new(w, starts.clone(), ck, Instant::now());
    let mut committed = starts;
    let windows = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => {
                    let Some((p, batch)) = got else { return };
                    let held = hold(stage, p, batch);
                    let late = st.add(p, held, Instant::now());
                    if !late.is_empty() && !dead_letter_late(stage, late, &shutdown).await {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let due = st.due(Instant::now(), crate::now_ms());
            for d in &due {
                let events = st.events(*d);
                if !emit(stage, w, out_partitions, *d, &events, &shutdown).await {
                    return; // shut down before the output was durable: nothing committed
                }
                st.emitted(*d, events);
            }
            let pos = st.commit_positions();
            if due.is_empty() && pos == committed {
                continue;
            }
            if !save_checkpoint(stage, &st.checkpoint(), &shutdown).await {
                return;
            }
            for (p, at) in pos.iter().enumerate() {
                if committed[p] == *at {
                    continue;
                }
                let commit = || log.commit(&group, input, p as u32, *at);
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
    tokio::join!(readers, windows);
    Ok(())
}

/// A batch's events as held in windows (counted as read).
fn hold(stage: &Stage, p: u32, batch: Vec<StoredRecord>) -> Vec<Held> {
    stage
        .stats
        .read_events_total
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let arrival_us = stage.ledger.now_us();
    batch
        .into_iter()
        .map(|r| {
            let meta = EventMeta::of(&stage.input, p, &r);
            Held {
                partition: p,
                offset: r.offset,
                time_ms: meta.time_ms,
                origin: meta.origin,
                arrival_us,
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
    out_partitions: u32,
    d: Due,
    events: &[Held],
    shutdown: &CancellationToken,
) -> bool {
    let (start, end) = (d.start, d.start + w.size_ms);
    let values: Vec<&[u8]> = events.iter().map(|e| &e.record.value[..]).collect();
    let result = w.query.run(&values).await;
    let now_ms = crate::now_ms();
    let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    let rows = result.rows.len() as u64;
    for row in result.rows {
        let mut value = row.value;
        value.insert(
            hifi_sql::output::WINDOW_START.into(),
            rfc3339_ms(start).into(),
        );
        value.insert(hifi_sql::output::WINDOW_END.into(), rfc3339_ms(end).into());
        let stem =
            xxhash_rust::xxh3::xxh3_64(format!("{}\n{start}\n{}", stage.name, row.key).as_bytes());
        let id = format!("{}-{start}-{stem:016x}-r{}", stage.name, d.revision);
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
    let dead: Vec<Record> = refused
        .iter()
        .map(|(i, why)| {
            let e = &events[*i];
            warn!(stage = %stage.name, origin = %e.origin, reason = %why,
                "event dead-lettered at this window stage");
            crate::stage::dead_letter(&e.record, &e.origin.to_string(), "sql", why.clone(), now_ms)
        })
        .collect();
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
        (o, e.origin.as_ref(), e.time_ms)
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
    let s = &stage.stats;
    s.passed_events_total.fetch_add(rows, Ordering::Relaxed);
    s.dead_lettered_events_total
        .fetch_add(refused.len() as u64, Ordering::Relaxed);
    true
}

/// Late events into the dead letters, their outcomes durable; false if shut down first.
async fn dead_letter_late(
    stage: &Stage,
    late: Vec<(Held, String)>,
    shutdown: &CancellationToken,
) -> bool {
    let now_ms = crate::now_ms();
    warn!(stage = %stage.name, count = late.len(), first = %late[0].1,
        "late events dead-lettered at this window stage");
    let dead = late
        .iter()
        .map(|(e, why)| {
            crate::stage::dead_letter(
                &e.record,
                &e.origin.to_string(),
                "late",
                why.clone(),
                now_ms,
            )
        })
        .collect();
    if !store_dead_letters(stage, dead, shutdown).await {
        return false;
    }
    stage.ledger.outcomes(
        late.iter()
            .map(|(e, _)| (Outcome::DeadLettered, e.origin.as_ref(), e.time_ms)),
    );
    stage
        .stats
        .dead_lettered_events_total
        .fetch_add(late.len() as u64, Ordering::Relaxed);
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
    let topic = checkpoint_topic(&stage.name);
    let (log, topic) = (stage.log.as_ref(), topic.as_str());
    let read = || async move {
        let end = log.offsets(topic, 0).await?.end;
        if end == 0 {
            return Ok(None);
        }
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
        };
        let recs = log.read(topic, 0, end - 1, limits).await?;
        Ok::<_, LogError>(recs.last().map(|r| r.record.value.clone()))
    };
    let value = retry_until_ok(shutdown, &stage.name, "read its checkpoint", read).await?;
    Some(value.and_then(|v| match serde_json::from_slice(&v) {
        Ok(ck) => Some(ck),
        Err(e) => {
            error!(stage = %stage.name, %e, "its last checkpoint cannot be read; starting without (events of windows emitted before may be emitted again, with the same ids)");
            None
        }
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn windows(lateness: i64, max_held: usize, ck: Option<Checkpoint>, now: Instant) -> Windows {
        let idle = Duration::from_secs(10);
        Windows::with(MIN, lateness, idle, false, max_held, vec![0, 0], ck, now)
    }

    fn ev(p: u32, offset: u64, time_ms: i64) -> Held {
        Held {
            partition: p,
            offset,
            time_ms,
            origin: Origin {
                topic: "orders".into(),
                partition: p,
                offset,
            },
            arrival_us: 0,
            record: Record::new("{}", time_ms),
        }
    }

    fn starts(due: &[Due]) -> Vec<i64> {
        due.iter().map(|d| d.start).collect()
    }

    #[test]
    fn a_window_closes_when_every_busy_partition_is_past_its_end() {
        let t0 = Instant::now();
        let mut w = windows(0, 100, None, t0);
        assert!(w
            .add(0, vec![ev(0, 0, 10_000), ev(0, 1, MIN + 5_000)], t0)
            .is_empty());
        assert!(w.add(1, vec![ev(1, 0, 30_000)], t0).is_empty());
        // Partition 1 is still in the first minute: nothing closes.
        assert_eq!(starts(&w.due(t0, 0)), Vec::<i64>::new());
        assert_eq!(w.commit_positions(), vec![0, 0]);
        w.add(1, vec![ev(1, 1, MIN + 1)], t0);
        let due = w.due(t0, 0);
        assert_eq!(starts(&due), vec![0]);
        let events = w.events(due[0]);
        assert_eq!(events.len(), 2);
        // Committed up to the first event of the open window in each partition.
        assert_eq!(w.commit_positions(), vec![1, 1]);
    }

    #[test]
    fn an_idle_partition_stops_holding_windows_open_and_all_idle_is_the_wall_clock() {
        let t0 = Instant::now();
        let mut w = windows(0, 100, None, t0);
        w.add(0, vec![ev(0, 0, 10_000)], t0);
        // Partition 1 never spoke; partition 0 is busy but in the first minute.
        let later = t0 + Duration::from_secs(11);
        w.add(0, vec![ev(0, 1, MIN + 1)], later);
        assert_eq!(starts(&w.due(later, 0)), vec![0]);
        w.events(Due {
            start: 0,
            revision: 0,
        });
        // Both silent now: the wall clock (minus lateness) closes the next minute.
        let idle = later + Duration::from_secs(11);
        assert_eq!(starts(&w.due(idle, MIN + 30_000)), Vec::<i64>::new());
        assert_eq!(starts(&w.due(idle, 2 * MIN)), vec![MIN]);
    }

    #[test]
    fn an_event_for_an_emitted_window_is_late_unless_it_was_read_before_a_restart() {
        let t0 = Instant::now();
        let ck = Checkpoint {
            closed_below: MIN,
            read_to: vec![5, 0],
        };
        let mut w = windows(0, 100, Some(ck), t0);
        let late = w.add(
            0,
            vec![ev(0, 3, 1_000), ev(0, 6, 2_000), ev(0, 7, MIN + 1)],
            t0,
        );
        // Offset 3 was in the first minute's result already; 6 is new, so late.
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0.offset, 6);
        assert!(late[0].1.contains("late"), "{}", late[0].1);
        assert_eq!(w.open.keys().copied().collect::<Vec<_>>(), vec![MIN]);
    }

    #[test]
    fn past_max_held_the_oldest_window_closes_early() {
        let t0 = Instant::now();
        // A day of lateness: the watermark never closes anything here.
        let mut w = windows(24 * 3600 * 1000, 3, None, t0);
        let events = (0..4).map(|i| ev(0, i as u64, i * MIN)).collect();
        w.add(0, events, t0);
        w.add(1, vec![ev(1, 0, 0)], t0);
        assert_eq!(w.held, 5);
        let due = w.due(t0, 0);
        // Window 0 (2 events) closes: 3 left, within the bound.
        assert_eq!(starts(&due), vec![0]);
        for d in due {
            w.events(d);
        }
        assert_eq!(w.held, 3);
        assert_eq!(w.closed_below, MIN);
        assert!(!w.add(0, vec![ev(0, 9, 5)], t0).is_empty(), "late now");
    }
}
