//! A window stage's windows: which event goes where, the watermark, which windows are due,
//! and how far each input partition may be committed. No I/O: the stage runner
//! ([`super::run`]) reads, emits and commits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hifi_ledger::{Origin, OriginRef};
use hifi_log::Record;
use tracing::warn;

use super::Checkpoint;
use crate::event::rfc3339_ms;

/// What holds a window's event values: Arrow columns of the input schema in a stage.
pub(super) trait Hold {
    /// Reads a stored value into the window; the error says why it cannot be held.
    fn push(&mut self, value: &[u8]) -> Result<(), String>;
}

impl Hold for crate::sql::WindowEvents {
    fn push(&mut self, value: &[u8]) -> Result<(), String> {
        crate::sql::WindowEvents::push(self, value)
    }
}

/// What is kept of an input event held in a window (its values are in the window's
/// [`Hold`]): where it was read, its time, and its origin.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub partition: u32,
    pub offset: u64,
    pub time_ms: i64,
    pub arrival_us: i64,
    /// Its origin when that is not its own place in the input (it came through a stage).
    pub origin: Option<Box<Origin>>,
}

impl Meta {
    /// Its origin; `input` is the stage's input topic.
    pub fn origin<'a>(&'a self, input: &'a str) -> OriginRef<'a> {
        match &self.origin {
            Some(o) => Origin::as_ref(o),
            None => OriginRef {
                topic: input,
                partition: self.partition,
                offset: self.offset,
            },
        }
    }
}

/// An input event as read, before it is held.
#[derive(Debug)]
pub(super) struct Arriving {
    pub meta: Meta,
    pub record: Record,
}

/// One window's events.
#[derive(Debug)]
pub(super) struct Window<H> {
    pub meta: Vec<Meta>,
    pub events: H,
    /// Per input partition, the offset of its first event here (events of a partition
    /// arrive in offset order).
    first: Vec<Option<u64>>,
    /// The last revision emitted.
    revision: u32,
}

impl<H: Hold> Window<H> {
    /// Holds an event; what it cannot hold (not of the input schema) comes back refused.
    fn hold(&mut self, e: Arriving) -> Option<Refused> {
        if let Err(why) = self.events.push(&e.record.value) {
            return Some(Refused {
                event: e,
                class: "sql",
                why,
            });
        }
        let first = &mut self.first[e.meta.partition as usize];
        first.get_or_insert(e.meta.offset);
        self.meta.push(e.meta);
        None
    }
}

/// Why an event is not held: it goes to the stage's dead letters.
#[derive(Debug)]
pub(super) struct Refused {
    pub event: Arriving,
    /// `late`, or `sql` (not of the input schema).
    pub class: &'static str,
    pub why: String,
}

/// The windows of one stage and what it knows of its input's progress.
#[derive(Debug)]
pub(super) struct Windows<H> {
    size: i64,
    lateness: i64,
    idle: Duration,
    /// Windows not emitted yet, by start.
    open: BTreeMap<i64, Window<H>>,
    /// Emitted windows kept for late updates, by start.
    kept: BTreeMap<i64, Window<H>>,
    /// Kept windows that got late events.
    dirty: BTreeSet<i64>,
    pub closed_below: i64,
    max_time: Vec<Option<i64>>,
    last_data: Vec<Instant>,
    /// Per place: its reader found nothing more to read since its last records (only
    /// such a place can be idle — one whose reader is behind or failing holds windows
    /// open, however long it gives nothing).
    at_end: Vec<bool>,
    read_to: Vec<u64>,
    /// From the checkpoint, per earlier run not read back yet: up to where it read (per
    /// place) and the boundary below which it had emitted every window — an event read
    /// again below the first, of a window below the second, was handled by it.
    replays: Vec<(i64, Vec<u64>)>,
    update: bool,
    /// Most events held in open windows, and how many are.
    max_held: usize,
    pub held: usize,
}

/// What to emit: a window's start and its revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub start: i64,
    pub revision: u32,
}

/// A window stage's timing settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub size: i64,
    pub lateness: i64,
    pub idle: Duration,
    /// Late events update emitted windows (else they are dead-lettered).
    pub update: bool,
    pub max_held: usize,
}

