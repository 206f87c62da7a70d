//! Autoscaling signals (issue 23): for each node that reads a topic (stages and sinks),
//! how fast records arrive in its input and leave it, how busy its readers in this
//! process are, its backlog, what one replica of it sustains, and how many replicas it
//! needs — recommended **up fast, down slowly**.
//!
//! - **Rates** come from the ledger's view of the node's input (the sum of its
//!   partitions' ends, and of the node's committed positions), so they count every
//!   process of the node, not only this one.
//! - **Busy ratio**: the share of its readers' time in this process not spent waiting
//!   for input ([`Busy`]). A node that keeps up waits at the end of its input; one that
//!   cannot keep up never does (its readers wait for the node's work to take more).
//! - **Sustainable rate per replica**: `[scale] ratings.NODE` when given (e.g. found with
//!   `hifi loadtest --find-rating`); otherwise measured as records read here per second ÷
//!   busy ratio, once the node has been at least [`MIN_BUSY`] busy, smoothed. It assumes
//!   work grows in proportion to records, which holds below the saturation plateau.
//! - **Recommended replicas**: `ceil((rate in + backlog ÷ drain_within) × headroom ÷
//!   sustainable)`, at least 1 and at most the input's partitions (a consumer group
//!   gives no partition to more readers than that). It goes up at once; it comes down by
//!   one replica only after the need has been lower for `scale_down_after`, and again
//!   after as long for each further step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hifi_ledger::Ledger;
use serde::Serialize;

use crate::config::{ConfigError, LoadedConfig, ScaleConfig};

/// Least busy ratio over which a replica's sustainable rate is measured: below it, the
/// time spent working is too small a share for the division to mean much.
pub const MIN_BUSY: f64 = 0.1;
/// Seconds of samples kept per node (for the 1-minute rates).
const KEEP: usize = 61;
/// Weight of a new measure of the sustainable rate (exponential smoothing, 1 s samples).
const SMOOTHING: f64 = 0.2;
/// Busy ratio from which a node counts as saturated: its measure replaces the estimate.
const SATURATED: f64 = 0.8;
/// Weight of a new measure taken while saturated.
const SATURATED_SMOOTHING: f64 = 0.5;

/// How much of their time a node's readers in this process spend waiting for input.
#[derive(Debug, Default)]
pub struct Busy {
    waiting_us_total: AtomicU64,
    records_total: AtomicU64,
    readers: AtomicU64,
}

/// A running reader, counted by its [`Busy`] until dropped.
#[derive(Debug)]
pub struct Reader<'a>(&'a Busy);

impl<'a> Reader<'a> {
    /// Its node's meter.
    pub fn busy(&self) -> &'a Busy {
        self.0
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Busy {
    /// Counts a reader while the guard lives.
    pub fn reader(&self) -> Reader<'_> {
        self.readers.fetch_add(1, Ordering::Relaxed);
        Reader(self)
    }

    /// A read took `waited` and gave `records`.
    pub fn read(&self, waited: Duration, records: usize) {
        self.waiting_us_total
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.records_total
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    fn now(&self) -> (u64, u64, u64) {
        (
            self.waiting_us_total.load(Ordering::Relaxed),
            self.records_total.load(Ordering::Relaxed),
            self.readers.load(Ordering::Relaxed),
        )
    }
}

/// A node watched for scaling: its name and counters.
#[derive(Debug, Clone)]
pub enum Watched {
    /// A stage (row stages scale out; a window stage runs in one process).
    Stage(String, Arc<crate::stage::StageStats>, StageKind),
    /// A sink.
    Sink(String, Arc<crate::sink::SinkStats>),
}

/// Whether a stage can have replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Transforms or a row query: replicas share the input's partitions.
    Rows,
    /// A window stage: one process reads every partition, so one replica.
    Windows,
}

impl Watched {
    fn node(&self) -> &str {
        match self {
            Watched::Stage(n, ..) | Watched::Sink(n, _) => n,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Watched::Stage(..) => "stage",
            Watched::Sink(..) => "sink",
        }
    }

