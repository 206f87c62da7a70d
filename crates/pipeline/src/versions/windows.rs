//! Versions of window stages. A window stage's results are new origins (their own
//! place in its topic), and its state (which windows were emitted, how far each input
//! partition was read) is in its checkpoints (`__window.<running name>`), so a new
//! version cannot take over by origins like a row stage's: it takes over at the
//! published version's last emitted window ([`takeover`]). A candidate's window state
//! must match its group's positions: a version that returns from publication backfills
//! anew from a reset state (`Change::Backfilled`).

use hifi_log::Log;

/// Makes the candidate `X-vH` start without window state (an empty checkpoint): a new
/// version (its name may hold the state of a life collected half-way), or one that
/// returns from publication.
pub(super) async fn reset_checkpoint(log: &dyn Log, candidate: &str) -> Result<(), String> {
    crate::window::reset_checkpoint(log, candidate)
        .await
        .map_err(|e| format!("cannot reset the window state of {candidate}: {e}"))
}

/// A window stage's new version takes over from the previous one's state: it runs under
/// the stage's name from then on, so it reads the previous version's checkpoint (every
/// window up to `emitted_below` emitted) and goes back to its input positions where it
/// was ahead (as every version does): it emits again each later window, with the same
/// ids. Its readers pass over everything it wrote before the publish — so nothing is
/// delivered twice — which needs the new version to have emitted at least every window
/// the previous one had. Returns up to where that one emitted (the end of the range a
/// `--redeliver-from` re-delivers: later windows are emitted again anyway).
///
/// The new version's first window must begin where the previous one's last emitted
/// window ended (a new window size that does not divide the old one lines up only at
/// some boundaries): a window across that boundary would be computed from the events
/// the new version reads again only — part of it.
pub(super) async fn takeover(
    log: &dyn Log,
    stage: &str,
    old: &str,
    new: &str,
    size_ms: i64,
) -> Result<i64, String> {
    let had = crate::window::emitted_below(log, stage)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(i64::MIN);
    if had != i64::MIN && size_ms > 0 && had.rem_euclid(size_ms) != 0 {
        return Err(format!(
            "its windows ({} ms) do not begin where the published version {old}'s last emitted window ended ({}): publish when they do (its windows begin at every multiple of its size)",
            size_ms,
            crate::event::rfc3339_ms(had)
        ));
    }
    let candidate = super::candidate_name(stage, new);
    let has = crate::window::emitted_below(log, &candidate)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(i64::MIN);
    if has < had {
        let at = |t: i64| {
            if t <= 0 {
                "none yet".to_owned() // no checkpoint, or an empty one
            } else {
                crate::event::rfc3339_ms(t)
            }
        };
        return Err(format!(
            "it has emitted its windows up to {} and the published version {old} up to {}: publish once it has caught up",
            at(has),
            at(had)
        ));
    }
    Ok(had)
}
