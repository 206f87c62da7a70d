//! Ingest latency over time: a histogram per second of the schedule, kept only until
//! that second's requests finished, and the run's total.

use super::*;

pub(super) fn latency_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Ingest latency overall and per second of the schedule.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// All requests.
    pub(super) total: Option<Histogram<u64>>,
    /// Per second of the schedule.
    pub(super) seconds: Vec<Second>,
    /// The latest second with a request started.
    pub(super) latest: usize,
}

/// The requests scheduled in one second. Its histogram (~180 KiB) is reduced to its
/// quantiles once every request of the second has finished, so an hour-long run does not
/// keep 3 600 of them.
#[derive(Debug, Clone, Default)]
pub(super) struct Second {
    /// Events acknowledged.
    pub(super) acked: u64,
    /// Requests started and not finished.
    pub(super) outstanding: u64,
    /// Latency of the acknowledged requests, while the second is open.
    pub(super) open: Option<Histogram<u64>>,
    /// Their quantiles, once it is closed.
    pub(super) closed: Quantiles,
}

impl Timeline {
    /// A request scheduled in `second` starts.
    pub(super) fn start(&mut self, second: usize) {
        while self.seconds.len() <= second {
            self.seconds.push(Second::default());
        }
        self.seconds[second].outstanding += 1;
        // Requests start in schedule order: once one of `second` starts, earlier seconds
        // get no more requests.
        if second > self.latest {
            let before = self.latest;
            self.latest = second;
            for s in before..second {
                self.close_if_done(s);
            }
        }
    }

    /// A request of `second` finished: acknowledged after `us`, or never (`None`).
    pub(super) fn finish(&mut self, second: usize, us: Option<u64>, events: u64) {
        let s = &mut self.seconds[second];
        s.outstanding -= 1;
        if let Some(us) = us {
            s.acked += events;
            s.open
                .get_or_insert_with(latency_histogram)
                .saturating_record(us);
            self.total
                .get_or_insert_with(latency_histogram)
                .saturating_record(us);
        }
        if second < self.latest {
            self.close_if_done(second);
        }
    }

    pub(super) fn close_if_done(&mut self, second: usize) {
        let s = &mut self.seconds[second];
        if s.outstanding == 0 {
            if let Some(h) = s.open.take() {
                s.closed = Quantiles::of(&h);
            }
        }
    }

    /// Percentiles of all acknowledged requests.
    pub(super) fn overall(&self) -> Quantiles {
        self.total.as_ref().map(Quantiles::of).unwrap_or_default()
    }

    pub(super) fn per_second(&self) -> Vec<SecondStats> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, s)| SecondStats {
                t: t as u64,
                acked: s.acked,
                ingest_ms: s.open.as_ref().map_or(s.closed, Quantiles::of),
                e2e_ms: None,
            })
            .collect()
    }

    /// Histograms kept (open seconds and the total), for the memory test.
    #[cfg(test)]
    pub(super) fn histograms(&self) -> usize {
        self.seconds.iter().filter(|s| s.open.is_some()).count() + usize::from(self.total.is_some())
    }
}
