//! Publishing a version, with every node of the pipeline stopped (drained, positions
//! committed): the cuts of its readers, the new version's positions, then the record
//! that makes it published. A crash before the record leaves the previous version
//! published (publish again); after it, the nodes start on the new version.

use std::collections::BTreeMap;

use hifi_log::{Log, LogError, PartitionOffsets, ReadLimits};

use super::registry::{Change, Registry};
use super::Request;
use crate::config::LoadedConfig;
use crate::event::EventMeta;

/// Least origin offset per `topic/partition` among the records of `topic` from `group`'s
/// committed positions (the oldest record without one) to the end, folded into `cut`.
/// Returns how many of those records are older (record time) than `covered_from`: the
/// new version does not hold them (its backfill began after them). With `first_only`,
/// stops at the first of them (a check: the count does not matter, and a reader far
/// behind has many records to read).
async fn fold_unread(
    log: &dyn Log,
    group: &str,
    topic: &str,
    cut: &mut BTreeMap<String, u64>,
    covered_from: Option<i64>,
    first_only: bool,
) -> Result<u64, LogError> {
    let mut older = 0;
    for p in 0..log.partitions(topic).await? {
        let offsets = log.offsets(topic, p).await?;
        let mut pos = log
            .committed(group, topic, p)
            .await?
            .unwrap_or(offsets.start)
            .max(offsets.start);
        while pos < offsets.end {
            let limits = ReadLimits {
                max_records: 10_000,
                max_bytes: 16 << 20,
                wait: std::time::Duration::ZERO,
            };
            let records = log.read(topic, p, pos, limits).await?;
            let Some(last) = records.last() else { break };
            pos = last.offset + 1;
            for r in &records {
                if covered_from.is_some_and(|t| r.record.timestamp_ms < t) {
                    older += 1;
                    if first_only {
                        return Ok(older);
                    }
                }
                let o = EventMeta::of(topic, p, r).origin;
                let key = format!("{}/{}", o.topic, o.partition);
                let e = cut.entry(key).or_insert(o.offset);
                *e = (*e).min(o.offset);
            }
        }
    }
    Ok(older)
}

/// From which record time the new version's topic holds what it computed: its backfill
/// start (for a stage reading a versioned output, no earlier than where that output's
/// published version begins: see `resolve`), or later where retention removed its
/// oldest records — the latest oldest record of a trimmed partition counts, which is
/// conservative: a publish may be refused until readers catch up, never let through
/// with a gap. A partition never trimmed holds everything written to it, whatever its
/// first record's time.
async fn covered_from(
    log: &dyn Log,
    topic: &str,
    backfill_from_ms: Option<i64>,
) -> Result<Option<i64>, LogError> {
    let mut from = backfill_from_ms;
    for p in 0..log.partitions(topic).await? {
        let offsets = log.offsets(topic, p).await?;
        if offsets.start == 0 || offsets.start >= offsets.end {
            continue;
        }
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 16 << 20,
            wait: std::time::Duration::ZERO,
        };
        if let Some(first) = log.read(topic, p, offsets.start, limits).await?.first() {
            let t = first.record.timestamp_ms;
            from = Some(from.map_or(t, |f| f.max(t)));
        }
    }
    Ok(from)
}

/// How many records window-stage reader `reader` (consumer group `group`) still has to
/// read of the topic a publish of `sv` left it to finish ([`super::registry::Drain`]),
/// with that topic; `None` when it has none.
pub(super) async fn draining<'a>(
    log: &dyn Log,
    sv: &'a super::registry::StageVersions,
    reader: &str,
    group: &str,
) -> Result<Option<(u64, &'a str)>, LogError> {
    let Some(drain) = sv.published.as_ref().and_then(|p| p.drains.get(reader)) else {
        return Ok(None);
    };
    let mut left = 0;
    for (p, &end) in drain.ends.iter().enumerate() {
        let p = p as u32;
        // From its committed position, else (like `window::run`) the oldest record.
        // What retention deleted is not to read any more.
        let at = async {
            let start = log.offsets(&drain.topic, p).await?.start;
            let at = log.committed(group, &drain.topic, p).await?;
            Ok(at.unwrap_or(start).max(start))
        };
        match at.await {
            Ok(at) => left += end.saturating_sub(at),
            Err(LogError::TopicNotFound { .. }) => return Ok(None), // collected
            Err(e) => return Err(e),
        }
    }
    Ok((left > 0).then_some((left, drain.topic.as_str())))
}

