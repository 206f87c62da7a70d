//! The ledger on a real embedded log with controllable time: exact loss tables,
//! settling, alarms, history, replay after a restart, late data, clock skew.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use hifi_ledger::{Ledger, LedgerConfig, ManualClock, NodeKind, NodeSpec, Origin, Outcome};
use hifi_log::{EmbeddedLog, Log, LogConfig};
use std::sync::Arc;

const T0: i64 = 1_800_000_000_000; // a minute boundary

fn nodes() -> Vec<NodeSpec> {
    let n = |name: &str, kind, input: Option<&str>, output: Option<&str>| NodeSpec {
        name: name.into(),
        kind,
        input: input.map(Into::into),
        output: output.map(Into::into),
        group: None,
        aggregates: false,
    };
    vec![
        n("api", NodeKind::Source, None, Some("events")),
        n("clean", NodeKind::Stage, Some("events"), Some("clean")),
        n("partner", NodeKind::Sink, Some("clean"), None),
    ]
}

fn o(offset: u64) -> Origin {
    Origin {
        topic: "events".into(),
        partition: 0,
        offset,
    }
}

async fn open(dir: &std::path::Path, clock: &ManualClock) -> (EmbeddedLog, Arc<Ledger>) {
    let log = EmbeddedLog::open(dir, LogConfig::default()).unwrap();
    let ledger = Ledger::open(
        LedgerConfig::default(),
        nodes(),
        Arc::new(log.clone()) as Arc<dyn Log>,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    (log, ledger)
}

/// 100 events stored; the stage passes 0..90, filters 90..95, loses 95..100;
/// the sink delivers 0..85 and loses 85..90.
async fn scenario(ledger: &Arc<Ledger>) {
    let (api, clean, partner) = (
        ledger.node("api"),
        ledger.node("clean"),
        ledger.node("partner"),
    );
    let t = T0 + 5_000;
    for i in 0..100 {
        api.outcome(Outcome::Passed, &o(i), t);
    }
    for i in 0..90 {
        clean.outcome(Outcome::Passed, &o(i), t);
    }
    for i in 90..95 {
        clean.outcome(Outcome::Filtered, &o(i), t);
    }
    for i in 0..85 {
        partner.outcome(Outcome::Delivered, &o(i), t);
    }
    for n in [&api, &clean, &partner] {
        n.flush().await.unwrap();
    }
}

/// A ledger in `dir` whose bucket at T0 has settled after [`scenario`].
async fn settled_scenario(dir: &std::path::Path) -> (ManualClock, EmbeddedLog, Arc<Ledger>) {
    let clock = ManualClock::at_ms(T0 + 10_000);
    let (log, ledger) = open(dir, &clock).await;
    scenario(&ledger).await;
    clock.advance_ms(180_000);
    ledger.tick().await.unwrap();
    (clock, log, ledger)
}

fn row<'a>(t: &'a hifi_ledger::LossTable, node: &str) -> &'a hifi_ledger::NodeLoss {
    t.nodes.iter().find(|n| n.node == node).unwrap()
}

#[tokio::test]
async fn a_bucket_settles_into_an_exact_loss_table_and_raises_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0 + 10_000);
    let (log, ledger) = open(dir.path(), &clock).await;
    scenario(&ledger).await;

    ledger.tick().await.unwrap();
    let open = ledger.loss(T0, T0 + 60_000);
    assert_eq!(open.len(), 1);
    assert!(!open[0].settled, "not settled before settle_after");

    clock.advance_ms(179_000);
    ledger.tick().await.unwrap();
    assert!(!ledger.loss(T0, T0 + 60_000)[0].settled, "still 1 s to go");
    clock.advance_ms(1_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(t.settled);
    assert_eq!(t.events, 100);
    assert_eq!((row(t, "api").seen, row(t, "api").lost), (100, 0));
    assert_eq!(
        (
            row(t, "clean").seen,
            row(t, "clean").lost,
            row(t, "clean").filtered
        ),
        (95, 5, 5)
    );
    assert_eq!(
        (
            row(t, "partner").seen,
            row(t, "partner").lost,
            row(t, "partner").delivered
        ),
        (85, 5, 85)
    );
    assert_eq!(t.e2e_lost, 10);
    assert!((t.e2e_loss_percent - 10.0).abs() < 1e-9);
    let mut lost: Vec<_> = t
        .lost
        .iter()
        .map(|l| (l.origin.clone(), l.node.clone()))
        .collect();
    lost.sort();
    assert_eq!(lost.len(), 10);
    assert!(lost.contains(&("events/0/97".into(), "clean".into())));
    assert!(lost.contains(&("events/0/86".into(), "partner".into())));
    // The settled table, kept where the alarm webhook reads it, is over the threshold.
    let mut kept = Vec::new();
    hifi_log::read_to_end(&log, hifi_ledger::SETTLED_TOPIC, 0, 0, |r| {
        kept.push(serde_json::from_slice::<hifi_ledger::LossTable>(&r.record.value).unwrap())
    })
    .await
    .unwrap();
    assert!(
        matches!(kept.as_slice(), [t] if t.settled && t.e2e_lost == 10 && ledger.alarming(t)),
        "{kept:?}"
    );
    assert_eq!(
        ledger
            .stats
            .loss_alarms_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        ledger.bucket_counts(),
        (0, 1),
        "bitmaps dropped once settled"
    );

    // Trace names the node where each event stopped.
    let tr = ledger.trace(&o(97), T0 + 5_000);
    assert!(
        tr.settled && tr.note.as_deref().unwrap().contains("lost at clean"),
        "{tr:?}"
    );
    let tr = ledger.trace(&o(3), T0 + 5_000);
    assert!(
        tr.note.as_deref().unwrap().starts_with("not lost"),
        "{tr:?}"
    );
}

