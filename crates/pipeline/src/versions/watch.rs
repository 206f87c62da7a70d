//! Following candidate versions: backfill progress and its ETA, blocking audits, and
//! with `publish = "auto"` the request to publish once the backfill is done and every
//! bucket it completed passed the blocking audits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hifi_log::Log;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{candidate_name, Live};
use crate::config::PublishMode;
use crate::consumer::sleep_or_cancel;
use crate::fingerprint::Fingerprinter;

const EVERY: Duration = Duration::from_secs(1);
/// A backfill paced by the live path's lag starts here (events/s) when it has no
/// `backfill_max_rate`; never below this.
const PACED_START: u64 = 20_000;
const PACED_MIN: f64 = 1_000.0;
/// Its ceiling when it has no `backfill_max_rate`.
const PACED_MAX: f64 = 10_000_000.0;

/// The rate a candidate starts at: `backfill_max_rate`, or a start for a backfill paced
/// by the live path's lag; `None` for no pacing.
pub fn first_rate(v: &crate::config::VersionsConfig) -> Option<u64> {
    match (v.backfill_max_rate, &v.live_e2e_p95_max) {
        (Some(r), _) => Some(r),
        (None, Some(_)) => Some(PACED_START),
        (None, None) => None,
    }
}

/// The next rate of a backfill paced by the live path: half on a window whose E2E p95
/// was above `max_ms`, a quarter more on one within it, between [`PACED_MIN`] (or the
/// batch) and `ceiling`.
pub fn next_rate(rate: f64, p95_ms: f64, max_ms: f64, floor: f64, ceiling: f64) -> f64 {
    let next = if p95_ms > max_ms {
        rate / 2.0
    } else {
        rate * 1.25
    };
    next.clamp(floor, ceiling)
}

/// A candidate's state (`/v1/versions`, `hifi versions`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CandidateStatus {
    /// `backfilling`, `live` (caught up, waiting for buckets or for `hifi publish`),
    /// `blocked` (a blocking audit failed), `publishing`.
    pub state: String,
    /// Input records it has handled and has left, since its backfill started.
    pub done: u64,
    pub left: u64,
    /// Seconds to go at the rate of the last 10 s (`None` when not moving).
    pub eta_seconds: Option<f64>,
    /// Failed blocking audits: bucket start (RFC 3339), audit, and the bucket's figures.
    pub blocked_by: Vec<serde_json::Value>,
    /// Complete buckets of its fingerprint whose audits passed / are waited for.
    pub buckets_passed: usize,
    pub buckets_waiting: usize,
}

struct Followed {
    stage: String,
    version: String,
    group: String,
    input: String,
    /// The candidate's topic, and its ends when it first caught up (its fingerprint
    /// must have counted that far before its buckets are judged).
    output: String,
    output_until: Option<Vec<u64>>,
    auto: bool,
    /// With `versions.redeliver`, the event time the automatic publish delivers again
    /// from: its recorded backfill start; with "retention", all its topic holds (a
    /// version returning to publication: also what it wrote before).
    redeliver_from: Option<i64>,
    /// Per partition: where the backfill began and the end when this run started.
    from: Vec<u64>,
    until: Vec<u64>,
    started_ms: i64,
    fingerprint: Option<Arc<Fingerprinter>>,
    rate: Option<(Instant, u64)>,
    said_blocked: bool,
}

