//! Starting and stopping a pipeline: open the engine, create topics, start sources,
//! stages and sinks; on stop, let stages finish their batch and sinks drain in-flight
//! deliveries, then commit and close the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "kafka")]
use hifi_kafka::{KafkaConfig, KafkaLog};
use hifi_ledger::{Ledger, LedgerConfig, NodeKind, NodeSpec, SystemClock};
use hifi_log::{
    EmbeddedLog, FsyncPolicy, Log, LogConfig, LogError, OpenError, Retention, TopicSpec,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{EngineKind, FsyncMode, LoadedConfig, OnCorruptionMode, SourceConfig};
use crate::consumer::sleep_or_cancel;
use crate::health::Health;
use crate::sink::Sink;
use crate::source::HttpSource;
use crate::stage::Stage;
use crate::topology::Topology;
use crate::transform::Transforms;

/// Why a pipeline could not start. The messages include their cause's (it is not also
/// a `source`, which `{:#}` would print a second time).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine could not be opened.
    #[error("cannot open the engine: {0}")]
    Open(OpenError),
    /// The engine refused an operation (e.g. a topic exists with other partitions).
    #[error("engine: {0}")]
    Log(LogError),
    /// Something in the configuration only detectable at start.
    #[error("{0}")]
    Config(String),
}

impl From<OpenError> for StartError {
    fn from(e: OpenError) -> Self {
        StartError::Open(e)
    }
}

impl From<LogError> for StartError {
    fn from(e: LogError) -> Self {
        StartError::Log(e)
    }
}

/// The embedded log configured from `[engine]`.
pub fn log_config(loaded: &LoadedConfig) -> LogConfig {
    let e = &loaded.config.engine;
    LogConfig {
        fsync: match e.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval(e.fsync_interval.0),
            FsyncMode::Never => FsyncPolicy::Never,
        },
        segment_bytes_max: e.segment_bytes.0,
        record_bytes_max: e.record_bytes_max.0 as usize,
        preallocate_bytes: e.preallocate_bytes.0,
        default_retention: Retention {
            age: Some(e.retention.0),
            bytes: None,
            ignore_consumers: false,
        },
        retention_hold_bytes_max: e.retention_hold_bytes_max.0,
        retention_check_interval: e.retention_check_interval.0,
        open_segment_files_max: e.open_segment_files_max.max(1),
        on_corruption: match e.on_corruption {
            OnCorruptionMode::Quarantine => hifi_log::quarantine::OnCorruption::Quarantine,
            OnCorruptionMode::Stop => hifi_log::quarantine::OnCorruption::Stop,
        },
        ..LogConfig::default()
    }
}

/// Why a Kafka setting is refused by a build without the `kafka` feature.
pub const NO_KAFKA: &str =
    "this hifi was built without Kafka support (cargo feature `kafka`, on by default)";

/// The engine a pipeline runs on.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The embedded log (one process).
    Embedded(EmbeddedLog),
    /// A Kafka-protocol cluster, and the standby ingest appends to while it is away.
    #[cfg(feature = "kafka")]
    Kafka(Arc<KafkaLog>, Option<crate::standby::StandbyEngine>),
}

impl Engine {
    /// The engine as the pipeline uses it.
    pub fn log(&self) -> Arc<dyn Log> {
        match self {
            Engine::Embedded(e) => Arc::new(e.clone()),
            #[cfg(feature = "kafka")]
            Engine::Kafka(k, _) => k.clone(),
        }
    }

    /// The embedded log, for its counters.
    pub fn embedded(&self) -> Option<EmbeddedLog> {
        match self {
            Engine::Embedded(e) => Some(e.clone()),
            #[cfg(feature = "kafka")]
            Engine::Kafka(..) => None,
        }
    }

