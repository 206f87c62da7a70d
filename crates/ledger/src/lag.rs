//! Lag histograms of one node: lag-in (arrival − event time), lag-out (departure − event
//! time) and process duration (departure − arrival), cumulative and per 10-second window.
//!
//! Values are microseconds in HDR histograms (2 significant digits, up to 30 days).
//! Event times from the future are clamped to the arrival time and counted: they never
//! make a lag negative. Closed windows keep only their percentiles (the last 60, i.e. ten
//! minutes), so memory is fixed per node however long the stream runs.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Window length.
pub const WINDOW_MS: i64 = 10_000;
/// Closed windows kept.
pub const WINDOWS_KEPT: usize = 60;
const MAX_US: u64 = 30 * 24 * 3600 * 1_000_000;

/// p50/p95/p99/max in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Percentiles of a µs histogram, in ms.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds")
}

/// The three histograms of one span of time.
#[derive(Debug, Clone)]
pub struct LagSet {
    /// Arrival − event time.
    pub lag_in: Histogram<u64>,
    /// Departure − event time.
    pub lag_out: Histogram<u64>,
    /// Departure − arrival.
    pub process: Histogram<u64>,
}

impl Default for LagSet {
    fn default() -> Self {
        LagSet {
            lag_in: hist(),
            lag_out: hist(),
            process: hist(),
        }
    }
}

impl LagSet {
    fn record_n(&mut self, (lag_in, lag_out, process): Lags, n: u64) {
        self.lag_in.saturating_record_n(lag_in.max(1), n);
        self.lag_out.saturating_record_n(lag_out.max(1), n);
        self.process.saturating_record_n(process.max(1), n);
    }

    /// Events recorded.
    pub fn events(&self) -> u64 {
        self.lag_out.len()
    }

    /// Adds another set's counts.
    pub fn add(&mut self, other: &LagSet) {
        let _ = self.lag_in.add(&other.lag_in);
        let _ = self.lag_out.add(&other.lag_out);
        let _ = self.process.add(&other.process);
    }

    /// The counts as `{"lag_in": [[µs, count], ...], "lag_out": .., "process": ..}` (a
    /// few hundred pairs at most: the histograms keep 2 significant digits).
    pub fn encode(&self) -> serde_json::Value {
        let pairs = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "lag_in": pairs(&self.lag_in),
            "lag_out": pairs(&self.lag_out),
            "process": pairs(&self.process),
        })
    }

    /// Reads [`LagSet::encode`]'s form; `None` if it is not that.
    pub fn decode(v: &serde_json::Value) -> Option<LagSet> {
        let mut set = LagSet::default();
        for (name, h) in [
            ("lag_in", &mut set.lag_in),
            ("lag_out", &mut set.lag_out),
            ("process", &mut set.process),
        ] {
            for pair in v.get(name)?.as_array()? {
                let (value, count) = (pair.get(0)?.as_u64()?, pair.get(1)?.as_u64()?);
                h.saturating_record_n(value.max(1), count);
            }
        }
        Some(set)
    }

    /// (µs, count) of every recorded value of one of the three histograms, ascending;
    /// a value stands for its HDR bucket (2 significant digits: within 1 % above).
    pub fn recorded(h: &Histogram<u64>) -> impl Iterator<Item = (u64, u64)> + '_ {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }

    /// Percentiles of the three.
    pub fn summary(&self) -> LagSummary {
        LagSummary {
            events: self.events(),
            lag_in_ms: Quantiles::of(&self.lag_in),
            lag_out_ms: Quantiles::of(&self.lag_out),
            process_ms: Quantiles::of(&self.process),
        }
    }
}

/// Percentiles of a [`LagSet`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LagSummary {
    pub events: u64,
    pub lag_in_ms: Quantiles,
    pub lag_out_ms: Quantiles,
    pub process_ms: Quantiles,
}

/// A closed window's percentiles.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct WindowSummary {
    /// Window start, ms since the epoch.
    pub start_ms: i64,
    /// Its percentiles.
    #[serde(flatten)]
    pub lag: LagSummary,
}

/// One node's lag: cumulative, the open window, and closed windows' summaries.
#[derive(Debug, Default)]
pub struct LagRecorder {
    /// Since start.
    pub cumulative: LagSet,
    /// The open window and its start.
    current: Option<(i64, LagSet)>,
    /// Closed windows, oldest first.
    closed: VecDeque<WindowSummary>,
    /// Events whose event time was after their arrival (clamped).
    pub skewed_events: u64,
    /// What was recorded since the last [`LagRecorder::take_outbox`], when this node's
    /// lag is shared with other processes.
    outbox: Option<LagSet>,
}

/// (lag in, lag out, process time) of one event, µs.
type Lags = (u64, u64, u64);

impl LagRecorder {
    /// Records one event (all times in µs since the epoch).
    pub fn record(&mut self, event_us: i64, arrival_us: i64, departure_us: i64) {
        self.record_batch([(event_us, arrival_us)], departure_us);
    }

