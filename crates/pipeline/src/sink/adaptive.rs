//! The fast lane's request slots: a fixed number (`concurrency = 8`), or a limit that
//! follows the destination (`concurrency = "adaptive"`, the default).
//!
//! The adaptive limit is AIMD on what each fast-lane request shows, in the spirit of
//! Vector's adaptive request concurrency, measured over windows of about one response
//! time:
//! - **grow** while every slot is in use and the mean response time stays near its
//!   baseline: doubling until the first sign of congestion (slow start), then by one;
//! - **shrink to 90 %** when the mean response time rises past 1.3 × the baseline + 2 ms
//!   (requests queue at the destination: more of them would only wait longer);
//! - **halve** on back-pressure: a 429, 503, timeout or any other answer worth retrying.
//!
//! The baseline is the lowest window mean, drifting 5 % a window towards the current one
//! (a destination that became slower for good is not taken for a congested one for long).
//! Shrinking takes slots away as requests give them back; nothing in flight is cut.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Concurrency;

/// Why the adaptive limit is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// A fixed `concurrency`.
    Fixed = 0,
    /// No window measured yet.
    Starting,
    /// Every slot busy and response times near the baseline: growing.
    Growing,
    /// At `concurrency_max`.
    AtMax,
    /// Fewer requests than the limit were needed: it stays.
    Enough,
    /// Response times rose: shrunk to 90 %.
    SlowResponses,
    /// 429, 503, timeouts or other retried failures: halved.
    Backpressure,
}

impl Reason {
    /// Its name in `/v1/stats` and `hifi lag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fixed => "fixed",
            Reason::Starting => "starting",
            Reason::Growing => "growing",
            Reason::AtMax => "at-max",
            Reason::Enough => "enough",
            Reason::SlowResponses => "slow-responses",
            Reason::Backpressure => "backpressure",
        }
    }

    fn of(n: u8) -> Reason {
        [
            Reason::Fixed,
            Reason::Starting,
            Reason::Growing,
            Reason::AtMax,
            Reason::Enough,
            Reason::SlowResponses,
            Reason::Backpressure,
        ]
        .get(n as usize)
        .copied()
        .unwrap_or(Reason::Fixed)
    }
}

/// Mean response time past `RISE × baseline + SLACK` is a rise.
const RISE: f64 = 1.3;
const SLACK_MS: f64 = 2.0;
/// Share of the distance to the current window mean the baseline moves up per window.
const DRIFT: f64 = 0.05;
/// Shortest measuring window.
const WINDOW_MIN: Duration = Duration::from_millis(50);

/// The AIMD controller: what the limit becomes after each window of responses.
#[derive(Debug)]
pub struct Aimd {
    limit: usize,
    max: usize,
    slow_start: bool,
    baseline_ms: Option<f64>,
    started: Instant,
    sum_ms: f64,
    n: u32,
    congested: bool,
    saturated: bool,
    reason: Reason,
}

impl Aimd {
    /// Starts at one request, up to `max`.
    pub fn new(max: usize, now: Instant) -> Aimd {
        Aimd {
            limit: 1,
            max: max.max(1),
            slow_start: true,
            baseline_ms: None,
            started: now,
            sum_ms: 0.0,
            n: 0,
            congested: false,
            saturated: false,
            reason: Reason::Starting,
        }
    }

    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// A request started with every slot of the limit in use.
    pub fn saturated(&mut self) {
        self.saturated = true;
    }

