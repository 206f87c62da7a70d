//! Settling: each tick reads where the gated nodes are, snapshots the buckets, and
//! turns buckets unchanged for `settle_after` (with no node behind) into loss tables.

use super::*;

/// Events held outside the inputs (see [`Ledger::hold`]).
#[derive(Debug)]
enum Hold {
    None,
    /// Held by this process, or by another that still says so.
    Held(String),
    /// Held by another process that went silent without releasing.
    Lapsed(String),
}

/// Where the gated nodes are: input ends and committed positions, read once per tick.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Input topic → end offset per partition.
    pub(crate) ends: BTreeMap<String, Vec<u64>>,
    /// Node → committed position per partition of its input.
    pub(crate) committed: BTreeMap<String, Vec<u64>>,
}

impl Progress {
    /// The first gated node that has not committed past `ends`, if any.
    fn behind<'a>(
        &self,
        nodes: &'a [NodeSpec],
        ends: &BTreeMap<String, Vec<u64>>,
    ) -> Option<&'a str> {
        nodes.iter().find_map(|n| {
            let (input, _) = (n.input.as_ref()?, n.group.as_ref()?);
            let end = ends.get(input)?;
            let pos = self.committed.get(&n.name)?;
            let behind = end
                .iter()
                .enumerate()
                .any(|(p, e)| pos.get(p).copied().unwrap_or(0) < *e);
            behind.then_some(n.name.as_str())
        })
    }
}

impl Ledger {
    /// Settles every bucket unchanged for `settle_after`: computes and persists its loss
    /// table, raises alarms, drops its bitmaps. Call it periodically (the runtime does,
    /// every second).
    pub async fn tick(&self) -> Result<(), LogError> {
        if self.cfg.follow_journal {
            if let Err(e) = self.share_lag().await {
                warn!(%e, "cannot share lag with the other processes; retrying");
            }
        }
        // Read before the gate: it may wait on the engine (Kafka). A bucket that changes
        // after this read is snapshotted again at the next tick (`inputs_end_at_ms` is
        // the time of the read, not of the snapshot), so no snapshot misses its events.
        // Read before the positions: a hold released after this read was released
        // after its events were appended, so the ends read below include them.
        let held = self.held();
        let progress_at = self.clock.now_ms();
        let progress = self.progress().await?;
        self.keep_backlogs(&progress, progress_at);
        self.read_quarantined().await;
        if let Err(e) = self.restore_reopened().await {
            warn!(%e, "cannot read re-opened buckets back from the journal; retrying");
        }
        let now = self.clock.now_ms();
        let settle = self.cfg.settle_after.as_millis() as i64;
        let max_wait = self.cfg.settle_max_wait.as_millis() as i64;
        // The gate is held only while the tables are computed: flushes hold it from
        // their journal append to their merge, so no table misses a delta that is below
        // its journal end. Storing the tables (engine I/O) happens after, with flushes
        // going on; a bucket that changed meanwhile stays open (see `version`).
        let settling: Vec<(i64, LossTable, Option<LossTable>, u64)> = {
            let _exclusive = self.journal_gate.write().await;
            // Flushes of this process are excluded while this runs, so the journal end
            // cannot move but by other processes sharing the engine; their entries below
            // it are merged before anything settles.
            let journal_end = self.log.offsets(JOURNAL_TOPIC, 0).await?.end;
            if self.cfg.follow_journal {
                self.follow_journal(journal_end).await?;
            }
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // (bucket, settled with events still in a backlog)
            let mut due = Vec::new();
            for (k, b) in st.open.iter_mut() {
                if let Hold::Held(holder) = &held {
                    // Events of any open bucket may still be held outside the inputs;
                    // the ends are read again once they are released. Up to
                    // settle_max_wait: then what is missing settles as a backlog.
                    b.inputs_end = None;
                    if b.last_change_ms.saturating_add(max_wait) <= now {
                        due.push((*k, true));
                    } else {
                        tracing::debug!(%holder, "settling waits for events held outside the inputs");
                    }
                    continue;
                }
                if b.inputs_end.is_none() || b.last_change_ms >= b.inputs_end_at_ms {
                    b.inputs_end = Some(progress.ends.clone());
                    b.inputs_end_at_ms = progress_at;
                }
                if b.last_change_ms + settle > now {
                    continue;
                }
                let ends = b.inputs_end.as_ref().expect("set above");
                if let Hold::Lapsed(holder) = &held {
                    // A process that held events went silent without releasing them:
                    // they may still come (it restarts and moves them), so what is
                    // missing is a backlog, not loss.
                    tracing::debug!(%holder, "settling past a lapsed hold: missing events count as backlog");
                    due.push((*k, true));
                    continue;
                }
                match progress.behind(&self.nodes, ends) {
                    None => due.push((*k, false)),
                    Some(_) if b.last_change_ms.saturating_add(max_wait) <= now => {
                        due.push((*k, true))
                    }
                    Some(_) => {} // its events may still be waiting in a backlog
                }
            }
            let mut settling = Vec::with_capacity(due.len());
            for (bucket, backlog) in due {
                let Some(open) = st.open.get(&bucket) else {
                    continue;
                };
                let previous = st.settled.get(&bucket).cloned();
                let mut table = match (&previous, open.restore) {
                    (None, _) => self.table(bucket, open, true),
                    (Some(_), Restore::Pending) => continue, // next tick
                    (Some(old), Restore::Done) => LossTable {
                        journal_from: old.journal_from,
                        ..self.table(bucket, open, true)
                    },
                    (Some(old), Restore::Unavailable) => self.resettle(old, open),
                };
                if backlog {
                    // Waited settle_max_wait for a backlog: what is missing may still
                    // come; it is not reported as lost.
                    table.backlog = table.e2e_lost;
                    table.e2e_lost = 0;
                    table.e2e_loss_percent = 0.0;
                    table.lost.clear();
                    for n in &mut table.nodes {
                        n.lost = 0;
                    }
                    warn!(bucket = %table.start, waiting = table.backlog,
                        "bucket settled after settle_max_wait with events still in a backlog (not counted as lost)");
                }
                table.journal_end = journal_end;
                table.replay_from = st
                    .open
                    .iter()
                    .filter(|(k, _)| **k != bucket)
                    .map(|(_, b)| b.first_journal_offset)
                    .min()
                    .unwrap_or(journal_end);
                settling.push((bucket, table, previous, open.version));
            }
            settling
        };
        for (bucket, table, previous, version) in settling {
            // Durable first; only then does the bucket leave the open set.
            let value = serde_json::to_vec(&table).expect("loss tables serialise");
            self.log
                .append(SETTLED_TOPIC, 0, vec![Record::new(value, now)])
                .await?;
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.open.get(&bucket).is_some_and(|b| b.version == version) {
                    st.open.remove(&bucket);
                } // else: a delta came in while storing; the bucket re-settles later
                st.settled.insert(bucket, table.clone());
            }
            let old_lost = previous.as_ref().map_or(0, |t| t.e2e_lost);
            if previous.is_none() {
                self.stats
                    .settled_buckets_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            if table.e2e_lost > old_lost {
                self.stats
                    .lost_events_total
                    .fetch_add(table.e2e_lost - old_lost, Ordering::Relaxed);
            }
            if self.alarming(&table) && table.e2e_lost > old_lost {
                self.stats.loss_alarms_total.fetch_add(1, Ordering::Relaxed);
                let at: Vec<_> = table
                    .nodes
                    .iter()
                    .filter(|n| n.lost > 0)
                    .map(|n| format!("{} lost {}", n.node, n.lost))
                    .collect();
                error!(bucket = %table.start, e2e_lost = table.e2e_lost, e2e_loss_percent = table.e2e_loss_percent,
                    where_lost = %at.join(", "), first = ?table.lost.first(), "LOSS ALARM: events lost in a settled bucket");
            }
        }
        let keep_after = (now - self.cfg.history.as_millis() as i64) / 60_000;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.settled.retain(|b, _| *b >= keep_after);
        Ok(())
    }

