//! `hifi versions gc`: removing retired versions' topics.
//!
//! A **retired** version — neither published nor the file's candidate — is read by no
//! one: readers follow the published version, and a publish moves them past everything
//! the previous one had (its cuts are origin offsets, not positions in its topic). Its
//! topic, its fingerprint's checkpoint topic, the dead-letter topics of its life as a
//! candidate (`__dlq.X-vH`, `.redriven`, `__redrive.X-vH`, and a window stage's
//! `__window.X-vH`: a version run again would otherwise find them) and its consumer group (whose positions on the stage's input
//! would otherwise hold that input's retention back on the embedded engine) can go.
//!
//! Left alone: a version whose candidate-life dead letters were not all re-driven
//! (unless asked: they may be the only copy of events it never delivered), and a
//! version this process did not know as it is now when it started (created or run
//! again since, by another process: it may be running there).
//!
//! The registry records the collection **before** anything is deleted. Every
//! collection's names stay in the registry ([`super::registry::Garbage`]): each `gc`
//! deletes what is left of them (a collection stopped half-way), even for a version
//! run again since under new names ([`super::generation_suffix`]). A collected version's
//! fingerprints and `hifi fingerprint diff` against it are gone with its topics.

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
    /// Dead letters of its life as a candidate (all re-driven, or deleted as asked).
    pub dead_letters: Option<u64>,
    /// `true` when it had been collected before and what was left is deleted now.
    pub resumed: bool,
}

/// A retired version left alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub stage: String,
    pub version: String,
    pub reason: String,
}

/// What a collection did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Collection {
    pub collected: Vec<Collected>,
    pub kept: Vec<Kept>,
}

