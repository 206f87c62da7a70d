//! When a fingerprinted topic's buckets are complete, and what is signalled then:
//! `hifi.bucket.complete`, `hifi.bucket.updated` for late events, `hifi.audit.failed`
//! for each failing audit of a complete bucket.
//!
//! A bucket is complete once the watermark is `lateness` past its end and the ledger
//! settled its minutes. The watermark moves with the event times read; on a **quiet**
//! topic — read to its end, nothing new for `idle_timeout`, and its writer caught up
//! (an HTTP source: what it acknowledged is in the topic; a stage: its consumer group
//! committed its input to the end, and commits follow the writes) — it moves with the
//! wall clock, as a window stage's does when all its input is idle. Every writer up the
//! chain must be caught up, upstream first: a stage caught up on the output of one
//! still behind has not seen all its events yet. Otherwise the last
//! bucket of a burst would wait for the next event, however long. An event that comes
//! later into a complete bucket updates it (`hifi.bucket.updated`).

use hifi_log::Log;
use hifi_log::LogError;

use tracing::warn;

use super::Fingerprinter;
use crate::signals::bucket_signal;

/// What tells that the nodes writing a fingerprinted topic (and those before them) have
/// written all they have.
#[derive(Debug, Clone, PartialEq)]
pub enum Writer {
    /// Written by HTTP sources (what one acknowledged is in its topic) and stages: each
    /// stage on the way, as its consumer group and input, upstream first (what a stage
    /// committed of its input was written first).
    Known(Vec<(String, String)>),
    /// Nothing tells (a Kafka source on the way: its backlog is in another cluster; a
    /// topic no node of the file writes): the watermark moves with event times only.
    Unknown,
}

impl Writer {
    /// The writers of `topic` in `cfg` and before them, up to the sources.
    pub fn of(cfg: &crate::config::PipelineConfig, topic: &str) -> Writer {
        let mut stages = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        match chain(cfg, topic, &mut seen, &mut stages) {
            true => Writer::Known(stages),
            false => Writer::Unknown,
        }
    }
}

/// Appends to `out` the stages writing `topic`, each after those before it; false when
/// a writer on the way cannot tell (a Kafka source) or a topic has none.
fn chain(
    cfg: &crate::config::PipelineConfig,
    topic: &str,
    seen: &mut std::collections::BTreeSet<String>,
    out: &mut Vec<(String, String)>,
) -> bool {
    let mut written = false;
    for s in cfg.sources.values().filter(|s| s.topic.get_ref() == topic) {
        if s.kind != crate::config::SourceType::Http {
            return false;
        }
        written = true;
    }
    for (name, s) in cfg
        .stages
        .iter()
        .filter(|(_, s)| s.output.get_ref() == topic)
    {
        written = true;
        if !seen.insert(name.clone()) {
            continue;
        }
        let input = s.input.get_ref();
        if !chain(cfg, input, seen, out) {
            return false;
        }
        let group = s.consumer_group(name);
        out.push((group, input.clone()));
    }
    written
}

/// Whether `group` has read every partition of `input` to its end
/// ([`hifi_log::read_through`]; a partition holding nothing it had to read counts as
/// done); any error counts as not.
async fn caught_up(log: &dyn Log, group: &str, input: &str) -> bool {
    let Ok(partitions) = log.partitions(input).await else {
        return false;
    };
    for p in 0..partitions {
        let (Ok(offsets), Ok(at)) = (
            log.offsets(input, p).await,
            hifi_log::read_through(log, group, input, p).await,
        ) else {
            return false;
        };
        if at.unwrap_or(offsets.start).max(offsets.start) < offsets.end {
            return false;
        }
    }
    true
}

