//! Tests of the fingerprint reader: checkpoints, replay, completeness.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use super::*;

async fn fingerprinter(log: &Arc<dyn Log>) -> Fingerprinter {
    fingerprinter_within(log, 1 << 20).await
}

async fn fingerprinter_within(log: &Arc<dyn Log>, record_bytes_max: usize) -> Fingerprinter {
    let cfg: FingerprintConfig = toml::from_str("").unwrap();
    let fp = Fingerprinter::new(
        ("sources.api".into(), Writer::Known(Vec::new())),
        "events".into(),
        &cfg,
        record_bytes_max,
        log.clone(),
        None,
        Vec::new(),
    );
    fp.prepare().await.unwrap();
    fp
}

/// A fingerprinter of topic `events` (`partitions` of them) that signals, written by
/// `writer`, with the settings `cfg` (TOML), its checkpoints loaded.
async fn signalling(
    log: &Arc<dyn Log>,
    signals: &Arc<Signals>,
    (cfg, writer): (&str, Writer),
    partitions: u32,
) -> Fingerprinter {
    let cfg: FingerprintConfig = toml::from_str(cfg).unwrap();
    let fp = Fingerprinter::new(
        ("stages.copy".into(), writer),
        "events".into(),
        &cfg,
        1 << 20,
        log.clone(),
        Some((signals.clone(), None)),
        Vec::new(),
    );
    fp.prepare().await.unwrap();
    fp.load(partitions).await.unwrap();
    fp
}

fn counted(fp: &Fingerprinter) -> u64 {
    fp.report(0, i64::MAX)
        .buckets
        .iter()
        .map(|b| b.1.count)
        .sum()
}

/// A checkpoint larger than a record is written as a group of records, and read
/// back whole.
#[tokio::test]
async fn a_checkpoint_larger_than_a_record_is_split_and_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> =
        Arc::new(hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap());
    log.ensure_topic(&TopicSpec::new("events", 1))
        .await
        .unwrap();
    // 2 000 events over 20 hourly buckets, ten fields of many values each.
    let records = (0..2_000i64)
        .map(|i| {
            let fields: Vec<String> = (0..10)
                .map(|f| format!("\"f{f}\":\"v{}\"", i * 7 + f))
                .collect();
            Record::new(
                format!("{{{}}}", fields.join(",")),
                3_600_000 * (1 + i % 20),
            )
        })
        .collect();
    log.append("events", 0, records).await.unwrap();
    let stored = log
        .read(
            "events",
            0,
            0,
            ReadLimits {
                max_records: 5_000,
                ..ReadLimits::default()
            },
        )
        .await
        .unwrap();
    let a = fingerprinter_within(&log, 16 << 10).await;
    a.load(1).await.unwrap();
    a.count(0, &stored);
    a.checkpoint().await.unwrap();
    let parts = log
        .offsets(&checkpoint_topic("events"), 0)
        .await
        .unwrap()
        .end;
    assert!(
        parts > 1,
        "one record of at most 8 KiB cannot hold it: {parts}"
    );
    let b = fingerprinter_within(&log, 16 << 10).await;
    assert_eq!(b.load(1).await.unwrap(), vec![2_000]);
    assert_eq!(counted(&b), 2_000);
    assert_eq!(b.report(0, i64::MAX).buckets.len(), 20);
}

/// Figures come back with their positions; a checkpoint that cannot be read makes
/// the fingerprint count the topic again instead of trusting a part of it.
#[tokio::test]
async fn checkpoints_come_back_whole_or_the_topic_is_counted_again() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> =
        Arc::new(hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap());
    log.ensure_topic(&TopicSpec::new("events", 1))
        .await
        .unwrap();
    let records = (0..3)
        .map(|i| Record::new(format!("{{\"n\":{i}}}"), 3_600_000 + i))
        .collect();
    log.append("events", 0, records).await.unwrap();
    let stored = log
        .read("events", 0, 0, ReadLimits::default())
        .await
        .unwrap();

    let a = fingerprinter(&log).await;
    assert_eq!(a.load(1).await.unwrap(), vec![0]);
    a.count(0, &stored);
    a.checkpoint().await.unwrap();

    let b = fingerprinter(&log).await;
    assert_eq!(
        b.load(1).await.unwrap(),
        vec![3],
        "read on after the counted"
    );
    assert_eq!(counted(&b), 3);

    log.append(
        &checkpoint_topic("events"),
        0,
        vec![Record::new("garbage", 0)],
    )
    .await
    .unwrap();
    let c = fingerprinter(&log).await;
    assert_eq!(
        c.load(1).await.unwrap(),
        vec![0],
        "counted again from the start"
    );
    assert_eq!(counted(&c), 0);
}

