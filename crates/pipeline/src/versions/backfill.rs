//! Where a new version's backfill starts, and its start positions on the input.

use hifi_log::Log;

use super::registry::Registry;
use crate::config::StageConfig;

/// Where a candidate's backfill starts (`backfill_from`): `None` for the oldest retained
/// input, else an event time in ms.
pub fn backfill_from_ms(text: &str, now_ms: i64) -> Result<Option<i64>, String> {
    if text == "retention" {
        return Ok(None);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.timestamp_millis()));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(Some(now_ms - d.as_millis() as i64));
    }
    Err(format!(
        "{text:?} is not \"retention\", an RFC 3339 time (\"2026-12-06T10:00:00Z\") or a duration before the version starts (\"1h\")"
    ))
}

/// Where a new version of stage `file` starts its backfill (event time, ms; `None` for
/// the oldest retained input): its `backfill_from`, no earlier than where its versioned
/// input's published version begins (`upstream`, see [`input_begins`]); a window
/// stage's from the start of the window that time falls in.
pub(super) fn backfill_start(
    registry: &Registry,
    upstream: Option<&str>,
    file: &StageConfig,
    now: i64,
) -> Result<Option<i64>, String> {
    let versions = file.versions.as_ref().ok_or("not versioned")?;
    let own = backfill_from_ms(&versions.backfill_from, now)?;
    let from = match input_begins(registry, upstream) {
        // Its input (the upstream's published version) begins there: nothing older can
        // be read, nor differ when only the input changed.
        Some(t) => Some(own.map_or(t, |o| o.max(t))),
        None => own,
    };
    let size = file
        .window
        .as_ref()
        .map(|w| w.get_ref().size.0.as_millis() as i64);
    Ok(match (from, size) {
        (Some(t), Some(size)) if size > 0 => Some(t.div_euclid(size) * size),
        _ => from,
    })
}

/// Where the published version of the versioned stage `upstream` (whose output a stage
/// reads) began its backfill (record time, ms): its topic begins there, so a version of
/// the reading stage computes nothing older — and, when only its input changed, nothing
/// older can differ. `None` when it covers all retained input (a first version, or a
/// backfill from `"retention"`).
fn input_begins(registry: &Registry, upstream: Option<&str>) -> Option<i64> {
    let up = registry.stages.get(upstream?)?;
    up.versions
        .get(&up.published.as_ref()?.version)?
        .backfill_from_ms
}

/// Where a backfill from event time `from_ms` begins in partition `p` of `input` (whose
/// offsets are `offsets`): its first record at or after that time, the oldest retained
/// for `None`.
pub(crate) async fn backfill_position(
    log: &dyn Log,
    input: &str,
    p: u32,
    from_ms: Option<i64>,
    offsets: hifi_log::PartitionOffsets,
) -> Result<u64, hifi_log::LogError> {
    Ok(match from_ms {
        None => offsets.start,
        Some(t) => log
            .offset_for_time(input, p, t)
            .await?
            .unwrap_or(offsets.end)
            .max(offsets.start),
    })
}

/// Whether `group` has a position in any partition of `input` (its backfill started).
pub(super) async fn started(log: &dyn Log, group: &str, input: &str) -> Result<bool, String> {
    let fail =
        |e: hifi_log::LogError| format!("cannot read the positions of {group} on {input}: {e}");
    for p in 0..log.partitions(input).await.map_err(fail)? {
        if log
            .committed(group, input, p)
            .await
            .map_err(fail)?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Commits a candidate's start positions on its input: the first record at or after
/// `from_ms` in each partition (the oldest retained with `None`). Unless `force`d, a
/// group that has positions already (a crash after this, before the version was
/// recorded) keeps them.
pub(super) async fn start_backfill(
    log: &dyn Log,
    group: &str,
    input: &str,
    from_ms: Option<i64>,
    force: bool,
) -> Result<(), String> {
    let fail =
        |e: hifi_log::LogError| format!("cannot set the backfill start of {group} on {input}: {e}");
    let partitions = log.partitions(input).await.map_err(fail)?;
    let mut positions = Vec::new();
    for p in 0..partitions {
        if !force
            && log
                .committed(group, input, p)
                .await
                .map_err(fail)?
                .is_some()
        {
            continue;
        }
        let offsets = log.offsets(input, p).await.map_err(fail)?;
        let at = backfill_position(log, input, p, from_ms, offsets)
            .await
            .map_err(fail)?;
        positions.push((p, at));
    }
    if !positions.is_empty() {
        log.commit_many(group, input, &positions)
            .await
            .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_from_takes_retention_times_and_durations() {
        assert_eq!(backfill_from_ms("retention", 0), Ok(None));
        assert_eq!(
            backfill_from_ms("2026-12-06T10:00:00Z", 0),
            Ok(Some(1_796_551_200_000))
        );
        assert_eq!(backfill_from_ms("1h", 7_200_000), Ok(Some(3_600_000)));
        assert!(backfill_from_ms("yesterday", 0).is_err());
    }
}
