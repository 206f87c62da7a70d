//! Immutable versions of a stage's output (`[stages.X] versions = { … }`).
//!
//! A version is named by a hash of the stage's definition: its table in the pipeline
//! file (transforms or SQL, input, output; not `versions`, `audits`, `fingerprint` or
//! `batch_max_events`, which do not change what it writes) and the input topic's
//! declared schema. Version `H` writes the topic `OUTPUT.vH`; nothing is overwritten.
//! Readers of `OUTPUT` (sinks, stages) read the **published** version's topic.
//!
//! At start ([`resolve`]) the file's definition is compared with the registry
//! (`__versions`, [`registry`]):
//! - the first version of a stage is published at once, and keeps the stage's consumer
//!   group (`stage.X`): it goes on from where the stage was (writing the unversioned
//!   `OUTPUT` if that held records: its readers' backlog is there);
//! - a changed definition starts a **candidate** beside the published version, which
//!   keeps running from its stored definition. The candidate (stage `X-vH`, group
//!   `stage.X-vH`) backfills from `backfill_from` (the log's time index, or Kafka's
//!   offsets for times) and then follows live input. It has no place in the ledger
//!   until published (its fingerprint counts what it wrote);
//! - the published version runs under the stage's name and group of its own.
//!
//! Publishing ([`publish`]) happens with every node stopped (drained, positions
//! committed), then the nodes start again: for every reader it records a **cut** — per
//! origin partition, the least origin offset it had not handled from the previous
//! version (records it had not read yet, the previous version's unread input, and
//! every source partition's end). The reader then reads the new version's topic from
//! its oldest record, passing over records whose origin is below its cut: everything
//! the previous version had not delivered is delivered from the new one; what it had is
//! not delivered again, except records past the cut in other partitions (duplicates,
//! never loss). The new version's group goes back to the previous version's positions
//! where it was ahead, so that the ledger, which counts the published version under
//! the stage's name, sees every event (events between are written twice, same ids).
//!
//! A **window stage**'s results are new origins (their own place in its topic), so a cut
//! by origins says nothing about them: its new version takes over at the published
//! one's last emitted window instead (see `publish::window_takeover`), and its readers
//! pass over everything it wrote before the publish.
//!
//! A window stage **reading** a versioned stage's output holds events of the published
//! version in open windows: a publish of its input records for it a drain (the
//! previous version's topic, read to its end first) beside its cut (see
//! `crate::window`).

mod backfill;
mod cut;
pub mod gc;
pub mod publish;
pub mod registry;
pub mod watch;
mod windows;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hifi_log::Log;
use toml::Spanned;

use crate::config::{ConfigError, LoadedConfig, PublishMode, StageConfig};
pub use backfill::backfill_from_ms;
pub(crate) use backfill::backfill_position;
use backfill::{backfill_start, start_backfill};
pub use cut::Cut;
pub use publish::publish;
pub use registry::{Change, Registry, VERSIONS_TOPIC};

/// Keys of a stage's table that are not part of its definition.
const NOT_DEFINITION: &[&str] = &[
    "versions",
    "audits",
    "fingerprint",
    "batch_max_events",
    "test_publish_pause_ms",
];

/// A stage's definition as hashed and stored.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Canonical TOML of the stage's table (sorted keys), without [`NOT_DEFINITION`].
    pub text: String,
    /// The input topic's declared schema, canonical, if any.
    pub input_schema: Option<String>,
    /// 8 hex digits of its hash.
    pub version: String,
}