    /// The quarantined ranges of every origin topic. Only an annotation of lost
    /// origins: a topic that cannot be asked (not created yet, engine away) is left out.
    pub(crate) async fn read_quarantined(&self) {
        let mut q = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.kind == NodeKind::Source) {
            let Some(topic) = &n.output else { continue };
            let Ok(partitions) = self.log.partitions(topic).await else {
                continue;
            };
            for p in 0..partitions {
                match self.log.quarantined(topic, p).await {
                    Ok(ranges) if !ranges.is_empty() => {
                        q.insert((topic.clone(), p), ranges);
                    }
                    _ => {}
                }
            }
        }
        *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()) = q;
    }

    /// The gated nodes' backlogs as of the last tick, in node order.
    pub fn backlogs(&self) -> Vec<Backlog> {
        self.backlogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn keep_backlogs(&self, progress: &Progress, at_ms: i64) {
        let backlogs = self
            .nodes
            .iter()
            .filter_map(|n| {
                let input = n.input.as_ref()?;
                let ends = progress.ends.get(input)?;
                let at = progress.committed.get(&n.name)?;
                Some(Backlog {
                    node: n.name.clone(),
                    input: input.clone(),
                    positions: ends
                        .iter()
                        .enumerate()
                        .map(|(p, end)| (at.get(p).copied().unwrap_or(0).min(*end), *end))
                        .collect(),
                    at_ms,
                })
            })
            .collect();
        *self.backlogs.lock().unwrap_or_else(|p| p.into_inner()) = backlogs;
    }

    /// Marks events that no gated node can read yet as held by `holder` (a source's
    /// standby with records not yet moved into the engine), or releases them. While
    /// any hold is set, no bucket settles: those events are on their way, not lost.
    /// Release only after the held events are appended to their input topic.
    pub fn hold(&self, holder: &str, held: bool) {
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            h.insert(holder.to_owned());
        } else {
            h.remove(holder);
        }
    }

    /// This process's holders.
    pub(crate) fn local_holds(&self) -> Vec<String> {
        let h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().cloned().collect()
    }

    /// Whether events are held outside the inputs: by this process, or by another that
    /// said so within [`REMOTE_HOLD_TTL_MS`] of this process's own reads (held), or
    /// that went silent without releasing its hold (lapsed).
    fn held(&self) -> Hold {
        if let Some(h) = self.local_holds().into_iter().next() {
            return Hold::Held(h);
        }
        let read_ok = self.lag_read_ok_ms.load(Ordering::Relaxed);
        let remote = self.remote_holds.lock().unwrap_or_else(|p| p.into_inner());
        let mut lapsed = None;
        for (holders, at) in remote.values() {
            let Some(h) = holders.first() else { continue };
            if read_ok.saturating_sub(*at) < REMOTE_HOLD_TTL_MS {
                return Hold::Held(h.clone());
            }
            lapsed.get_or_insert_with(|| h.clone());
        }
        lapsed.map_or(Hold::None, Hold::Lapsed)
    }

    /// Input ends and committed positions of the gated nodes (nodes with a group).
    pub(crate) async fn progress(&self) -> Result<Progress, LogError> {
        let mut pr = Progress::default();
        for n in &self.nodes {
            let (Some(input), Some(group)) = (&n.input, &n.group) else {
                continue;
            };
            let partitions = self.log.partitions(input).await?;
            if !pr.ends.contains_key(input) {
                let mut ends = Vec::with_capacity(partitions as usize);
                for p in 0..partitions {
                    ends.push(self.log.offsets(input, p).await?.end);
                }
                pr.ends.insert(input.clone(), ends);
            }
            let mut pos = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let at = hifi_log::read_through(self.log.as_ref(), group, input, p).await?;
                pos.push(at.unwrap_or(0));
            }
            pr.committed.insert(n.name.clone(), pos);
        }
        Ok(pr)
    }

    /// Computes a bucket's table from its tallies.
    pub(crate) fn table(&self, bucket: i64, open: &OpenBucket, settled: bool) -> LossTable {
        let empty = BTreeMap::new();
        let outcomes = |node: &str| open.nodes.get(node).unwrap_or(&empty);
        let get = |node: &str, o: Outcome| outcomes(node).get(&o).cloned().unwrap_or_default();
        let mut rows = Vec::new();
        let mut lost_list = Vec::new();
        let mut lost_total = 0usize;
        for n in &self.nodes {
            let mut seen = OriginSet::new();
            for (o, set) in outcomes(&n.name) {
                // A window stage passes on new events, not the ones it saw.
                if !(n.aggregates && *o == Outcome::Passed) {
                    union_into(&mut seen, set);
                }
            }
            let upstream = self.upstream_passed(n, &open.nodes);
            let lost = difference(&upstream, &seen);
            let mut terminal = get(&n.name, Outcome::Delivered);
            union_into(&mut terminal, &get(&n.name, Outcome::DeadLettered));
            lost_total += count(&lost) as usize;
            let quarantined = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            for o in tally::examples(&lost, LOST_LIST_MAX.saturating_sub(lost_list.len())) {
                let corrupt = o.parse::<Origin>().is_ok_and(|o| {
                    quarantined
                        .get(&(o.topic.clone(), o.partition))
                        .is_some_and(|r| r.iter().any(|r| r.contains(&o.offset)))
                });
                lost_list.push(LostOrigin {
                    origin: o,
                    node: n.name.clone(),
                    reason: corrupt.then(|| "corrupt".to_owned()),
                });
            }
            drop(quarantined);
            rows.push(NodeLoss {
                node: n.name.clone(),
                kind: n.kind,
                seen: count(&seen),
                lost: count(&lost),
                passed: count(&get(&n.name, Outcome::Passed)),
                delivered: count(&get(&n.name, Outcome::Delivered)),
                filtered: count(&get(&n.name, Outcome::Filtered)),
                dead_lettered: count(&get(&n.name, Outcome::DeadLettered)),
                retrying: count(&difference(&get(&n.name, Outcome::Retrying), &terminal)),
                aggregated: count(&get(&n.name, Outcome::Aggregated)),
                redelivered: count(&get(&n.name, Outcome::Redelivered)),
            });
        }
        let mut events = OriginSet::new();
        let mut e2e_lost = OriginSet::new();
        for path in &self.paths {
            let source = &self.nodes[path[0]];
            let stored = get(&source.name, Outcome::Passed);
            union_into(&mut events, &stored);
            let mut terminal = OriginSet::new();
            for &i in &path[..path.len() - 1] {
                // A stage ends an event's path on purpose (filtered, or aggregated into a
                // window's result) or into its dead letters (listed, re-drivable): none
                // is loss. So does a source that dead-letters an event it stored (a
                // record of its standby that the engine refuses).
                for o in [
                    Outcome::Filtered,
                    Outcome::DeadLettered,
                    Outcome::Aggregated,
                ] {
                    union_into(&mut terminal, &get(&self.nodes[i].name, o));
                }
            }
            let sink = &self.nodes[path[path.len() - 1]].name;
            for o in [Outcome::Delivered, Outcome::DeadLettered, Outcome::Retrying] {
                union_into(&mut terminal, &get(sink, o));
            }
            union_into(&mut e2e_lost, &difference(&stored, &terminal));
        }
        let mut origin_topics = BTreeMap::new();
        for ((topic, _), set) in &events {
            *origin_topics.entry(topic.clone()).or_insert(0) += set.len();
        }
        let (events, lost) = (count(&events), count(&e2e_lost));
        let shadow = self
            .cfg
            .shadows
            .iter()
            .map(|(primary, shadow)| {
                let (p, s) = (
                    get(primary, Outcome::Delivered),
                    get(shadow, Outcome::Delivered),
                );
                let (only_p, only_s) = (difference(&p, &s), difference(&s, &p));
                ShadowDiff {
                    primary: primary.clone(),
                    shadow: shadow.clone(),
                    both: count(&p) - count(&only_p),
                    only_primary: count(&only_p),
                    only_primary_examples: tally::examples(&only_p, SHADOW_EXAMPLES),
                    only_shadow: count(&only_s),
                    only_shadow_examples: tally::examples(&only_s, SHADOW_EXAMPLES),
                    primary_dead_lettered: count(&get(primary, Outcome::DeadLettered)),
                    shadow_dead_lettered: count(&get(shadow, Outcome::DeadLettered)),
                }
            })
            .collect();
        let start_ms = bucket * 60_000;
        LossTable {
            start: rfc3339(start_ms),
            start_ms,
            settled,
            events,
            origin_topics,
            nodes: rows,
            e2e_lost: lost,
            e2e_loss_percent: if events == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / events as f64
            },
            lost: lost_list,
            lost_complete: lost_total <= LOST_LIST_MAX,
            journal_end: 0,
            replay_from: 0,
            journal_from: Some(open.first_journal_offset),
            backlog: 0,
            shadow,
        }
    }

    /// Late outcomes for a settled bucket: origins now seen leave the lost list.
    pub(crate) fn resettle(&self, old: &LossTable, late: &OpenBucket) -> LossTable {
        let mut t = old.clone();
        let seen_at = |node: &str, o: &Origin| {
            late.nodes
                .get(node)
                .is_some_and(|outs| outs.values().any(|s| tally::contains(s, o)))
        };
        let mut recovered: BTreeMap<String, u64> = BTreeMap::new();
        t.lost.retain(|l| {
            let found = l
                .origin
                .parse::<Origin>()
                .is_ok_and(|o| seen_at(&l.node, &o));
            if found {
                *recovered.entry(l.node.clone()).or_default() += 1;
            }
            !found
        });
        for row in &mut t.nodes {
            let r = recovered.get(&row.node).copied().unwrap_or(0);
            row.lost -= r.min(row.lost);
            row.seen += r;
        }
        let sinks: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Sink)
            .map(|n| n.name.as_str())
            .collect();
        let delivered_late: u64 = recovered
            .iter()
            .filter(|(n, _)| sinks.contains(n.as_str()))
            .map(|(_, c)| *c)
            .sum();
        t.e2e_lost -= delivered_late.min(t.e2e_lost);
        t.e2e_loss_percent = if t.events == 0 {
            0.0
        } else {
            t.e2e_lost as f64 * 100.0 / t.events as f64
        };
        t
    }

    /// Origins passed on by the nodes writing `n`'s input topic.
    pub(crate) fn upstream_passed(
        &self,
        n: &NodeSpec,
        tallies: &BTreeMap<String, BTreeMap<Outcome, OriginSet>>,
    ) -> OriginSet {
        let mut out = OriginSet::new();
        let Some(input) = &n.input else { return out };
        for w in self
            .nodes
            .iter()
            .filter(|w| w.output.as_ref() == Some(input))
        {
            if let Some(set) = tallies.get(&w.name).and_then(|o| o.get(&Outcome::Passed)) {
                union_into(&mut out, set);
            }
        }
        out
    }
}