    fn busy(&self) -> &Busy {
        match self {
            Watched::Stage(_, s, _) => &s.busy,
            Watched::Sink(_, s) => &s.busy,
        }
    }
}

/// One second's figures of a node.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Sum of its input partitions' ends, and of its committed positions (every process).
    ends: Option<u64>,
    done: Option<u64>,
    /// When the ledger read those (its clock, ms).
    ledger_ms: Option<i64>,
    partitions: Option<u32>,
    waiting_us: u64,
    read: u64,
    readers: u64,
}

/// What a node needs, as of the last sample.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NodeScale {
    /// Node name.
    pub node: String,
    /// `stage` or `sink`.
    pub kind: &'static str,
    /// Partitions of its input (the most replicas that can share it).
    pub partitions: Option<u32>,
    /// Records/s arriving in its input, every process: over 1 s, 10 s and 1 min.
    pub rate_in: Rates,
    /// Records/s it finished (committed past), every process.
    pub rate_out: Rates,
    /// Records/s its readers in this process read.
    pub read_here: Rates,
    /// Its readers running in this process.
    pub readers_here: u64,
    /// Share of their time its readers here spent not waiting for input, last 10 s
    /// (`None` without readers here).
    pub busy_ratio: Option<f64>,
    /// Records of its input not finished yet (every process).
    pub backlog_records: u64,
    /// Records/s one replica sustains (`None` until known).
    pub sustainable_rate_per_replica: Option<f64>,
    /// `rating` (configured), `measured`, or `unknown`.
    pub sustainable_from: &'static str,
    /// Replicas recommended now.
    pub recommended_replicas: u32,
    /// Why, in words.
    pub reason: String,
}

/// Records per second over three spans (`None` until the span has samples).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Rates {
    #[serde(rename = "1s")]
    pub s1: Option<f64>,
    #[serde(rename = "10s")]
    pub s10: Option<f64>,
    #[serde(rename = "1m")]
    pub m1: Option<f64>,
}

#[derive(Debug)]
struct NodeState {
    watched: Watched,
    samples: VecDeque<Sample>,
    /// Smoothed measure of what one replica sustains.
    measured: Option<f64>,
    /// Whether it has been measured while saturated (then only such measures count),
    /// and when last.
    saturated_seen: bool,
    saturated_at: Option<Instant>,
    recommended: u32,
    /// Since when the need has been below the recommendation.
    lower_since: Option<Instant>,
    last: NodeScale,
}

/// Every watched node's figures and recommendation, sampled each second.
#[derive(Debug)]
pub struct Scale {
    policy: ScaleConfig,
    nodes: Mutex<Vec<NodeState>>,
    /// This process's CPU seconds, sampled with the nodes.
    cpu: Mutex<VecDeque<(Instant, f64)>>,
}

/// This process's CPU use.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ProcessScale {
    /// CPU seconds per second over the last 10 s (2.0: two cores busy); `None` until
    /// sampled, or where `/proc/self` cannot be read.
    pub cpu_ratio: Option<f64>,
    /// Cores this process may use.
    pub cores: usize,
}