#[tokio::test]
async fn tallies_survive_a_restart_and_re_sends_never_count_twice() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0 + 10_000);
    {
        let (log, ledger) = open(dir.path(), &clock).await;
        scenario(&ledger).await;
        // A crash: nothing settled, the process is gone.
        drop(ledger);
        log.close().await;
    }
    let (log, ledger) = open(dir.path(), &clock).await;
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert_eq!(
        (t.events, row(t, "partner").delivered, t.e2e_lost),
        (100, 85, 10),
        "rebuilt from the journal"
    );
    // After the restart the sink re-sends what it had not committed: the same origins.
    let partner = ledger.node("partner");
    for i in 80..90 {
        partner.outcome(Outcome::Delivered, &o(i), T0 + 5_000);
    }
    partner.flush().await.unwrap();
    clock.advance_ms(180_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(t.settled);
    assert_eq!(
        row(t, "partner").delivered,
        90,
        "85 + 5 new, the 5 repeats not doubled"
    );
    assert_eq!((row(t, "partner").lost, t.e2e_lost), (0, 5));

    // Settled tables come back after another restart, and open nothing.
    drop(partner);
    drop(ledger);
    log.close().await;
    drop(log);
    let (log, ledger) = open(dir.path(), &clock).await;
    assert_eq!(ledger.bucket_counts(), (0, 1));
    assert_eq!(ledger.loss(T0, T0 + 60_000)[0].e2e_lost, 5);

    // Past the history, settled tables leave memory.
    clock.advance_ms(8 * 24 * 3600 * 1000);
    ledger.tick().await.unwrap();
    assert_eq!(ledger.bucket_counts(), (0, 0));
    log.close().await;
}

#[tokio::test]
async fn late_outcomes_reopen_a_settled_bucket_and_clear_its_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _log, ledger) = settled_scenario(dir.path()).await;
    assert_eq!(ledger.loss(T0, T0 + 60_000)[0].e2e_lost, 10);
    // The sink was only slow: its last five arrive now.
    let partner = ledger.node("partner");
    for i in 85..90 {
        partner.outcome(Outcome::Delivered, &o(i), T0 + 5_000);
    }
    partner.flush().await.unwrap();
    let reopened = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(
        !reopened.settled && reopened.e2e_lost == 10,
        "re-opened: the figures it settled with, not final: {reopened:?}"
    );
    clock.advance_ms(180_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(t.settled);
    assert_eq!(
        (row(t, "partner").lost, row(t, "clean").lost, t.e2e_lost),
        (0, 5, 5)
    );
}