/// Collects every retired version of the stages running here (`stage`: only that one);
/// with `dry_run`, says what it would collect and changes nothing. Dead letters not
/// re-driven keep a version unless `with_dead_letters`.
pub async fn collect(
    log: &dyn Log,
    live: &Live,
    stage: Option<&str>,
    dry_run: bool,
    with_dead_letters: bool,
) -> Result<Collection, String> {
    let _one_at_a_time = live.collecting.lock().await;
    // The registry as stored (another process may have published since this one read
    // it): a version published there is never touched.
    let stored = Registry::read(log).await?;
    let known = live
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = Collection::default();
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
            if state_of(plan, v) != "retired" || published == Some(&v.version) {
                continue;
            }
            let kept = |reason: String| Kept {
                stage: plan.stage.clone(),
                version: v.version.clone(),
                reason,
            };
            let as_started = known
                .stages
                .get(&plan.stage)
                .and_then(|s| s.versions.get(&v.version))
                .is_some_and(|k| k.created_ms == v.created_ms);
            if !as_started {
                out.kept.push(kept(
                    "created or run again since this process started (it may be running in another process): ask the process that runs it, or restart this one".into(),
                ));
                continue;
            }
            let candidate = candidate_name(&plan.stage, &v.version);
            let topics = version_topics(&plan.stage, v);
            if let Some(t) = topics.iter().find(|t| live.topics_in_use.contains(*t)) {
                out.kept.push(kept(format!(
                    "its topic {t:?} is read or written by a node of this pipeline"
                )));
                continue;
            }
            let dead_letters = records_in(log, &dlq_topic(&candidate)).await;
            let pending = not_redriven(log, &candidate).await;
            if pending > 0 && !with_dead_letters {
                out.kept.push(kept(format!(
                    "{pending} dead letters of its life as a candidate were not re-driven (re-drive or inspect them, or collect with dead letters)"
                )));
                continue;
            }
            let mut present = Vec::new();
            for t in topics {
                // Deleted when not known for absent (a deletion of a missing topic is
                // quietly nothing).
                if !matches!(
                    log.partitions(&t).await,
                    Err(hifi_log::LogError::TopicNotFound { .. })
                ) {
                    present.push(t);
                }
            }
            out.collected.push(Collected {
                stage: plan.stage.clone(),
                version: v.version.clone(),
                topics: present,
                group: v.group.clone(),
                records: records_in(log, &v.topic).await,
                dead_letters,
                resumed: false,
            });
        }
    }
    // What earlier collections left (stopped half-way): deleted again.
    for g in stored
        .garbage
        .iter()
        .filter(|g| stage.is_none_or(|s| s == g.stage))
    {
        if out
            .collected
            .iter()
            .any(|c| c.stage == g.stage && c.version == g.version && c.group == g.group)
        {
            continue;
        }
        // A version run again since has names of its own again (its candidate's
        // dead-letter topics are named after the version, not its life): never those.
        let current = stored
            .stages
            .get(&g.stage)
            .and_then(|s| s.versions.get(&g.version))
            .filter(|v| v.collected_ms.is_none())
            .map(|v| {
                let mut names = version_topics(&g.stage, v);
                names.push(v.group.clone());
                names
            })
            .unwrap_or_default();
        let mut present = Vec::new();
        for t in &g.topics {
            if !live.topics_in_use.contains(t)
                && !current.contains(t)
                && !matches!(
                    log.partitions(t).await,
                    Err(hifi_log::LogError::TopicNotFound { .. })
                )
            {
                present.push(t.clone());
            }
        }
        if !dry_run && !current.contains(&g.group) {
            // Quietly: a group deleted before is not an error.
            if let Err(e) = log.delete_group(&g.group).await {
                tracing::warn!(group = %g.group, %e, "cannot delete a collected version's group; the next gc tries again");
            }
        }
        if !present.is_empty() {
            out.collected.push(Collected {
                stage: g.stage.clone(),
                version: g.version.clone(),
                records: None,
                dead_letters: None,
                topics: present,
                group: g.group.clone(),
                resumed: true,
            });
        }
    }
    if dry_run {
        return Ok(out);
    }
    for c in &out.collected {
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
                        "cannot delete topic {t:?} of {}@{} (recorded as collected: the next `hifi versions gc` deletes what is left): {e}",
                        c.stage, c.version
                    ))
                }
            }
        }
        log.delete_group(&c.group).await.map_err(|e| {
            format!(
                "cannot delete consumer group {:?} of {}@{} (its topics are gone; the next `hifi versions gc` tries again): {e}",
                c.group, c.stage, c.version
            )
        })?;
        tracing::info!(stage = %c.stage, version = %c.version, topics = ?c.topics, group = %c.group, "retired version collected");
    }
    Ok(out)
}

/// The topics of version `v` of `stage` that a collection deletes: its own, its
/// fingerprint's checkpoints, and those of its life as a candidate (dead letters,
/// re-drives, window checkpoints), named after the version.
fn version_topics(stage: &str, v: &super::registry::Version) -> Vec<String> {
    let candidate = candidate_name(stage, &v.version);
    vec![
        v.topic.clone(),
        checkpoint_topic(&v.topic),
        dlq_topic(&candidate),
        redriven_topic(&candidate),
        redrive_topic(&candidate),
        crate::window::checkpoint_topic(&candidate),
    ]
}