impl<H: Hold> Windows<H> {
    /// `starts`: where each input partition is read from (its committed position).
    pub fn new(t: Timing, starts: Vec<u64>, ck: Option<Checkpoint>, now: Instant) -> Windows<H> {
        let n = starts.len();
        let ck = ck.unwrap_or_default();
        let mut replays: Vec<(i64, Vec<u64>)> = ck
            .replays
            .into_iter()
            .map(|r| (r.closed_below, r.read_to))
            .chain([(ck.closed_below, ck.read_to)])
            .map(|(c, mut r)| {
                r.resize(n, 0);
                (c, r)
            })
            .collect();
        // Nothing to read back past where it starts: no rule.
        replays.retain(|(_, r)| r.iter().zip(&starts).any(|(r, s)| r > s));
        Windows {
            size: t.size,
            lateness: t.lateness,
            idle: t.idle,
            max_held: t.max_held,
            update: t.update,
            held: 0,
            open: BTreeMap::new(),
            kept: BTreeMap::new(),
            dirty: BTreeSet::new(),
            closed_below: ck.closed_below,
            max_time: vec![None; n],
            last_data: vec![now; n],
            at_end: vec![false; n],
            read_to: starts,
            replays,
        }
    }

    fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.size) * self.size
    }

    /// Places a batch of partition `p`'s events in their windows (`new` makes an empty
    /// window); returns those not held: late ones not taken, and those the window cannot
    /// hold (not of the input schema).
    pub fn add(
        &mut self,
        p: u32,
        events: Vec<Arriving>,
        now: Instant,
        new: &dyn Fn() -> H,
    ) -> Vec<Refused> {
        let i = p as usize;
        let parts = self.read_to.len();
        let mut refused = Vec::new();
        self.last_data[i] = now;
        self.at_end[i] = false;
        for e in events {
            let (offset, time) = (e.meta.offset, e.meta.time_ms);
            self.read_to[i] = self.read_to[i].max(offset + 1);
            self.max_time[i] = Some(self.max_time[i].map_or(time, |m| m.max(time)));
            let start = self.start_of(time);
            if start + self.size > self.closed_below {
                let w = self.open.entry(start).or_insert_with(|| Window {
                    meta: Vec::new(),
                    events: new(),
                    first: vec![None; parts],
                    revision: 0,
                });
                match w.hold(e) {
                    None => self.held += 1,
                    Some(r) => refused.push(r),
                }
                continue;
            }
            let end = start + self.size;
            if self
                .replays
                .iter()
                .any(|(closed, read)| end <= *closed && offset < read[i])
            {
                continue; // in that window's result already (read before a restart)
            }
            if let Some(w) = self.kept.get_mut(&start) {
                match w.hold(e) {
                    None => {
                        self.dirty.insert(start);
                    }
                    Some(r) => refused.push(r),
                }
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
            refused.push(Refused {
                event: e,
                class: "late",
                why,
            });
        }
        refused
    }

    /// Partition `p` was read up to `to` (records passed over included: nothing before
    /// `to` holds its committed position back but the open windows).
    /// A place being read is not idle, even with nothing held: while its time is not
    /// known it holds the watermark (what comes after the records passed over may be
    /// in windows still open).
    pub fn read_past(&mut self, p: u32, to: u64, now: Instant) {
        let r = &mut self.read_to[p as usize];
        *r = (*r).max(to);
        self.last_data[p as usize] = now;
        self.at_end[p as usize] = false;
    }

    /// Place `p`'s reader found nothing more to read: from `idle` after its last
    /// records, until it gets more, it does not hold windows open.
    pub fn at_end(&mut self, p: u32) {
        self.at_end[p as usize] = true;
    }

    /// Place `p`'s reads fail since it was at its end: records may be arriving there
    /// unread, so it holds windows open again (at the time of its last records) until
    /// its reader is at its end again.
    pub fn not_at_end(&mut self, p: u32) {
        self.at_end[p as usize] = false;
    }

    /// The stage's watermark: `None` while a partition that is not idle has given
    /// nothing yet.
    fn watermark(&self, now: Instant, now_ms: i64) -> Option<i64> {
        let mut low: Option<i64> = None;
        let mut active = false;
        for ((t, seen), at_end) in self.max_time.iter().zip(&self.last_data).zip(&self.at_end) {
            if *at_end && now.duration_since(*seen) >= self.idle {
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
    pub fn due(&mut self, now: Instant, now_ms: i64) -> Vec<Due> {
        let mut out = Vec::new();
        if let Some(wm) = self.watermark(now, now_ms) {
            let boundary = self.start_of(wm);
            for (&start, _) in self.open.range(..boundary) {
                if start + self.size <= boundary {
                    out.push(Due { start, revision: 0 });
                }
            }
            self.closed_below = self.closed_below.max(boundary);
            let (size, dirty) = (self.size, &self.dirty);
            // A kept window with late events waiting is emitted first, then pruned.
            self.kept
                .retain(|start, _| start + 2 * size > wm || dirty.contains(start));
        }
        // Bounded memory: past `max_held` events, the oldest windows close early (their
        // later events are late).
        let closing: usize = out
            .iter()
            .filter_map(|d| self.open.get(&d.start))
            .map(|w| w.meta.len())
            .sum();
        let mut held = self.held - closing;
        for (&start, w) in &self.open {
            if held <= self.max_held {
                break;
            }
            if out.iter().any(|d| d.start == start) {
                continue;
            }
            warn!(window = %rfc3339_ms(start), held, max = self.max_held,
                "open windows hold more events than window.max_held_events; closing the oldest early (later events for it are late)");
            out.push(Due { start, revision: 0 });
            held -= w.meta.len();
            self.closed_below = self.closed_below.max(start + self.size);
        }
        for start in std::mem::take(&mut self.dirty) {
            if let Some(w) = self.kept.get(&start) {
                out.push(Due {
                    start,
                    revision: w.revision + 1,
                });
            }
        }
        out
    }

    /// The window to emit, taken out (see [`Windows::emitted`]).
    pub fn take(&mut self, d: Due) -> Option<Window<H>> {
        match self.open.remove(&d.start) {
            Some(w) => {
                self.held -= w.meta.len();
                Some(w)
            }
            None => self.kept.remove(&d.start),
        }
    }

    /// After a window was emitted: keep it for late updates (when asked to).
    pub fn emitted(&mut self, d: Due, mut w: Window<H>) {
        if self.update {
            w.revision = d.revision;
            self.kept.insert(d.start, w);
        }
    }

    /// Per input partition, where its committed position may be: the first event of the
    /// oldest window not emitted, else how far it was read.
    pub fn commit_positions(&self) -> Vec<u64> {
        let mut pos = self.read_to.clone();
        let mut low: Vec<Option<u64>> = vec![None; pos.len()];
        for w in self.open.values() {
            for (l, f) in low.iter_mut().zip(&w.first) {
                if let Some(f) = *f {
                    *l = Some(l.map_or(f, |o| o.min(f)));
                }
            }
        }
        for (p, l) in pos.iter_mut().zip(low) {
            if let Some(l) = l {
                *p = l;
            }
        }
        pos
    }

    pub fn checkpoint(&self) -> Checkpoint {
        // Earlier runs' reads not read back yet stay known (a crash before they are
        // must not take their emitted windows' events for late).
        let replays = self
            .replays
            .iter()
            .filter(|(_, read)| read.iter().zip(&self.read_to).any(|(r, now)| r > now))
            .map(|(closed, read)| super::Replay {
                closed_below: *closed,
                read_to: read.clone(),
                ..super::Replay::default()
            })
            .collect();
        Checkpoint {
            closed_below: self.closed_below,
            read_to: self.read_to.clone(),
            replays,
            ..Checkpoint::default()
        }
    }

    #[cfg(test)]
    fn open_starts(&self) -> Vec<i64> {
        self.open.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// Test windows hold the values themselves; a value `"bad"` cannot be held.
    impl Hold for Vec<Vec<u8>> {
        fn push(&mut self, value: &[u8]) -> Result<(), String> {
            if value == b"bad" {
                return Err("not of the input schema".into());
            }
            Vec::push(self, value.to_vec());
            Ok(())
        }
    }

    type Test = Windows<Vec<Vec<u8>>>;

    fn windows(lateness: i64, update: bool, max_held: usize, ck: Option<Checkpoint>) -> Test {
        let t = Timing {
            size: MIN,
            lateness,
            idle: Duration::from_secs(10),
            update,
            max_held,
        };
        Windows::new(t, vec![0, 0], ck, Instant::now())
    }

    fn ev(p: u32, offset: u64, time_ms: i64) -> Arriving {
        Arriving {
            meta: Meta {
                partition: p,
                offset,
                time_ms,
                arrival_us: 0,
                origin: None,
            },
            record: Record::new("{}", time_ms),
        }
    }

    fn add(w: &mut Test, p: u32, events: Vec<Arriving>, now: Instant) -> Vec<Refused> {
        w.add(p, events, now, &Vec::new)
    }

    fn starts(due: &[Due]) -> Vec<i64> {
        due.iter().map(|d| d.start).collect()
    }

    #[test]
    fn a_window_closes_when_every_busy_partition_is_past_its_end() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        let events = vec![ev(0, 0, 10_000), ev(0, 1, MIN + 5_000)];
        assert!(add(&mut w, 0, events, t0).is_empty());
        assert!(add(&mut w, 1, vec![ev(1, 0, 30_000)], t0).is_empty());
        // Partition 1 is still in the first minute: nothing closes.
        assert_eq!(starts(&w.due(t0, 0)), Vec::<i64>::new());
        assert_eq!(w.commit_positions(), vec![0, 0]);
        add(&mut w, 1, vec![ev(1, 1, MIN + 1)], t0);
        let due = w.due(t0, 0);
        assert_eq!(starts(&due), vec![0]);
        let window = w.take(due[0]).unwrap();
        assert_eq!(window.meta.len(), 2);
        assert_eq!(window.events.len(), 2);
        // Committed up to the first event of the open window in each partition.
        assert_eq!(w.commit_positions(), vec![1, 1]);
    }

    #[test]
    fn commit_positions_follow_the_oldest_open_window_of_each_partition() {
        let t0 = Instant::now();
        let mut w = windows(24 * 3600 * 1000, false, 100, None);
        add(
            &mut w,
            0,
            vec![ev(0, 4, MIN + 1), ev(0, 5, 1), ev(0, 6, 2)],
            t0,
        );
        add(&mut w, 1, vec![ev(1, 7, 2 * MIN)], t0);
        // Partition 0's first window event is at 4 (the later minute), partition 1's at 7.
        assert_eq!(w.commit_positions(), vec![4, 7]);
    }

    #[test]
    fn an_idle_partition_stops_holding_windows_open_and_all_idle_is_the_wall_clock() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 10_000)], t0);
        // Partition 1 has nothing to read; partition 0 is busy but in the first minute.
        w.at_end(1);
        let later = t0 + Duration::from_secs(11);
        add(&mut w, 0, vec![ev(0, 1, MIN + 1)], later);
        assert_eq!(starts(&w.due(later, 0)), vec![0]);
        w.take(Due {
            start: 0,
            revision: 0,
        });
        // Both at their end now: the wall clock (minus lateness) closes the next minute.
        w.at_end(0);
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
            ..Checkpoint::default()
        };
        let mut w = windows(0, false, 100, Some(ck));
        let events = vec![ev(0, 3, 1_000), ev(0, 6, 2_000), ev(0, 7, MIN + 1)];
        let late = add(&mut w, 0, events, t0);
        // Offset 3 was in the first minute's result already; 6 is new, so late.
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].event.meta.offset, 6);
        assert_eq!(late[0].class, "late");
        assert!(late[0].why.contains("late"), "{}", late[0].why);
        assert_eq!(w.open_starts(), vec![MIN]);
    }

    #[test]
    fn a_checkpoint_after_a_restart_does_not_forget_what_was_read_before_it() {
        let t0 = Instant::now();
        let ck = Checkpoint {
            closed_below: MIN,
            read_to: vec![5, 0],
            ..Checkpoint::default()
        };
        let mut w = windows(0, false, 100, Some(ck));
        add(&mut w, 0, vec![ev(0, 2, MIN + 1)], t0);
        // Read again up to 3 only: a checkpoint written now still knows 5, with the
        // boundary then (a crash after it must not take offsets 3 and 4, in windows
        // emitted before, for late).
        let ck = w.checkpoint();
        assert_eq!(ck.read_to, vec![3, 0]);
        assert_eq!(ck.replays.len(), 1);
        assert_eq!(
            (ck.replays[0].closed_below, &ck.replays[0].read_to),
            (MIN, &vec![5, 0])
        );
        let mut again = windows(0, false, 100, Some(ck));
        let late = add(&mut again, 0, vec![ev(0, 4, 1_000)], t0);
        assert!(late.is_empty(), "in the first minute's result: {late:?}");
        add(&mut w, 0, vec![ev(0, 7, MIN + 2)], t0);
        assert!(w.checkpoint().replays.is_empty(), "read back past it");
    }

    #[test]
    fn an_event_read_before_a_restart_whose_window_closes_after_it_is_late_not_dropped() {
        let t0 = Instant::now();
        // Read up to 10 before the restart; only the first minute was emitted.
        let ck = Checkpoint {
            closed_below: MIN,
            read_to: vec![10, 0],
            ..Checkpoint::default()
        };
        let mut w = windows(0, false, 100, Some(ck));
        // After the restart the second minute closes before offset 5 is read again.
        add(&mut w, 0, vec![ev(0, 2, 3 * MIN)], t0);
        add(&mut w, 1, vec![ev(1, 0, 3 * MIN)], t0);
        w.due(t0, 0);
        assert!(w.closed_below >= 2 * MIN);
        let late = add(&mut w, 0, vec![ev(0, 5, MIN + 1)], t0);
        assert_eq!(
            late.len(),
            1,
            "its window was not emitted with it: late, counted"
        );
    }

    #[test]
    fn a_partition_read_past_records_passed_over_holds_the_watermark() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 1_000)], t0);
        // Partition 1 is being read (records passed over: no time yet), long after
        // the idle timeout: windows wait for what comes after them.
        let later = t0 + Duration::from_secs(30);
        add(&mut w, 0, vec![ev(0, 1, 3 * MIN)], later);
        w.read_past(1, 500, later);
        assert_eq!(starts(&w.due(later, 10 * MIN)), Vec::<i64>::new());
        assert_eq!(w.commit_positions(), vec![0, 500], "passed over: read");
        // At its end since: idle, it holds nothing.
        w.at_end(1);
        let idle = later + Duration::from_secs(11);
        assert_eq!(starts(&w.due(idle, 3 * MIN + 30_000)), vec![0]);
    }

    #[test]
    fn a_silent_partition_not_at_its_end_holds_windows_open() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 1_000)], t0);
        add(&mut w, 1, vec![ev(1, 0, 2_000)], t0);
        // Partition 0 moves on; partition 1's reader gives nothing for a minute (behind,
        // or its reads failing): its records may be of the first minute still.
        let later = t0 + Duration::from_secs(60);
        add(&mut w, 0, vec![ev(0, 1, 3 * MIN)], later);
        assert_eq!(starts(&w.due(later, 10 * MIN)), Vec::<i64>::new());
        // Found at its end: idle (its last records were a minute ago).
        w.at_end(1);
        assert_eq!(starts(&w.due(later, 10 * MIN)), vec![0]);
        w.take(Due {
            start: 0,
            revision: 0,
        });
        // Records again: it holds the watermark again until it is at its end.
        assert!(add(&mut w, 1, vec![ev(1, 1, 3 * MIN + 1)], later).is_empty());
        let much_later = later + Duration::from_secs(60);
        add(&mut w, 0, vec![ev(0, 2, 5 * MIN)], much_later);
        assert_eq!(starts(&w.due(much_later, 10 * MIN)), Vec::<i64>::new());
        w.at_end(1);
        assert_eq!(starts(&w.due(much_later, 10 * MIN)), vec![3 * MIN]);
    }

    #[test]
    fn a_partition_whose_reads_fail_after_its_end_holds_windows_again() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 1_000)], t0);
        add(&mut w, 1, vec![ev(1, 0, 2_000)], t0);
        w.at_end(1);
        let later = t0 + Duration::from_secs(60);
        add(&mut w, 0, vec![ev(0, 1, 3 * MIN)], later);
        assert_eq!(starts(&w.due(later, 10 * MIN)), vec![0], "1 is idle");
        w.take(Due {
            start: 0,
            revision: 0,
        });
        // Partition 1's reads fail: what it has unread may be of any time after its
        // last records, so partition 0's later windows wait for it.
        w.not_at_end(1);
        let much_later = later + Duration::from_secs(60);
        add(&mut w, 0, vec![ev(0, 2, 5 * MIN)], much_later);
        assert_eq!(starts(&w.due(much_later, 10 * MIN)), Vec::<i64>::new());
        // Read again and found at its end: idle again.
        w.at_end(1);
        assert_eq!(starts(&w.due(much_later, 10 * MIN)), vec![3 * MIN]);
    }

    #[test]
    fn an_event_the_window_cannot_hold_is_refused_and_not_counted() {
        let t0 = Instant::now();
        let mut w = windows(0, false, 100, None);
        let mut bad = ev(0, 0, 1);
        bad.record = Record::new("bad", 1);
        let refused = add(&mut w, 0, vec![bad, ev(0, 1, 2)], t0);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].class, "sql");
        assert_eq!(w.held, 1);
        // The refused event is settled (dead-lettered): the commit may pass it.
        assert_eq!(w.commit_positions(), vec![1, 0]);
    }

    #[test]
    fn a_late_event_for_a_kept_window_makes_its_next_revision() {
        let t0 = Instant::now();
        let mut w = windows(0, true, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 1), ev(0, 1, MIN + 1)], t0);
        add(&mut w, 1, vec![ev(1, 0, MIN + 1)], t0);
        let due = w.due(t0, 0);
        assert_eq!(
            due,
            vec![Due {
                start: 0,
                revision: 0
            }]
        );
        let window = w.take(due[0]).unwrap();
        w.emitted(due[0], window);
        assert!(add(&mut w, 1, vec![ev(1, 1, 2)], t0).is_empty());
        let due = w.due(t0, 0);
        assert_eq!(
            due,
            vec![Due {
                start: 0,
                revision: 1
            }]
        );
        assert_eq!(w.take(due[0]).unwrap().events.len(), 2);
    }

    #[test]
    fn a_late_event_is_not_lost_when_the_same_batch_moves_the_watermark_past_its_window() {
        let t0 = Instant::now();
        let mut w = windows(0, true, 100, None);
        add(&mut w, 0, vec![ev(0, 0, 1), ev(0, 1, MIN + 1)], t0);
        add(&mut w, 1, vec![ev(1, 0, MIN + 1)], t0);
        let due = w.due(t0, 0);
        let window = w.take(due[0]).unwrap();
        w.emitted(due[0], window);
        // One batch: a late event for the first minute, then one three minutes on (the
        // watermark leaves the kept window behind). The update is still emitted.
        add(&mut w, 1, vec![ev(1, 1, 2), ev(1, 2, 3 * MIN + 1)], t0);
        add(&mut w, 0, vec![ev(0, 2, 3 * MIN + 1)], t0);
        let due = w.due(t0, 0);
        assert!(
            due.contains(&Due {
                start: 0,
                revision: 1
            }),
            "the late event's revision is emitted: {due:?}"
        );
    }

    #[test]
    fn past_max_held_the_oldest_window_closes_early() {
        let t0 = Instant::now();
        // A day of lateness: the watermark never closes anything here.
        let mut w = windows(24 * 3600 * 1000, false, 3, None);
        let events = (0..4).map(|i| ev(0, i as u64, i * MIN)).collect();
        add(&mut w, 0, events, t0);
        add(&mut w, 1, vec![ev(1, 0, 0)], t0);
        assert_eq!(w.held, 5);
        let due = w.due(t0, 0);
        // Window 0 (2 events) closes: 3 left, within the bound.
        assert_eq!(starts(&due), vec![0]);
        for d in due {
            w.take(d);
        }
        assert_eq!(w.held, 3);
        assert_eq!(w.closed_below, MIN);
        assert!(
            !add(&mut w, 0, vec![ev(0, 9, 5)], t0).is_empty(),
            "late now"
        );
    }
}
