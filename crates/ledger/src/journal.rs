//! The journal: loading settled tables and replaying `__ledger` at start, following
//! the entries other processes append, and sharing lag histograms through
//! `__ledger_lag`.

use super::*;

impl Ledger {
    pub(crate) async fn load(&self) -> Result<(), LogError> {
        let mut settled = BTreeMap::new();
        let mut replay_from = 0;
        hifi_log::read_to_end(self.log.as_ref(), SETTLED_TOPIC, 0, 0, |r| {
            match serde_json::from_slice::<LossTable>(&r.record.value) {
                Ok(t) => {
                    replay_from = t.replay_from;
                    settled.insert(t.start_ms / 60_000, t);
                }
                Err(e) => warn!(%e, "unreadable settled loss table skipped"),
            }
        })
        .await?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).settled = settled;
        let end = self.log.offsets(JOURNAL_TOPIC, 0).await?.end;
        *self.journal_read.lock().await = replay_from;
        let replayed = self.follow_journal(end).await?;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        info!(
            replayed,
            open_buckets = st.open.len(),
            settled_buckets = st.settled.len(),
            "ledger loaded"
        );
        Ok(())
    }

    /// Merges the journal's entries from where the last call ended up to `end` (those of
    /// other processes sharing the engine; this process's own are merged already, and
    /// merging a set twice changes nothing). Returns the entries merged.
    pub(crate) async fn follow_journal(&self, end: u64) -> Result<usize, LogError> {
        let mut read = self.journal_read.lock().await;
        if *read >= end {
            return Ok(0);
        }
        let mut entries = Vec::new();
        let mut last = None;
        hifi_log::read_to_end(self.log.as_ref(), JOURNAL_TOPIC, 0, *read, |r| {
            last = Some(r.offset);
            if let Some(e) = tally::decode_entry(&r.record.value) {
                entries.push((r.offset, e));
            }
        })
        .await?;
        let now = self.clock.now_ms();
        let merged = entries.len();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (offset, e) in entries {
            if st
                .settled
                .get(&e.bucket)
                .is_some_and(|t| offset < t.journal_end)
            {
                continue; // already counted in that settled table
            }
            let b = st.open.entry(e.bucket).or_insert_with(|| OpenBucket {
                first_journal_offset: offset,
                ..OpenBucket::default()
            });
            let set = b
                .nodes
                .entry(e.node)
                .or_default()
                .entry(e.outcome)
                .or_default();
            let before = count(set);
            union_into(set, &BTreeMap::from([(e.origin_partition, e.offsets)]));
            if count(set) != before {
                b.last_change_ms = now;
            }
        }
        if let Some(l) = last {
            *read = (*read).max(l + 1);
        }
        Ok(merged)
    }

    /// Publishes the lag this process recorded since the last call on [`LAG_TOPIC`] and
    /// adds what other processes published, so every process shows every node's lag.
    pub(crate) async fn share_lag(&self) -> Result<(), LogError> {
        let now = self.clock.now_ms();
        let mut records = Vec::new();
        for (node, rec) in &self.lag {
            let out = rec.lock().unwrap_or_else(|p| p.into_inner()).take_outbox();
            if let Some(set) = out {
                let v = serde_json::json!({"process": self.process_id, "node": node, "lag": set.encode()});
                records.push(Record::new(v.to_string(), now));
            }
        }
        if !records.is_empty() {
            // A sample lost to an error here only leaves other processes' lag views short.
            self.log.append(LAG_TOPIC, 0, records).await?;
        }
        let mut read = self.lag_read.lock().await;
        let mut remote = Vec::new();
        let mut remote_holds = BTreeMap::new();
        let mut next = *read;
        hifi_log::read_to_end(self.log.as_ref(), LAG_TOPIC, 0, *read, |r| {
            next = r.offset + 1;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.record.value) else {
                return;
            };
            let Some(process) = v["process"].as_u64() else {
                return;
            };
            if process == self.process_id {
                return;
            }
            if let Some(holds) = v["holds"].as_array() {
                let holders = holds.iter().filter_map(|h| h.as_str().map(str::to_owned));
                remote_holds.insert(process, (holders.collect(), now));
                return;
            }
            if let (Some(node), Some(set)) = (v["node"].as_str(), lag::LagSet::decode(&v["lag"])) {
                remote.push((node.to_owned(), set));
            }
        })
        .await?;
        *read = next;
        self.lag_read_ok_ms.store(now, Ordering::Relaxed);
        let mut held = self.remote_holds.lock().unwrap_or_else(|p| p.into_inner());
        held.extend(remote_holds);
        // A process silent for settle_max_wait is gone: its lapsed holds are forgotten.
        let forget = self.cfg.settle_max_wait.as_millis() as i64;
        held.retain(|_, (holders, at)| !holders.is_empty() && now - *at < forget);
        drop(held);
        for (node, set) in remote {
            if let Some(rec) = self.lag.get(&node) {
                rec.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add_remote(&set, now);
            }
        }
        Ok(())
    }
}