    /// One response: its time, and whether it was back-pressure. Returns the new limit
    /// when the window it closes changed it.
    pub fn record(&mut self, rtt: Duration, backpressure: bool, now: Instant) -> Option<usize> {
        self.sum_ms += rtt.as_secs_f64() * 1e3;
        self.n += 1;
        self.congested |= backpressure;
        let window = self
            .baseline_ms
            .map_or(WINDOW_MIN, |b| Duration::from_secs_f64(b / 1e3))
            .max(WINDOW_MIN);
        if now.duration_since(self.started) < window {
            return None;
        }
        let mean = self.sum_ms / f64::from(self.n);
        let before = self.limit;
        let slow = self.baseline_ms.is_some_and(|b| mean > RISE * b + SLACK_MS);
        if self.congested {
            self.limit = (self.limit / 2).max(1);
            self.slow_start = false;
            self.reason = Reason::Backpressure;
        } else if slow {
            self.limit = ((self.limit as f64 * 0.9) as usize)
                .min(self.limit - 1)
                .max(1);
            self.slow_start = false;
            self.reason = Reason::SlowResponses;
        } else if self.limit >= self.max {
            self.reason = Reason::AtMax;
        } else if self.saturated {
            self.limit = if self.slow_start {
                self.limit * 2
            } else {
                self.limit + 1
            }
            .min(self.max);
            self.reason = Reason::Growing;
        } else {
            self.reason = Reason::Enough;
        }
        self.baseline_ms = Some(match self.baseline_ms {
            Some(b) if mean >= b => b + (mean - b) * DRIFT,
            _ => mean,
        });
        self.started = now;
        self.sum_ms = 0.0;
        self.n = 0;
        self.congested = false;
        self.saturated = false;
        (self.limit != before).then_some(self.limit)
    }
}

/// The fast lane's request slots.
#[derive(Debug)]
pub struct Slots {
    sem: Arc<Semaphore>,
    aimd: Option<Mutex<Aimd>>,
    /// Slots to take away as requests give them back (the limit went down while they
    /// were in use).
    debt: AtomicUsize,
    /// The limit now, and why (a [`Reason`]), for `/metrics` and `/v1/stats`.
    pub limit: AtomicU64,
    reason: std::sync::atomic::AtomicU8,
    /// Times the adaptive limit was cut: for back-pressure, for slow responses.
    pub backpressure_cuts_total: AtomicU64,
    pub slow_response_cuts_total: AtomicU64,
}

/// A request slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let owed = self
                .slots
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
            if owed.is_ok() {
                p.forget();
            }
        }
    }
}

impl Slots {
    pub fn new(concurrency: Concurrency, max: usize) -> Arc<Slots> {
        let (limit, aimd, reason) = match concurrency {
            Concurrency::Fixed(n) => (n, None, Reason::Fixed),
            Concurrency::Adaptive => (
                1,
                Some(Mutex::new(Aimd::new(max, Instant::now()))),
                Reason::Starting,
            ),
        };
        Arc::new(Slots {
            sem: Arc::new(Semaphore::new(limit)),
            aimd,
            debt: AtomicUsize::new(0),
            limit: AtomicU64::new(limit as u64),
            reason: std::sync::atomic::AtomicU8::new(reason as u8),
            backpressure_cuts_total: AtomicU64::new(0),
            slow_response_cuts_total: AtomicU64::new(0),
        })
    }

    /// Whether a request could start now without waiting.
    pub fn free(&self) -> bool {
        self.sem.available_permits() > 0
    }

    /// Why the limit is where it is.
    pub fn reason(&self) -> Reason {
        Reason::of(self.reason.load(Ordering::Relaxed))
    }

    /// Waits for a slot; `None` at shutdown.
    pub async fn acquire(self: &Arc<Self>, stop: &CancellationToken) -> Option<Slot> {
        let permit = tokio::select! {
            _ = stop.cancelled() => return None,
            p = self.sem.clone().acquire_owned() => p.ok()?,
        };
        if self.sem.available_permits() == 0 {
            if let Some(a) = &self.aimd {
                a.lock().unwrap_or_else(|e| e.into_inner()).saturated();
            }
        }
        Some(Slot {
            permit: Some(permit),
            slots: self.clone(),
        })
    }