/// Tables with keys sorted, at every depth (a reordered file is the same definition).
fn canonical(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::Table(t) => {
            let sorted: BTreeMap<&String, &toml::Value> = t.iter().collect();
            let mut out = toml::Table::new();
            for (k, v) in sorted {
                out.insert(k.clone(), canonical(v));
            }
            toml::Value::Table(out)
        }
        toml::Value::Array(a) => toml::Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The definition of stage `name` in the file; `input_version` is the published version
/// of the versioned stage whose output it reads, if it reads one (a new one there makes
/// a new version here: the stage recomputes itself on the corrected input).
pub fn definition(
    loaded: &LoadedConfig,
    name: &str,
    input_version: Option<&str>,
) -> Result<Definition, String> {
    let doc: toml::Table = toml::from_str(&loaded.text).map_err(|e| e.to_string())?;
    let table = doc
        .get("stages")
        .and_then(|s| s.get(name))
        .and_then(toml::Value::as_table)
        .ok_or_else(|| format!("stages.{name} is not a table"))?;
    let mut table = table.clone();
    for k in NOT_DEFINITION {
        table.remove(*k);
    }
    let toml::Value::Table(table) = canonical(&toml::Value::Table(table)) else {
        unreachable!("a table stays a table")
    };
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    let input = table
        .get("input")
        .and_then(toml::Value::as_str)
        .unwrap_or("");
    let input_schema = doc
        .get("topics")
        .and_then(|t| t.get(input))
        .and_then(|t| t.get("schema"))
        .map(|s| canonical(s).to_string());
    let mut hashed = text.clone();
    if let Some(s) = &input_schema {
        hashed.push_str("\n# input schema\n");
        hashed.push_str(s);
    }
    if let Some(v) = input_version {
        hashed.push_str("\n# input version\n");
        hashed.push_str(v);
    }
    let h = xxhash_rust::xxh3::xxh3_64(hashed.as_bytes());
    Ok(Definition {
        text,
        input_schema,
        version: format!("{:08x}", (h >> 32) as u32),
    })
}

/// The name a candidate version of `stage` runs under.
pub fn candidate_name(stage: &str, version: &str) -> String {
    format!("{stage}-v{version}")
}

/// The topic version `version` of a stage writing `output` writes.
pub fn version_topic(output: &str, version: &str) -> String {
    format!("{output}.v{version}")
}

/// What a version's topic and group names end with in its life after `collections`
/// collections (`hifi versions gc`): nothing at first, then `.r1`, `.r2`… — a version
/// run again after its topics were removed starts anew, never in a topic of the same
/// name (Kafka deletes asynchronously) nor from its old group's positions.
pub fn generation_suffix(collections: u32) -> String {
    if collections == 0 {
        String::new()
    } else {
        format!(".r{collections}")
    }
}

/// A version's state as `hifi versions` shows it: `published`, `candidate` (the file's
/// version, running beside the published one), `collected` (retired, its topics
/// removed) or `retired`.
pub fn state_of(plan: &Plan, v: &registry::Version) -> &'static str {
    if v.version == plan.published {
        "published"
    } else if plan.candidate.as_deref() == Some(v.version.as_str()) {
        "candidate"
    } else if v.collected_ms.is_some() {
        "collected"
    } else {
        "retired"
    }
}

/// Checks `versions` keys and what they need (`hifi validate`).
pub fn check(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    for (name, s) in &cfg.stages {
        let key = format!("stages.{name}");
        let upstream = cfg
            .stages
            .values()
            .find(|u| u.versions.is_some() && u.output.get_ref() == s.input.get_ref());
        if let (Some(_), Some(u)) = (&s.window, upstream) {
            if u.window.is_some() {
                return Err(loaded.error(
                    format!("{key}.input"),
                    "a window stage reading a versioned window stage's output is not supported yet (a publish of its input would re-send window results it holds in open windows)",
                ));
            }
            let from_http = cfg.sources.values().any(|src| {
                src.kind == crate::config::SourceType::Http
                    && src.topic.get_ref() == u.input.get_ref()
            });
            if !from_http {
                return Err(loaded.error(
                    format!("{key}.input"),
                    format!("a window stage can read a versioned stage's output only when that stage reads an HTTP source's topic (here {:?}): after a publish it takes each event from exactly one of the two versions, told apart by where their origins are, which is exact only for an HTTP source's events read directly", u.input.get_ref()),
                ));
            }
        }
        let Some(v) = &s.versions else {
            continue;
        };
        if s.candidate_of.is_some() {
            continue;
        }
        backfill_from_ms(&v.backfill_from, 0)
            .map_err(|e| loaded.error(format!("{key}.versions.backfill_from"), e))?;
        if v.redeliver && v.publish != PublishMode::Auto {
            return Err(loaded.error(
                format!("{key}.versions.redeliver"),
                "applies to automatic publishes (`publish = \"auto\"`); a publish by hand re-delivers with `hifi publish STAGE VERSION --redeliver-from T`",
            ));
        }
        if let Some(r) = v.backfill_max_rate {
            if r < s.batch_max_events as u64 {
                return Err(loaded.error(
                    format!("{key}.versions.backfill_max_rate"),
                    format!("{r} events/s is less than a batch ({key}.batch_max_events = {}), which is paced whole: raise it or lower batch_max_events", s.batch_max_events),
                ));
            }
        }
        let out = s.output.get_ref();
        if cfg.sources.values().any(|src| src.topic.get_ref() == out)
            || cfg
                .stages
                .iter()
                .any(|(n, o)| n != name && o.output.get_ref() == out)
        {
            return Err(loaded.error(
                format!("{key}.output"),
                format!("{out:?} is written by another node too: a versioned stage must be the only writer of its output"),
            ));
        }
        if cfg.stages.iter().any(|(n, o)| {
            o.candidate_of.is_none()
                && n.strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix("-v"))
                    .is_some()
        }) {
            return Err(loaded.error(
                key,
                format!("a stage named {name}-v… would be taken for a version of stages.{name}; rename it"),
            ));
        }
    }
    Ok(())
}