/// Follows the candidates of `live` until `stop` (or until one is to be published).
pub async fn run(
    live: Arc<Live>,
    log: Arc<dyn Log>,
    fingerprints: Vec<Arc<Fingerprinter>>,
    (ledger, paced, live_sinks): (Arc<hifi_ledger::Ledger>, Vec<(String, Pace)>, Vec<String>),
    stop: CancellationToken,
) {
    let mut last_window = String::new();
    let mut followed = Vec::new();
    for plan in &live.plans {
        let Some(version) = &plan.candidate else {
            continue;
        };
        let name = candidate_name(&plan.stage, version);
        let group = plan
            .candidate_group
            .clone()
            .unwrap_or_else(|| crate::config::stage_group(&name));
        let backfill_from = live
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stages
            .get(&plan.stage)
            .and_then(|s| s.versions.get(version))
            .and_then(|v| v.backfill_from_ms);
        let (mut from, mut until) = (Vec::new(), Vec::new());
        let Ok(n) = log.partitions(&plan.input).await else {
            continue;
        };
        for p in 0..n {
            let at = log.committed(&group, &plan.input, p).await.ok().flatten();
            let Ok(offsets) = log.offsets(&plan.input, p).await else {
                // Unknown end: never taken for caught up in this run (one entry per
                // partition all the same: they are indexed by partition).
                from.push(at.unwrap_or(0));
                until.push(u64::MAX);
                continue;
            };
            // Where the backfill began, or where the candidate is if that is before.
            let began =
                super::backfill_position(log.as_ref(), &plan.input, p, backfill_from, offsets)
                    .await
                    .unwrap_or(offsets.start);
            from.push(at.map_or(began, |a| a.min(began)).max(offsets.start));
            until.push(offsets.end);
        }
        let node = format!("stages.{name}");
        followed.push(Followed {
            stage: plan.stage.clone(),
            version: version.clone(),
            group,
            input: plan.input.clone(),
            output: plan
                .candidate_topic
                .clone()
                .unwrap_or_else(|| super::version_topic(&plan.output, version)),
            output_until: None,
            auto: plan.publish == PublishMode::Auto,
            redeliver_from: plan
                .versions
                .as_ref()
                .is_some_and(|v| v.redeliver)
                .then_some(backfill_from.unwrap_or(i64::MIN)),
            from,
            until,
            started_ms: crate::now_ms(),
            fingerprint: fingerprints.iter().find(|f| f.node == node).cloned(),
            rate: None,
            said_blocked: false,
        });
    }
    while !followed.is_empty() && sleep_or_cancel(&stop, EVERY).await {
        pace_by_lag(&live, &ledger, (&paced, &live_sinks), &mut last_window);
        let mut publish = None;
        for f in &mut followed {
            let mut status = CandidateStatus::default();
            let mut at_end = true;
            for (p, (&from, &until)) in f.from.iter().zip(&f.until).enumerate() {
                let at = log
                    .committed(&f.group, &f.input, p as u32)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(from);
                let end = log
                    .offsets(&f.input, p as u32)
                    .await
                    .map_or(until, |o| o.end);
                status.done += at.saturating_sub(from);
                status.left += end.saturating_sub(at);
                at_end &= at >= until;
            }
            let now = Instant::now();
            match f.rate {
                Some((t, done)) if now.duration_since(t) >= Duration::from_secs(10) => {
                    let rate = status.done.saturating_sub(done) as f64
                        / now.duration_since(t).as_secs_f64();
                    f.rate = Some((now, status.done));
                    status.eta_seconds = (rate > 0.0).then(|| status.left as f64 / rate);
                }
                Some(_) => {}
                None => f.rate = Some((now, status.done)),
            }
            status.state = if at_end { "live" } else { "backfilling" }.into();
            let mut waiting = false;
            if at_end && f.output_until.is_none() {
                let mut ends = Vec::new();
                for p in 0..log.partitions(&f.output).await.unwrap_or(0) {
                    ends.push(log.offsets(&f.output, p).await.map_or(u64::MAX, |o| o.end));
                }
                f.output_until = Some(ends);
            }
            if let Some(fp) = &f.fingerprint {
                let report = fp.report(i64::MIN, i64::MAX);
                // Its fingerprint has not counted all it wrote during the backfill yet.
                let counted = f.output_until.as_ref().is_some_and(|until| {
                    until
                        .iter()
                        .enumerate()
                        .all(|(p, &u)| report.read_to.get(p).is_some_and(|&r| r >= u))
                });
                if !counted {
                    waiting = true;
                }
                for (start, summary, verdicts) in &report.buckets {
                    let ended = start + report.bucket_ms <= f.started_ms;
                    match verdicts {
                        None if ended => {
                            status.buckets_waiting += 1;
                            waiting = true;
                        }
                        None => {}
                        Some(v) => {
                            let failed: Vec<_> =
                                v.iter().filter(|v| v.blocking && !v.passed).collect();
                            if failed.is_empty() {
                                status.buckets_passed += 1;
                            }
                            for a in failed {
                                status.blocked_by.push(serde_json::json!({
                                    "bucket_start": crate::event::rfc3339_ms(*start),
                                    "audit": a.audit, "check": a.check, "error": a.error,
                                    "count": summary.count,
                                }));
                            }
                        }
                    }
                }
            }
            if !status.blocked_by.is_empty() {
                status.state = "blocked".into();
                if !f.said_blocked {
                    f.said_blocked = true;
                    error!(stage = %f.stage, version = %f.version, failed = %serde_json::Value::from(status.blocked_by.clone()),
                        "a blocking audit failed: the candidate version stays unpublished (the published one keeps serving)");
                }
            } else if f.auto
                && at_end
                && !waiting
                && publish.is_none()
                && !recently_failed(&live, &f.stage, &f.version)
            {
                status.state = "publishing".into();
                publish = Some((f.stage.clone(), f.version.clone(), f.redeliver_from));
            }
            live.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(f.stage.clone(), status);
        }
        if let Some((stage, version, redeliver)) = publish {
            info!(%stage, %version, redeliver = redeliver.is_some(), "backfill done and audits passed: publishing");
            if let Err(e) = live.request(&stage, &version, "auto", redeliver) {
                error!(%stage, %version, "cannot publish: {e}");
            }
            // The nodes stop for the publish (and this with them); a publish refused
            // before that leaves them running: asked again once the refusal is old
            // enough (`recently_failed`), not before it had time to be answered.
            if !sleep_or_cancel(&stop, std::time::Duration::from_secs(10)).await {
                return;
            }
        }
    }
}

