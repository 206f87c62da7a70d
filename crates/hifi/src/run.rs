//! `hifi run` and `hifi validate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hifi_pipeline::config::{LoadedConfig, SourceConfig, SourceType};
use hifi_pipeline::runtime::{open_engine, Engine, Kept, NodeFilter, Pipeline};
use hifi_pipeline::source::HttpSource;
use hifi_pipeline::topology::Topology;
use hifi_server::auth::{LiveTokens, Tokens};
use hifi_server::ingest::IngestState;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::listeners::Listeners;

/// A checked pipeline file, or an error message for the user.
pub fn load(file: &Path) -> Result<(LoadedConfig, Topology), String> {
    let (loaded, topology) = load_unchecked(file)?;
    topology.pii.check(&loaded).map_err(|e| e.to_string())?;
    Ok((loaded, topology))
}

/// [`load`] without refusing PII that reaches a sink not allowing it.
pub fn load_unchecked(file: &Path) -> Result<(LoadedConfig, Topology), String> {
    let loaded = LoadedConfig::load(file).map_err(|e| e.to_string())?;
    let topology = Topology::derive(&loaded).map_err(|e| e.to_string())?;
    check_tokens(&loaded).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((loaded, topology))
}

/// `hifi validate FILE`.
pub fn validate(file: &Path, print: bool) -> ExitCode {
    match load(file) {
        Ok((loaded, t)) => {
            if print {
                println!("{}", loaded.masked.trim_end());
                println!();
            }
            let c = &loaded.config;
            println!(
                "{}: ok — {} source(s), {} stage(s), {} sink(s); topics: {}",
                file.display(),
                c.sources.len(),
                c.stages.len(),
                c.sinks.len(),
                t.topics
                    .iter()
                    .map(|(n, s)| format!("{n} ({} partitions)", s.partitions))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (topic, schema) in &t.derived.schemas {
                let fields: Vec<String> = schema
                    .fields
                    .iter()
                    .map(|f| format!("{} {f}", f.name))
                    .collect();
                let from = t
                    .writers
                    .get(topic)
                    .map(|w| w.join(", "))
                    .unwrap_or_default();
                let how = if c.topics.get(topic).is_some_and(|s| s.schema.is_some()) {
                    "declared".to_owned()
                } else {
                    format!("derived from {from}")
                };
                println!("schema of {topic} ({how}): {}", fields.join(", "));
            }
            for w in &t.warnings {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Every token set of the file loads (`validate` and `run` say the same).
fn check_tokens(loaded: &LoadedConfig) -> Result<(), String> {
    for (name, s) in &loaded.config.sources {
        Tokens::load(s.auth.as_ref(), loaded, &format!("sources.{name}.auth"))?;
    }
    Tokens::load(loaded.config.admin.auth.as_ref(), loaded, "admin.auth")?;
    Ok(())
}

/// Logs a warning for a listener reachable beyond loopback without tokens.
fn warn_if_open(addr: SocketAddr, has_tokens: bool, what: &str) {
    if !addr.ip().is_loopback() && !has_tokens {
        tracing::warn!(%addr, listener = what,
            "listening beyond loopback without authentication: anyone who can reach it can use it (configure auth tokens)");
    }
}

/// A started pipeline with its HTTP listeners.
pub struct Running {
    /// The nodes.
    pub pipeline: Pipeline,
    /// The engine (closed last).
    pub engine: Engine,
    /// Where each source listens.
    pub source_addrs: Vec<(String, SocketAddr)>,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The listeners (kept across a restart of the nodes).
    listeners: Listeners,
    /// Tasks of these nodes' listeners (reloading token files).
    tasks_stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("source_addrs", &self.source_addrs)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// How `hifi run` was asked to run the pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Longest time to wait for in-flight deliveries when stopping.
    pub drain: Duration,
    /// The nodes this process runs.
    pub only: NodeFilter,
    /// Listen address of the admin API instead of `[admin] listen`.
    pub admin: Option<SocketAddr>,
    /// This process's name among several ingesting one source.
    pub instance: Option<String>,
}

/// Opens the engine, starts the nodes and binds every listener.
pub async fn start(
    loaded: &LoadedConfig,
    topology: Topology,
    opts: &RunOptions,
) -> Result<Running> {
    let engine = {
        let loaded = loaded.clone();
        let only = opts.only.clone();
        tokio::task::spawn_blocking(move || open_engine(&loaded, &only)).await??
    };
    let stopped = Stopped {
        engine,
        listeners: Listeners::default(),
        kept: Kept::default(),
    };
    match start_on(stopped, loaded, topology, opts).await {
        Ok(running) => Ok(running),
        Err((e, stopped)) => {
            stopped.close().await;
            Err(e)
        }
    }
}

/// What stays in the process between two starts of the nodes: the engine (open), the
/// listeners (their doors closed), and what the nodes kept for the next start.
struct Stopped {
    engine: Engine,
    listeners: Listeners,
    kept: Kept,
}

impl Stopped {
    /// Answers waiting requests 503, unbinds the listeners and closes the engine.
    async fn close(self) {
        self.listeners.shut().await;
        self.engine.close().await;
    }
}

/// Starts the nodes on an open engine and opens the listeners' doors onto them (binding
/// those not bound as asked); on failure the error comes back with what stays.
async fn start_on(
    stopped: Stopped,
    loaded: &LoadedConfig,
    topology: Topology,
    opts: &RunOptions,
) -> std::result::Result<Running, (anyhow::Error, Stopped)> {
    let Stopped {
        engine,
        mut listeners,
        kept,
    } = stopped;
    let pipeline = match start_pipeline(&engine, loaded, topology, opts, kept).await {
        Ok(p) => p,
        Err(e) => {
            let kept = Kept::default();
            return Err((
                e,
                Stopped {
                    engine,
                    listeners,
                    kept,
                },
            ));
        }
    };
    let tasks_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    match open_listeners(
        &pipeline,
        &engine,
        &mut listeners,
        &tasks_stop,
        &mut tasks,
        loaded,
        opts,
    )
    .await
    {
        Ok((source_addrs, admin_addr)) => {
            pipeline.health.set_started();
            Ok(Running {
                pipeline,
                engine,
                source_addrs,
                admin_addr,
                listeners,
                tasks_stop,
                tasks,
            })
        }
        Err(e) => {
            // Whatever failed stops what was started (the engine stays open).
            listeners.close().await;
            tasks_stop.cancel();
            while tasks.join_next().await.is_some() {}
            pipeline.stop().await;
            let kept = Kept::default();
            Err((
                e,
                Stopped {
                    engine,
                    listeners,
                    kept,
                },
            ))
        }
    }
}

async fn start_pipeline(
    engine: &Engine,
    loaded: &LoadedConfig,
    topology: Topology,
    opts: &RunOptions,
    kept: Kept,
) -> Result<Pipeline> {
    if let Engine::Kafka(k, _) = &engine {
        let topics: Vec<String> = topology.topics.keys().cloned().collect();
        k.check_cluster(&topics).await.with_context(|| {
            format!(
                "cannot reach the Kafka cluster at {}",
                loaded.config.engine.brokers.as_deref().unwrap_or_default()
            )
        })?;
    }
    let log = engine.log();
    // Versioned stages: the published versions, candidates beside them, readers on the
    // published topics (the file's configuration otherwise).
    let (versioned, versions) = hifi_pipeline::versions::resolve(log.as_ref(), loaded)
        .await
        .map_err(anyhow::Error::msg)?;
    let topology = if versions.plans.is_empty() {
        topology
    } else {
        Topology::build(&versioned).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    Ok(Pipeline::start(
        &versioned,
        topology,
        engine,
        opts.drain,
        (&opts.only, opts.instance.as_deref()),
        versions,
        kept,
    )
    .await?)
}

/// Binds every listener the file asks for (keeping those bound as asked, unbinding
/// those it no longer names), then opens their doors onto `pipeline`'s routers; returns
/// the sources' and the admin API's addresses.
async fn open_listeners(
    pipeline: &Pipeline,
    engine: &Engine,
    listeners: &mut Listeners,
    tasks_stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
    loaded: &LoadedConfig,
    opts: &RunOptions,
) -> Result<(Vec<(String, SocketAddr)>, SocketAddr)> {
    // Every listener's name, address and limits, so that those no longer asked as they
    // are unbind before any is bound (a port can pass from one name to another).
    let http = |(source, cfg): &(Arc<HttpSource>, SourceConfig)| {
        let name = format!("sources.{}", source.name);
        let limits = hifi_server::ServeLimits {
            max_connections: cfg.max_connections,
            header_read_timeout: cfg.header_read_timeout.0,
        };
        // A Kafka source has no listener: its records come from Kafka.
        (cfg.kind == SourceType::Http).then_some((name, cfg.listen, limits))
    };
    let admin_asked = opts.admin.unwrap_or(loaded.config.admin.listen);
    let mut wanted: Vec<_> = pipeline.sources.iter().filter_map(http).collect();
    wanted.push(("admin".to_owned(), admin_asked, Default::default()));
    listeners.keep_only(&wanted).await;
    let mut routers = Vec::new();
    let mut source_addrs = Vec::new();
    for entry in &pipeline.sources {
        let Some((name, listen, limits)) = http(entry) else {
            continue;
        };
        let (source, cfg) = entry;
        let key = format!("{name}.auth");
        let tokens = Tokens::load(cfg.auth.as_ref(), loaded, &key)
            .map_err(anyhow::Error::msg)?
            .map(|t| Arc::new(LiveTokens::new(t)));
        if let (Some(live), Some(auth)) = (&tokens, &cfg.auth) {
            let follow = live
                .clone()
                .follow(auth.clone(), loaded.clone(), key, tasks_stop.clone());
            tasks.spawn(follow);
        }
        warn_if_open(listen, tokens.is_some(), &name);
        let state = Arc::new(IngestState::new(
            source.clone(),
            cfg,
            tokens,
            pipeline.health.clone(),
        ));
        let addr = listeners.bind(&name, listen, limits).await?;
        source_addrs.push((source.name.clone(), addr));
        routers.push((name, hifi_server::ingest::router(state)));
    }
    let admin_tokens = Tokens::load(loaded.config.admin.auth.as_ref(), loaded, "admin.auth")
        .map_err(anyhow::Error::msg)?;
    let admin_addr = listeners
        .bind("admin", admin_asked, Default::default())
        .await?;
    warn_if_open(admin_addr, admin_tokens.is_some(), "admin");
    let mut admin_state = hifi_server::admin::AdminState::new(pipeline, engine.embedded());
    admin_state.tokens = admin_tokens;
    admin_state.loopback = admin_addr.ip().is_loopback();
    routers.push(("admin".to_owned(), hifi_server::admin::router(admin_state)));
    for (name, app) in routers {
        listeners.open(&name, app);
    }
    Ok((source_addrs, admin_addr))
}

impl Running {
    /// Stops accepting requests (waiting ones are answered 503, in-flight ones finish),
    /// stops the nodes (sinks drain), commits and closes the engine.
    pub async fn stop(self) {
        self.listeners.shut().await;
        self.tasks_stop.cancel();
        let mut tasks = self.tasks;
        while tasks.join_next().await.is_some() {}
        self.pipeline.stop().await;
        self.engine.close().await;
    }

    /// Stops the nodes with the listeners' doors closed (requests wait); what stays
    /// comes back for the next nodes.
    async fn stop_nodes(mut self) -> Stopped {
        let all_finished = self.listeners.close().await;
        self.tasks_stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let kept = if all_finished {
            self.pipeline.stop_keeping().await
        } else {
            // A request still in flight may yet store events the windows would miss:
            // the next start reads them from the log.
            self.pipeline.stop().await;
            Kept::default()
        };
        Stopped {
            engine: self.engine,
            listeners: self.listeners,
            kept,
        }
    }

    fn print_addresses(&self, loaded: &LoadedConfig) {
        for (name, addr) in &self.source_addrs {
            println!("source {name}: POST http://{addr}/v1/events");
        }
        println!("admin: http://{}", self.admin_addr);
        for (kind, names) in self.pipeline.describe() {
            if !names.is_empty() {
                println!("{kind}: {}", names.join(", "));
            }
        }
        println!(
            "hifi is running ({}); stop with Ctrl-C or SIGTERM, reload the file with SIGHUP",
            self.engine.describe(loaded)
        );
    }
}

/// Applies a changed pipeline file to a running pipeline (SIGHUP): checked first — an
/// invalid file, or one that changes `[engine]`, leaves the running pipeline as it is.
/// Otherwise every node stops (sinks drain, positions commit) and the new pipeline
/// starts on the same engine, each node from its committed position; if it cannot start
/// (a listener's port taken), the previous file is started again. Nothing acknowledged
/// is dropped: every acknowledged event is in a topic. Ingest answers nothing for the
/// moment between (a producer's retry covers it).
async fn reload(
    running: Running,
    current: &mut (LoadedConfig, Topology),
    file: &Path,
    opts: &RunOptions,
) -> Result<Running> {
    let (loaded, topology) = match load(file) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(file = %file.display(), "reload refused, the running pipeline goes on: {e}");
            return Ok(running);
        }
    };
    if format!("{:?}", loaded.config.engine) != format!("{:?}", current.0.config.engine) {
        tracing::error!(file = %file.display(),
            "reload refused, the running pipeline goes on: [engine] changed, which needs a restart");
        return Ok(running);
    }
    tracing::info!(file = %file.display(), "reloading: stopping the nodes (draining)");
    let stopped = running.stop_nodes().await;
    match start_on(stopped, &loaded, topology.clone(), opts).await {
        Ok(r) => {
            tracing::info!(file = %file.display(), "reloaded");
            r.print_addresses(&loaded);
            *current = (loaded, topology);
            Ok(r)
        }
        Err((e, stopped)) => {
            tracing::error!(file = %file.display(), "the reloaded pipeline could not start ({e:#}); starting the previous one again");
            match start_on(stopped, &current.0, current.1.clone(), opts).await {
                Ok(r) => {
                    r.print_addresses(&current.0);
                    Ok(r)
                }
                Err((e, stopped)) => {
                    stopped.close().await;
                    Err(e.context(
                        "the previous pipeline could not start again after a failed reload",
                    ))
                }
            }
        }
    }
}

/// Publishes a version of a stage: stops every node (sinks drain, positions commit),
/// records the publish with its readers' cuts ([`hifi_pipeline::versions::publish`]),
/// and starts the nodes again, now on the published version. If the publish cannot be
/// recorded, the nodes start again as they were. A SIGTERM or SIGINT during the check
/// made with the nodes running (it may wait for readers) abandons the publish: the
/// signal's name is returned with the nodes as they were.
async fn publish_version(
    running: Running,
    current: &(LoadedConfig, Topology),
    req: &hifi_pipeline::versions::Request,
    opts: &RunOptions,
    stops: &mut StopSignals,
) -> Result<(Running, Option<&'static str>)> {
    tracing::info!(stage = %req.stage, version = %req.version, by = %req.by,
        "publishing: stopping the nodes (draining)");
    let loaded = &current.0;
    let failed = |e: String| hifi_pipeline::versions::PublishFailure {
        version: req.version.clone(),
        error: e,
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    // A refusal found with the nodes running spares stopping them.
    let check = hifi_pipeline::versions::publish::check(running.pipeline.log.as_ref(), loaded, req);
    let health = running.pipeline.health.clone();
    let checked = tokio::select! {
        checked = check => checked,
        sig = stops.recv() => {
            tracing::warn!(stage = %req.stage, version = %req.version,
                "{sig} received while checking a publish: not published");
            return Ok((running, Some(sig)));
        }
        // A dead node stops the process (the caller sees it at once); the check can
        // wait seconds for a reader.
        () = health.failed() => return Ok((running, None)),
    };
    if let Err(e) = checked {
        tracing::error!(stage = %req.stage, version = %req.version,
            "not published, the previous version goes on: {e}");
        running
            .pipeline
            .versions
            .publish_failed(&req.stage, failed(e));
        return Ok((running, None));
    }
    let mut failures = running
        .pipeline
        .versions
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let stopped_at = std::time::Instant::now();
    let stopped = running.stop_nodes().await;
    let stop_ms = stopped_at.elapsed().as_millis() as u64;
    let log = stopped.engine.log();
    match hifi_pipeline::versions::publish(log.as_ref(), loaded, req).await {
        Ok(()) => {
            tracing::info!(stage = %req.stage, version = %req.version, "published");
            failures.remove(&req.stage);
        }
        Err(e) => {
            tracing::error!(stage = %req.stage, version = %req.version,
                "not published, the previous version goes on: {e}");
            failures.insert(req.stage.clone(), failed(e));
        }
    }
    let record_ms = stopped_at.elapsed().as_millis() as u64 - stop_ms;
    match start_on(stopped, loaded, current.1.clone(), opts).await {
        Ok(r) => {
            // How long nothing moved (ingest requests waited): stopping the nodes,
            // recording the publish, starting them again.
            let paused_ms = stopped_at.elapsed().as_millis() as u64;
            let start_ms = paused_ms - stop_ms - record_ms;
            tracing::info!(stage = %req.stage, version = %req.version, paused_ms,
                stop_ms, record_ms, start_ms, "the nodes run again after the publish");
            for (stage, f) in failures {
                r.pipeline.versions.publish_failed(&stage, f);
            }
            r.print_addresses(loaded);
            Ok((r, None))
        }
        Err((e, stopped)) => {
            stopped.close().await;
            Err(e.context("the pipeline could not start again after a publish"))
        }
    }
}

/// SIGINT and SIGTERM, listened for from its creation: one that comes before the first
/// wait is not lost (a process told to stop just as it said it runs stops cleanly).
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening.
    pub fn listen() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Waits for SIGINT or SIGTERM; returns the signal's name.
pub async fn signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `hifi run FILE [--only NODES] [--admin ADDR] [--instance NAME]`.
pub async fn run(
    file: PathBuf,
    drain: Duration,
    only: Option<String>,
    admin: Option<SocketAddr>,
    instance: Option<String>,
) -> Result<ExitCode> {
    if let Some(name) = &instance {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            eprintln!("error: --instance {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
            return Ok(ExitCode::from(1));
        }
    }
    let (loaded, topology) = match load(&file) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let only = match only.map(|o| NodeFilter::parse(&o, &loaded)).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let opts = RunOptions {
        drain,
        only,
        admin,
        instance,
    };
    let mut stops = StopSignals::listen().context("cannot listen for SIGTERM and SIGINT")?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let mut running = start(&loaded, topology.clone(), &opts).await?;
    running.print_addresses(&loaded);
    let mut current = (loaded, topology);
    let mut requests = running.pipeline.versions.take_requests();
    let draining = |sig: &str| {
        println!(
            "{sig} received: draining (at most {} s)...",
            drain.as_secs()
        )
    };
    loop {
        let health = running.pipeline.health.clone();
        let publish = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(req) = publish => {
                let stopped;
                (running, stopped) = match publish_version(running, &current, &req, &opts, &mut stops).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Ok(ExitCode::from(2));
                    }
                };
                if let Some(sig) = stopped {
                    draining(sig);
                    break;
                }
                // Nodes started again have new requests; a publish refused before
                // stopping them keeps the ones it had.
                if let Some(r) = running.pipeline.versions.take_requests() {
                    requests = Some(r);
                }
            }
            sig = stops.recv() => {
                draining(sig);
                break;
            }
            () = health.failed() => {
                // Ingest must not acknowledge events that a dead node would never move.
                let why = health.failure().unwrap_or_default();
                eprintln!("error: {why}; stopping (fix the cause and start again)");
                running.stop().await;
                return Ok(ExitCode::from(3));
            }
            _ = hangups.recv() => {
                running = match reload(running, &mut current, &file, &opts).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Ok(ExitCode::from(2));
                    }
                };
                // A reload refused keeps the nodes, and their requests.
                if let Some(r) = running.pipeline.versions.take_requests() {
                    requests = Some(r);
                }
            }
        }
    }
    running.stop().await;
    println!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}
