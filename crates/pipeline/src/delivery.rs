//! The rules of delivery, kept free of I/O so they are tested with controllable time:
//! how an answer is classified, how long to back off, when the circuit breaker opens,
//! and how fast global retries may go.
//!
//! | answer | class |
//! |---|---|
//! | 2xx | success |
//! | connect error, reset, DNS failure, timeout, 408, 429, 5xx | recoverable (retried) |
//! | any other 4xx (400, 401, 404, 413, 422, …) | non-recoverable (never retried; a batch is bisected to find the bad events, which are dead-lettered) |
//!
//! Per sink, `classify.recoverable = [404]` / `classify.non_recoverable = [501]` move
//! status codes between the two classes.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// What an answer means for the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Delivered.
    Success,
    /// May succeed later; `retry_after` is the destination's `Retry-After`. `transport`:
    /// the destination could not be reached at all (connection refused or reset, DNS,
    /// timeout) — a destination-wide outage, which the circuit breaker waits out instead
    /// of spending the batch's attempts.
    Recoverable {
        reason: String,
        retry_after: Option<Duration>,
        transport: bool,
    },
    /// Never will: dead-letter (after isolating the failing events).
    NonRecoverable { status: u16, reason: String },
}

/// Status-code overrides of one sink.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// Statuses retried although they would not be by default.
    pub recoverable: Vec<u16>,
    /// Statuses dead-lettered although they would be retried by default.
    pub non_recoverable: Vec<u16>,
}

impl Classifier {
    /// Classifies an HTTP status (`retry_after` from the response, if any).
    pub fn status(&self, status: u16, body_snippet: &str, retry_after: Option<Duration>) -> Class {
        let reason = if body_snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body_snippet}")
        };
        if (200..300).contains(&status) {
            return Class::Success;
        }
        let default_recoverable = status == 408 || status == 429 || (500..600).contains(&status);
        let recoverable = if self.recoverable.contains(&status) {
            true
        } else if self.non_recoverable.contains(&status) {
            false
        } else {
            default_recoverable || !(400..500).contains(&status)
        };
        if recoverable {
            let honoured = matches!(status, 429 | 503).then_some(retry_after).flatten();
            Class::Recoverable {
                reason,
                retry_after: honoured,
                transport: false,
            }
        } else {
            Class::NonRecoverable { status, reason }
        }
    }

    /// A transport failure (connection refused or reset, DNS, timeout): recoverable.
    pub fn transport(&self, error: &str) -> Class {
        Class::Recoverable {
            reason: error.to_owned(),
            retry_after: None,
            transport: true,
        }
    }
}

/// Parses `Retry-After`: seconds, or an HTTP date (capped at one hour).
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            let at =
                std::time::UNIX_EPOCH + Duration::from_millis(t.timestamp_millis().max(0) as u64);
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(Duration::from_secs(3600)))
}

/// Exponential backoff with full jitter: uniform in [0, min(max, min · 2^attempt)], but
/// never less than `retry_after`.
pub fn backoff(
    min: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let jittered =
        Duration::from_micros(rand::thread_rng().gen_range(0..=cap.as_micros().max(1) as u64));
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

/// A per-sink circuit breaker: after `threshold` consecutive failed requests it opens
/// and lets one probe through `probe_min` later, then at gaps doubling up to
/// `probe_max`; a success closes it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    probe_min: Duration,
    probe_max: Duration,
    failures: u32,
    /// When open: the earliest time of the next probe.
    open_until: Option<Instant>,
    /// When open: the gap before the probe after the next.
    gap: Duration,
}

/// What the breaker says about sending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Send.
    Go,
    /// Open: wait until then (a probe may go at that time).
    WaitUntil(Instant),
}