impl Ledger {
    /// Says this process's holds to the other processes (every second while any is set,
    /// and a release once), through [`LAG_TOPIC`]. Call it every second from a task of its
    /// own: a hold said from the settling tick alone could lapse while a slow tick waits
    /// for the engine.
    pub async fn say_holds(&self) -> Result<(), LogError> {
        if !self.cfg.follow_journal {
            return Ok(());
        }
        let holds = self.local_holds();
        let was_said = self.holds_shared.load(Ordering::Relaxed);
        if holds.is_empty() && !was_said {
            return Ok(());
        }
        let v = serde_json::json!({"process": self.process_id, "holds": holds});
        let record = Record::new(v.to_string(), self.clock.now_ms());
        self.log.append(LAG_TOPIC, 0, vec![record]).await?;
        self.holds_shared
            .store(!holds.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Reads back, for every bucket re-opened by outcomes that came after it settled, the
    /// sets it settled with (the journal from the table's `journal_from` to its
    /// `journal_end`), so that its next table counts every event — also events it never
    /// saw before it settled (a source's backlog after an outage longer than
    /// `settle_after`), which a table patched with the late outcomes alone would miss.
    /// One pass over the journal for all of them; memory holds the buckets' sets only.
    pub(crate) async fn restore_reopened(&self) -> Result<(), LogError> {
        let pending: BTreeMap<i64, (Option<u64>, u64)> = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.open
                .iter()
                .filter(|(_, b)| b.restore == Restore::Pending)
                .filter_map(|(k, _)| {
                    let t = st.settled.get(k)?;
                    Some((*k, (t.journal_from, t.journal_end)))
                })
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let start = self.log.offsets(JOURNAL_TOPIC, 0).await?.start;
        let (readable, unavailable): (BTreeMap<_, _>, BTreeMap<_, _>) = pending
            .into_iter()
            .partition(|(_, (from, _))| from.is_some_and(|f| f >= start));
        let from = readable.values().filter_map(|(f, _)| *f).min();
        let until = readable.values().map(|(_, end)| *end).max().unwrap_or(0);
        let mut restored: BTreeMap<i64, BTreeMap<String, BTreeMap<Outcome, OriginSet>>> =
            BTreeMap::new();
        if let Some(from) = from {
            let mut chunks =
                hifi_log::ChunksToEnd::start(self.log.as_ref(), JOURNAL_TOPIC, 0, from).await?;
            'read: while let Some(chunk) = chunks.next().await? {
                for r in chunk {
                    if r.offset >= until {
                        break 'read;
                    }
                    let Some(e) = tally::decode_entry(&r.record.value) else {
                        continue;
                    };
                    let Some((Some(f), end)) = readable.get(&e.bucket) else {
                        continue;
                    };
                    if r.offset < *f || r.offset >= *end {
                        continue;
                    }
                    let set = restored
                        .entry(e.bucket)
                        .or_default()
                        .entry(e.node)
                        .or_default()
                        .entry(e.outcome)
                        .or_default();
                    union_into(set, &BTreeMap::from([(e.origin_partition, e.offsets)]));
                }
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for bucket in readable.keys() {
            let Some(b) = st.open.get_mut(bucket) else {
                continue;
            };
            for (node, outcomes) in restored.remove(bucket).unwrap_or_default() {
                for (outcome, set) in outcomes {
                    union_into(
                        b.nodes
                            .entry(node.clone())
                            .or_default()
                            .entry(outcome)
                            .or_default(),
                        &set,
                    );
                }
            }
            b.restore = Restore::Done;
        }
        for bucket in unavailable.keys() {
            if let Some(b) = st.open.get_mut(bucket) {
                warn!(bucket = bucket.saturating_mul(60_000),
                    "a re-opened bucket's earlier records are no longer in the journal; its table is patched with the late outcomes only");
                b.restore = Restore::Unavailable;
            }
        }
        Ok(())
    }
}
