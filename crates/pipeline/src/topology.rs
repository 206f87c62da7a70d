//! Building and checking the pipeline graph: nodes connected by topics.
//!
//! Checks (each error names the file, the key and the fix):
//! - node and topic names are usable (letters, digits, `.`, `_`, `-`);
//! - every topic a stage or sink reads is written by a source or a stage;
//! - every `[topics.X]` section names a topic some node uses;
//! - stages form no cycle (a topic cannot feed itself through stages);
//! - listen addresses do not collide; sink URLs are http(s); transforms compile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hifi_log::{validate_name, Retention, TopicSpec};

use crate::config::{ConfigError, LoadedConfig};
use crate::transform::Transforms;

/// Most requests a sink may have in flight (each holds a batch in memory).
const MAX_CONCURRENCY: usize = 1024;

/// The checked graph: which topics exist and who writes and reads them.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every topic the pipeline uses, with its creation settings.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Topic → nodes writing it (`sources.api`, `stages.clean`).
    pub writers: BTreeMap<String, Vec<String>>,
    /// Topic → nodes reading it.
    pub readers: BTreeMap<String, Vec<String>>,
    /// Warnings that do not stop the pipeline (e.g. a topic nobody reads).
    pub warnings: Vec<String>,
    /// Topic schemas and compiled SQL stages.
    pub derived: crate::schemas::Derived,
    /// Field-level lineage, node to node.
    pub lineage: crate::lineage::Graph,
    /// Declared PII and what each sink receives.
    pub pii: crate::pii::Policy,
}

impl Topology {
    /// Checks a loaded configuration and derives its topics, refusing PII that reaches a
    /// sink not allowing it ([`crate::pii::Policy::check`]).
    pub fn build(loaded: &LoadedConfig) -> Result<Topology, ConfigError> {
        let t = Topology::derive(loaded)?;
        t.pii.check(loaded)?;
        Ok(t)
    }