    /// The standby (`[engine.standby]`), if any.
    pub fn standby(&self) -> Option<&crate::standby::StandbyEngine> {
        match self {
            Engine::Embedded(_) => None,
            #[cfg(feature = "kafka")]
            Engine::Kafka(_, s) => s.as_ref(),
        }
    }

    /// Where the data is, for start-up messages.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    pub fn describe(&self, loaded: &LoadedConfig) -> String {
        match self {
            Engine::Embedded(e) => format!("data in {}", e.root().display()),
            #[cfg(feature = "kafka")]
            Engine::Kafka(_, standby) => format!(
                "data in Kafka at {}, topics prefixed {:?}{}",
                loaded.config.engine.brokers.as_deref().unwrap_or_default(),
                loaded.config.engine.topic_prefix,
                standby
                    .as_ref()
                    .map(|s| format!("; standby for ingest: {}", s.describe()))
                    .unwrap_or_default()
            ),
        }
    }

    /// Flushes and closes.
    pub async fn close(&self) {
        match self {
            Engine::Embedded(e) => e.close().await,
            #[cfg(feature = "kafka")]
            Engine::Kafka(_, standby) => {
                if let Some(s) = standby {
                    s.close().await;
                }
            }
        }
    }
}

/// The header names hifi writes; records read back borrow them (no allocation).
const HEADER_NAMES: &[&str] = &[
    crate::event::header::ID,
    crate::event::header::SOURCE,
    crate::event::header::TYPE,
    crate::event::header::TIME,
    crate::event::header::INGEST_TIME,
    crate::event::header::FORMAT,
    crate::event::header::ORIGIN,
    crate::retry::retry_header::ATTEMPTS,
    crate::retry::retry_header::FIRST_MS,
    crate::retry::retry_header::DUE_MS,
    crate::retry::retry_header::REASON,
    crate::retry::retry_header::DLQ_REASON,
];

/// Opens the engine named in `[engine]` (blocking: recovery reads the disk), with its
/// standby when this process runs a source (`only`): a spool is one process's.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
pub fn open_engine(loaded: &LoadedConfig, only: &NodeFilter) -> Result<Engine, StartError> {
    hifi_log::register_header_names(HEADER_NAMES);
    let e = &loaded.config.engine;
    match e.kind {
        EngineKind::Embedded => {
            let dir = loaded.resolve(&e.data_dir);
            Ok(Engine::Embedded(EmbeddedLog::open(
                dir,
                log_config(loaded),
            )?))
        }
        #[cfg(not(feature = "kafka"))]
        EngineKind::Kafka => Err(StartError::Config(format!("engine.kind: {NO_KAFKA}"))),
        #[cfg(feature = "kafka")]
        EngineKind::Kafka => {
            let cfg = KafkaConfig {
                brokers: e.brokers.clone().unwrap_or_default(),
                topic_prefix: e.topic_prefix.clone(),
                replication_factor: e.replication_factor,
                client: e.client.clone(),
            };
            let kafka = Arc::new(KafkaLog::connect(cfg)?);
            let ingests = loaded
                .config
                .sources
                .keys()
                .any(|n| only.runs("sources", n));
            let standby = match ingests {
                true => crate::standby::StandbyEngine::open(loaded)?,
                false => None,
            };
            Ok(Engine::Kafka(kafka, standby))
        }
    }
}

/// Which nodes this process runs (`hifi run --only sources.api,sinks.partner`); all by
/// default.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter(Option<std::collections::BTreeSet<String>>);

impl NodeFilter {
    /// Every node.
    pub fn all() -> Self {
        NodeFilter(None)
    }