/// Events a settled bucket never saw (a source's backlog after an outage longer than
/// `settle_after`) re-open it; its next table counts them — stored, delivered or lost —
/// beside the events it settled with, also when the process restarts in between.
#[tokio::test]
async fn events_new_to_a_settled_bucket_are_counted_when_it_settles_again() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (clock, log, ledger) = settled_scenario(dir.path()).await;
        let before = ledger.loss(T0, T0 + 60_000)[0].clone();
        assert_eq!((before.events, before.e2e_lost), (100, 10));
        // The backlog: 20 more events of the same minute; the stage passes them all,
        // the sink delivers 100..110 and never 110..120.
        let t = T0 + 5_000;
        let (api, clean, partner) = (
            ledger.node("api"),
            ledger.node("clean"),
            ledger.node("partner"),
        );
        for i in 100..120 {
            api.outcome(Outcome::Passed, &o(i), t);
            clean.outcome(Outcome::Passed, &o(i), t);
        }
        for i in 100..110 {
            partner.outcome(Outcome::Delivered, &o(i), t);
        }
        for n in [&api, &clean, &partner] {
            n.flush().await.unwrap();
        }
        let (log, ledger) = if restart {
            drop((api, clean, partner, ledger));
            log.close().await;
            drop(log);
            open(dir.path(), &clock).await
        } else {
            (log, ledger)
        };
        clock.advance_ms(180_000);
        ledger.tick().await.unwrap();
        let t = &ledger.loss(T0, T0 + 60_000)[0];
        assert!(t.settled, "restart {restart}: {t:?}");
        assert_eq!(
            (
                t.events,
                row(t, "partner").delivered,
                row(t, "partner").lost
            ),
            (120, 95, 15),
            "restart {restart}"
        );
        // E2E: 5 lost at the stage, 5 + 10 at the sink.
        assert_eq!(
            (row(t, "clean").lost, t.e2e_lost),
            (5, 20),
            "restart {restart}"
        );
        let lost: Vec<_> = t.lost.iter().map(|l| l.origin.clone()).collect();
        assert!(lost.contains(&o(115).to_string()) && lost.contains(&o(97).to_string()));
        assert_eq!(ledger.bucket_counts(), (0, 1), "restart {restart}");
        assert_eq!(
            ledger
                .stats
                .lost_events_total
                .load(std::sync::atomic::Ordering::Relaxed),
            if restart { 10 } else { 20 },
            "counted once per process: the new losses only after a restart"
        );
        log.close().await;
    }
}

#[tokio::test]
async fn a_reopened_bucket_still_knows_the_events_it_settled() {
    let dir = tempfile::tempdir().unwrap();
    let (_clock, _log, ledger) = settled_scenario(dir.path()).await;
    // A late event of the same minute re-opens the bucket.
    let api = ledger.node("api");
    api.outcome(Outcome::Passed, &o(100), T0 + 5_000);
    api.flush().await.unwrap();
    let t = T0 + 5_000;
    // Delivered before the bucket settled: not lost, as the settled table says.
    let delivered = ledger.trace(&o(3), t);
    assert!(delivered.settled, "{delivered:?}");
    assert!(delivered.note.unwrap().contains("not lost"));
    // Lost at the stage before it settled: still lost there.
    let lost = ledger.trace(&o(97), t);
    assert!(lost.note.unwrap().contains("lost at clean"));
    // The late one: open, passed at the source only.
    let late = ledger.trace(&o(100), t);
    assert!(!late.settled);
    assert_eq!(late.nodes[0].outcomes, vec![Outcome::Passed]);
    assert_eq!(
        ledger.fates(&[(o(3), t), (o(97), t), (o(100), t)]),
        vec![
            hifi_ledger::Fate::NotLost,
            hifi_ledger::Fate::Lost("clean".into()),
            hifi_ledger::Fate::Open(vec![]),
        ]
    );
}

#[tokio::test]
async fn event_times_from_the_future_are_clamped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0);
    let (_log, ledger) = open(dir.path(), &clock).await;
    let sink = ledger.node("partner");
    let now_us = T0 * 1000;
    sink.lag(T0 + 60_000, now_us, now_us + 2_000); // producer clock one minute ahead
    sink.lag(T0 - 10, now_us, now_us + 2_000);
    let lag = ledger.lag();
    let p = lag.nodes.iter().find(|n| n.node == "partner").unwrap();
    assert_eq!(p.skewed_events, 1);
    assert!(
        p.lag.lag_in_ms.p50 >= 0.0 && p.lag.lag_out_ms.max <= 12.1,
        "{:?}",
        p.lag
    );
    assert_eq!(
        ledger
            .stats
            .skewed_events_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// However far apart the event times, the open buckets stay bounded: past
/// `OPEN_BUCKETS_MAX`, outcomes of new buckets are counted as untracked, and i64's
/// extremes are taken without overflow.
#[tokio::test]
async fn open_buckets_are_bounded_whatever_the_event_times() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0);
    let (_log, ledger) = open(dir.path(), &clock).await;
    let api = ledger.node("api");
    let extra = 10u64;
    let total = hifi_ledger::OPEN_BUCKETS_MAX as u64 + extra;
    for i in 0..total {
        api.outcome(Outcome::Passed, &o(i), T0 + i as i64 * 60_000);
    }
    api.lag(i64::MAX, T0 * 1000, T0 * 1000);
    api.lag(i64::MIN, T0 * 1000, T0 * 1000);
    api.flush().await.unwrap();
    let (open, _) = ledger.bucket_counts();
    assert_eq!(open, hifi_ledger::OPEN_BUCKETS_MAX);
    let untracked = ledger
        .stats
        .untracked_events_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(untracked, extra);
}