/// The versioned stages (not candidates), each after the versioned stage whose output it
/// reads, if any.
fn upstream_first(cfg: &crate::config::PipelineConfig) -> Vec<String> {
    let versioned: Vec<(&String, &StageConfig)> = cfg
        .stages
        .iter()
        .filter(|(_, s)| s.versions.is_some() && s.candidate_of.is_none())
        .collect();
    let mut order: Vec<String> = Vec::new();
    while order.len() < versioned.len() {
        let before = order.len();
        for (name, s) in &versioned {
            if order.contains(name) {
                continue;
            }
            let waits = versioned.iter().any(|(other, o)| {
                other != name && o.output.get_ref() == s.input.get_ref() && !order.contains(other)
            });
            if !waits {
                order.push((*name).clone());
            }
        }
        if order.len() == before {
            break; // a cycle: the topology refuses those
        }
    }
    order
}

/// One versioned stage as started.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub stage: String,
    /// The topic readers name (`output` in the file).
    pub output: String,
    /// The topic it reads (a versioned input's published topic).
    pub input: String,
    pub published: String,
    /// The file's version when it is not the published one.
    pub candidate: Option<String>,
    /// The candidate's topic and consumer group.
    pub candidate_topic: Option<String>,
    pub candidate_group: Option<String>,
    pub publish: PublishMode,
    /// The stage's `versions` and batch size (for the candidate's pacing).
    #[serde(skip)]
    pub versions: Option<crate::config::VersionsConfig>,
    #[serde(skip)]
    pub batch: usize,
}

/// What the running pipeline knows of its versions (`/v1/versions`, publishing).
#[derive(Debug, Default)]
pub struct Live {
    pub plans: Vec<Plan>,
    pub registry: Mutex<Registry>,
    /// Per stage, its candidate's state ([`watch`]).
    pub status: Mutex<watch::Statuses>,
    /// Every topic a node of the running pipeline reads or writes ([`gc`] never removes
    /// one of them).
    pub topics_in_use: std::collections::BTreeSet<String>,
    /// One collection at a time.
    pub(crate) collecting: tokio::sync::Mutex<()>,
    /// Per stage, the last publish that failed (carried over the nodes' restart).
    pub failures: Mutex<BTreeMap<String, PublishFailure>>,
    /// Publish requests for `hifi run`, which stops the nodes, publishes, and starts
    /// them again.
    requests: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Request>>>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Request>>>,
}

/// A publish that failed: the previous version goes on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublishFailure {
    pub version: String,
    pub error: String,
    pub at_ms: i64,
}

/// How long an automatic publish that failed waits before it is asked again (each try
/// stops and starts the nodes).
pub const AUTO_PUBLISH_RETRY_MS: i64 = 60_000;

/// A request to publish.
#[derive(Debug, Clone)]
pub struct Request {
    pub stage: String,
    pub version: String,
    /// `"auto"` or `"hifi publish"`.
    pub by: String,
    /// Readers deliver again the new version's events from this event time (ms).
    pub redeliver_from_ms: Option<i64>,
}

impl Live {
    /// For the plans started.
    pub fn new(
        plans: Vec<Plan>,
        registry: Registry,
        topics_in_use: std::collections::BTreeSet<String>,
    ) -> Live {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Live {
            plans,
            registry: Mutex::new(registry),
            status: Mutex::default(),
            topics_in_use,
            collecting: tokio::sync::Mutex::default(),
            failures: Mutex::default(),
            requests: Mutex::new(Some(tx)),
            receiver: Mutex::new(Some(rx)),
        }
    }