/// The offsets of every partition of `topic`, by partition.
async fn offsets(log: &dyn Log, topic: &str) -> Result<Vec<PartitionOffsets>, LogError> {
    let mut offsets = Vec::new();
    for p in 0..log.partitions(topic).await? {
        offsets.push(log.offsets(topic, p).await?);
    }
    Ok(offsets)
}

/// The ends of `offsets` (of `topic`'s partitions) as a cut: positions by
/// `topic/partition`.
fn cut_at<'a>(
    topic: &'a str,
    offsets: &'a [PartitionOffsets],
) -> impl Iterator<Item = (String, u64)> + 'a {
    offsets
        .iter()
        .enumerate()
        .map(move |(p, o)| (format!("{topic}/{p}"), o.end))
}

/// How long a publish checked with the nodes running waits for a reader to have read
/// what it must have read before the publish: its committed position trails what it
/// delivered (a sink commits every 100 ms; a window reader once it emitted). Found
/// still behind after that, the publish is refused without stopping the nodes.
const UNREAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`fold_unread`] into a fresh copy of `base`; with the nodes running (`check_only`),
/// again every 250 ms until nothing is left or `until` (one [`UNREAD_WAIT`] for all
/// the readers of a publish) passed.
async fn fold_unread_settled(
    log: &dyn Log,
    (group, topic): (&str, &str),
    base: &BTreeMap<String, u64>,
    covered_from: Option<i64>,
    (check_only, until): (bool, std::time::Instant),
) -> Result<(BTreeMap<String, u64>, u64), LogError> {
    loop {
        let mut cut = base.clone();
        let left = fold_unread(log, group, topic, &mut cut, covered_from, check_only).await?;
        if left == 0 || !check_only || std::time::Instant::now() >= until {
            return Ok((cut, left));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Publishes `req.version` of `req.stage` (see the module's documentation of
/// [`super`]). `loaded` is the file as loaded (before [`super::resolve`]).
pub async fn publish(log: &dyn Log, loaded: &LoadedConfig, req: &Request) -> Result<(), String> {
    publish_or_check(log, loaded, req, false).await
}

/// What [`publish`] would refuse, found with the nodes running (read only): a reader
/// behind what the new version holds. Positions move while nodes run, so the publish
/// checks again once they stopped; this spares stopping them for a refusal.
pub async fn check(log: &dyn Log, loaded: &LoadedConfig, req: &Request) -> Result<(), String> {
    publish_or_check(log, loaded, req, true).await
}

async fn publish_or_check(
    log: &dyn Log,
    loaded: &LoadedConfig,
    req: &Request,
    check_only: bool,
) -> Result<(), String> {
    let cfg = &loaded.config;
    let stage = &req.stage;
    let file = cfg
        .stages
        .get(stage)
        .ok_or_else(|| format!("stages.{stage} is not in the pipeline file"))?;
    let mut registry = Registry::read(log).await?;
    let sv = registry
        .stages
        .get(stage)
        .ok_or_else(|| format!("stages.{stage} has no versions"))?;
    let old = sv
        .published
        .as_ref()
        .map(|p| p.version.clone())
        .ok_or_else(|| format!("stages.{stage} has no published version"))?;
    let new = sv
        .versions
        .get(&req.version)
        .ok_or_else(|| format!("stages.{stage} has no version {}", req.version))?
        .clone();
    if old == req.version {
        return Ok(()); // published already (a request repeated)
    }
    let old_group = sv.versions[&old].group.clone();
    let output = file.output.get_ref();
    // The versioned stage whose output it reads, if any.
    let upstream = cfg
        .stages
        .iter()
        .find(|(_, s)| s.versions.is_some() && s.output.get_ref() == file.input.get_ref())
        .map(|(u, _)| u.clone());
    // A versioned input is read in its published version's topic.
    let input_topic = upstream
        .as_ref()
        .and_then(|upstream| {
            let u = registry.stages.get(upstream)?;
            Some(
                u.versions
                    .get(&u.published.as_ref()?.version)?
                    .topic
                    .clone(),
            )
        })
        .unwrap_or_else(|| file.input.get_ref().clone());
    let input = input_topic.as_str();
    let (old_topic, new_topic) = (sv.versions[&old].topic.clone(), new.topic.clone());
    let fail = |e: LogError| {
        let e = e.to_string();
        // Kafka refuses a commit from outside a group that has members: a node of this
        // pipeline running in another process (`--only`).
        let hint = if e.contains("UnknownMemberId") || e.contains("Unknown member") {
            " — a process other than this one has a member in that consumer group (a node of this pipeline run elsewhere with --only): a publish stops only this process's nodes; stop the other processes' nodes of this stage and of its output's readers, or publish from a process running them all"
        } else {
            ""
        };
        format!(
            "cannot publish {} of stages.{stage}: {e}{hint}",
            new.version
        )
    };

    // Every source partition's end: what arrives later is above the cut.
    let mut base: BTreeMap<String, u64> = BTreeMap::new();
    for s in cfg.sources.values() {
        if s.kind != crate::config::SourceType::Http {
            continue;
        }
        let t = s.topic.get_ref();
        base.extend(cut_at(t, &offsets(log, t).await.map_err(fail)?));
    }
    // The old version's unread input: its origins are not delivered yet. What the new
    // version's topic does not reach back to is in neither version: publishing would
    // lose it.
    let covered_from = covered_from(log, &new_topic, new.backfill_from_ms)
        .await
        .map_err(fail)?;
    let behind = |who: &str, n: u64| {
        format!(
            "cannot publish {} of stages.{stage}: {who} has {}{n} records still to handle that are older than what its topic holds (from {}): wait until {who} catches up, or backfill the version from further back (`backfill_from`)",
            new.version,
            if check_only { "at least " } else { "" },
            covered_from.map(crate::event::rfc3339_ms).unwrap_or_default()
        )
    };
    // A window stage's new version goes on from the previous one's state (see
    // `super::windows::takeover`): it reads again what that one had not, whatever its backfill.
    let windows = match &file.window {
        Some(w) => Some(
            super::windows::takeover(
                log,
                stage,
                &old,
                &new.version,
                w.get_ref().size.0.as_millis() as i64,
            )
            .await
            .map_err(|e| format!("cannot publish {} of stages.{stage}: {e}", new.version))?,
        ),
        None => None,
    };
    // A window stage reading a versioned output may still read the topic of its input's
    // version published before (`Drain`): the new version takes that over too, once the
    // published one has read it to its end (it would not hold those events otherwise).
    let reader = format!("stages.{stage}");
    let upstream = upstream.and_then(|u| registry.stages.get(&u));
    let drain = upstream.and_then(|u| u.published.as_ref()?.drains.get(&reader).cloned());
    if let (Some(_), Some(u)) = (&windows, upstream) {
        if let Some((left, topic)) = draining(log, u, &reader, &old_group).await.map_err(fail)? {
            return Err(format!(
                "cannot publish {} of stages.{stage}: the published version {old} has {left} records of {topic:?} (the version of its input published before) still to read or in open windows: publish once it is done with them",
                new.version
            ));
        }
    }
    let older = match windows {
        Some(_) => 0,
        None => fold_unread(log, &old_group, input, &mut base, covered_from, check_only)
            .await
            .map_err(fail)?,
    };
    if older > 0 {
        return Err(behind(&format!("the published version {old}"), older));
    }
    let mut cuts = BTreeMap::new();
    let mut drains = BTreeMap::new();
    // (reader, its consumer group, whether it is a window stage)
    let mut readers: Vec<(String, String, bool)> = Vec::new();
    for (name, s) in &cfg.sinks {
        if s.input.get_ref() == output {
            readers.push((format!("sinks.{name}"), format!("sink.{name}"), false));
        }
    }
    for (name, s) in &cfg.stages {
        if s.input.get_ref() == output {
            let group = registry
                .stages
                .get(name)
                .and_then(|v| {
                    Some(
                        v.versions
                            .get(&v.published.as_ref()?.version)?
                            .group
                            .clone(),
                    )
                })
                .unwrap_or_else(|| crate::config::stage_group(name));
            readers.push((format!("stages.{name}"), group, s.window.is_some()));
        }
    }
    // Readers start on the new topic's oldest record (a version published before may
    // have left positions further on).
    let new_offsets = offsets(log, &new_topic).await.map_err(fail)?;
    let starts: Vec<(u32, u64)> = (0..)
        .zip(&new_offsets)
        .map(|(p, o): (u32, _)| (p, o.start))
        .collect();
    let until = std::time::Instant::now() + UNREAD_WAIT;
    for (reader, group, window_reader) in &readers {
        if windows.is_some() {
            // Every result of the previous version read: the reader passes over what
            // the new one wrote before now (the windows it had, and those the new one
            // emits again from the previous one's state).
            let (_, unread) = fold_unread_settled(
                log,
                (group, &old_topic),
                &BTreeMap::new(),
                Some(i64::MAX),
                (check_only, until),
            )
            .await
            .map_err(fail)?;
            if unread > 0 {
                return Err(format!(
                    "cannot publish {} of stages.{stage}: {reader} has {}{unread} window results of version {old} still to read; they cannot be replaced by the new version's (the ledger would count them lost): publish once it has read them",
                    new.version,
                    if check_only { "at least " } else { "" },
                ));
            }
            cuts.insert(reader.clone(), cut_at(&new_topic, &new_offsets).collect());
            continue;
        }
        if *window_reader {
            // A window stage's open windows hold events of the previous version (its
            // committed positions trail them): it reads that version's topic to its
            // end first, then the new one from above the cut — every origin the
            // previous version had, from it; the others from the new one.
            let sv = &registry.stages[stage];
            if let Some((left, topic)) = draining(log, sv, reader, group).await.map_err(fail)? {
                return Err(format!(
                    "cannot publish {} of stages.{stage}: {reader} has {left} records of {topic:?} (the version published before {old}) still to read or in open windows: publish once it is done with them",
                    new.version
                ));
            }
            let drain = super::registry::Drain {
                topic: old_topic.clone(),
                ends: (offsets(log, &old_topic).await.map_err(fail)?)
                    .iter()
                    .map(|o| o.end)
                    .collect(),
                input_ends: new_offsets.iter().map(|o| o.end).collect(),
            };
            drains.insert(reader.clone(), drain);
            cuts.insert(reader.clone(), base.clone());
            continue;
        }
        let (cut, older) = fold_unread_settled(
            log,
            (group, &old_topic),
            &base,
            covered_from,
            (check_only, until),
        )
        .await
        .map_err(fail)?;
        if older > 0 {
            return Err(behind(reader, older));
        }
        cuts.insert(reader.clone(), cut);
    }
    if check_only {
        return Ok(());
    }
    for (_, group, _) in &readers {
        log.commit_many(group, &new_topic, &starts)
            .await
            .map_err(fail)?;
    }
    // The new version goes back to the old one's positions where it was ahead — where
    // the old one would start: a partition it has no position in (it never committed
    // there: a window stage commits only once a window is emitted) from the oldest
    // record.
    let mut back = Vec::new();
    for p in 0..log.partitions(input).await.map_err(fail)? {
        let start = log.offsets(input, p).await.map_err(fail)?.start;
        let old_at = log.committed(&old_group, input, p).await.map_err(fail)?;
        let old_at = old_at.unwrap_or(start).max(start);
        let new_at = log.committed(&new.group, input, p).await.map_err(fail)?;
        if new_at.is_some_and(|n| old_at < n) {
            back.push((p, old_at));
        }
    }
    if !back.is_empty() {
        log.commit_many(&new.group, input, &back)
            .await
            .map_err(fail)?;
    }
    if let (Some(_), Some(d)) = (&windows, &drain) {
        // Read to its end by the published version (checked above): so by the new one.
        let mut done = Vec::new();
        for p in 0..d.ends.len() as u32 {
            match log.committed(&old_group, &d.topic, p).await {
                Ok(Some(at)) => done.push((p, at)),
                Ok(None) | Err(LogError::TopicNotFound { .. }) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        if !done.is_empty() {
            log.commit_many(&new.group, &d.topic, &done)
                .await
                .map_err(fail)?;
        }
    }
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = file.test_publish_pause_ms {
        tracing::warn!(ms, "test hook: waiting before the publish is recorded");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let redeliver_from_ms = match (&file.window, req.redeliver_from_ms) {
        // Only windows that begin at or after what the backfill read from are whole:
        // its start, or the oldest input retention left (`backfill_from = "retention"`).
        (Some(w), Some(t)) => {
            let from = self::covered_from(log, input, new.backfill_from_ms)
                .await
                .map_err(fail)?;
            let size = w.get_ref().size.0.as_millis() as i64;
            Some(from.map_or(t, |f| t.max(f.saturating_add(size))))
        }
        (_, t) => t,
    };
    let change = Change::Published {
        stage: stage.clone(),
        version: new.version.clone(),
        cuts,
        at_ms: chrono::Utc::now().timestamp_millis(),
        by: req.by.clone(),
        redeliver_from_ms,
        redeliver_to_ms: req.redeliver_from_ms.and(windows),
        drains,
    };
    registry.record(log, change).await.map_err(fail)?;
    Ok(())
}