    /// Parses `sources.api,stages.clean`, checking every name is a node of the pipeline.
    pub fn parse(list: &str, loaded: &LoadedConfig) -> Result<Self, String> {
        let c = &loaded.config;
        let mut known: Vec<String> = Vec::new();
        known.extend(c.sources.keys().map(|n| format!("sources.{n}")));
        known.extend(c.stages.keys().map(|n| format!("stages.{n}")));
        known.extend(c.sinks.keys().map(|n| format!("sinks.{n}")));
        // A fingerprint is read by one process: with --only, the one that names it.
        known.extend(
            c.writers()
                .filter(|w| w.fingerprint.is_some())
                .map(|w| format!("fingerprints.{}", w.node_name())),
        );
        let mut set = std::collections::BTreeSet::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !known.iter().any(|k| k == item) {
                return Err(format!(
                    "--only: {item:?} is not a node of this pipeline; the nodes are: {}",
                    known.join(", ")
                ));
            }
            set.insert(item.to_owned());
        }
        if set.is_empty() {
            return Err(format!(
                "--only needs at least one node, e.g. --only {}",
                known.first().map_or("sources.api", String::as_str)
            ));
        }
        Ok(NodeFilter(Some(set)))
    }

    /// Whether this process runs the node (`kind` is `sources`, `stages` or `sinks`, or
    /// `fingerprints` for `fingerprints.sources.X`).
    pub fn runs(&self, kind: &str, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|s| s.contains(&format!("{kind}.{name}")))
    }
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// The checked graph.
    pub topology: Topology,
    /// The engine.
    pub log: Arc<dyn Log>,
    /// Sources with their configuration (the server binds their listeners).
    pub sources: Vec<(Arc<HttpSource>, SourceConfig)>,
    /// Running stages.
    pub stages: Vec<Arc<Stage>>,
    /// Running sinks.
    pub sinks: Vec<Arc<Sink>>,
    /// The fidelity ledger.
    pub ledger: Arc<Ledger>,
    /// Whether every node runs (for `/readyz` and `hifi run`).
    pub health: Arc<Health>,
    /// Autoscaling signals of the stages and sinks (`/v1/scale`).
    pub scale: Arc<crate::scale::Scale>,
    /// Fingerprints of the topics written by nodes running here (`/v1/fingerprints`).
    pub fingerprints: Vec<Arc<crate::fingerprint::Fingerprinter>>,
    /// Versioned stages (`/v1/versions`, publish requests).
    pub versions: Arc<crate::versions::Live>,
    /// Cancels stages and sinks.
    shutdown: CancellationToken,
    /// Stage and sink tasks.
    tasks: tokio::task::JoinSet<()>,
}