/// An engine whose appends to the settled-tables topic wait until the test lets them
/// go: a slow store of loss tables.
#[derive(Debug)]
struct SlowSettling {
    inner: EmbeddedLog,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl Log for SlowSettling {
    async fn ensure_topic(&self, spec: &hifi_log::TopicSpec) -> Result<u32, hifi_log::LogError> {
        self.inner.ensure_topic(spec).await
    }
    async fn partitions(&self, topic: &str) -> Result<u32, hifi_log::LogError> {
        self.inner.partitions(topic).await
    }
    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<hifi_log::Record>,
    ) -> Result<Vec<u64>, hifi_log::LogError> {
        if topic == hifi_ledger::SETTLED_TOPIC {
            self.release.acquire().await.unwrap().forget();
        }
        self.inner.append(topic, partition, records).await
    }
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        limits: hifi_log::ReadLimits,
    ) -> Result<Vec<hifi_log::StoredRecord>, hifi_log::LogError> {
        self.inner.read(topic, partition, from, limits).await
    }
    async fn offsets(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<hifi_log::PartitionOffsets, hifi_log::LogError> {
        self.inner.offsets(topic, partition).await
    }
    async fn commit_many(
        &self,
        group: &str,
        topic: &str,
        positions: &[(u32, u64)],
    ) -> Result<(), hifi_log::LogError> {
        self.inner.commit_many(group, topic, positions).await
    }
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, hifi_log::LogError> {
        self.inner.committed(group, topic, partition).await
    }
    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, hifi_log::LogError> {
        self.inner
            .offset_for_time(topic, partition, timestamp_ms)
            .await
    }
}

/// Storing settled tables does not hold up the nodes' flushes (which their commits
/// wait for), and a bucket that changes while its table is stored stays open and
/// settles again with the new outcomes.
#[tokio::test]
async fn a_slow_settle_does_not_stop_flushes_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0 + 10_000);
    let inner = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
    let log = Arc::new(SlowSettling {
        inner,
        release: tokio::sync::Semaphore::new(0),
    });
    let ledger = Ledger::open(
        LedgerConfig::default(),
        nodes(),
        log.clone() as Arc<dyn Log>,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    scenario(&ledger).await;
    clock.advance_ms(LedgerConfig::default().settle_after.as_millis() as i64 + 1);
    let ticking = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.tick().await })
    };
    // The tick is now storing the table; a node flushes meanwhile (late outcomes of the
    // same bucket: the sink delivered 85..88 after all).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let partner = ledger.node("partner");
    for i in 85..88 {
        partner.outcome(Outcome::Delivered, &o(i), T0 + 5_000);
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), partner.flush())
        .await
        .expect("a flush waited for the settle to finish storing")
        .unwrap();
    log.release.add_permits(1);
    ticking.await.unwrap().unwrap();
    let first = ledger.loss(T0, T0 + 60_000);
    assert_eq!(
        first[0].e2e_lost, 10,
        "the table computed before the late outcomes"
    );
    // The bucket changed while it was stored: it stays open and settles again.
    clock.advance_ms(LedgerConfig::default().settle_after.as_millis() as i64 + 1);
    log.release.add_permits(1);
    ledger.tick().await.unwrap();
    let again = ledger.loss(T0, T0 + 60_000);
    assert_eq!(again[0].e2e_lost, 7, "{:?}", again[0]);
    assert!(again[0].settled);
}

