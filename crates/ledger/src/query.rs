//! Reading the ledger: loss tables, lag, and where one event (or many) went.

use super::*;

impl Ledger {
    /// Loss tables of buckets starting in `[from_ms, to_ms)`, newest first: settled ones
    /// as stored, open ones computed now (`settled: false`). A bucket re-opened by
    /// outcomes that came after it settled shows the figures it settled with, not final
    /// (`settled: false`) until it settles again.
    pub fn loss(&self, from_ms: i64, to_ms: i64) -> Vec<LossTable> {
        let (from, to) = (from_ms.div_euclid(60_000), to_ms.div_euclid(60_000));
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<i64, LossTable> = st
            .settled
            .range(from..to)
            .map(|(k, t)| (*k, t.clone()))
            .collect();
        for (k, b) in st.open.range(from..to) {
            match out.get_mut(k) {
                Some(settled) => settled.settled = false,
                None => {
                    out.insert(*k, self.table(*k, b, false));
                }
            }
        }
        out.into_values().rev().collect()
    }

    /// Whether every bucket starting in `[from_ms, to_ms)` has settled (or saw nothing):
    /// its events' outcomes are final.
    pub fn settled_between(&self, from_ms: i64, to_ms: i64) -> bool {
        let (from, to) = (from_ms.div_euclid(60_000), to_ms.div_euclid(60_000));
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        from >= to || st.open.range(from..to).next().is_none()
    }

