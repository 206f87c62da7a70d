//! When each request of a load test is due: one rate for `--duration`, or steps of rates
//! (`--ramp 2000:20s,10000:40s,2000:40s`), each request `--batch` events.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A step of a ramp: this many events/s for this long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub rate: u64,
    pub duration: Duration,
}

/// Parses `RATE:DURATION,RATE:DURATION,...` (`--ramp`).
pub fn parse_ramp(s: &str) -> Result<Vec<Step>> {
    let steps: Vec<Step> =
        s.split(',')
            .map(|part| {
                let (rate, d) = part
                    .trim()
                    .split_once(':')
                    .with_context(|| format!("{part:?}: expected RATE:DURATION, e.g. 2000:20s"))?;
                let rate: u64 = rate.trim().parse().with_context(|| {
                    format!("{part:?}: the rate is events per second, e.g. 2000")
                })?;
                let duration = humantime::parse_duration(d.trim())
                    .with_context(|| format!("{part:?}: the duration is e.g. 20s"))?;
                if rate == 0 || duration.is_zero() {
                    bail!("{part:?}: a step needs a rate and a duration above zero");
                }
                Ok(Step { rate, duration })
            })
            .collect::<Result<_>>()?;
    Ok(steps)
}

/// The requests' due times, from the start.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Per step: index of its first request, its start, the time between its requests.
    steps: Vec<(u64, Duration, Duration)>,
    requests: u64,
}

impl Schedule {
    /// `steps` of requests of `batch` events (at least one request per step).
    pub fn new(steps: &[Step], batch: u64) -> Schedule {
        let mut out = Vec::with_capacity(steps.len());
        let (mut first, mut start) = (0u64, Duration::ZERO);
        for s in steps {
            let interval = Duration::from_secs_f64(batch as f64 / s.rate as f64);
            let n = (s.duration.as_secs_f64() / interval.as_secs_f64())
                .round()
                .max(1.0) as u64;
            out.push((first, start, interval));
            first += n;
            start += s.duration;
        }
        Schedule {
            steps: out,
            requests: first,
        }
    }

    /// Requests in all.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// When request `i` is due, from the start.
    pub fn offset(&self, i: u64) -> Duration {
        let k = self.steps.partition_point(|(first, _, _)| *first <= i);
        let (first, start, interval) = self.steps[k.saturating_sub(1)];
        start + interval.mul_f64((i - first) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_is_steps_of_rates_one_after_another() {
        let steps = parse_ramp("1000:2s, 4000:1s,1000:1s").unwrap();
        assert_eq!(steps.len(), 3);
        let s = Schedule::new(&steps, 100);
        // 20 requests, then 40, then 10.
        assert_eq!(s.requests(), 70);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(19), Duration::from_millis(1900));
        assert_eq!(s.offset(20), Duration::from_secs(2));
        assert_eq!(s.offset(21), Duration::from_millis(2025));
        assert_eq!(s.offset(60), Duration::from_secs(3));
        assert_eq!(s.offset(69), Duration::from_millis(3900));
    }

    #[test]
    fn bad_ramps_say_what_is_expected() {
        for (bad, says) in [
            ("2000", "RATE:DURATION"),
            ("fast:10s", "events per second"),
            ("2000:soon", "duration"),
            ("0:10s", "above zero"),
        ] {
            let e = format!("{:#}", parse_ramp(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