impl Pipeline {
    /// Creates topics and starts every node (sources are ready to ingest; their HTTP
    /// listeners are the server's job).
    pub async fn start(
        loaded: &LoadedConfig,
        topology: Topology,
        engine: &Engine,
        drain: Duration,
        (only, instance): (&NodeFilter, Option<&str>),
        versions: crate::versions::Live,
        mut kept: Kept,
    ) -> Result<Pipeline, StartError> {
        let versions = Arc::new(versions);
        let (log, standby) = (engine.log(), engine.standby());
        for spec in topology.topics.values() {
            // An internal topic a node reads (`__dlq.SINK`, …) keeps the rule its owner
            // gives it: the file's would replace it (the embedded engine applies a
            // given rule to an existing topic).
            let internal = spec.name.starts_with("__");
            let spec = &TopicSpec {
                retention: spec.retention.filter(|_| !internal),
                ..spec.clone()
            };
            let partitions = log.ensure_topic(spec).await?;
            info!(topic = %spec.name, partitions, "topic ready");
        }
        if let Some(sb) = standby {
            // A spool topic per source running here (and instance), partitioned as its
            // topic in the engine.
            let running = loaded.config.sources.iter();
            for (name, s) in running.filter(|(n, _)| only.runs("sources", n)) {
                if let Some(spec) = topology.topics.get(s.topic.get_ref()) {
                    let spool = crate::standby::spool_topic(name, instance);
                    let spec = crate::standby::spool_spec(spool, spec, sb.cfg.kind);
                    sb.log.ensure_topic(&spec).await?;
                }
            }
        }
        for w in &topology.warnings {
            warn!("{w}");
        }
        let cfg = &loaded.config;
        let ledger = open_ledger(loaded, log.clone()).await?;
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        crate::health::fail_on_panic(&health);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sources = Vec::new();
        for (name, s) in cfg.sources.iter().filter(|(n, _)| only.runs("sources", n)) {
            let source = HttpSource::start(
                name,
                s,
                log.clone(),
                ledger.node(name),
                &cfg.engine,
                (instance, standby),
                kept.windows.remove(name),
            )
            .await?;
            let mut source = source;
            source.schema = topology.derived.schemas.get(s.topic.get_ref()).cloned();
            source.pii = crate::pii::detect::Detector::new(cfg.pii.sample_every);
            let source = Arc::new(source);
            #[cfg(not(feature = "kafka"))]
            if s.kind == crate::config::SourceType::Kafka {
                return Err(StartError::Config(format!("sources.{name}: {NO_KAFKA}")));
            }
            #[cfg(feature = "kafka")]
            if s.kind == crate::config::SourceType::Kafka {
                // Its dead-letter topics, as a sink's (no retry tiers, so no `keep`).
                crate::retry::ensure_topics(log.as_ref(), name, 0, Duration::ZERO).await?;
                let consumer = crate::kafka_source::connect(name, s)
                    .map_err(|e| StartError::Config(format!("sources.{name}: {e}")))?;
                let (src, token) = (source.clone(), shutdown.clone());
                tasks.spawn(crate::kafka_source::run(src, consumer, token));
            }
            if source.standby.is_some() {
                let token = shutdown.clone();
                tasks.spawn(crate::standby::move_records(
                    source.clone(),
                    ledger.clone(),
                    token,
                ));
            }
            sources.push((source, s.clone()));
            if ledger_enabled(loaded) {
                let (source, token) = (sources.last().expect("pushed").0.clone(), shutdown.clone());
                tasks.spawn(async move {
                    loop {
                        let stop = !sleep_or_cancel(&token, Duration::from_millis(100)).await;
                        if let Err(e) = source.flush_tallies().await {
                            error!(source = %source.name, %e, "cannot record source outcomes in the ledger; retrying");
                        }
                        if stop {
                            return;
                        }
                    }
                });
            }
        }
        if sources.iter().any(|(s, _)| s.standby.is_some()) {
            // The standby's holds on settling, said to the other processes every second.
            let (l, token) = (ledger.clone(), shutdown.clone());
            tasks.spawn(async move {
                while sleep_or_cancel(&token, Duration::from_secs(1)).await {
                    if let Err(e) = l.say_holds().await {
                        tracing::debug!(%e, "cannot say the standby's holds to the other processes yet");
                    }
                }
            });
        }
        if cfg.pii.sample_every > 0 && !sources.is_empty() {
            let policy = Arc::new(topology.pii.clone());
            let graph = Arc::new(topology.lineage.clone());
            let running = sources.iter().map(|(s, _)| s.clone()).collect();
            let token = shutdown.clone();
            tasks.spawn(crate::pii::report::watch(policy, graph, running, token));
        }
        // The alarm webhook's first position is made before the ledger settles anything.
        let url = cfg.ledger.alarm_webhook.clone();
        let rule = (cfg.ledger.loss_alarm_percent, cfg.ledger.history.0);
        crate::loss_alarms::start(log.clone(), url, rule, shutdown.clone(), &mut tasks).await?;
        {
            let (l, token) = (ledger.clone(), shutdown.clone());
            tasks.spawn(async move {
                while sleep_or_cancel(&token, Duration::from_secs(1)).await {
                    if let Err(e) = l.tick().await {
                        error!(%e, "ledger could not settle buckets; retrying");
                    }
                }
            });
        }
        let mut stages = Vec::new();
        let runs_stage = |n: &String, s: &crate::config::StageConfig| {
            only.runs("stages", s.candidate_of.as_deref().unwrap_or(n))
        };
        for (name, s) in cfg.stages.iter().filter(|(n, s)| runs_stage(n, s)) {
            let transforms = Transforms::compile(&s.transforms)
                .map_err(|e| StartError::Config(format!("stages.{name}.{e}")))?;
            let stage = Arc::new(Stage {
                name: name.clone(),
                input: s.input.get_ref().clone(),
                output: s.output.get_ref().clone(),
                transforms: Arc::new(transforms),
                query: topology.derived.queries.get(name).cloned(),
                window: match (&s.window, topology.derived.windows.get(name)) {
                    (Some(w), Some(q)) => {
                        let w = w.get_ref();
                        Some(Arc::new(crate::window::WindowRun {
                            query: q.clone(),
                            size_ms: w.size.0.as_millis() as i64,
                            lateness_ms: w.allowed_lateness.0.as_millis() as i64,
                            late: w.late,
                            idle: w.idle_timeout.0,
                            max_held: w.max_held_events.max(1),
                        }))
                    }
                    _ => None,
                },
                batch_max_events: s.batch_max_events,
                record_bytes_max: cfg.engine.record_bytes_max.0 as usize,
                log: log.clone(),
                stats: Default::default(),
                ledger: match &s.candidate_of {
                    // Not in the ledger until published (its fingerprint counts it).
                    Some(_) => ledger.detached_node(name),
                    None => ledger.node(name),
                },
                group: s.consumer_group(name),
                candidate_of: s.candidate_of.clone(),
                skip: s.skip.clone(),
                rate: s
                    .candidate_of
                    .as_ref()
                    .and_then(|_| crate::versions::watch::first_rate(s.versions.as_ref()?))
                    .map(|r| {
                        Arc::new(std::sync::Mutex::new(crate::delivery::RateLimit::new(
                            r,
                            tokio::time::Instant::now(),
                        )))
                    }),
                #[cfg(feature = "test-hooks")]
                test_drop_ids: match &s.test_drop_ids_matching {
                    Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                        StartError::Config(format!("stages.{name}.test_drop_ids_matching: {e}"))
                    })?),
                    None => None,
                },
                #[cfg(feature = "test-hooks")]
                test_panic_ids: match &s.test_panic_ids_matching {
                    Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                        StartError::Config(format!("stages.{name}.test_panic_ids_matching: {e}"))
                    })?),
                    None => None,
                },
            });
            stage.prepare().await.map_err(|e| {
                StartError::Config(format!("stages.{name}: cannot create its topics: {e}"))
            })?;
            let node = format!("stages.{name}");
            supervise(
                &mut tasks,
                &health,
                node,
                stage.clone().run(shutdown.clone()),
            );
            stages.push(stage);
        }
        let mut sinks = Vec::new();
        for (name, s) in cfg.sinks.iter().filter(|(n, _)| only.runs("sinks", n)) {
            let sink = Arc::new(
                Sink::new(name, s, log.clone(), ledger.node(name))
                    .map_err(|e| StartError::Config(format!("sinks.{name}: {e}")))?,
            );
            sink.prepare().await.map_err(|e| {
                StartError::Config(format!("sinks.{name}: cannot create its topics: {e}"))
            })?;
            let node = format!("sinks.{name}");
            supervise(
                &mut tasks,
                &health,
                node,
                sink.clone().run(shutdown.clone(), drain),
            );
            sinks.push(sink);
        }
        if let Some(url) = &cfg.lineage.openlineage_url {
            let url = crate::openlineage::endpoint(url, &cfg.lineage.endpoint);
            let jobs = crate::openlineage::jobs(loaded, &topology, only);
            let (key, token) = (cfg.lineage.api_key.clone(), shutdown.clone());
            tasks.spawn(crate::openlineage::run(url, key, jobs, token));
        }
        let watched = stages
            .iter()
            .map(|s| {
                let kind = match s.window {
                    Some(_) => crate::scale::StageKind::Windows,
                    None => crate::scale::StageKind::Rows,
                };
                crate::scale::Watched::Stage(s.name.clone(), s.stats.clone(), kind)
            })
            .chain(
                sinks
                    .iter()
                    .map(|s| crate::scale::Watched::Sink(s.name.clone(), s.stats.clone())),
            )
            .collect();
        let scale = Arc::new(crate::scale::Scale::new(cfg.scale.clone(), watched));
        tasks.spawn(scale.clone().run(ledger.clone(), shutdown.clone()));
        let mut fingerprints = Vec::new();
        let mut signals = None;
        let mut inputs = Vec::new();
        for w in cfg.writers() {
            let node = w.node_name();
            // A candidate version's fingerprint runs where the stage's does.
            let named = match w.candidate_of {
                Some(stage) => format!("stages.{stage}"),
                None => node.clone(),
            };
            let Some(f) = w.fingerprint.filter(|_| only.runs("fingerprints", &named)) else {
                continue;
            };
            let audits = crate::audit::compile(w.audits, w.versioned).map_err(|(i, why)| {
                StartError::Config(format!("{node}.audits[{i}].check: {why}"))
            })?;
            if signals.is_none() {
                let s = crate::signals::Signals::start(
                    log.clone(),
                    cfg.signals.webhook.clone(),
                    shutdown.clone(),
                    &mut tasks,
                )
                .await
                .map_err(|e| {
                    StartError::Config(format!(
                        "cannot create the signals topic or its webhook's position: {e}"
                    ))
                })?;
                signals = Some(s);
            }
            let ledger = ledger_enabled(loaded).then(|| ledger.clone());
            let writer = crate::fingerprint::Writer::of(cfg, w.topic);
            let fp = Arc::new(crate::fingerprint::Fingerprinter::new(
                (node.clone(), writer),
                w.topic.to_owned(),
                f,
                cfg.engine.record_bytes_max.0 as usize,
                log.clone(),
                signals.clone().map(|s| (s, ledger)),
                audits,
            ));
            fp.prepare().await.map_err(|e| {
                StartError::Config(format!("{node}: cannot create its fingerprint topic: {e}"))
            })?;
            let run = fp.clone().run(shutdown.clone());
            supervise(
                &mut tasks,
                &health,
                format!("{node}.fingerprint"),
                async move {
                    run.await;
                    Ok(())
                },
            );
            fingerprints.push(fp);
            inputs.push((w.input, w.candidate_of.map(|s| format!("stages.{s}"))));
        }
        for (fp, (input, published)) in fingerprints.iter().zip(inputs) {
            if let Some(i) = fingerprints
                .iter()
                .find(|f| Some(f.topic.as_str()) == input)
            {
                let _ = fp.input.set(i.clone());
            }
            if let Some(p) = fingerprints
                .iter()
                .find(|f| Some(&f.node) == published.as_ref())
            {
                let _ = fp.published.set(p.clone());
            }
        }
        let paced = stages
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.rate.clone()?)))
            .collect();
        tasks.spawn(crate::versions::watch::run(
            versions.clone(),
            log.clone(),
            fingerprints.clone(),
            (
                ledger.clone(),
                paced,
                crate::versions::watch::live_sinks(cfg),
            ),
            shutdown.clone(),
        ));
        Ok(Pipeline {
            topology,
            log,
            sources,
            stages,
            sinks,
            ledger,
            health,
            scale,
            fingerprints,
            versions,
            shutdown,
            tasks,
        })
    }

    /// Node names by kind, for start-up messages.
    pub fn describe(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut m = BTreeMap::new();
        m.insert(
            "sources",
            self.sources.iter().map(|(s, _)| s.name.clone()).collect(),
        );
        m.insert(
            "stages",
            self.stages.iter().map(|s| s.name.clone()).collect(),
        );
        m.insert("sinks", self.sinks.iter().map(|s| s.name.clone()).collect());
        m
    }

    /// Stops stages and sinks (sinks drain in-flight deliveries, bounded by the drain
    /// time given at start) and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// [`Pipeline::stop`], keeping what the next start in this process can go on with
    /// (ingest must have stopped).
    pub async fn stop_keeping(self) -> Kept {
        let sources: Vec<Arc<HttpSource>> = self.sources.iter().map(|(s, _)| s.clone()).collect();
        self.stop().await;
        let mut kept = Kept::default();
        for s in sources {
            if let Some(w) = s.keep_window().await {
                kept.windows.insert(s.name.clone(), w);
            }
        }
        kept
    }
}