    /// Records a publish that failed (`hifi run`, once the nodes run again).
    pub fn publish_failed(&self, stage: &str, failure: PublishFailure) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stage.to_owned(), failure);
    }

    /// The publish requests (taken once, by `hifi run`).
    pub fn take_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Request>> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Asks for `version` of `stage` to be published; refuses what cannot be.
    pub fn request(
        &self,
        stage: &str,
        version: &str,
        by: &str,
        redeliver_from_ms: Option<i64>,
    ) -> Result<(), String> {
        let plan = self
            .plans
            .iter()
            .find(|p| p.stage == stage)
            .ok_or_else(|| format!("stages.{stage} has no versions"))?;
        if plan.published == version {
            return Err(format!(
                "{version} is already the published version of stages.{stage}"
            ));
        }
        if plan.candidate.as_deref() != Some(version) {
            return Err(format!(
                "{version} is not running: only the file's version of stages.{stage} ({}) can be published",
                plan.candidate.as_deref().unwrap_or(&plan.published)
            ));
        }
        let tx = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx.as_ref().is_some_and(|tx| {
            tx.send(Request {
                stage: stage.to_owned(),
                version: version.to_owned(),
                by: by.to_owned(),
                redeliver_from_ms,
            })
            .is_ok()
        });
        if sent {
            Ok(())
        } else {
            Err(
                "this process does not publish (it is stopping, or it runs without `hifi run`)"
                    .into(),
            )
        }
    }
}