    /// Open buckets and settled tables held in memory.
    pub fn bucket_counts(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.open.len(), st.settled.len())
    }

    /// Shows `f` each node's lag histograms since start (under that node's lock: keep
    /// `f` short), in node order.
    pub fn visit_lag(&self, mut f: impl FnMut(&str, NodeKind, &lag::LagSet)) {
        for n in &self.nodes {
            let rec = self.lag[&n.name].lock().unwrap_or_else(|p| p.into_inner());
            f(&n.name, n.kind, &rec.cumulative);
        }
    }

    /// Lag per node.
    pub fn lag(&self) -> LagReport {
        let now = self.clock.now_ms();
        let mut nodes = Vec::new();
        let mut e2e = None::<hdrhistogram::Histogram<u64>>;
        let mut history: BTreeMap<i64, HistoryPoint> = BTreeMap::new();
        for n in &self.nodes {
            let mut rec = self.lag[&n.name].lock().unwrap_or_else(|p| p.into_inner());
            rec.roll(now);
            let summary = rec.cumulative.summary();
            if n.kind == NodeKind::Sink {
                match &mut e2e {
                    Some(h) => {
                        let _ = h.add(&rec.cumulative.lag_out);
                    }
                    None => e2e = Some(rec.cumulative.lag_out.clone()),
                }
            }
            for w in rec.history() {
                let p = history.entry(w.start_ms).or_insert_with(|| HistoryPoint {
                    t: rfc3339(w.start_ms + lag::WINDOW_MS),
                    ..Default::default()
                });
                p.nodes.insert(
                    n.name.clone(),
                    HistoryNode {
                        events: w.lag.events,
                        process_p50_ms: w.lag.process_ms.p50,
                        lag_out_p95_ms: w.lag.lag_out_ms.p95,
                    },
                );
                if n.kind == NodeKind::Sink {
                    p.e2e_p95_ms = p.e2e_p95_ms.max(w.lag.lag_out_ms.p95);
                }
            }
            nodes.push(NodeLag {
                node: n.name.clone(),
                kind: n.kind,
                skewed_events: rec.skewed_events,
                lag: summary,
            });
        }
        LagReport {
            window_s: (lag::WINDOW_MS / 1000) as u64,
            nodes,
            e2e_ms: e2e.as_ref().map(Quantiles::of).unwrap_or_default(),
            history: history.into_values().collect(),
        }
    }

    /// What the ledger knows of one event: its bucket (from its event time) and, per
    /// node, its outcomes (open bucket) or whether it was lost there (settled bucket).
    pub fn trace(&self, origin: &Origin, event_time_ms: i64) -> Trace {
        let bucket = bucket_of(event_time_ms);
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        if let Some(b) = st.open.get(&bucket) {
            for n in &self.nodes {
                let outcomes: Vec<Outcome> = b
                    .nodes
                    .get(&n.name)
                    .map(|o| {
                        o.iter()
                            .filter(|(_, s)| tally::contains(s, origin))
                            .map(|(k, _)| *k)
                            .collect()
                    })
                    .unwrap_or_default();
                let upstream = self.upstream_passed(n, &b.nodes);
                let lost_here = outcomes.is_empty() && tally::contains(&upstream, origin);
                nodes.push(TraceNode {
                    node: n.name.clone(),
                    kind: n.kind,
                    outcomes,
                    lost_here,
                });
            }
            // A settled bucket re-opened by later outcomes holds only those: an event
            // it does not know is answered from the settled table.
            let unknown = nodes.iter().all(|n| n.outcomes.is_empty() && !n.lost_here);
            if !(unknown && st.settled.contains_key(&bucket)) {
                return Trace {
                    bucket: rfc3339(bucket * 60_000),
                    settled: false,
                    nodes,
                    note: None,
                };
            }
            nodes.clear();
        }
        if let Some(t) = st.settled.get(&bucket) {
            let lost_at: Option<&str> = t
                .lost
                .iter()
                .find(|l| l.origin == origin.to_string())
                .map(|l| l.node.as_str());
            for n in &self.nodes {
                nodes.push(TraceNode {
                    node: n.name.clone(),
                    kind: n.kind,
                    outcomes: Vec::new(),
                    lost_here: lost_at == Some(n.name.as_str()),
                });
            }
            let note = match lost_at {
                Some(node) => format!("lost at {node} (bucket settled)"),
                None if t.lost_complete => {
                    "not lost: the bucket settled and this event is not in its lost list".into()
                }
                None => {
                    "not in the kept lost list (the bucket lost more events than are listed)".into()
                }
            };
            return Trace {
                bucket: t.start.clone(),
                settled: true,
                nodes,
                note: Some(note),
            };
        }
        Trace {
            bucket: rfc3339(bucket * 60_000),
            settled: false,
            nodes,
            note: Some(
                "no tallies for this event's bucket (outside history, or not yet recorded)".into(),
            ),
        }
    }
    /// The fates of many events (origin, event time ms) under one lock — what a load
    /// test asks about the events that did not arrive. Cheap per event: set lookups, no
    /// upstream sets are built.
    pub fn fates(&self, events: &[(Origin, i64)]) -> Vec<Fate> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost_lists: HashMap<i64, HashMap<String, &str>> = HashMap::new();
        events
            .iter()
            .map(|(origin, time_ms)| {
                let bucket = bucket_of(*time_ms);
                if let Some(b) = st.open.get(&bucket) {
                    let mut outcomes: Vec<Outcome> = b
                        .nodes
                        .values()
                        .flat_map(|o| {
                            o.iter()
                                .filter(|(_, s)| tally::contains(s, origin))
                                .map(|(k, _)| *k)
                        })
                        .collect();
                    // A re-opened settled bucket holds only the later outcomes: an event
                    // it does not know is answered from the settled table.
                    if !(outcomes.is_empty() && st.settled.contains_key(&bucket)) {
                        outcomes.retain(|o| *o != Outcome::Passed);
                        outcomes.sort_unstable_by_key(|o| *o as u8);
                        outcomes.dedup();
                        return Fate::Open(outcomes);
                    }
                }
                let Some(t) = st.settled.get(&bucket) else {
                    return Fate::Unknown;
                };
                let lost = lost_lists.entry(bucket).or_insert_with(|| {
                    t.lost
                        .iter()
                        .map(|l| (l.origin.clone(), l.node.as_str()))
                        .collect()
                });
                match lost.get(&origin.to_string()) {
                    Some(node) => Fate::Lost((*node).to_owned()),
                    None if t.lost_complete => Fate::NotLost,
                    None => Fate::Unlisted,
                }
            })
            .collect()
    }
}
