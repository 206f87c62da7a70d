//! PII along lineage: which fields hold personal data, where they go, and whether the
//! sinks they reach allow them.
//!
//! Fields are declared PII at a source (`sources.X.pii`) or a topic (`topics.X.pii`, for
//! each node writing it). PII flows along **selected** lineage edges (a value selected or
//! computed from it); a `redact` of the whole field or its removal ends it, and a filter
//! or group key using it does not carry it (non-selected). Each sink must allow every PII
//! field it receives (`sinks.X.allow_pii`); [`Policy::check`] refuses the pipeline
//! otherwise, naming the path. The detector ([`detect`]) finds fields that look like PII
//! but are not declared; [`report`] turns its counts into `/v1/pii` and alarms.

pub mod detect;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{ConfigError, LoadedConfig};
use crate::lineage::{Graph, ANY};

/// A PII field as a sink receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Received {
    /// The field at the sink.
    pub field: String,
    /// The declared PII field it comes from (`node.field`).
    pub from: String,
    /// The fields on the way, from the declared one to the sink's.
    pub path: Vec<String>,
    /// Whether the sink's `allow_pii` allows it.
    pub allowed: bool,
}

impl Received {
    /// `api.email → big.contact → partner`.
    pub fn route(&self) -> String {
        route(&self.path)
    }
}

/// A lineage path for people: the last hop (the sink, which passes fields through as it
/// receives them) is named by its node alone.
pub fn route(path: &[String]) -> String {
    let mut hops: Vec<&str> = path.iter().map(String::as_str).collect();
    if let Some(last) = hops.last_mut() {
        *last = last.split_once('.').map_or(*last, |(node, _)| node);
    }
    hops.join(" → ")
}

/// The pipeline's PII: what is declared and what each sink receives.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Policy {
    /// Declared PII fields (`node.field`) → the key declaring them (`sources.api.pii`).
    pub declared: BTreeMap<String, String>,
    /// Sink → its `allow_pii`.
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Sink → the PII fields it receives (sinks receiving none are absent).
    pub sinks: BTreeMap<String, Vec<Received>>,
}

impl Policy {
    /// Reads the declarations and follows each along `graph`. Errors: a declared field
    /// the node does not write (when its fields are known), or a name that is not a
    /// top-level field.
    pub fn build(loaded: &LoadedConfig, graph: &Graph) -> Result<Policy, ConfigError> {
        let cfg = &loaded.config;
        let mut p = Policy::default();
        let mut declare = |node: &str, key: String, fields: &[String]| {
            let known = graph.nodes.get(node).cloned().unwrap_or_default();
            for f in fields {
                if f.is_empty() || f == ANY || f.contains(['/', '.']) {
                    return Err(loaded.error(&key, format!("{f:?} is not a field name: name top-level fields of the events (e.g. \"email\"; no JSON pointers or dots)")));
                }
                if !known.iter().any(|k| k == f || k == ANY) {
                    return Err(loaded.error(
                        &key,
                        format!(
                            "{node} writes no field {f:?}; its fields: {}",
                            known.join(", ")
                        ),
                    ));
                }
                p.declared
                    .entry(format!("{node}.{f}"))
                    .or_insert(key.clone());
            }
            Ok(())
        };
        for (name, s) in &cfg.sources {
            declare(name, format!("sources.{name}.pii"), &s.pii)?;
        }
        for (topic, t) in &cfg.topics {
            let writers = cfg
                .sources
                .iter()
                .filter(|(_, s)| s.topic.get_ref() == topic)
                .map(|(n, _)| n)
                .chain(
                    cfg.stages
                        .iter()
                        .filter(|(_, s)| s.output.get_ref() == topic)
                        .map(|(n, _)| n),
                );
            for w in writers {
                declare(w, format!("topics.{topic}.pii"), &t.pii)?;
            }
        }
        for (name, s) in &cfg.sinks {
            p.allowed.insert(name.clone(), s.allow_pii.clone());
        }
        let declared: Vec<String> = p.declared.keys().cloned().collect();
        for d in declared {
            for (sink, r) in p.reaching_sinks(graph, &d) {
                let received = p.sinks.entry(sink).or_default();
                if !received
                    .iter()
                    .any(|x| x.field == r.field && x.from == r.from)
                {
                    received.push(r);
                }
            }
        }
        Ok(p)
    }

    /// The sinks `field` (`node.field`) reaches along PII-carrying edges, with the field
    /// each receives and whether it allows it.
    pub fn reaching_sinks(&self, graph: &Graph, field: &str) -> Vec<(String, Received)> {
        graph
            .pii_reach(field)
            .into_iter()
            .filter_map(|r| {
                let (node, f) = r.field.split_once('.')?;
                let allow = self.allowed.get(node)?;
                let allowed = allow.iter().any(|a| a == f || a == ANY);
                let got = Received {
                    field: f.to_owned(),
                    from: field.to_owned(),
                    path: r.path,
                    allowed,
                };
                Some((node.to_owned(), got))
            })
            .collect()
    }

    /// Refuses a pipeline in which a sink receives PII it does not allow, naming the
    /// first such sink, every field and its path, and the fix.
    pub fn check(&self, loaded: &LoadedConfig) -> Result<(), ConfigError> {
        for (sink, received) in &self.sinks {
            let refused: Vec<&Received> = received.iter().filter(|r| !r.allowed).collect();
            if refused.is_empty() {
                continue;
            }
            let paths: Vec<String> = refused
                .iter()
                .map(|r| format!("{} ({})", r.field, r.route()))
                .collect();
            let names: BTreeSet<&str> = refused.iter().map(|r| r.field.as_str()).collect();
            let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            return Err(loaded.error(
                format!("sinks.{sink}.allow_pii"),
                format!(
                    "sinks.{sink} receives PII it does not allow: {}. If the destination may hold it, add allow_pii = [{}] to [sinks.{sink}]; otherwise redact (type = \"redact\") or remove it on the way",
                    paths.join("; "),
                    names.join(", ")
                ),
            ));
        }
        Ok(())
    }
}
