//! The engine conformance suite (`hifi_log::conformance`) and the group membership
//! hand-over, on a real Kafka cluster (`KAFKA_BROKERS`: 3 brokers, see
//! `scripts/test-broker`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hifi_log::conformance::{run_all, Engine};
use hifi_log::{Log, Membership, TopicSpec};

struct Kafka {
    brokers: String,
    prefix: String,
}

#[async_trait::async_trait]
impl Engine for Kafka {
    async fn open(&self) -> Arc<dyn Log> {
        Arc::new(support::connect(&self.brokers, &self.prefix))
    }

    async fn close(&self, log: Arc<dyn Log>) {
        drop(log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_engine_conforms() {
    let Some(brokers) = support::brokers() else {
        return;
    };
    run_all(&Kafka {
        brokers,
        prefix: support::unique_prefix("conform"),
    })
    .await;
}

async fn wait_for(m: &mut Membership, what: &str, ok: impl Fn(&BTreeSet<u32>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok(&m.owned()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: owns {:?}",
            m.owned()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), m.changed()).await;
    }
}

/// Two members share the partitions; the first gives its partitions up only after it
/// released them (its work stopped and committed), and takes them all back when the
/// second leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_hand_them_over_only_when_released() {
    let Some(brokers) = support::brokers() else {
        return;
    };
    let prefix = support::unique_prefix("share");
    let a_log = support::connect(&brokers, &prefix);
    a_log
        .ensure_topic(&TopicSpec::new("work", 4))
        .await
        .unwrap();
    let all = BTreeSet::from([0, 1, 2, 3]);
    let mut a = a_log.join("workers", "work").await.unwrap();
    wait_for(&mut a, "A to own everything", |o| *o == all).await;

    let b_log = support::connect(&brokers, &prefix);
    let mut b = b_log.join("workers", "work").await.unwrap();
    wait_for(&mut a, "A to be asked to give partitions up", |o| {
        o.len() < 4
    })
    .await;
    let asked = a.owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        b.owned().is_empty(),
        "B got {:?} before A released its partitions",
        b.owned()
    );
    a.release_all_but(&asked);
    wait_for(&mut b, "B to get a share", |o| !o.is_empty()).await;
    wait_for(&mut a, "A to keep a share", |o| !o.is_empty()).await;
    let (sa, sb) = (a.owned(), b.owned());
    assert!(sa.is_disjoint(&sb), "A {sa:?} and B {sb:?} overlap");
    assert_eq!(&sa | &sb, all, "every partition has an owner");

    // B leaves: A gets everything back (after releasing what the new round revokes).
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.owned() != all {
        assert!(
            Instant::now() < deadline,
            "A never got everything back: {:?}",
            a.owned()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), a.changed()).await;
        let now = a.owned();
        a.release_all_but(&now);
    }
}

/// A process with two members of one group (a stage reads its input and its re-drive
/// topic in one group): while the first is asked to give its partitions up, the final
/// commit of its work is taken at once, before it releases them. It went through the
/// second member, whose own join the coordinator holds until the first has rejoined:
/// the commit waited for the release, the release for the commit, until the release
/// timed out (20 s), and then failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_last_commit_is_taken_while_another_member_of_the_group_joins() {
    let Some(brokers) = support::brokers() else {
        return;
    };
    let prefix = support::unique_prefix("twomembers");
    let log = support::connect(&brokers, &prefix);
    for topic in ["input", "redrive"] {
        log.ensure_topic(&TopicSpec::new(topic, 2)).await.unwrap();
    }
    log.append("input", 0, vec![hifi_log::Record::new(b"x".to_vec(), 1)])
        .await
        .unwrap();
    let mut input = log.join("stage", "input").await.unwrap();
    wait_for(&mut input, "the input member to own both partitions", |o| {
        o.len() == 2
    })
    .await;

    let _redrive = log.join("stage", "redrive").await.unwrap();
    wait_for(
        &mut input,
        "the input member to be asked to give partitions up",
        |o| o.len() < 2,
    )
    .await;
    let kept = input.owned();
    let committed = tokio::time::timeout(
        Duration::from_secs(60),
        log.commit_many("stage", "input", &[(0, 1)]),
    )
    .await
    .expect("the commit never returned");
    assert!(
        committed.is_ok(),
        "the last commit of a revoked partition failed: {committed:?}"
    );
    input.release_all_but(&kept);
    assert_eq!(log.committed("stage", "input", 0).await.unwrap(), Some(1));
}