/// Dead letters of a node (one partition) not re-driven: its `.redriven` topic lists
/// re-driven offsets. None when there is no DLQ.
async fn not_redriven(log: &dyn Log, node: &str) -> u64 {
    let Ok(o) = log.offsets(&dlq_topic(node), 0).await else {
        return 0;
    };
    let done = crate::retry::redriven(log, node).await.unwrap_or_default();
    (o.end - o.start).saturating_sub(done.range(o.start..o.end).count() as u64)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use std::sync::Arc;

    use hifi_log::{Record, TopicSpec};

    use super::*;
    use crate::config::PublishMode;
    use crate::versions::Plan;

    fn created(version: &str, topic: &str, group: &str, at_ms: i64) -> Change {
        Change::Created {
            stage: "s".into(),
            version: version.into(),
            definition: String::new(),
            input_schema: None,
            input_version: None,
            group: group.into(),
            topic: topic.into(),
            backfill_from_ms: None,
            at_ms,
        }
    }

    fn published(version: &str) -> Change {
        Change::Published {
            stage: "s".into(),
            version: version.into(),
            cuts: Default::default(),
            at_ms: 0,
            by: "test".into(),
            redeliver_from_ms: None,
            redeliver_to_ms: None,
            drains: Default::default(),
        }
    }

    async fn exists(log: &dyn Log, topic: &str) -> bool {
        log.partitions(topic).await.is_ok()
    }

    /// Dead letters not re-driven keep a retired version unless asked; a version created
    /// after the process started is kept; what a collection left half-way is deleted by
    /// the next one.
    #[tokio::test]
    async fn gc_keeps_what_may_still_matter_and_finishes_what_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(
            hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap(),
        );
        let log = log.as_ref();
        Registry::prepare(log).await.unwrap();
        let mut registry = Registry::default();
        for c in [
            created("v1", "out.v1", "stage.s", 1),
            published("v1"),
            created("v2", "out.v2", "stage.s-vv2", 2),
            published("v2"),
            created("v3", "out.v3", "stage.s-vv3", 3),
        ] {
            registry.record(log, c).await.unwrap();
        }
        for t in ["out.v1", "out.v2", "out.v3", "__dlq.s-vv3", "out.gone"] {
            log.ensure_topic(&TopicSpec::new(t, 1)).await.unwrap();
        }
        // v3 dead-lettered an event as a candidate, never re-driven.
        log.append("__dlq.s-vv3", 0, vec![Record::new("{}", 1)])
            .await
            .unwrap();
        let plan = Plan {
            stage: "s".into(),
            output: "out".into(),
            input: "events".into(),
            published: "v2".into(),
            candidate: None,
            candidate_topic: None,
            candidate_group: None,
            publish: PublishMode::Manual,
            versions: None,
            batch: 100,
        };
        let live = Live::new(
            vec![plan],
            registry.clone(),
            ["events".to_owned(), "out.v2".to_owned()].into(),
        );
        // After this process started: another one creates v4, and a collection of an
        // older version stopped after its record, before deleting `out.gone`.
        Registry::append(log, &created("v4", "out.v4", "stage.s-vv4", 4))
            .await
            .unwrap();
        let left = Change::Collected {
            stage: "s".into(),
            version: "v0".into(),
            topics: vec!["out.gone".into()],
            group: "stage.s-vv0".into(),
            at_ms: 5,
        };
        Registry::append(log, &left).await.unwrap();

        let c = collect(log, &live, None, false, false).await.unwrap();
        let names = |c: &Collection| -> Vec<(String, bool)> {
            c.collected
                .iter()
                .map(|c| (c.version.clone(), c.resumed))
                .collect()
        };
        assert_eq!(
            names(&c),
            [("v1".to_owned(), false), ("v0".to_owned(), true)],
            "{c:?}"
        );
        let kept: Vec<&str> = c.kept.iter().map(|k| k.version.as_str()).collect();
        assert_eq!(kept, ["v3", "v4"], "{c:?}");
        assert!(c.kept[0].reason.contains("1 dead letters"), "{c:?}");
        assert!(!exists(log, "out.v1").await && !exists(log, "out.gone").await);
        assert!(exists(log, "out.v2").await && exists(log, "out.v3").await);

        let c = collect(log, &live, None, false, true).await.unwrap();
        assert_eq!(names(&c), [("v3".to_owned(), false)], "{c:?}");
        assert!(!exists(log, "out.v3").await && !exists(log, "__dlq.s-vv3").await);
        let stored = Registry::read(log).await.unwrap();
        let state = |v: &str| stored.stages["s"].versions[v].collected_ms.is_some();
        assert!(state("v1") && state("v3") && !state("v2") && !state("v4"));
    }
}