/// A bucket is not complete while a partition holding its events is read behind,
/// however far past it the other partitions are.
#[tokio::test]
async fn a_partition_read_behind_holds_its_buckets_open() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> =
        Arc::new(hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap());
    log.ensure_topic(&TopicSpec::new("events", 2))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let signals = Signals::start(log.clone(), None, stop.clone(), &mut tasks)
        .await
        .unwrap();
    let cfg = "bucket = \"1m\"\nlateness = \"0s\"";
    let fp = signalling(&log, &signals, (cfg, Writer::Known(Vec::new())), 2).await;
    // Partition 0: the minute at 60 s and one three minutes on; partition 1: the
    // minute at 60 s, not read yet.
    log.append(
        "events",
        0,
        vec![Record::new("{}", 60_000), Record::new("{}", 240_000)],
    )
    .await
    .unwrap();
    log.append("events", 1, vec![Record::new("{}", 60_500)])
        .await
        .unwrap();
    let read = |p: u32| {
        let log = log.clone();
        async move {
            log.read("events", p, 0, ReadLimits::default())
                .await
                .unwrap()
        }
    };
    fp.count(0, &read(0).await);
    fp.signal().await.unwrap();
    assert!(
        fp.completed(60_000).is_none(),
        "complete with partition 1 unread"
    );
    fp.count(1, &read(1).await);
    fp.signal().await.unwrap();
    assert_eq!(fp.completed(60_000).map(|s| s.count), Some(2));
    stop.cancel();
}

/// On a quiet topic (read to its end, nothing new for `idle_timeout`, its writer caught
/// up) the last bucket completes by the wall clock; a stage's topic only once the stage
/// committed its input to the end; a topic whose writer cannot tell, never.
#[tokio::test]
async fn a_quiet_topic_completes_its_last_bucket_once_its_writer_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> =
        Arc::new(hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap());
    for t in ["input", "events"] {
        log.ensure_topic(&TopicSpec::new(t, 1)).await.unwrap();
    }
    log.append("input", 0, vec![Record::new("{}", 60_000)])
        .await
        .unwrap();
    log.append("events", 0, vec![Record::new("{}", 60_000)])
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let signals = Signals::start(log.clone(), None, stop.clone(), &mut tasks)
        .await
        .unwrap();
    let cfg = "bucket = \"1m\"\nlateness = \"0s\"\nidle_timeout = \"0s\"";
    let stage = Writer::Known(vec![("stage.copy".into(), "input".into())]);
    let mut results = Vec::new();
    for (writer, commit) in [
        (Writer::Unknown, false),
        (stage.clone(), false),
        (stage, true),
        (Writer::Known(Vec::new()), false),
    ] {
        let fp = signalling(&log, &signals, (cfg, writer), 1).await;
        let read = log
            .read("events", 0, 0, ReadLimits::default())
            .await
            .unwrap();
        fp.count(0, &read);
        if commit {
            log.commit_many("stage.copy", "input", &[(0, 1)])
                .await
                .unwrap();
        }
        fp.signal().await.unwrap();
        results.push(fp.completed(60_000).map(|s| s.count));
    }
    assert_eq!(results, [None, None, Some(1), Some(1)]);
    // Two stages: the downstream one caught up is not enough while the one before it is
    // behind (its input holds a record it has not committed past).
    log.ensure_topic(&TopicSpec::new("source", 1))
        .await
        .unwrap();
    log.append("source", 0, vec![Record::new("{}", 60_000)])
        .await
        .unwrap();
    let chain = Writer::Known(vec![
        ("stage.first".into(), "source".into()),
        ("stage.copy".into(), "input".into()),
    ]);
    let fp = signalling(&log, &signals, (cfg, chain.clone()), 1).await;
    fp.count(
        0,
        &log.read("events", 0, 0, ReadLimits::default())
            .await
            .unwrap(),
    );
    fp.signal().await.unwrap();
    assert_eq!(fp.completed(60_000), None, "the first stage is behind");
    log.commit_many("stage.first", "source", &[(0, 1)])
        .await
        .unwrap();
    fp.signal().await.unwrap();
    assert_eq!(fp.completed(60_000).map(|s| s.count), Some(1));
    // Not idle long enough: the event time decides, as before.
    let cfg = "bucket = \"1m\"\nlateness = \"0s\"";
    let fp = signalling(&log, &signals, (cfg, Writer::Known(Vec::new())), 1).await;
    fp.count(
        0,
        &log.read("events", 0, 0, ReadLimits::default())
            .await
            .unwrap(),
    );
    fp.signal().await.unwrap();
    assert_eq!(fp.completed(60_000), None);
    stop.cancel();
}

/// The quiet rule asks every writer up the chain, upstream first; a Kafka source on the
/// way, or a topic no node writes, makes it unknown.
#[test]
fn a_topics_writers_are_the_stages_up_to_the_sources() {
    let cfg = |text: &str| {
        let text = format!("[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n{text}");
        crate::config::LoadedConfig::parse("p.toml".as_ref(), text)
            .unwrap()
            .config
    };
    let http = cfg(
        "[sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\n\
         [stages.a]\ninput = \"orders\"\noutput = \"mid\"\n\
         [stages.b]\ninput = \"mid\"\noutput = \"out\"\n\
         [stages.c]\ninput = \"elsewhere\"\noutput = \"lonely\"\n",
    );
    assert_eq!(Writer::of(&http, "orders"), Writer::Known(Vec::new()));
    assert_eq!(
        Writer::of(&http, "out"),
        Writer::Known(vec![
            ("stage.a".to_owned(), "orders".to_owned()),
            ("stage.b".to_owned(), "mid".to_owned())
        ])
    );
    assert_eq!(Writer::of(&http, "lonely"), Writer::Unknown);
    let kafka = cfg("[sources.k]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"in\"]\ntopic = \"orders\"\n\
         [stages.a]\ninput = \"orders\"\noutput = \"mid\"\n");
    assert_eq!(Writer::of(&kafka, "mid"), Writer::Unknown);
}