    /// Records events (event time, arrival; µs since the epoch) that departed together.
    /// A run of events with the same lags is recorded once with its count: a batch's
    /// events often share their event time and arrival.
    pub fn record_batch(
        &mut self,
        events: impl IntoIterator<Item = (i64, i64)>,
        departure_us: i64,
    ) {
        let mut run: Option<(Lags, u64)> = None;
        for (event_us, arrival_us) in events {
            let lags = self.lags_of(event_us, arrival_us, departure_us);
            match &mut run {
                Some((same, n)) if *same == lags => *n += 1,
                _ => {
                    if let Some((lags, n)) = run.take() {
                        self.record_n(lags, n, departure_us);
                    }
                    run = Some((lags, 1));
                }
            }
        }
        if let Some((lags, n)) = run {
            self.record_n(lags, n, departure_us);
        }
    }

    /// One event's lags; an event time after the arrival counts as skewed and is taken
    /// as the arrival.
    fn lags_of(&mut self, event_us: i64, arrival_us: i64, departure_us: i64) -> Lags {
        let departure_us = departure_us.max(arrival_us);
        let event_us = if event_us > arrival_us {
            self.skewed_events += 1;
            arrival_us
        } else {
            event_us
        };
        // Saturating: an event time far in the past (a producer's choice) must not
        // overflow; histograms cap at their highest value anyway.
        let span = |later: i64, earlier: i64| later.saturating_sub(earlier).max(0) as u64;
        (
            span(arrival_us, event_us),
            span(departure_us, event_us),
            span(departure_us, arrival_us),
        )
    }

    fn record_n(&mut self, lags: Lags, n: u64, departure_us: i64) {
        self.cumulative.record_n(lags, n);
        if let Some(o) = &mut self.outbox {
            o.record_n(lags, n);
        }
        let window = (departure_us / 1000).div_euclid(WINDOW_MS) * WINDOW_MS;
        self.roll(window);
        if let Some((_, set)) = &mut self.current {
            set.record_n(lags, n);
        }
    }

    /// Closes the open window if `now_ms` is past it.
    pub fn roll(&mut self, window_start_ms: i64) {
        let window = window_start_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
        match &self.current {
            Some((start, _)) if *start >= window => {}
            Some(_) => {
                let (start, set) = self.current.take().expect("checked above");
                self.closed.push_back(WindowSummary {
                    start_ms: start,
                    lag: set.summary(),
                });
                while self.closed.len() > WINDOWS_KEPT {
                    self.closed.pop_front();
                }
                self.current = Some((window, LagSet::default()));
            }
            None => self.current = Some((window, LagSet::default())),
        }
    }

    /// Starts keeping what is recorded for [`LagRecorder::take_outbox`].
    pub fn share(&mut self) {
        self.outbox.get_or_insert_with(LagSet::default);
    }

    /// What was recorded since the last call (sharing only; `None` when nothing was).
    pub fn take_outbox(&mut self) -> Option<LagSet> {
        let o = self.outbox.as_mut()?;
        if o.events() == 0 {
            return None;
        }
        Some(std::mem::take(o))
    }

    /// Adds lag another process recorded for this node, at `now_ms`.
    pub fn add_remote(&mut self, set: &LagSet, now_ms: i64) {
        self.cumulative.add(set);
        self.roll(now_ms);
        if let Some((_, w)) = &mut self.current {
            w.add(set);
        }
    }

    /// Closed windows, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &WindowSummary> {
        self.closed.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(r: &LagRecorder) -> (Vec<u8>, u64, Vec<WindowSummary>) {
        let json = serde_json::to_vec(&r.cumulative.encode()).expect("encodes");
        let windows = r.history().copied().collect();
        (json, r.skewed_events, windows)
    }

    #[test]
    fn a_batch_records_the_same_as_its_events_one_by_one() {
        // Runs of equal lags (shared event time and arrival), changes inside the batch,
        // a skewed event (event time after arrival), and batches in later windows.
        let base = 1_700_000_000_000_000i64;
        let mut batches = Vec::new();
        for b in 0..5i64 {
            let departure = base + b * 4_000_000 + 2_500;
            let events: Vec<(i64, i64)> = (0..40i64)
                .map(|i| {
                    let event = base + b * 4_000_000 - (i / 10) * 1_000;
                    let arrival = base + b * 4_000_000 + if i < 30 { 100 } else { 200 };
                    if i == 35 {
                        (arrival + 50, arrival)
                    } else {
                        (event, arrival)
                    }
                })
                .collect();
            batches.push((events, departure));
        }
        let (mut one_by_one, mut batched) = (LagRecorder::default(), LagRecorder::default());
        one_by_one.share();
        batched.share();
        for (events, departure) in &batches {
            for &(e, a) in events {
                one_by_one.record(e, a, *departure);
            }
            batched.record_batch(events.iter().copied(), *departure);
        }
        assert_eq!(snapshot(&one_by_one), snapshot(&batched));
        assert_eq!(one_by_one.skewed_events, 5);
        assert_eq!(batched.cumulative.events(), 200);
        let (a, b) = (one_by_one.take_outbox(), batched.take_outbox());
        assert_eq!(a.map(|s| s.encode()), b.map(|s| s.encode()));
    }
}