    /// What a fast-lane request showed (adaptive limits learn from it).
    pub fn record(&self, rtt: Duration, backpressure: bool) {
        let Some(a) = &self.aimd else { return };
        // Slots change under the lock, so concurrent changes apply in their order.
        let mut a = a.lock().unwrap_or_else(|e| e.into_inner());
        let changed = a.record(rtt, backpressure, Instant::now());
        self.reason.store(a.reason() as u8, Ordering::Relaxed);
        let Some(new) = changed else { return };
        let old = self.limit.swap(new as u64, Ordering::Relaxed) as usize;
        if new > old {
            let mut more = new - old;
            // Settle debt first: slots not yet taken back need not be.
            while more > 0
                && self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                    .is_ok()
            {
                more -= 1;
            }
            self.sem.add_permits(more);
        } else {
            let fewer = old - new;
            let taken = self.sem.forget_permits(fewer);
            self.debt.fetch_add(fewer - taken, Ordering::AcqRel);
            match a.reason() {
                Reason::Backpressure => &self.backpressure_cuts_total,
                _ => &self.slow_response_cuts_total,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination serving `capacity` requests at once in `service` each; more wait.
    fn rtt(in_flight: usize, capacity: usize, service: Duration) -> Duration {
        let rounds = in_flight.div_ceil(capacity).max(1) as u32;
        service * rounds
    }

    #[test]
    fn the_limit_settles_near_the_destinations_capacity() {
        let t0 = Instant::now();
        let mut a = Aimd::new(64, t0);
        let service = Duration::from_millis(20);
        let mut limits = Vec::new();
        let mut t = t0;
        for _ in 0..400 {
            // A window: `limit` requests in flight, all slots busy.
            let l = a.limit();
            a.saturated();
            t += rtt(l, 8, service);
            for _ in 0..l {
                a.record(rtt(l, 8, service), false, t);
            }
            limits.push(a.limit());
        }
        let tail = &limits[200..];
        assert!(
            tail.iter().all(|&l| (4..=16).contains(&l)),
            "limits after settling: {tail:?}"
        );
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        assert!((6.0..=12.0).contains(&mean), "mean {mean}: {tail:?}");
    }

    #[test]
    fn backpressure_halves_and_an_idle_sink_does_not_grow() {
        let t0 = Instant::now();
        let mut a = Aimd::new(64, t0);
        let ms = Duration::from_millis;
        // Slow start: doubling while saturated.
        let mut t = t0;
        for want in [2, 4, 8, 16] {
            a.saturated();
            t += ms(60);
            assert_eq!(a.record(ms(5), false, t), Some(want));
            assert_eq!(a.reason(), Reason::Growing);
        }
        t += ms(60);
        assert_eq!(a.record(ms(5), true, t), Some(8));
        assert_eq!(a.reason(), Reason::Backpressure);
        // After congestion: one at a time.
        a.saturated();
        t += ms(60);
        assert_eq!(a.record(ms(5), false, t), Some(9));
        // Not saturated: the limit stays.
        t += ms(60);
        assert_eq!(a.record(ms(5), false, t), None);
        assert_eq!(a.reason(), Reason::Enough);
        // Within a window nothing changes.
        assert_eq!(a.record(ms(5), true, t + ms(1)), None);
        assert_eq!(a.limit(), 9);
    }

    #[test]
    fn the_limit_stays_within_one_and_the_maximum() {
        let t0 = Instant::now();
        let mut a = Aimd::new(3, t0);
        let mut t = t0;
        for _ in 0..10 {
            a.saturated();
            t += Duration::from_millis(60);
            a.record(Duration::from_millis(1), false, t);
        }
        assert_eq!((a.limit(), a.reason()), (3, Reason::AtMax));
        for _ in 0..10 {
            t += Duration::from_millis(60);
            a.record(Duration::from_millis(1), true, t);
        }
        assert_eq!(a.limit(), 1);
    }

    #[tokio::test]
    async fn slots_taken_away_while_in_use_are_not_given_back() {
        let slots = Slots::new(Concurrency::Adaptive, 8);
        let stop = CancellationToken::new();
        // Grow to 4 by hand (slow start: 1 → 2 → 4).
        for n in [1, 2] {
            // Every slot in use: saturated.
            let _all: Vec<Slot> =
                futures_util::future::join_all((0..n).map(|_| slots.acquire(&stop)))
                    .await
                    .into_iter()
                    .map(Option::unwrap)
                    .collect();
            tokio::time::sleep(WINDOW_MIN).await;
            slots.record(Duration::from_millis(1), false);
        }
        assert_eq!(slots.limit.load(Ordering::Relaxed), 4);
        let held: Vec<Slot> = futures_util::future::join_all((0..4).map(|_| slots.acquire(&stop)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        tokio::time::sleep(WINDOW_MIN).await;
        slots.record(Duration::from_millis(1), true);
        assert_eq!(slots.limit.load(Ordering::Relaxed), 2);
        drop(held);
        assert_eq!(slots.sem.available_permits(), 2, "two of four given back");
        assert_eq!(slots.backpressure_cuts_total.load(Ordering::Relaxed), 1);
    }
}