impl Scale {
    /// Watches `nodes` under `policy`.
    pub fn new(policy: ScaleConfig, nodes: Vec<Watched>) -> Scale {
        let nodes = nodes
            .into_iter()
            .map(|watched| NodeState {
                last: NodeScale {
                    node: watched.node().to_owned(),
                    kind: watched.kind(),
                    recommended_replicas: 1,
                    sustainable_from: "unknown",
                    reason: "not sampled yet".into(),
                    ..NodeScale::default()
                },
                watched,
                samples: VecDeque::with_capacity(KEEP),
                measured: None,
                saturated_seen: false,
                saturated_at: None,
                recommended: 1,
                lower_since: None,
            })
            .collect();
        Scale {
            policy,
            nodes: Mutex::new(nodes),
            cpu: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }

    /// This process's CPU use over the last 10 s.
    pub fn process(&self) -> ProcessScale {
        let cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let ratio = cpu.back().and_then(|(t1, c1)| {
            let want = t1.checked_sub(Duration::from_secs(10));
            let (t0, c0) = cpu.iter().find(|(t, _)| want.is_none_or(|w| *t >= w))?;
            let dt = t1.duration_since(*t0).as_secs_f64();
            (dt > 0.0).then(|| (c1 - c0).max(0.0) / dt)
        });
        ProcessScale {
            cpu_ratio: ratio,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Samples every second until `stop`.
    pub async fn run(
        self: Arc<Self>,
        ledger: Arc<Ledger>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        while crate::consumer::sleep_or_cancel(&stop, Duration::from_secs(1)).await {
            self.sample(&ledger, Instant::now());
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ScaleConfig {
        &self.policy
    }

    /// Takes one sample of every node (call about once a second).
    pub fn sample(&self, ledger: &Ledger, now: Instant) {
        if let Some(c) = crate::process::cpu_seconds() {
            let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
            if cpu.len() == KEEP {
                cpu.pop_front();
            }
            cpu.push_back((now, c));
        }
        let backlogs = ledger.backlogs();
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes.iter_mut() {
            let b = backlogs.iter().find(|b| b.node == n.watched.node());
            let (waiting_us, read, readers) = n.watched.busy().now();
            let s = Sample {
                at: now,
                ends: b.map(|b| b.positions.iter().map(|(_, e)| e).sum()),
                done: b.map(|b| b.positions.iter().map(|(a, _)| a).sum()),
                ledger_ms: b.map(|b| b.at_ms),
                partitions: b.map(|b| b.positions.len() as u32),
                waiting_us,
                read,
                readers,
            };
            if n.samples.len() == KEEP {
                n.samples.pop_front();
            }
            n.samples.push_back(s);
            n.update(&self.policy, now);
        }
    }

    /// Every watched node's figures as of the last sample.
    pub fn nodes(&self) -> Vec<NodeScale> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.iter().map(|n| n.last.clone()).collect()
    }
}

impl NodeState {
    /// The latest sample at least `secs` before the last one (the oldest, if none is),
    /// and the last one.
    fn back(&self, secs: u64) -> Option<(&Sample, &Sample)> {
        let last = self.samples.back()?;
        let want = last.at.checked_sub(Duration::from_secs(secs));
        let first = want
            .and_then(|w| self.samples.iter().rfind(|s| s.at <= w))
            .or(self.samples.front())
            .filter(|s| s.at < last.at)?;
        Some((first, last))
    }

    /// Rates of a count; `f` gives a sample's (time in seconds, count).
    fn rates(&self, f: impl Fn(&Sample) -> Option<(f64, u64)>) -> Rates {
        let rate = |secs| {
            let (a, b) = self.back(secs)?;
            let ((ta, va), (tb, vb)) = (f(a)?, f(b)?);
            (tb > ta).then(|| vb.saturating_sub(va) as f64 / (tb - ta))
        };
        Rates {
            s1: rate(1),
            s10: rate(10),
            m1: rate(60),
        }
    }

    /// Busy ratio over the last 10 s.
    fn busy(&self) -> Option<f64> {
        let (a, b) = self.back(10)?;
        let readers = a.readers.min(b.readers);
        if readers == 0 {
            return None;
        }
        let span_us = b.at.duration_since(a.at).as_micros() as f64 * readers as f64;
        let waited = b.waiting_us.saturating_sub(a.waiting_us) as f64;
        Some((1.0 - waited / span_us).clamp(0.0, 1.0))
    }

    fn update(&mut self, policy: &ScaleConfig, now: Instant) {
        // The input's figures are as of the ledger's last tick: timed by it.
        let ledger_s = |s: &Sample| Some(s.ledger_ms? as f64 / 1000.0);
        let rate_in = self.rates(|s| Some((ledger_s(s)?, s.ends?)));
        let rate_out = self.rates(|s| Some((ledger_s(s)?, s.done?)));
        let base = self.samples.front().map(|s| s.at);
        let here = |s: &Sample| Some((s.at.duration_since(base?).as_secs_f64(), s.read));
        let read_here = self.rates(here);
        let busy = self.busy();
        let last = self.samples.back().copied();
        if let (Some(b), Some(r)) = (busy, read_here.s10) {
            if b >= MIN_BUSY && r > 0.0 {
                let m = r / b;
                // Near saturation the ratio is the capacity itself. Well below it, work
                // that does not grow with records (a request's round trip, whatever its
                // batch holds) makes it an overestimate: used, smoothed, only until the
                // node has been saturated once; then the saturated measures are kept.
                let saturated = b >= SATURATED;
                // A saturated measure ages out: after twice scale_down_after without
                // saturation (a destination that was slow for a while and recovered),
                // lower-load measures count again.
                let stale = self
                    .saturated_at
                    .is_some_and(|t| now.duration_since(t) > 2 * policy.scale_down_after.0);
                if stale && !saturated {
                    self.saturated_seen = false;
                    self.saturated_at = None;
                }
                if saturated {
                    self.saturated_at = Some(now);
                }
                self.measured = Some(match self.measured {
                    None => m,
                    Some(_) if saturated && !self.saturated_seen => m,
                    Some(old) if saturated => old + SATURATED_SMOOTHING * (m - old),
                    Some(old) if !self.saturated_seen => old + SMOOTHING * (m - old),
                    Some(old) => old,
                });
                self.saturated_seen |= saturated;
            }
        }
        let rating = policy.ratings.get(self.watched.node()).copied();
        let (sustainable, from) = match (rating, self.measured) {
            (Some(r), _) => (Some(r), "rating"),
            (None, Some(m)) => (Some(m), "measured"),
            (None, None) => (None, "unknown"),
        };
        let backlog = last
            .and_then(|s| Some(s.ends?.saturating_sub(s.done?)))
            .unwrap_or(0);
        let partitions = last.and_then(|s| s.partitions);
        let need = Need {
            rate_in: rate_in.s10.or(read_here.s10),
            backlog,
            sustainable,
            partitions,
        };
        let reason = self.recommend(&need, policy, now);
        self.last = NodeScale {
            node: self.watched.node().to_owned(),
            kind: self.watched.kind(),
            partitions,
            rate_in,
            rate_out,
            read_here,
            readers_here: last.map_or(0, |s| s.readers),
            busy_ratio: busy,
            backlog_records: backlog,
            sustainable_rate_per_replica: sustainable,
            sustainable_from: from,
            recommended_replicas: self.recommended,
            reason,
        };
    }

    /// Moves the recommendation toward what `need` asks (up at once, down one step per
    /// `scale_down_after`); says why.
    fn recommend(&mut self, need: &Need, policy: &ScaleConfig, now: Instant) -> String {
        if matches!(self.watched, Watched::Stage(_, _, StageKind::Windows)) {
            self.recommended = 1;
            return "1: a window stage runs in one process (it reads every partition itself to close windows over all of them)".into();
        }
        let Some((wanted, why)) = need.replicas(policy) else {
            self.lower_since = None;
            return format!(
                "holding {}: no measure yet of what one replica sustains (it has not been {:.0} % busy; set [scale] ratings.{} to give one)",
                self.recommended,
                MIN_BUSY * 100.0,
                self.watched.node()
            );
        };
        if wanted >= self.recommended {
            self.lower_since = None;
            if wanted > self.recommended {
                let was = self.recommended;
                self.recommended = wanted;
                return format!("up from {was}: {why}");
            }
            return why;
        }
        let after = policy.scale_down_after.0;
        let since = *self.lower_since.get_or_insert(now);
        let waited = now.duration_since(since);
        if waited >= after {
            self.recommended -= 1;
            self.lower_since = (self.recommended > wanted).then_some(now);
            return format!("down by one to {} (slowly): {why}", self.recommended);
        }
        format!(
            "holding {} for {} s more before going down by one (scale_down_after {} s): {why}",
            self.recommended,
            (after - waited).as_secs(),
            after.as_secs()
        )
    }
}

/// What a node must keep up with.
#[derive(Debug, Clone, Copy)]
struct Need {
    rate_in: Option<f64>,
    backlog: u64,
    sustainable: Option<f64>,
    partitions: Option<u32>,
}

impl Need {
    /// Replicas needed now and why; `None` while a replica's rate is unknown.
    ///
    /// With the input's partitions known, the count is worked out per partition: a
    /// replica keeps up with `floor(sustainable ÷ need per partition)` partitions, and
    /// the group gives some replica `ceil(partitions ÷ replicas)` of them — so 3 replicas
    /// over 4 partitions are no better than 2 for the one that gets two.
    fn replicas(&self, policy: &ScaleConfig) -> Option<(u32, String)> {
        let per = self.sustainable.filter(|r| *r > 0.0)?;
        let rate = self.rate_in.unwrap_or(0.0);
        let drain_s = policy.drain_within.0.as_secs_f64().max(1.0);
        let drain = self.backlog as f64 / drain_s;
        let needed = (rate + drain) * policy.headroom;
        let why = format!(
            "(input {rate:.0}/s + backlog {} ÷ {drain_s:.0} s) × headroom {} = {needed:.0}/s; a replica sustains {per:.0}/s",
            self.backlog, policy.headroom
        );
        let Some(p) = self.partitions.filter(|p| *p > 0) else {
            let n = (needed / per).ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
            return Some((n, format!("{why} → {n}")));
        };
        let per_partition = needed / f64::from(p);
        if per_partition > per {
            return Some((
                p,
                format!(
                    "{why}; capped at the input's {p} partitions: each needs {per_partition:.0}/s, more than a replica sustains (add partitions to go further)"
                ),
            ));
        }
        let each = ((per / per_partition.max(f64::MIN_POSITIVE)).floor() as u64)
            .clamp(1, u64::from(p)) as u32;
        let n = p.div_ceil(each);
        Some((
            n,
            format!("{why}, {each} of the {p} partitions ({per_partition:.0}/s each) → {n}"),
        ))
    }
}

/// Refuses `[scale]` settings that cannot work, naming the key and the fix.
pub fn check(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &loaded.config;
    let s = &c.scale;
    if !(1.0..=10.0).contains(&s.headroom) {
        return Err(loaded.error(
            "scale.headroom",
            format!(
                "{} is out of range; use 1 … 10 (1.2 plans for 20 % more than the input rate)",
                s.headroom
            ),
        ));
    }
    for (key, d) in [
        ("scale.drain_within", s.drain_within),
        ("scale.scale_down_after", s.scale_down_after),
    ] {
        if d.0.is_zero() {
            return Err(loaded.error(key, "must be more than zero, e.g. \"1m\""));
        }
    }
    for (node, rating) in &s.ratings {
        let key = format!("scale.ratings.{node}");
        if !c.stages.contains_key(node) && !c.sinks.contains_key(node) {
            let mut names: Vec<&str> = c
                .stages
                .keys()
                .chain(c.sinks.keys())
                .map(String::as_str)
                .collect();
            names.sort_unstable();
            let msg =
                format!(
                "no stage or sink is named `{node}` (ratings are for nodes that read a topic: {})",
                if names.is_empty() { "there are none".to_owned() } else { names.join(", ") }
            );
            return Err(loaded.error(&key, msg));
        }
        if !rating.is_finite() || *rating <= 0.0 {
            return Err(loaded.error(
                &key,
                format!(
                    "{rating} is not a rate; give the records/s one replica sustains, e.g. 5000"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Dur;

    fn policy() -> ScaleConfig {
        ScaleConfig {
            headroom: 1.2,
            drain_within: Dur(Duration::from_secs(60)),
            scale_down_after: Dur(Duration::from_secs(300)),
            ratings: Default::default(),
        }
    }

    fn state() -> NodeState {
        let watched = Watched::Sink("partner".into(), Default::default());
        NodeState {
            last: NodeScale::default(),
            watched,
            samples: VecDeque::new(),
            measured: None,
            saturated_seen: false,
            saturated_at: None,
            recommended: 1,
            lower_since: None,
        }
    }

    fn need(rate: f64, backlog: u64, per: Option<f64>) -> Need {
        need_of(rate, backlog, per, 8)
    }

    fn need_of(rate: f64, backlog: u64, per: Option<f64>, partitions: u32) -> Need {
        Need {
            rate_in: Some(rate),
            backlog,
            sustainable: per,
            partitions: Some(partitions),
        }
    }

    #[test]
    fn replicas_follow_rate_and_backlog_with_headroom_capped_by_partitions() {
        let p = policy();
        // 10 000/s × 1.2 ÷ 3 000 = 4.
        assert_eq!(need(10_000.0, 0, Some(3_000.0)).replicas(&p).unwrap().0, 4);
        // A backlog of 600 000 to drain in 60 s adds 10 000/s: 24 000 ÷ 3 000 = 8.
        assert_eq!(
            need(10_000.0, 600_000, Some(3_000.0))
                .replicas(&p)
                .unwrap()
                .0,
            8
        );
        // Never more than the partitions, never fewer than one.
        let (n, why) = need(100_000.0, 0, Some(1_000.0)).replicas(&p).unwrap();
        assert_eq!(n, 8);
        assert!(why.contains("capped at the input's 8 partitions"), "{why}");
        assert!(why.contains("add partitions"), "{why}");
        assert_eq!(need(0.0, 0, Some(1_000.0)).replicas(&p).unwrap().0, 1);
        assert!(need(5.0, 0, None).replicas(&p).is_none());
    }

    #[test]
    fn replicas_are_counted_in_whole_partitions() {
        let p = policy();
        // 5 000/s × 1.2 over 4 partitions: 1 500/s each. A replica of 2 500/s keeps up
        // with one partition, not two: 3 replicas would leave one with two (3 000/s).
        let (n, why) = need_of(5_000.0, 0, Some(2_500.0), 4).replicas(&p).unwrap();
        assert_eq!(n, 4, "{why}");
        // Of 3 500/s, two partitions each: 2 replicas.
        assert_eq!(
            need_of(5_000.0, 0, Some(3_500.0), 4)
                .replicas(&p)
                .unwrap()
                .0,
            2
        );
        // Without partitions known: the plain ratio, 6 000 ÷ 2 500.
        let unknown = Need {
            partitions: None,
            ..need_of(5_000.0, 0, Some(2_500.0), 4)
        };
        assert_eq!(unknown.replicas(&p).unwrap().0, 3);
    }

    #[test]
    fn up_at_once_down_one_step_per_scale_down_after() {
        let p = policy();
        let mut s = state();
        let t0 = Instant::now();
        // 12 000/s over 12 partitions: 1 000 each, two per replica of 2 000/s → 6.
        let why = s.recommend(&need_of(10_000.0, 0, Some(2_000.0), 12), &p, t0);
        assert_eq!(s.recommended, 6, "{why}");
        assert!(why.starts_with("up from 1"), "{why}");
        // The need falls to 1: held for scale_down_after, then one step at a time.
        let low = need_of(100.0, 0, Some(2_000.0), 12);
        let why = s.recommend(&low, &p, t0 + Duration::from_secs(1));
        assert_eq!(s.recommended, 6);
        assert!(why.starts_with("holding 6 for 300 s more"), "{why}");
        s.recommend(&low, &p, t0 + Duration::from_secs(200));
        assert_eq!(s.recommended, 6);
        let why = s.recommend(&low, &p, t0 + Duration::from_secs(301));
        assert_eq!(s.recommended, 5, "{why}");
        s.recommend(&low, &p, t0 + Duration::from_secs(400));
        assert_eq!(s.recommended, 5, "the next step waits as long again");
        s.recommend(&low, &p, t0 + Duration::from_secs(602));
        assert_eq!(s.recommended, 4);
        // A rise cancels the wait and goes up at once.
        s.recommend(
            &need_of(20_000.0, 0, Some(2_000.0), 12),
            &p,
            t0 + Duration::from_secs(603),
        );
        assert_eq!(s.recommended, 12, "2 000/s per partition: one each, 12");
    }

    #[test]
    fn busy_ratio_and_measured_rate_come_from_samples() {
        let p = policy();
        let mut s = state();
        let t0 = Instant::now();
        // Two readers; each second they read 1 000 records and wait 1.5 s between them:
        // busy 25 %, so one replica would sustain 4 000/s.
        for i in 0..=10u64 {
            s.samples.push_back(Sample {
                at: t0 + Duration::from_secs(i),
                ends: Some(i * 1_000),
                done: Some(i * 1_000),
                ledger_ms: Some(i as i64 * 1_000),
                partitions: Some(4),
                waiting_us: i * 1_500_000,
                read: i * 1_000,
                readers: 2,
            });
            s.update(&p, t0 + Duration::from_secs(i));
        }
        let last = &s.last;
        assert!((last.busy_ratio.unwrap() - 0.25).abs() < 1e-9, "{last:?}");
        assert!((last.rate_in.s10.unwrap() - 1_000.0).abs() < 1e-9);
        assert_eq!(
            last.rate_in.m1,
            Some(1_000.0),
            "the oldest sample stands in"
        );
        let per = last.sustainable_rate_per_replica.unwrap();
        assert!((per - 4_000.0).abs() < 1.0, "{per}");
        assert_eq!(last.sustainable_from, "measured");
        // 1 000 × 1.2 ÷ 4 000 → 1 replica.
        assert_eq!(last.recommended_replicas, 1, "{}", last.reason);
    }

    #[test]
    fn once_saturated_only_saturated_measures_count() {
        let p = policy();
        let mut s = state();
        let t0 = Instant::now();
        // (reads per second, waiting µs per second) of one reader: 25 % busy at 1 000/s
        // (4 000/s estimated), then saturated at 2 500/s, then 25 % busy again.
        let mut at = (0u64, 0u64);
        let phases = [
            (1_000u64, 750_000u64, 5),
            (2_500, 0, 5),
            (1_000, 750_000, 5),
        ];
        let mut i = 0u64;
        let mut seen = Vec::new();
        for (rate, wait, secs) in phases {
            for _ in 0..secs {
                at = (at.0 + rate, at.1 + wait);
                i += 1;
                s.samples.push_back(Sample {
                    at: t0 + Duration::from_secs(i),
                    ends: Some(at.0),
                    done: Some(at.0),
                    ledger_ms: Some(i as i64 * 1_000),
                    partitions: Some(4),
                    waiting_us: at.1,
                    read: at.0,
                    readers: 1,
                });
                if s.samples.len() > 2 {
                    s.samples.pop_front(); // one-second spans only, for a clear test
                }
                s.update(&p, t0 + Duration::from_secs(i));
                seen.push(s.measured.unwrap_or(0.0).round());
            }
        }
        assert_eq!(seen[4], 4_000.0, "{seen:?}");
        assert_eq!(seen[9], 2_500.0, "{seen:?}");
        assert_eq!(
            seen[14], 2_500.0,
            "low-load overestimates no longer count: {seen:?}"
        );
    }

    #[test]
    fn a_reader_is_counted_while_it_runs() {
        let b = Busy::default();
        {
            let _r = b.reader();
            let _s = b.reader();
            assert_eq!(b.now().2, 2);
            b.read(Duration::from_millis(3), 7);
        }
        assert_eq!(b.now(), (3_000, 7, 0));
    }
}