    /// [`Topology::build`] without the PII check (to show where PII goes).
    pub fn derive(loaded: &LoadedConfig) -> Result<Topology, ConfigError> {
        let cfg = &loaded.config;
        if cfg.sources.is_empty() && cfg.stages.is_empty() && cfg.sinks.is_empty() {
            return Err(loaded.error("(pipeline)", "the pipeline has no nodes; add a [sources.NAME], [stages.NAME] or [sinks.NAME] section"));
        }
        check_engine(loaded)?;
        crate::scale::check(loaded)?;
        crate::fingerprint::check(loaded)?;
        crate::versions::check(loaded)?;
        let t = &cfg.telemetry;
        if let Some(url) = &t.otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(loaded.error(
                    "telemetry.otlp_endpoint",
                    format!("{url:?} is not an http:// or https:// URL (OTLP over HTTP, e.g. \"http://127.0.0.1:4318\")"),
                ));
            }
        }
        if let Some(url) = &cfg.lineage.openlineage_url {
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                return Err(loaded.error(
                    "lineage.openlineage_url",
                    format!("{url:?} is not an http:// or https:// URL (the OpenLineage backend, e.g. \"http://127.0.0.1:5000\")"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(loaded.error(
                "telemetry.sample_ratio",
                "must be between 0 and 1 (the share of traces recorded)",
            ));
        }
        let mut writers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let name_ok = |key: String, name: &str| {
            validate_name(name).map_err(|e| loaded.error(key, format!("{e}; rename it")))
        };
        // Lineage names fields NODE.FIELD: a dot in a node's name would make it ambiguous.
        let node_ok = |key: String, name: &str| {
            name_ok(key.clone(), name)?;
            if name.contains('.') {
                return Err(loaded.error(key, format!("node name {name:?} contains '.', which lineage and PII use between node and field (api.email); rename it (e.g. {:?})", name.replace('.', "_"))));
            }
            Ok(())
        };
        // External topic → the Kafka source reading it.
        let mut external: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, s) in &cfg.sources {
            node_ok(format!("sources.{name}"), name)?;
            name_ok(format!("sources.{name}.topic"), s.topic.get_ref())?;
            writers
                .entry(s.topic.get_ref().clone())
                .or_default()
                .push(format!("sources.{name}"));
            if let Some(p) = &s.event_time {
                crate::transform::parse_pointer(p)
                    .map_err(|m| loaded.error(format!("sources.{name}.event_time"), m))?;
            }
            if let Some(p) = &s.id_field {
                crate::transform::parse_pointer(p)
                    .map_err(|m| loaded.error(format!("sources.{name}.id_field"), m))?;
            }
            check_origin(loaded, name, s)?;
            for t in &s.topics {
                if let Some(other) = external.insert(t, name) {
                    return Err(loaded.error(
                        format!("sources.{name}.topics"),
                        format!("{t:?} is also read by sources.{other}: the ledger names each event by its place kafka:{t}/<partition>/<offset>, which must be one record; read each topic name with one source"),
                    ));
                }
            }
            if s.max_connections == 0
                || s.header_read_timeout.0.is_zero()
                || s.body_read_timeout.0.is_zero()
            {
                return Err(loaded.error(
                    format!("sources.{name}"),
                    "max_connections, header_read_timeout and body_read_timeout must be above 0",
                ));
            }
            if s.max_body_bytes.0 == 0
                || s.max_events_per_request == 0
                || s.max_inflight_bytes.0 < s.max_body_bytes.0
            {
                return Err(loaded.error(
                    format!("sources.{name}"),
                    "max_body_bytes and max_events_per_request must be above 0, and max_inflight_bytes at least max_body_bytes",
                ));
            }
        }
        for (name, s) in &cfg.stages {
            node_ok(format!("stages.{name}"), name)?;
            name_ok(format!("stages.{name}.output"), s.output.get_ref())?;
            writers
                .entry(s.output.get_ref().clone())
                .or_default()
                .push(format!("stages.{name}"));
            readers
                .entry(s.input.get_ref().clone())
                .or_default()
                .push(format!("stages.{name}"));
            Transforms::compile(&s.transforms)
                .map_err(|e| loaded.error(format!("stages.{name}.{e}"), e.message.clone()))?;
            if s.batch_max_events == 0 {
                return Err(loaded.error(
                    format!("stages.{name}.batch_max_events"),
                    "must be at least 1",
                ));
            }
        }
        for (name, s) in &cfg.sinks {
            node_ok(format!("sinks.{name}"), name)?;
            readers
                .entry(s.input.get_ref().clone())
                .or_default()
                .push(format!("sinks.{name}"));
            check_destination(loaded, name, s)?;
            check_shadow(loaded, name, s)?;
            if s.concurrency_max == 0 || s.batch.max_events == 0 || s.batch.max_bytes.0 == 0 {
                return Err(loaded.error(
                    format!("sinks.{name}"),
                    "concurrency_max, batch.max_events and batch.max_bytes must be at least 1",
                ));
            }
            if s.concurrency_limit_max() > MAX_CONCURRENCY {
                return Err(loaded.error(
                    format!("sinks.{name}"),
                    format!("at most {MAX_CONCURRENCY} requests in flight (concurrency, concurrency_max)"),
                ));
            }
            if s.retry.local.backoff_min > s.retry.local.backoff_max {
                return Err(loaded.error(
                    format!("sinks.{name}.retry.local"),
                    "backoff_min must not exceed backoff_max",
                ));
            }
            if s.retry.global.schedule.is_empty()
                || s.retry.global.schedule.iter().any(|d| d.0.is_zero())
            {
                return Err(loaded.error(
                    format!("sinks.{name}.retry.global.schedule"),
                    "give at least one delay, each above zero (e.g. [\"30s\", \"2m\"])",
                ));
            }
            if s.retry.local.attempts == 0 || s.retry.global.rate == 0 || s.breaker.failures == 0 {
                return Err(loaded.error(format!("sinks.{name}"), "retry.local.attempts, retry.global.rate and breaker.failures must be at least 1"));
            }
        }
        check_inputs(loaded, &writers)?;
        check_cycles(loaded)?;
        check_listeners(loaded)?;
        let derived = crate::schemas::derive(loaded)?;
        let mut topics = BTreeMap::new();
        for t in writers.keys().chain(readers.keys()) {
            topics.insert(t.clone(), topic_spec(loaded, t));
        }
        for name in cfg.topics.keys() {
            if !topics.contains_key(name) {
                return Err(loaded.error(
                    format!("topics.{name}"),
                    format!("unknown topic: no node reads or writes {name:?}; remove the section or fix the name (topics in use: {})", list(topics.keys())),
                ));
            }
        }
        // A candidate version's topic is read once it is published.
        let candidate_topics: Vec<&String> = cfg
            .stages
            .values()
            .filter(|s| s.candidate_of.is_some())
            .map(|s| s.output.get_ref())
            .collect();
        let warnings = writers
            .keys()
            .filter(|t| !readers.contains_key(*t) && !candidate_topics.contains(t))
            .map(|t| {
                format!(
                    "topic {t:?} is written by {} but no stage or sink reads it",
                    writers[t].join(", ")
                )
            })
            .collect();
        let lineage = crate::lineage::build(loaded, &derived);
        let pii = crate::pii::Policy::build(loaded, &lineage)?;
        Ok(Topology {
            topics,
            writers,
            readers,
            warnings,
            derived,
            lineage,
            pii,
        })
    }
}