impl Breaker {
    /// A closed breaker (`probe_min` is at most `probe_max`).
    pub fn new(threshold: u32, probe_min: Duration, probe_max: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            probe_min: probe_min.min(probe_max),
            probe_max,
            failures: 0,
            open_until: None,
            gap: probe_min,
        }
    }

    /// May a request go now? While open, one caller at a time gets through as a probe.
    pub fn gate(&mut self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Go,
            Some(t) if now >= t => {
                // Let this one probe; others wait for the next probe slot.
                self.gap = self.gap.saturating_mul(2).min(self.probe_max);
                self.open_until = Some(now + self.gap);
                Gate::Go
            }
            Some(t) => Gate::WaitUntil(t),
        }
    }

    /// Records a request's result; returns `Some(true)` when the breaker just opened,
    /// `Some(false)` when it just closed.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        if ok {
            self.failures = 0;
            return self.open_until.take().map(|_| false);
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold && self.open_until.is_none() {
            self.gap = self.probe_min;
            self.open_until = Some(now + self.gap);
            return Some(true);
        }
        None
    }

    /// Whether the breaker is open.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// A token bucket: `rate` tokens per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate_per_s: u64, now: Instant) -> Self {
        let rate = rate_per_s.max(1) as f64;
        RateLimit {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Its rate (tokens per second).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the rate (at least 1 per second); the tokens held stay within a second's.
    pub fn set_rate(&mut self, rate_per_s: f64) {
        self.rate = rate_per_s.max(1.0);
        self.tokens = self.tokens.min(self.rate);
    }

    /// Takes `n` tokens if there are enough; otherwise how long until there will be.
    pub fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        let n = (n as f64).min(self.rate);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
}

/// Waits for `n` tokens of `limit`; false if `stop` comes first.
pub async fn pace(
    limit: &std::sync::Mutex<RateLimit>,
    n: u64,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    loop {
        let r = limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(n, Instant::now());
        match r {
            Ok(()) => return true,
            Err(wait) => {
                if !crate::consumer::sleep_or_cancel(stop, wait).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_table_and_the_overrides() {
        let c = Classifier::default();
        assert_eq!(c.status(204, "", None), Class::Success);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(c.status(s, "", None), Class::Recoverable { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(c.status(s, "", None), Class::NonRecoverable { .. }),
                "{s}"
            );
        }
        let o = Classifier {
            recoverable: vec![404],
            non_recoverable: vec![501],
        };
        assert!(matches!(o.status(404, "", None), Class::Recoverable { .. }));
        assert!(matches!(
            o.status(501, "", None),
            Class::NonRecoverable { .. }
        ));
        // Retry-After is honoured on 429 and 503 only.
        let ra = Some(Duration::from_secs(2));
        assert!(matches!(
            c.status(429, "", ra),
            Class::Recoverable {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            c.status(500, "", ra),
            Class::Recoverable {
                retry_after: None,
                ..
            }
        ));
        assert!(
            matches!(c.status(422, "bad field", None), Class::NonRecoverable { status: 422, reason } if reason.contains("bad field"))
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        let date = chrono::DateTime::from_timestamp(1_700_000_030, 0)
            .unwrap()
            .to_rfc2822();
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("999999", now),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn backoff_has_full_jitter_within_its_cap_and_respects_retry_after() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..10 {
            let cap = (min * (1 << attempt)).min(max);
            for _ in 0..50 {
                assert!(backoff(min, max, attempt, None) <= cap);
            }
        }
        assert!(backoff(min, max, 0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_probes_with_backoff_and_closes() {
        let s = Duration::from_secs;
        let mut b = Breaker::new(3, s(1), s(5));
        let t0 = Instant::now();
        assert_eq!(b.gate(t0), Gate::Go);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(
            b.record(false, t0),
            Some(true),
            "third consecutive failure opens it"
        );
        assert_eq!(
            b.gate(t0 + Duration::from_millis(500)),
            Gate::WaitUntil(t0 + s(1)),
            "the first probe comes probe_min after opening"
        );
        // Failed probes: the gaps double up to probe_max.
        for gap in [2, 4, 5, 5] {
            tokio::time::advance(b.open_until.unwrap() - Instant::now()).await;
            let t = Instant::now();
            assert_eq!(b.gate(t), Gate::Go, "one probe");
            assert_eq!(
                b.gate(t),
                Gate::WaitUntil(t + s(gap)),
                "only one probe per slot; the next after {gap} s"
            );
            assert_eq!(b.record(false, t), None, "a failed probe keeps it open");
            assert!(b.is_open());
        }
        let t = Instant::now();
        assert_eq!(b.record(true, t), Some(false), "a success closes it");
        assert_eq!(b.gate(t), Gate::Go);
        for _ in 0..3 {
            b.record(false, t);
        }
        assert_eq!(
            b.gate(t),
            Gate::WaitUntil(t + s(1)),
            "reopened: probes start at probe_min again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(100, t0);
        assert!(r.take(100, t0).is_ok());
        let wait = r.take(50, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(wait).await;
        assert!(r.take(50, Instant::now()).is_ok());
    }
}
