//! `hifi versions gc`: removing retired versions' topics.
//!
//! A **retired** version — neither published nor the file's candidate — is read by no
//! one: readers follow the published version, and a publish moves them past everything
//! the previous one had (its cuts are origin offsets, not positions in its topic). Its
//! topic, its fingerprint's checkpoint topic, the dead-letter topics of its life as a
//! candidate (`__dlq.X-vH`, `.redriven`, `__redrive.X-vH`: a version run again would
//! otherwise find them) and its consumer group (whose positions on the stage's input
//! would otherwise hold that input's retention back on the embedded engine) can go.
//!
//! The registry records the collection **before** anything is deleted: a crash between
//! leaves a version marked collected whose topics are still there, finished by the next
//! collection. A collected version that the file names again starts anew, backfilling
//! into a topic and group of new names ([`super::generation_suffix`]); its fingerprints
//! and `hifi fingerprint diff` against it are gone with its topics.

use hifi_log::{Log, LogError};
use serde::Serialize;

use super::registry::{Change, Registry};
use super::{candidate_name, state_of, Live};
use crate::fingerprint::checkpoint_topic;
use crate::retry::{dlq_topic, redriven_topic};
use crate::stage::redrive_topic;

/// One version collected (or that would be, with `dry_run`).
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub stage: String,
    pub version: String,
    /// Topics deleted (those that were there).
    pub topics: Vec<String>,
    pub group: String,
    /// Records in its topic when collected (what was freed), when it could be read.
    pub records: Option<u64>,
    /// Dead letters of its life as a candidate, deleted with it.
    pub dead_letters: Option<u64>,
    /// `true` when it had been marked collected before and is only finished now.
    pub resumed: bool,
}

/// Collects every retired version of the stages running here (`stage`: only that one);
/// with `dry_run`, says what it would collect and changes nothing.
pub async fn collect(
    log: &dyn Log,
    live: &Live,
    stage: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Collected>, String> {
    let _one_at_a_time = live.collecting.lock().await;
    // The registry as stored (another process may have published since this one read
    // it): a version published or running as a candidate there is never touched.
    let stored = Registry::read(log).await?;
    let mut out = Vec::new();
    for plan in live
        .plans
        .iter()
        .filter(|p| stage.is_none_or(|s| s == p.stage))
    {
        let Some(sv) = stored.stages.get(&plan.stage) else {
            continue;
        };
        let published = sv.published.as_ref().map(|p| p.version.as_str());
        for v in sv.versions.values() {
            let state = state_of(plan, v);
            if !matches!(state, "retired" | "collected") || published == Some(&v.version) {
                continue;
            }
            let candidate = candidate_name(&plan.stage, &v.version);
            let topics = [
                v.topic.clone(),
                checkpoint_topic(&v.topic),
                dlq_topic(&candidate),
                redriven_topic(&candidate),
                redrive_topic(&candidate),
            ];
            if topics.iter().any(|t| live.topics_in_use.contains(t)) {
                continue; // read or written here under that name: not garbage
            }
            let resumed = state == "collected";
            let mut present = Vec::new();
            for t in topics {
                if log.partitions(&t).await.is_ok() {
                    present.push(t);
                }
            }
            if resumed && present.is_empty() {
                continue; // collected whole before
            }
            let records = records_in(log, &v.topic).await;
            let dead_letters = records_in(log, &dlq_topic(&candidate)).await;
            out.push(Collected {
                stage: plan.stage.clone(),
                version: v.version.clone(),
                topics: present,
                group: v.group.clone(),
                records,
                dead_letters,
                resumed,
            });
        }
    }
    if dry_run {
        return Ok(out);
    }
    for c in &out {
        if !c.resumed {
            let change = Change::Collected {
                stage: c.stage.clone(),
                version: c.version.clone(),
                topics: c.topics.clone(),
                group: c.group.clone(),
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            Registry::append(log, &change).await.map_err(|e| {
                format!(
                    "cannot record the collection of {}@{}: {e}",
                    c.stage, c.version
                )
            })?;
            live.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(change);
        }
        for t in &c.topics {
            match log.delete_topic(t).await {
                Ok(()) | Err(LogError::TopicNotFound { .. }) => {}
                Err(e) => {
                    return Err(format!(
                        "cannot delete topic {t:?} of {}@{} (marked collected: `hifi versions gc` finishes it): {e}",
                        c.stage, c.version
                    ))
                }
            }
        }
        log.delete_group(&c.group).await.map_err(|e| {
            format!(
                "cannot delete consumer group {:?} of {}@{} (its topics are gone; `hifi versions gc` tries again): {e}",
                c.group, c.stage, c.version
            )
        })?;
        tracing::info!(stage = %c.stage, version = %c.version, topics = ?c.topics, group = %c.group, "retired version collected");
    }
    Ok(out)
}

/// Records held by a topic's partitions, if its offsets answer.
async fn records_in(log: &dyn Log, topic: &str) -> Option<u64> {
    let n = log.partitions(topic).await.ok()?;
    let mut sum = 0;
    for p in 0..n {
        let o = log.offsets(topic, p).await.ok()?;
        sum += o.end - o.start;
    }
    Some(sum)
}