fn list<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<_> = it.map(|s| format!("{s:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn check_inputs(
    loaded: &LoadedConfig,
    writers: &BTreeMap<String, Vec<String>>,
) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let inputs = cfg
        .stages
        .iter()
        .map(|(n, s)| (format!("stages.{n}.input"), &s.input))
        .chain(
            cfg.sinks
                .iter()
                .map(|(n, s)| (format!("sinks.{n}.input"), &s.input)),
        );
    for (key, input) in inputs {
        let topic = input.get_ref();
        if !writers.contains_key(topic) {
            let hint = writers
                .keys()
                .find(|w| strsim_close(w, topic))
                .map(|w| format!(" Did you mean {w:?}?"))
                .unwrap_or_default();
            return Err(loaded.error_at(
                input,
                key,
                format!(
                    "no source or stage writes topic {topic:?}, so nothing would ever arrive; \
                     set it to a topic that is written (written topics: {}).{hint}",
                    list(writers.keys())
                ),
            ));
        }
    }
    Ok(())
}

/// Whether two names differ by at most two edits (for "did you mean").
fn strsim_close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

fn check_cycles(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    // Topic graph: an edge input → output per stage.
    let stages = &loaded.config.stages;
    let mut edges: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (name, s) in stages {
        edges
            .entry(s.input.get_ref())
            .or_default()
            .push((s.output.get_ref(), name));
    }
    // Depth-first search from every topic, keeping the stages on the current path.
    fn visit<'a>(
        topic: &'a str,
        edges: &BTreeMap<&'a str, Vec<(&'a str, &'a str)>>,
        path: &mut Vec<(&'a str, &'a str)>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|(t, _)| *t == topic) {
            return Some(
                path[pos..]
                    .iter()
                    .map(|(t, s)| format!("{t} → [stages.{s}]"))
                    .collect(),
            );
        }
        if !done.insert(topic) {
            return None;
        }
        for (out, stage) in edges.get(topic).into_iter().flatten() {
            path.push((topic, stage));
            if let Some(c) = visit(out, edges, path, done) {
                return Some(c);
            }
            path.pop();
        }
        None
    }
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        let mut path = Vec::new();
        done.clear();
        if let Some(cycle) = visit(start, &edges, &mut path, &mut done) {
            let first_stage = cycle[0]
                .rsplit("[stages.")
                .next()
                .unwrap_or("")
                .trim_end_matches(']');
            let key = format!("stages.{first_stage}.output");
            let at = &stages[first_stage].output;
            return Err(loaded.error_at(
                at,
                key,
                format!(
                    "the stages form a cycle: {} → {start}; events would loop forever. \
                     Write the last stage's output to a new topic",
                    cycle.join(" → ")
                ),
            ));
        }
    }
    Ok(())
}

