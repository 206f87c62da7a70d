//! Request durations by HTTP status, in fixed buckets: what `/metrics` exposes as the
//! `hifi_source_request_duration_seconds` histogram.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the buckets, seconds (the last bucket, `+Inf`, is implicit).
pub const BUCKETS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// The durations of one status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; BUCKETS_S.len() + 1],
    /// Sum of the durations, seconds.
    pub sum_s: f64,
    /// Requests.
    pub count: u64,
}

/// Durations by status code.
#[derive(Debug, Default)]
pub struct Durations(Mutex<BTreeMap<u16, Counts>>);

impl Durations {
    /// Records one request.
    pub fn record(&self, status: u16, took: Duration) {
        let s = took.as_secs_f64();
        let at = BUCKETS_S.partition_point(|le| *le < s);
        let mut by = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = by.entry(status).or_default();
        c.buckets[at] += 1;
        c.sum_s += s;
        c.count += 1;
    }

    /// Every status seen, with its counts.
    pub fn snapshot(&self) -> Vec<(u16, Counts)> {
        let by = self.0.lock().unwrap_or_else(|p| p.into_inner());
        by.iter().map(|(s, c)| (*s, c.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_holds_it() {
        let d = Durations::default();
        d.record(200, Duration::from_micros(500));
        d.record(200, Duration::from_millis(1));
        d.record(200, Duration::from_millis(3));
        d.record(503, Duration::from_secs(60));
        let snap = d.snapshot();
        assert_eq!(snap.len(), 2);
        let ok = &snap[0].1;
        assert_eq!((snap[0].0, ok.count), (200, 3));
        assert_eq!(&ok.buckets[..3], &[2, 0, 1], "≤ 1 ms twice, ≤ 5 ms once");
        assert!((ok.sum_s - 0.0045).abs() < 1e-9);
        assert_eq!(
            snap[1].1.buckets[BUCKETS_S.len()],
            1,
            "past the last bound: +Inf"
        );
    }
}