/// Whether an automatic publish of this version failed less than
/// [`super::AUTO_PUBLISH_RETRY_MS`] ago (a reader too far behind: trying again at once
/// would only stop and start the nodes again).
fn recently_failed(live: &Live, stage: &str, version: &str) -> bool {
    let now = chrono::Utc::now().timestamp_millis();
    live.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(stage)
        .is_some_and(|f| f.version == version && now - f.at_ms < super::AUTO_PUBLISH_RETRY_MS)
}

/// A candidate stage's rate limit.
pub type Pace = Arc<std::sync::Mutex<crate::delivery::RateLimit>>;

/// The sinks whose E2E a paced backfill watches ([`pace_by_lag`]): those of events, not
/// of a window stage's results, which wait for their window to close (their E2E is
/// from the window's end: `allowed_lateness` and the emission, whatever the load) —
/// directly or through row stages. Every sink when all of them take window results.
pub fn live_sinks(cfg: &crate::config::PipelineConfig) -> Vec<String> {
    let mut windowed: std::collections::BTreeSet<&str> = cfg
        .stages
        .values()
        .filter(|s| s.window.is_some())
        .map(|s| s.output.get_ref().as_str())
        .collect();
    loop {
        let more: Vec<&str> = cfg
            .stages
            .values()
            .filter(|s| windowed.contains(s.input.get_ref().as_str()))
            .map(|s| s.output.get_ref().as_str())
            .filter(|o| !windowed.contains(o))
            .collect();
        if more.is_empty() {
            break;
        }
        windowed.extend(more);
    }
    let of_events: Vec<String> = cfg
        .sinks
        .iter()
        .filter(|(_, s)| !windowed.contains(s.input.get_ref().as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    if of_events.is_empty() {
        cfg.sinks.keys().cloned().collect()
    } else {
        of_events
    }
}

/// At each closed 10-second window of the ledger's lag history, moves the rate of every
/// backfill paced by the live path's E2E p95 (`live_e2e_p95_max`): the largest lag-out
/// p95 of `live_sinks` ([`live_sinks`]) in that window.
fn pace_by_lag(
    live: &Live,
    ledger: &hifi_ledger::Ledger,
    (paced, live_sinks): (&[(String, Pace)], &[String]),
    last: &mut String,
) {
    let targets: Vec<(&Pace, f64, f64, f64)> = live
        .plans
        .iter()
        .filter_map(|plan| {
            let name = candidate_name(&plan.stage, plan.candidate.as_ref()?);
            let (_, pace) = paced.iter().find(|(n, _)| *n == name)?;
            let v = plan.versions.as_ref()?;
            let max_ms = v.live_e2e_p95_max.as_ref()?.0.as_secs_f64() * 1000.0;
            let ceiling = v.backfill_max_rate.map_or(PACED_MAX, |r| r as f64);
            Some((pace, max_ms, plan.batch as f64, ceiling))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let report = ledger.lag();
    let Some(window) = report.history.last() else {
        return;
    };
    if window.t == *last {
        return;
    }
    last.clone_from(&window.t);
    let p95_ms = live_sinks
        .iter()
        .filter_map(|sink| window.nodes.get(sink))
        .map(|n| n.lag_out_p95_ms)
        .fold(0.0, f64::max);
    for (pace, max_ms, batch, ceiling) in targets {
        let mut p = pace.lock().unwrap_or_else(|e| e.into_inner());
        let next = next_rate(p.rate(), p95_ms, max_ms, PACED_MIN.max(batch), ceiling);
        info!(
            p95_ms,
            max_ms,
            rate = next,
            "backfill paced by the live path's lag"
        );
        p.set_rate(next);
    }
}

/// Per stage, its candidate's status.
pub type Statuses = BTreeMap<String, CandidateStatus>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_backfill_watches_the_sinks_of_events_not_of_window_results() {
        let toml = r#"
[engine]
kind = "embedded"
data_dir = "d"
[sources.api]
type = "http"
topic = "events"
[stages.per]
input = "events"
output = "counts"
window = { size = "1m" }
sql = "SELECT count(*) AS n FROM input"
[stages.shaped]
input = "counts"
output = "shaped"
[[stages.shaped.transforms]]
type = "set"
field = "/x"
value = "y"
[sinks.raw]
type = "http"
input = "events"
url = "http://127.0.0.1:9/"
[sinks.direct]
type = "http"
input = "counts"
url = "http://127.0.0.1:9/"
[sinks.after]
type = "http"
input = "shaped"
url = "http://127.0.0.1:9/"
"#;
        let loaded =
            crate::config::LoadedConfig::parse("p.toml".as_ref(), toml.to_owned()).unwrap();
        assert_eq!(live_sinks(&loaded.config), vec!["raw".to_owned()]);
        let only_windows = toml.replace(
            "[sinks.raw]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://127.0.0.1:9/\"\n",
            "",
        );
        assert_ne!(only_windows, toml);
        let loaded = crate::config::LoadedConfig::parse("p.toml".as_ref(), only_windows).unwrap();
        assert_eq!(
            live_sinks(&loaded.config),
            vec!["after".to_owned(), "direct".to_owned()]
        );
    }

    #[test]
    fn a_paced_backfill_halves_over_the_lag_and_grows_a_quarter_within_it() {
        assert_eq!(next_rate(20_000.0, 80.0, 50.0, 1_000.0, 1e7), 10_000.0);
        assert_eq!(next_rate(20_000.0, 20.0, 50.0, 1_000.0, 1e7), 25_000.0);
        assert_eq!(
            next_rate(1_500.0, 80.0, 50.0, 1_000.0, 1e7),
            1_000.0,
            "floor"
        );
        assert_eq!(
            next_rate(45_000.0, 1.0, 50.0, 1_000.0, 50_000.0),
            50_000.0,
            "ceiling"
        );
    }
}