/// A source's input settings, by its type.
fn check_origin(
    loaded: &LoadedConfig,
    name: &str,
    s: &crate::config::SourceConfig,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("sources.{name}.{k}");
    match s.kind {
        crate::config::SourceType::Http => {
            let kafka_only = [
                ("brokers", s.brokers.is_some()),
                ("topics", !s.topics.is_empty()),
                ("group", s.group.is_some()),
                ("client", !s.client.is_empty()),
            ];
            refuse_set(
                loaded,
                key,
                &kafka_only,
                "is a setting of type = \"kafka\" sources; this source is type = \"http\"",
            )?;
        }
        crate::config::SourceType::Kafka => {
            check_brokers(
                loaded,
                &key("brokers"),
                s.brokers.as_deref(),
                "type = \"kafka\" needs the cluster to read",
            )?;
            if s.topics.is_empty() || s.topics.iter().any(|t| !is_kafka_topic(t)) {
                return Err(loaded.error(
                    key("topics"),
                    "type = \"kafka\" needs the topics to read, e.g. topics = [\"orders\"] (1 to 249 letters, digits, '.', '_' or '-' each)",
                ));
            }
            if s.group.as_deref().is_some_and(str::is_empty) {
                return Err(loaded.error(key("group"), "must not be empty"));
            }
            if s.auth.is_some() {
                return Err(loaded.error(
                    key("auth"),
                    "is a setting of type = \"http\" sources; a Kafka source authenticates with client settings (SASL, TLS)",
                ));
            }
        }
    }
    Ok(())
}

