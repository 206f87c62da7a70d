//! The event times a source accepts: within `[ingest time − past, ingest time + future]`
//! (`sources.X.event_time_window`, default 7 days and 5 minutes).
//!
//! Event time decides which 1-minute loss bucket the ledger opens for an event, so a
//! producer that could send any `i64` would decide how much memory the ledger holds
//! (one request of 10 000 events, each in its own minute, opened 10 000 buckets). Outside
//! the window an event is refused with its reason (the whole request, as for any invalid
//! event), or — when configured — its event time is clamped to the nearest bound and
//! counted. All arithmetic here saturates.

use crate::config::{EventTimeWindow, OutsideWindow};
use crate::event::rfc3339_ms;
use crate::parse::{EventError, ParsedEvent};

/// Checks (or clamps) every event's time against the window around `now_ms`. Returns
/// how many were clamped, or every refused event with its reason. `key` names the
/// setting in messages (`sources.api.event_time_window`).
pub fn apply(
    window: &EventTimeWindow,
    key: &str,
    events: &mut [ParsedEvent],
    now_ms: i64,
) -> Result<u64, Vec<EventError>> {
    let past = i64::try_from(window.past.0.as_millis()).unwrap_or(i64::MAX);
    let future = i64::try_from(window.future.0.as_millis()).unwrap_or(i64::MAX);
    let (lo, hi) = (now_ms.saturating_sub(past), now_ms.saturating_add(future));
    let mut clamped = 0;
    let mut errors = Vec::new();
    for (index, e) in events.iter_mut().enumerate() {
        let Some(t) = e.time_ms else { continue }; // no time: the ingest time
        if (lo..=hi).contains(&t) {
            continue;
        }
        match window.outside {
            OutsideWindow::Clamp => {
                e.time_ms = Some(t.clamp(lo, hi));
                clamped += 1;
            }
            OutsideWindow::Reject => errors.push(EventError {
                index: Some(index),
                reason: format!(
                    "event time {} is {} the ingest time {}; accepted: from {} before to {} after it ({key})",
                    rfc3339_ms(t),
                    if t < lo { "too far before" } else { "too far after" },
                    rfc3339_ms(now_ms),
                    humantime::format_duration(window.past.0),
                    humantime::format_duration(window.future.0),
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(clamped)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;
    use crate::event::EventFormat;
    use crate::units::Dur;
    use std::time::Duration;

    fn event(time_ms: Option<i64>) -> ParsedEvent {
        ParsedEvent {
            id: None,
            source: "s".into(),
            event_type: "t".into(),
            time_ms,
            format: EventFormat::Json,
            value: "{}".into(),
            origin: None,
        }
    }

    fn window(outside: OutsideWindow) -> EventTimeWindow {
        EventTimeWindow {
            past: Dur(Duration::from_secs(3600)),
            future: Dur(Duration::from_secs(60)),
            outside,
        }
    }

    #[test]
    fn times_outside_the_window_are_refused_with_the_reason() {
        let now = 1_800_000_000_000;
        let mut evs = vec![
            event(Some(now)),
            event(None),
            event(Some(now - 3_600_000)),
            event(Some(now + 60_000)),
            event(Some(now + 60_001)),
            event(Some(i64::MIN)),
            event(Some(i64::MAX)),
        ];
        let errs = apply(&window(OutsideWindow::Reject), "k", &mut evs, now).unwrap_err();
        let idx: Vec<_> = errs.iter().map(|e| e.index.unwrap()).collect();
        assert_eq!(idx, [4, 5, 6]);
        assert!(
            errs[0].reason.contains("too far after the ingest time")
                && errs[0].reason.contains("from 1h before to 1m after it (k)"),
            "{}",
            errs[0].reason
        );
        assert!(
            errs[1].reason.contains("too far before"),
            "{}",
            errs[1].reason
        );
    }

    #[test]
    fn clamping_moves_times_to_the_nearest_bound() {
        let now = 1_000;
        let mut evs = vec![
            event(Some(i64::MIN)),
            event(Some(i64::MAX)),
            event(Some(now)),
        ];
        let n = apply(&window(OutsideWindow::Clamp), "k", &mut evs, now).unwrap();
        assert_eq!(n, 2);
        let times: Vec<_> = evs.iter().map(|e| e.time_ms.unwrap()).collect();
        assert_eq!(times, [now - 3_600_000, now + 60_000, now]);
    }
}
