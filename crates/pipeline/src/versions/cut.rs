//! A reader's cut after a publish: which records of the new version it passes over.

use std::collections::{BTreeMap, HashMap};

use hifi_ledger::Origin;

/// Per origin partition, the least origin offset a reader had not handled from the
/// previous version: its records of the published version from below are passed over.
#[derive(Debug, Default, Clone)]
pub struct Cut {
    below: HashMap<String, Vec<Option<u64>>>,
    /// Events from this event time (ms) are delivered again (`--redeliver-from`)…
    redeliver_from_ms: Option<i64>,
    /// … up to this one, when bounded (a window stage's: see [`publish`]).
    redeliver_to_ms: Option<i64>,
    /// A window stage's: the previous version's topic, read to its ends first.
    pub drain: Option<super::registry::Drain>,
}

impl Cut {
    /// From `topic/partition` → offset, and the range of event times delivered again.
    pub fn from_map(
        m: &BTreeMap<String, u64>,
        redeliver_from_ms: Option<i64>,
        redeliver_to_ms: Option<i64>,
    ) -> Cut {
        let mut cut = Cut {
            below: HashMap::new(),
            redeliver_from_ms,
            redeliver_to_ms,
            drain: None,
        };
        for (k, &o) in m {
            let Some((topic, p)) = k.rsplit_once('/') else {
                continue;
            };
            let Ok(p) = p.parse::<usize>() else { continue };
            let v = cut.below.entry(topic.to_owned()).or_default();
            if v.len() <= p {
                v.resize(p + 1, None);
            }
            v[p] = Some(o);
        }
        cut
    }

    /// Whether a reader passes over this record of the published version: its origin
    /// is below the cut, and it is not re-driven from dead letters (those were not
    /// delivered from the version before).
    /// With `--redeliver-from`, events from that event time (up to the bound, if any)
    /// are never passed over.
    pub fn passes_over(
        &self,
        origin: &Origin,
        event_time_ms: i64,
        record: &hifi_log::Record,
    ) -> bool {
        self.skips(origin)
            && record.header(crate::event::header::REDRIVEN).is_none()
            && (self.redeliver_from_ms.is_none_or(|t| event_time_ms < t)
                || self.redeliver_to_ms.is_some_and(|t| event_time_ms > t))
    }

    /// [`Cut::passes_over`] for a window stage, which takes each event once whatever
    /// `--redeliver-from` says (an event counted twice would be a wrong result): every
    /// record at `offset` of partition `p` the new version wrote before the publish —
    /// its event is below the cut (the previous version had it, or dead-lettered it:
    /// re-drives of the candidate's dead letters included), or written again after
    /// the publish (where the new version was ahead it went back to the previous
    /// one's positions) — and, after, what is below the cut but re-drives.
    pub fn passes_over_once(
        &self,
        origin: &Origin,
        record: &hifi_log::Record,
        p: u32,
        offset: u64,
    ) -> bool {
        let before = self
            .drain
            .as_ref()
            .and_then(|d| d.input_ends.get(p as usize))
            .is_some_and(|end| offset < *end);
        before || (self.skips(origin) && record.header(crate::event::header::REDRIVEN).is_none())
    }

    /// Whether a record that is not passed over is delivered a second time: below the
    /// cut, not re-driven (so kept for `--redeliver-from`).
    pub fn redelivers(&self, origin: &Origin, record: &hifi_log::Record) -> bool {
        self.redeliver_from_ms.is_some()
            && self.skips(origin)
            && record.header(crate::event::header::REDRIVEN).is_none()
    }

    /// Whether a record with this origin is below the cut.
    pub fn skips(&self, origin: &Origin) -> bool {
        self.below
            .get(origin.topic.as_str())
            .and_then(|v| v.get(origin.partition as usize).copied().flatten())
            .is_some_and(|o| origin.offset < o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_pass_over_only_what_is_below_them() {
        let cut = Cut::from_map(&BTreeMap::from([("events/1".to_owned(), 10)]), None, None);
        let o = |t: &str, p: u32, offset: u64| Origin {
            topic: t.into(),
            partition: p,
            offset,
        };
        assert!(cut.skips(&o("events", 1, 9)));
        assert!(!cut.skips(&o("events", 1, 10)));
        assert!(!cut.skips(&o("events", 0, 0)), "a partition without a cut");
        assert!(!cut.skips(&o("other", 1, 0)), "a topic without a cut");
    }

    #[test]
    fn a_bounded_redelivery_passes_over_what_is_outside_it() {
        let m = BTreeMap::from([("out.v2/0".to_owned(), 10)]);
        let cut = Cut::from_map(&m, Some(100), Some(200));
        let o = Origin {
            topic: "out.v2".into(),
            partition: 0,
            offset: 5,
        };
        let r = hifi_log::Record::new("{}", 0);
        assert!(cut.passes_over(&o, 99, &r), "before the range");
        assert!(
            cut.passes_over_once(&o, &r, 0, 5),
            "once: the range does not apply"
        );
        assert!(!cut.passes_over(&o, 100, &r) && cut.redelivers(&o, &r));
        assert!(!cut.passes_over(&o, 200, &r), "the range's end is in it");
        assert!(cut.passes_over(&o, 201, &r), "after the range");
        let above = Origin { offset: 10, ..o };
        assert!(!cut.passes_over(&above, 500, &r), "above the cut");
    }

    #[test]
    fn a_window_stage_passes_over_what_was_re_driven_before_the_publish_only() {
        let m = BTreeMap::from([("events/0".to_owned(), 10)]);
        let mut cut = Cut::from_map(&m, Some(0), None);
        cut.drain = Some(crate::versions::registry::Drain {
            topic: "out.v1".into(),
            ends: vec![3],
            input_ends: vec![50],
        });
        let o = Origin {
            topic: "events".into(),
            partition: 0,
            offset: 4,
        };
        let mut redriven = hifi_log::Record::new("{}", 0);
        redriven.headers.push(hifi_log::Header {
            name: crate::event::header::REDRIVEN.into(),
            value: "1".into(),
        });
        let plain = hifi_log::Record::new("{}", 0);
        assert!(cut.passes_over_once(&o, &plain, 0, 60), "below the cut");
        assert!(!cut.passes_over(&o, 5, &plain), "a sink re-delivers it");
        assert!(
            cut.passes_over_once(&o, &redriven, 0, 49),
            "re-driven before"
        );
        assert!(
            !cut.passes_over_once(&o, &redriven, 0, 50),
            "re-driven after"
        );
        let above = Origin { offset: 10, ..o };
        assert!(!cut.passes_over_once(&above, &plain, 0, 60));
        // Written before the publish above the cut: the new version was ahead, and
        // wrote it again after.
        assert!(cut.passes_over_once(&above, &plain, 0, 49));
    }
}