impl Fingerprinter {
    /// Whether nothing was read for `idle_timeout` and the writer has written all it
    /// has (see the module's documentation). Whether the topic is read to its end is
    /// asked apart, after this.
    async fn quiet(&self) -> bool {
        let idle = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.last_read_at.is_some_and(|t| t.elapsed() >= self.idle)
        };
        if !idle {
            return false;
        }
        let Writer::Known(stages) = &self.writer else {
            return false;
        };
        for (group, input) in stages {
            if !caught_up(self.log.as_ref(), group, input).await {
                return false;
            }
        }
        true
    }

    /// Signals the buckets that became complete (the watermark is past their end by
    /// `lateness`, and the ledger settled their events) and the complete ones that late
    /// events changed since their last signal; remembered with the next checkpoint (a
    /// crash in between sends them again, with the same ids).
    ///
    /// The watermark is per partition: the largest event time read, except that a
    /// partition not read to its end yet holds it at the largest event time read *there*
    /// (its reader being behind must not complete a bucket with its events uncounted).
    /// On a quiet topic (see [`Fingerprinter::quiet`]) it is at least the wall clock.
    pub(super) async fn signal(&self) -> Result<(), LogError> {
        let Some((signals, ledger)) = &self.signals else {
            return Ok(());
        };
        // Asked before the topic's ends are read: what the writer had written when it
        // was found caught up is below them.
        let quiet = self.quiet().await;
        // Taken together: a partition judged read to its end is judged with the figures
        // of that moment.
        let (read_to, partitions, max_time_ms) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                st.read_to.clone(),
                st.partition_max_ms.clone(),
                st.max_time_ms,
            )
        };
        let mut behind = Vec::new();
        for (p, &at) in read_to.iter().enumerate() {
            let end = match self.log.offsets(&self.topic, p as u32).await {
                Ok(o) => o.end,
                Err(_) => u64::MAX, // unknown: taken as behind
            };
            // What is left to read may be a damaged range no reader gets past.
            let quarantined_tail = at < end
                && self
                    .log
                    .quarantined(&self.topic, p as u32)
                    .await
                    .is_ok_and(|q| q.iter().any(|r| r.start <= at && r.end >= end));
            if at < end && !quarantined_tail {
                behind.push(partitions.get(p).copied().unwrap_or(i64::MIN));
            }
        }
        let mut out = Vec::new();
        let mut marks = Vec::new();
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let read_to_end = behind.is_empty();
            let mut watermark = behind.into_iter().fold(max_time_ms, i64::min);
            if quiet && read_to_end {
                watermark = watermark.max(chrono::Utc::now().timestamp_millis());
            }
            let watermark = watermark.saturating_sub(self.lateness_ms);
            for (start, b) in &st.buckets {
                let end = start + self.bucket_ms;
                let before = st.completed.get(start);
                if before.is_some_and(|before| before.count == b.count) {
                    continue;
                }
                // A bucket shorter than the ledger's minute waits for the minute
                // holding it.
                let minute_end = (end + 59_999).div_euclid(60_000) * 60_000;
                if before.is_none()
                    && (end > watermark
                        || ledger
                            .as_ref()
                            .is_some_and(|l| !l.settled_between(*start, minute_end)))
                {
                    continue;
                }
                let input = self.input.get().map(|i| i.completed(*start));
                if self.audits.iter().any(|a| a.needs_input) && input == Some(None) {
                    continue; // its input's bucket is not complete yet
                }
                // The published version's bucket, when it has one (else `{}`).
                let published = self
                    .published
                    .get()
                    .map(|f| (f.completed(*start), f.has_bucket(*start)));
                if self.audits.iter().any(|a| a.needs_published)
                    && matches!(published, Some((None, true)))
                {
                    continue; // the published version's bucket is not complete yet
                }
                let published = published
                    .and_then(|(s, _)| s)
                    .map(|s| crate::audit::variables(&s));
                let after = b.summary();
                let v = crate::audit::variables(&after);
                let input = input.flatten().map(|s| crate::audit::variables(&s));
                let previous = st
                    .buckets
                    .get(&(start - self.bucket_ms))
                    .map(|p| crate::audit::variables(&p.summary()));
                let verdicts = crate::audit::run(
                    &self.audits,
                    &v,
                    input.as_ref(),
                    previous.as_ref(),
                    published.as_ref(),
                );
                let subject = format!("{}/{}", self.topic, crate::event::rfc3339_ms(*start));
                let mut data = serde_json::json!({
                    "node": self.node, "topic": self.topic,
                    "bucket_start": crate::event::rfc3339_ms(*start),
                    "bucket_start_ms": start, "bucket_end_ms": end, "count": after.count,
                    "audits": verdicts,
                });
                for failed in verdicts.iter().filter(|v| !v.passed) {
                    let mut d = data.clone();
                    d["audit"] = failed.audit.clone().into();
                    d["check"] = failed.check.clone().into();
                    d["error"] = failed.error.clone().into();
                    d["v"] = v.clone();
                    d["input"] = input.clone().unwrap_or_default();
                    d["previous"] = previous.clone().unwrap_or_default();
                    d["published"] = published.clone().unwrap_or_default();
                    d["blocking"] = failed.blocking.into();
                    let id = format!(
                        "{}/{start}/audit/{}/{}",
                        self.topic, failed.audit, after.count
                    );
                    out.push(bucket_signal(
                        &self.node,
                        "hifi.audit.failed",
                        id,
                        subject.clone(),
                        d,
                    ));
                }
                if let Some(before) = before {
                    data["late_events"] = (after.count - before.count.min(after.count)).into();
                    data["before"] = serde_json::to_value(before).unwrap_or_default();
                    data["after"] = serde_json::to_value(&after).unwrap_or_default();
                    let id = format!("{}/{start}/updated/{}", self.topic, after.count);
                    out.push(bucket_signal(
                        &self.node,
                        "hifi.bucket.updated",
                        id,
                        subject,
                        data,
                    ));
                } else {
                    data["fingerprint"] = serde_json::to_value(&after).unwrap_or_default();
                    let id = format!("{}/{start}/complete", self.topic);
                    out.push(bucket_signal(
                        &self.node,
                        "hifi.bucket.complete",
                        id,
                        subject,
                        data,
                    ));
                }
                marks.push((*start, after, verdicts));
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        for s in out.iter().filter(|s| s["type"] == "hifi.audit.failed") {
            warn!(node = %self.node, bucket = %s["data"]["bucket_start"], audit = %s["data"]["audit"],
                check = %s["data"]["check"], error = %s["data"]["error"], "audit failed");
        }
        signals.emit(out).await?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (start, after, verdicts) in marks {
            st.completed.insert(start, after);
            st.verdicts.insert(start, verdicts);
            st.dirty.insert(start); // so the next checkpoint is written
        }
        Ok(())
    }
}