/// What one start of the nodes hands the next in the same process (a reload, a
/// publish): each source's de-duplication window.
#[derive(Debug, Default)]
pub struct Kept {
    windows: BTreeMap<String, crate::source::KeptWindow>,
}

/// Runs a node's task; if it fails — an error, or a panic (a bug) — the node is marked
/// failed, so `/readyz` says so and `hifi run` stops (to be restarted from the committed
/// positions) instead of running on without it.
fn supervise<F>(tasks: &mut tokio::task::JoinSet<()>, health: &Arc<Health>, node: String, run: F)
where
    F: std::future::Future<Output = Result<(), LogError>> + Send + 'static,
{
    let health = health.clone();
    tasks.spawn(async move {
        let why = match tokio::spawn(run).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => {
                let text = crate::health::panic_text(e.into_panic().as_ref());
                format!("it panicked (a bug; please report it): {text}")
            }
            Err(e) => e.to_string(),
        };
        health.fail(&node, &why);
    });
}

fn ledger_enabled(loaded: &LoadedConfig) -> bool {
    loaded.config.ledger.enabled
}

/// The ledger's view of the configured nodes.
pub fn node_specs(loaded: &LoadedConfig) -> Vec<NodeSpec> {
    let c = &loaded.config;
    let mut nodes = Vec::new();
    for (name, s) in &c.sources {
        nodes.push(NodeSpec {
            name: name.clone(),
            kind: NodeKind::Source,
            input: None,
            output: Some(s.topic.get_ref().clone()),
            group: None,
            aggregates: false,
        });
    }
    for (name, s) in c.stages.iter().filter(|(_, s)| s.candidate_of.is_none()) {
        nodes.push(NodeSpec {
            name: name.clone(),
            kind: NodeKind::Stage,
            input: Some(s.input.get_ref().clone()),
            output: Some(s.output.get_ref().clone()),
            group: Some(s.consumer_group(name)),
            aggregates: s.window.is_some(),
        });
    }
    for (name, s) in &c.sinks {
        nodes.push(NodeSpec {
            name: name.clone(),
            kind: NodeKind::Sink,
            input: Some(s.input.get_ref().clone()),
            output: None,
            group: Some(format!("sink.{name}")),
            aggregates: false,
        });
    }
    nodes
}

async fn open_ledger(loaded: &LoadedConfig, log: Arc<dyn Log>) -> Result<Arc<Ledger>, StartError> {
    let l = &loaded.config.ledger;
    let cfg = LedgerConfig {
        enabled: l.enabled,
        settle_after: l.settle_after.0,
        loss_alarm_percent: l.loss_alarm_percent,
        history: l.history.0,
        follow_journal: loaded.config.engine.kind == EngineKind::Kafka,
        settle_max_wait: l.settle_max_wait.0,
        shadows: loaded
            .config
            .sinks
            .iter()
            .filter_map(|(name, s)| {
                let shadow = s.shadow.as_ref()?.get_ref();
                Some((name.clone(), shadow.strip_prefix("sinks.")?.to_owned()))
            })
            .collect(),
    };
    Ok(Ledger::open(cfg, node_specs(loaded), log, Arc::new(SystemClock)).await?)
}