/// A valid Kafka topic name.
fn is_kafka_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[sinks.X] shadow = "sinks.Y"`: another sink of the same input, shadowing one sink.
fn check_shadow(
    loaded: &LoadedConfig,
    name: &str,
    s: &crate::config::SinkConfig,
) -> Result<(), ConfigError> {
    let Some(shadow) = &s.shadow else {
        return Ok(());
    };
    let key = format!("sinks.{name}.shadow");
    let sinks = &loaded.config.sinks;
    let other = shadow.get_ref().strip_prefix("sinks.");
    let Some((y, ys)) = other.and_then(|y| sinks.get_key_value(y)) else {
        let names: Vec<String> = sinks
            .keys()
            .filter(|k| *k != name)
            .map(|k| format!("sinks.{k}"))
            .collect();
        return Err(loaded.error_at(
            shadow,
            key,
            format!(
                "{:?} is not a sink of this pipeline; name another sink as \"sinks.NAME\" ({})",
                shadow.get_ref(),
                if names.is_empty() {
                    "there is none: add one reading the same topic".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    if y == name {
        return Err(loaded.error_at(shadow, key, "a sink cannot shadow itself"));
    }
    if ys.input.get_ref() != s.input.get_ref() {
        return Err(loaded.error_at(
            shadow,
            key,
            format!(
                "sinks.{y} reads {:?}, sinks.{name} {:?}: a shadow receives the same events, so it must read the same topic",
                ys.input.get_ref(),
                s.input.get_ref()
            ),
        ));
    }
    let shadowed_twice = sinks.iter().any(|(other, o)| {
        other != name
            && o.shadow
                .as_ref()
                .is_some_and(|t| t.get_ref() == shadow.get_ref())
    });
    if shadowed_twice || ys.shadow.is_some() {
        return Err(loaded.error_at(
            shadow,
            key,
            format!("sinks.{y} is already a shadow or has one; pair each sink with one shadow of its own"),
        ));
    }
    Ok(())
}

/// The sink's destination settings, by its type.
fn check_destination(
    loaded: &LoadedConfig,
    name: &str,
    s: &crate::config::SinkConfig,
) -> Result<(), ConfigError> {
    use crate::config::{SinkFormat, SinkType};
    let key = |k: &str| format!("sinks.{name}.{k}");
    match s.kind {
        SinkType::Http => {
            if s.url.is_empty() {
                return Err(loaded.error(
                    key("url"),
                    "type = \"http\" needs the destination: url = \"https://host/path\"",
                ));
            }
            let url = reqwest::Url::parse(&s.url)
                .map_err(|e| loaded.error(key("url"), format!("{:?} is not a URL ({e})", s.url)))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(
                    loaded.error(key("url"), "only http:// and https:// URLs are supported")
                );
            }
            let kafka_only = [
                ("brokers", s.brokers.is_some()),
                ("topic", s.topic.is_some()),
                ("key", s.key.is_some()),
                ("client", !s.client.is_empty()),
            ];
            refuse_set(
                loaded,
                key,
                &kafka_only,
                "is a setting of type = \"kafka\" sinks; this sink is type = \"http\"",
            )?;
        }
        SinkType::Kafka => {
            check_brokers(
                loaded,
                &key("brokers"),
                s.brokers.as_deref(),
                "type = \"kafka\" needs the destination cluster",
            )?;
            let topic_ok = s.topic.as_deref().is_some_and(is_kafka_topic);
            if !topic_ok {
                return Err(loaded.error(
                    key("topic"),
                    "type = \"kafka\" needs the topic to produce to: 1 to 249 letters, digits, '.', '_' or '-'",
                ));
            }
            if let Some(p) = &s.key {
                if !(p.is_empty() || p.starts_with('/')) {
                    return Err(loaded.error(
                        key("key"),
                        format!("{p:?} is not a JSON pointer; write e.g. key = \"/data/user\""),
                    ));
                }
            }
            let http_only = [
                ("url", !s.url.is_empty()),
                ("headers", !s.headers.is_empty()),
            ];
            refuse_set(
                loaded,
                key,
                &http_only,
                "is a setting of type = \"http\" sinks; this sink is type = \"kafka\"",
            )?;
            if !matches!(s.format(), SinkFormat::Structured | SinkFormat::Raw) {
                return Err(loaded.error(
                    key("format"),
                    "a Kafka record carries one event: use \"structured\" (the CloudEvent as JSON, the default) or \"raw\" (the data alone)",
                ));
            }
        }
    }
    Ok(())
}

/// Refuses the first of `settings` (name, whether it is set) that is set: settings of
/// another node type, named by `key`.
fn refuse_set(
    loaded: &LoadedConfig,
    key: impl Fn(&str) -> String,
    settings: &[(&str, bool)],
    why: &str,
) -> Result<(), ConfigError> {
    match settings.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(loaded.error(key(name), why)),
        None => Ok(()),
    }
}

/// A `brokers` setting: present (else the error says `what` needs it), and a list of
/// `host:port`.
fn check_brokers(
    loaded: &LoadedConfig,
    key: &str,
    brokers: Option<&str>,
    what: &str,
) -> Result<(), ConfigError> {
    if !cfg!(feature = "kafka") {
        return Err(loaded.error(key, crate::runtime::NO_KAFKA));
    }
    match brokers.map(str::trim) {
        None | Some("") => {
            Err(loaded.error(key, format!("{what}: brokers = \"host:9092,host2:9092\"")))
        }
        Some(b) => match b.split(',').map(str::trim).find(|a| !is_host_port(a)) {
            Some(bad) => Err(loaded.error(
                key,
                format!("{bad:?} is not host:port; write brokers = \"host:9092,host2:9092\""),
            )),
            None => Ok(()),
        },
    }
}

/// `host:port` with a non-empty host and a valid port.
fn is_host_port(a: &str) -> bool {
    a.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

fn check_engine(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let e = &loaded.config.engine;
    if e.ack_timeout.is_some_and(|d| d.0.is_zero()) {
        return Err(loaded.error(
            "engine.ack_timeout",
            "must be more than zero (it bounds how long ingest waits for the engine), e.g. \"2s\"",
        ));
    }
    if e.standby.is_some() && e.kind != crate::config::EngineKind::Kafka {
        return Err(loaded.error(
            "engine.standby",
            "a standby is for the Kafka engine (kind = \"kafka\"): the embedded log has no cluster to lose; remove [engine.standby]",
        ));
    }
    if let Some(sb) = &e.standby {
        check_standby(loaded, e, sb)?;
    }
    if e.kind != crate::config::EngineKind::Kafka {
        // The embedded log's bounds, named by their keys (the log checks them again).
        use hifi_log::config::{PREALLOCATE_BYTES, RECORD_BYTES, SEGMENT_BYTES};
        let sizes = [
            ("engine.segment_bytes", e.segment_bytes.0, SEGMENT_BYTES),
            (
                "engine.record_bytes_max",
                e.record_bytes_max.0,
                RECORD_BYTES,
            ),
            (
                "engine.preallocate_bytes",
                e.preallocate_bytes.0,
                PREALLOCATE_BYTES,
            ),
        ];
        for (key, value, range) in sizes {
            if !range.contains(&value) {
                let (min, max) = (size_text(*range.start()), size_text(*range.end()));
                let msg = format!("{value} bytes is out of range; use {min} … {max}");
                return Err(loaded.error(key, msg));
            }
        }
        return Ok(());
    }
    check_brokers(
        loaded,
        "engine.brokers",
        e.brokers.as_deref(),
        "kind = \"kafka\" needs the cluster's bootstrap brokers",
    )?;
    if e.replication_factor == 0 {
        return Err(loaded.error(
            "engine.replication_factor",
            "must be at least 1 (3 for zero loss)",
        ));
    }
    check_topic_prefix(loaded, "engine.topic_prefix", &e.topic_prefix)
}

fn check_topic_prefix(loaded: &LoadedConfig, key: &str, prefix: &str) -> Result<(), ConfigError> {
    if prefix.len() > 40
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(loaded.error(key, "use at most 40 letters, digits, '.', '_' or '-'"));
    }
    Ok(())
}

fn check_standby(
    loaded: &LoadedConfig,
    e: &crate::config::EngineConfig,
    sb: &crate::config::StandbyConfig,
) -> Result<(), ConfigError> {
    if sb.failover_after.0.is_zero() {
        return Err(loaded.error(
            "engine.standby.failover_after",
            "must be more than zero (how long an append to the cluster may take before ingest uses the standby), e.g. \"2s\"",
        ));
    }
    if sb.probe_every.0.is_zero() {
        return Err(loaded.error(
            "engine.standby.probe_every",
            "must be more than zero, e.g. \"1s\"",
        ));
    }
    if sb.kind == crate::config::EngineKind::Embedded {
        if sb.brokers.is_some() || sb.topic_prefix.is_some() || !sb.client.is_empty() {
            return Err(loaded.error(
                "engine.standby",
                "brokers, topic_prefix and client are for kind = \"kafka\"; an embedded standby takes data_dir",
            ));
        }
        return Ok(());
    }
    check_brokers(
        loaded,
        "engine.standby.brokers",
        sb.brokers.as_deref(),
        "a Kafka standby needs its own cluster's bootstrap brokers",
    )?;
    if sb.brokers == e.brokers {
        return Err(loaded.error(
            "engine.standby.brokers",
            "is the primary cluster; a standby must be another cluster (or kind = \"embedded\", a spool on this machine)",
        ));
    }
    if sb.replication_factor == 0 {
        return Err(loaded.error(
            "engine.standby.replication_factor",
            "must be at least 1 (3 for zero loss)",
        ));
    }
    match &sb.topic_prefix {
        Some(p) => check_topic_prefix(loaded, "engine.standby.topic_prefix", p),
        None => Ok(()),
    }
}

/// A size as written in the configuration: `"4KiB"`, `"64MiB"`, `"100B"`, `"0"`.
fn size_text(bytes: u64) -> String {
    match bytes {
        0 => "0".to_owned(),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

fn check_listeners(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let mut seen = BTreeMap::new();
    seen.insert(cfg.admin.listen, "admin.listen".to_owned());
    for (name, s) in &cfg.sources {
        let key = format!("sources.{name}.listen");
        if s.listen.port() == 0 || s.kind != crate::config::SourceType::Http {
            continue; // any free port, or no listener: cannot collide
        }
        if let Some(other) = seen.insert(s.listen, key.clone()) {
            return Err(loaded.error(
                key,
                format!(
                    "{} is already used by {other}; give each listener its own port",
                    s.listen
                ),
            ));
        }
    }
    Ok(())
}

fn topic_spec(loaded: &LoadedConfig, topic: &str) -> TopicSpec {
    let engine = &loaded.config.engine;
    let t = loaded.config.topics.get(topic);
    let retention = Retention {
        age: Some(t.and_then(|t| t.retention).unwrap_or(engine.retention).0)
            .filter(|d| *d != Duration::ZERO),
        bytes: t.and_then(|t| t.retention_bytes).map(|s| s.0),
        ignore_consumers: t.is_some_and(|t| t.retention_ignore_consumers),
    };
    TopicSpec {
        name: topic.to_owned(),
        partitions: t.and_then(|t| t.partitions).unwrap_or(engine.partitions),
        retention: Some(retention),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(text: &str) -> Result<Topology, ConfigError> {
        let loaded = LoadedConfig::parse(Path::new("p.toml"), text.to_owned())?;
        Topology::build(&loaded)
    }

    const HEAD: &str = "[engine]\nkind = \"embedded\"\n";

    #[test]
    fn the_minimal_file_from_the_issue_works() {
        let t = build(&format!(
            "{HEAD}data_dir = \"./data\"\n[sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:8080\"\ntopic = \"events\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://127.0.0.1:9000/ingest\"\n"
        ))
        .unwrap();
        assert_eq!(t.topics["events"].partitions, 4);
        assert_eq!(t.readers["events"], vec!["sinks.partner"]);
    }

    /// A build without the `kafka` feature names the Kafka setting it cannot run.
    #[cfg(not(feature = "kafka"))]
    #[test]
    fn a_build_without_kafka_refuses_kafka_settings() {
        let source = "[sources.orders]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"o\"]\ntopic = \"events\"\n";
        let sink = "[sinks.k]\ntype = \"kafka\"\ninput = \"events\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"out\"\n";
        let http = "[sources.api]\ntype = \"http\"\ntopic = \"events\"\n";
        for (text, key) in [
            (
                format!("[engine]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n{http}"),
                "engine.brokers",
            ),
            (format!("{HEAD}{source}"), "sources.orders.brokers"),
            (format!("{HEAD}{http}{sink}"), "sinks.k.brokers"),
        ] {
            let e = build(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{key}: this hifi was built without Kafka support")),
                "{e}"
            );
        }
    }

    /// A build without the `sql` feature keeps topic schemas and names the SQL stage it
    /// cannot run.
    #[cfg(not(feature = "sql"))]
    #[test]
    fn a_build_without_sql_refuses_sql_stages_and_keeps_schemas() {
        let base = format!(
            "{HEAD}[topics.orders]\nschema = {{ id = \"string\", amount = \"float64\" }}\n\
             [sources.api]\ntype = \"http\"\ntopic = \"orders\"\n"
        );
        let t = build(&base).unwrap();
        assert_eq!(t.derived.schemas["orders"].fields.len(), 2);
        let e = build(&format!(
            "{base}[stages.big]\ninput = \"orders\"\noutput = \"big\"\nsql = \"SELECT id FROM input\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("stages.big.sql: this hifi was built without SQL stages"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_key_line_and_fix() {
        let e = build(&format!(
            "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"events\"\n[sinks.s]\ntype = \"http\"\ninput = \"evnts\"\nurl = \"http://x/\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("p.toml:8: sinks.s.input: no source or stage writes topic \"evnts\""),
            "{e}"
        );
        assert!(e.contains("Did you mean \"events\"?"), "{e}");

        let e = build(&format!(
            "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"e\"\ncolour = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.toml:6")
                && e.contains("unknown field `colour`")
                && e.contains("expected one of"),
            "{e}"
        );

        let e = build(&format!(
            "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"a\"\n[stages.x]\ninput = \"a\"\noutput = \"b\"\n[stages.y]\ninput = \"b\"\noutput = \"a\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cycle") && e.contains("[stages.x]") && e.contains("[stages.y]"),
            "{e}"
        );

        let e = build(&format!(
            "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"a\"\n[topics.zzz]\npartitions = 2\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("topics.zzz: unknown topic"), "{e}");

        let e = build(HEAD).unwrap_err().to_string();
        assert!(e.contains("no nodes"), "{e}");
        let e = build(&format!(
            "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"a\"\nlisten = \"127.0.0.1:8081\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("already used by admin.listen"), "{e}");
    }
}