#[tokio::test]
async fn nothing_settles_while_events_are_held_outside_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0 + 10_000);
    let (_log, ledger) = open(dir.path(), &clock).await;
    // 10 events stored through the standby (their own origins); a standby holds them.
    let api = ledger.node("api");
    let standby = |offset| Origin {
        topic: "standby:events".into(),
        partition: 0,
        offset,
    };
    for i in 0..10 {
        api.outcome(Outcome::Passed, &o(i), T0 + 5_000);
        api.outcome(Outcome::Passed, &standby(i), T0 + 5_000);
    }
    api.flush().await.unwrap();
    ledger.hold("sources.api.standby", true);
    clock.advance_ms(600_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(!t.settled, "settled while events were held: {t:?}");

    // Released: the events arrive and are delivered; the bucket settles exact, with
    // the events of each path counted.
    ledger.hold("sources.api.standby", false);
    let (clean, partner) = (ledger.node("clean"), ledger.node("partner"));
    for i in 0..10 {
        for origin in [o(i), standby(i)] {
            clean.outcome(Outcome::Passed, &origin, T0 + 5_000);
            partner.outcome(Outcome::Delivered, &origin, T0 + 5_000);
        }
    }
    clean.flush().await.unwrap();
    partner.flush().await.unwrap();
    clock.advance_ms(180_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0, T0 + 60_000)[0];
    assert!(t.settled);
    assert_eq!((t.events, t.e2e_lost), (20, 0));
    assert_eq!(t.origin_topics.get("events"), Some(&10));
    assert_eq!(t.origin_topics.get("standby:events"), Some(&10));

    // A hold that lasts past settle_max_wait (a mover that cannot move): the bucket
    // settles, what is missing counted as a backlog, not as lost.
    api.outcome(Outcome::Passed, &standby(10), T0 + 65_000);
    api.flush().await.unwrap();
    ledger.hold("sources.api.standby", true);
    clock.advance_ms(1_800_000);
    ledger.tick().await.unwrap();
    assert!(!ledger.loss(T0 + 60_000, T0 + 120_000)[0].settled);
    clock.advance_ms(1_800_000);
    ledger.tick().await.unwrap();
    let t = &ledger.loss(T0 + 60_000, T0 + 120_000)[0];
    assert!(t.settled, "held past settle_max_wait");
    assert_eq!((t.e2e_lost, t.backlog), (0, 1));
}

#[tokio::test]
async fn another_processs_hold_keeps_buckets_open_until_released_or_lapsed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(T0 + 70_000);
    let log = EmbeddedLog::open(dir.path(), LogConfig::default()).unwrap();
    let cfg = LedgerConfig {
        follow_journal: true,
        ..LedgerConfig::default()
    };
    let open = || {
        Ledger::open(
            cfg.clone(),
            nodes(),
            Arc::new(log.clone()) as Arc<dyn Log>,
            Arc::new(clock.clone()),
        )
    };
    // Two processes on one engine: one ingests (and has a standby), one delivers.
    let (ingest, other) = (open().await.unwrap(), open().await.unwrap());
    let delivered = |at: i64| {
        let (api, clean, partner) = (
            ingest.node("api"),
            other.node("clean"),
            other.node("partner"),
        );
        async move {
            for i in 0..10 {
                api.outcome(Outcome::Passed, &o(i), at);
                clean.outcome(Outcome::Passed, &o(i), at);
                partner.outcome(Outcome::Delivered, &o(i), at);
            }
            for n in [&api, &clean, &partner] {
                n.flush().await.unwrap();
            }
        }
    };
    let settled = |bucket_ms: i64| other.loss(bucket_ms, bucket_ms + 60_000)[0].settled;

    // Released: the bucket settles at the next tick.
    delivered(T0 + 5_000).await;
    other.tick().await.unwrap(); // merges the outcomes
    ingest.hold("sources.api.standby", true);
    ingest.say_holds().await.unwrap();
    clock.advance_ms(600_000);
    other.tick().await.unwrap();
    assert!(!settled(T0), "settled past another process's hold");
    ingest.hold("sources.api.standby", false);
    ingest.say_holds().await.unwrap(); // the release, once
    other.tick().await.unwrap();
    assert!(settled(T0), "released, the bucket settles");

    // A process that stops saying its hold (it died): the hold lapses.
    delivered(T0 + 65_000).await;
    other.tick().await.unwrap();
    ingest.hold("sources.api.standby", true);
    ingest.say_holds().await.unwrap();
    clock.advance_ms(600_000);
    other.tick().await.unwrap();
    assert!(!settled(T0 + 60_000), "settled past another process's hold");
    clock.advance_ms(11_000);
    other.tick().await.unwrap();
    assert!(settled(T0 + 60_000), "a hold not said again lapses");
}