/// Reads the registry, records what is new (a first version, published; a changed
/// definition, created with its backfill positions) and gives the configuration to
/// run: published versions under the stages' names writing `OUTPUT.vP`, candidates
/// beside them, readers of `OUTPUT` on the published topic with their cuts. Without
/// versioned stages, the configuration as it is (the registry is not touched).
pub async fn resolve(log: &dyn Log, loaded: &LoadedConfig) -> Result<(LoadedConfig, Live), String> {
    let versioned = upstream_first(&loaded.config);
    // Only a registry that does not exist is none: on any other error (an engine
    // away for a moment) every versioned stage would be taken for new.
    // (Asked again for a few seconds: a start, a reload or a publish's restart fails on
    // an error.)
    let mut tries = 0;
    let existing = loop {
        match log.partitions(VERSIONS_TOPIC).await {
            Ok(_) => break Some(Registry::read(log).await?),
            Err(hifi_log::LogError::TopicNotFound { .. }) => break None,
            Err(e) if tries < 10 => {
                tries += 1;
                tracing::warn!(%e, "cannot read {VERSIONS_TOPIC}; asking again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("cannot read {VERSIONS_TOPIC}: {e}")),
        }
    };
    if let Some(registry) = &existing {
        // A stage that had versions and has none now would send its readers back to the
        // unversioned topic, past their backlog in the published version's.
        for (name, sv) in &registry.stages {
            let Some(p) = &sv.published else { continue };
            let topic = sv.versions.get(&p.version).map(|v| v.topic.as_str());
            let unversioned = loaded.config.stages.get(name).is_some_and(|s| {
                s.versions.is_none() && Some(s.output.get_ref().as_str()) != topic
            });
            if unversioned {
                return Err(format!(
                    "stages.{name} has no `versions` any more, but its published version {} writes {:?}, which its readers follow: without `versions` they would go back to the unversioned topic and skip what they had not read there; put `versions = {{ … }}` back on the stage",
                    p.version,
                    topic.unwrap_or("")
                ));
            }
        }
    }
    if versioned.is_empty() {
        return Ok((loaded.clone(), Live::default()));
    }
    let mut registry = match existing {
        Some(r) => r,
        None => {
            Registry::prepare(log)
                .await
                .map_err(|e| format!("cannot create {VERSIONS_TOPIC}: {e}"))?;
            Registry::default()
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut cfg = loaded.config.clone();
    let mut plans = Vec::new();
    let mut renamed: BTreeMap<String, (String, String)> = BTreeMap::new(); // output → (topic, stage)
    for name in &versioned {
        let file = cfg.stages[name].clone();
        // Its input, when a versioned stage's output: that stage's published topic
        // (resolved already: upstream first).
        let upstream = renamed.get(file.input.get_ref()).cloned();
        let input_topic = upstream
            .as_ref()
            .map_or_else(|| file.input.get_ref().clone(), |(t, _)| t.clone());
        let input_version = upstream.as_ref().and_then(|(_, stage)| {
            Some(
                registry
                    .stages
                    .get(stage)?
                    .published
                    .as_ref()?
                    .version
                    .clone(),
            )
        });
        let def = definition(loaded, name, input_version.as_deref())?;
        let h = def.version.clone();
        let first = registry
            .stages
            .get(name)
            .is_none_or(|s| s.published.is_none());
        let before = registry.stages.get(name).and_then(|s| s.versions.get(&h));
        let known = before.is_some_and(|v| v.collected_ms.is_none());
        // A collected version run again: new names (see `generation_suffix`).
        let suffix = generation_suffix(before.map_or(0, |v| v.collections + 1));
        let versions = file.versions.clone().expect("versioned");
        if !known {
            let group = if first {
                crate::config::stage_group(name)
            } else {
                crate::config::stage_group(&format!("{}{suffix}", candidate_name(name, &h)))
            };
            let upstream_stage = upstream.as_ref().map(|u| u.1.as_str());
            let from = if first {
                None
            } else {
                backfill_start(&registry, upstream_stage, &file, now)?
            };
            let topic = if first && holds_records(log, file.output.get_ref()).await? {
                file.output.get_ref().clone()
            } else {
                version_topic(file.output.get_ref(), &h) + &suffix
            };
            if !first {
                // A group with positions was started already — by this process before a
                // crash (the state was reset then), or by another creating the same
                // version at the same time, whose candidate may be running: its state
                // stays, and so do its positions (`start_backfill` keeps them).
                if file.window.is_some() && !backfill::started(log, &group, &input_topic).await? {
                    // Not the window state of a life collected half-way.
                    windows::reset_checkpoint(log, &candidate_name(name, &h)).await?;
                }
                start_backfill(log, &group, &input_topic, from, false).await?;
            }
            let change = Change::Created {
                stage: name.clone(),
                version: h.clone(),
                definition: def.text.clone(),
                input_schema: def.input_schema.clone(),
                input_version: input_version.clone(),
                group,
                topic,
                backfill_from_ms: from,
                at_ms: now,
            };
            registry
                .record(log, change)
                .await
                .map_err(|e| format!("cannot record version {h} of stages.{name}: {e}"))?;
        }
        if first {
            let change = Change::Published {
                stage: name.clone(),
                version: h.clone(),
                cuts: BTreeMap::new(),
                at_ms: now,
                by: "first version".into(),
                redeliver_from_ms: None,
                redeliver_to_ms: None,
                drains: BTreeMap::new(),
            };
            registry
                .record(log, change)
                .await
                .map_err(|e| format!("cannot publish version {h} of stages.{name}: {e}"))?;
        }
        let sv = &registry.stages[name];
        let p = sv
            .published
            .as_ref()
            .expect("published above")
            .version
            .clone();
        let pv = sv.versions[&p].clone();
        let output = file.output.get_ref().clone();
        let mut published: StageConfig = if p == h {
            file.clone()
        } else {
            let mut c: StageConfig = toml::from_str(&pv.definition).map_err(|e| {
                format!("stages.{name}: the published version {p}'s stored definition does not load in this hifi: {e}")
            })?;
            c.fingerprint = file.fingerprint.clone();
            c.audits = file
                .audits
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    a.blocking = false;
                    a
                })
                .collect();
            c.batch_max_events = file.batch_max_events;
            c.versions = file.versions.clone();
            c
        };
        published.output = Spanned::new(0..0, pv.topic.clone());
        published.group = Some(pv.group.clone());
        let candidate = (p != h).then(|| h.clone());
        if let Some(h) = candidate
            .as_ref()
            .filter(|h| file.window.is_some() && sv.versions[*h].backfill_due)
        {
            // A window stage's version published since it last backfilled: its
            // group's positions are where it stopped as the published stage, its
            // candidate window state older. It backfills again.
            let from = backfill_start(
                &registry,
                upstream.as_ref().map(|u| u.1.as_str()),
                &file,
                now,
            )?;
            let group = sv.versions[h].group.clone();
            start_backfill(log, &group, &input_topic, from, true).await?;
            windows::reset_checkpoint(log, &candidate_name(name, h)).await?;
            let change = Change::Backfilled {
                stage: name.clone(),
                version: h.clone(),
                backfill_from_ms: from,
                at_ms: now,
            };
            registry.record(log, change).await.map_err(|e| {
                format!("cannot record the new backfill of version {h} of stages.{name}: {e}")
            })?;
        }
        let sv = &registry.stages[name];
        let declared = cfg.topics.remove(&output);
        if let Some(h) = &candidate {
            // A version run before (the file went back to it) goes on from where it
            // stopped, in its own topic and group.
            let hv = &sv.versions[h];
            let mut c = file.clone();
            c.output = Spanned::new(0..0, hv.topic.clone());
            c.group = Some(hv.group.clone());
            c.candidate_of = Some(name.clone());
            cfg.stages.insert(candidate_name(name, h), c);
            if let Some(t) = &declared {
                cfg.topics.insert(hv.topic.clone(), t.clone());
            }
        }
        if let Some(t) = declared {
            cfg.topics.insert(pv.topic.clone(), t);
        }
        renamed.insert(output.clone(), (pv.topic.clone(), name.clone()));
        plans.push(Plan {
            stage: name.clone(),
            output,
            input: input_topic.clone(),
            published: p.clone(),
            candidate_topic: candidate.as_ref().map(|h| sv.versions[h].topic.clone()),
            candidate_group: candidate.as_ref().map(|h| sv.versions[h].group.clone()),
            candidate,
            publish: versions.publish,
            versions: Some(versions.clone()),
            batch: file.batch_max_events,
        });
        cfg.stages.insert(name.clone(), published);
    }
    let cut_of = |reader: &str, stage: &str| -> Option<Arc<Cut>> {
        let published = registry.stages.get(stage)?.published.as_ref()?;
        let m = published.cuts.get(reader)?;
        let mut cut = Cut::from_map(m, published.redeliver_from_ms, published.redeliver_to_ms);
        cut.drain = published.drains.get(reader).cloned();
        Some(Arc::new(cut))
    };
    for (name, s) in cfg.sinks.iter_mut() {
        if let Some((topic, stage)) = renamed.get(s.input.get_ref()) {
            s.skip = cut_of(&format!("sinks.{name}"), stage);
            s.version = registry
                .stages
                .get(stage)
                .and_then(|v| Some(v.published.as_ref()?.version.clone()));
            s.input = Spanned::new(0..0, topic.clone());
        }
    }
    for (name, s) in cfg.stages.iter_mut() {
        if let Some((topic, stage)) = renamed.get(s.input.get_ref()) {
            s.skip = cut_of(&format!("stages.{name}"), stage);
            s.input = Spanned::new(0..0, topic.clone());
        }
    }
    let loaded = LoadedConfig {
        config: cfg,
        ..loaded.clone()
    };
    let topics_in_use = loaded
        .config
        .sources
        .values()
        .map(|s| s.topic.get_ref().clone())
        .chain(
            loaded
                .config
                .stages
                .values()
                .flat_map(|s| [s.input.get_ref().clone(), s.output.get_ref().clone()]),
        )
        .chain(
            loaded
                .config
                .sinks
                .values()
                .map(|s| s.input.get_ref().clone()),
        )
        // A previous version's topic a window stage reads to its end (kept until the
        // next publish of its input).
        .chain(loaded.config.stages.values().filter_map(|s| {
            let drain = s.skip.as_ref()?.drain.as_ref()?;
            Some(drain.topic.clone())
        }))
        .collect();
    Ok((loaded, Live::new(plans, registry, topics_in_use)))
}

/// Whether `topic` exists and holds records (a stage gaining `versions` keeps writing
/// its unversioned topic in its first version: its readers' backlog is there).
async fn holds_records(log: &dyn Log, topic: &str) -> Result<bool, String> {
    let fail = |e: hifi_log::LogError| format!("cannot read topic {topic}: {e}");
    let n = match log.partitions(topic).await {
        Ok(n) => n,
        Err(hifi_log::LogError::TopicNotFound { .. }) => return Ok(false),
        Err(e) => return Err(fail(e)),
    };
    for p in 0..n {
        if log.offsets(topic, p).await.map_err(fail)?.end > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}
