//! What `/v1/pii` answers and what raises PII alarms: the declared fields and what each
//! sink receives ([`super::Policy`]), the detector's counts per source and field, and an
//! alarm for each field that looks like PII, is not declared, and reaches a sink that
//! does not allow it. Counts only, never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::detect::{Kind, Snapshot};
use super::{Policy, Received};
use crate::lineage::Graph;
use crate::source::HttpSource;

/// How often a running pipeline looks for new alarms.
pub const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The PII report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Declared PII fields (`node.field`) → the key declaring them.
    pub declared: BTreeMap<String, String>,
    /// Sink → the declared PII fields it receives, with their paths.
    pub sinks: BTreeMap<String, Vec<Received>>,
    /// Source → what its detector saw.
    pub sources: BTreeMap<String, SourceReport>,
    /// Undeclared fields that look like PII and reach a sink not allowing them.
    pub alarms: Vec<Alarm>,
}

/// One source's detector counts.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// One event in this many is looked at (0: the detector is off).
    pub sample_every: u64,
    /// Events looked at.
    pub sampled_events: u64,
    /// Field names not counted (past the bound).
    pub fields_not_tracked: u64,
    /// Per top-level field.
    pub fields: BTreeMap<String, FieldReport>,
}

/// One field's counts.
#[derive(Debug, Clone, Serialize)]
pub struct FieldReport {
    /// Declared PII.
    pub declared: bool,
    /// Sampled events with a value in it.
    pub sampled: u64,
    /// Of those, how many looked like each kind.
    pub looks_like: BTreeMap<Kind, u64>,
    /// The kinds it looks like often enough to be PII.
    pub suspected: Vec<Kind>,
}

/// Undeclared PII reaching a sink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Alarm {
    /// The source field (`node.field`).
    pub field: String,
    /// What its values look like.
    pub looks_like: Vec<Kind>,
    /// The sink it reaches.
    pub sink: String,
    /// The fields on the way.
    pub path: Vec<String>,
}

impl Alarm {
    /// One line for logs and tables.
    pub fn message(&self) -> String {
        let kinds: Vec<&str> = self.looks_like.iter().map(|k| k.as_str()).collect();
        format!(
            "{} is not declared PII but looks like {} and reaches sinks.{} ({}); declare it (pii = [...]) and allow it there, or redact or remove it on the way",
            self.field,
            kinds.join(" and "),
            self.sink,
            super::route(&self.path)
        )
    }
}

/// The report for `policy` over `graph`, with each source's detector (name, snapshot,
/// sampling).
pub fn report(policy: &Policy, graph: &Graph, sources: &[(String, Snapshot, u64)]) -> Report {
    let mut out = Report {
        declared: policy.declared.clone(),
        sinks: policy.sinks.clone(),
        sources: BTreeMap::new(),
        alarms: Vec::new(),
    };
    for (name, snap, every) in sources {
        let mut fields = BTreeMap::new();
        for (f, c) in &snap.fields {
            let at = format!("{name}.{f}");
            let declared = policy.declared.contains_key(&at);
            let suspected = c.suspected();
            if !declared && !suspected.is_empty() {
                for (sink, r) in policy.reaching_sinks(graph, &at) {
                    if !r.allowed {
                        out.alarms.push(Alarm {
                            field: at.clone(),
                            looks_like: suspected.clone(),
                            sink,
                            path: r.path,
                        });
                    }
                }
            }
            let f_report = FieldReport {
                declared,
                sampled: c.sampled,
                looks_like: c.looks_like.clone(),
                suspected,
            };
            fields.insert(f.clone(), f_report);
        }
        let s = SourceReport {
            sample_every: *every,
            sampled_events: snap.sampled_events,
            fields_not_tracked: snap.fields_not_tracked,
            fields,
        };
        out.sources.insert(name.clone(), s);
    }
    out.alarms.sort();
    out.alarms.dedup();
    out
}

/// The report of running sources.
pub fn of_sources(policy: &Policy, graph: &Graph, sources: &[Arc<HttpSource>]) -> Report {
    let snaps: Vec<(String, Snapshot, u64)> = sources
        .iter()
        .map(|s| (s.name.clone(), s.pii.snapshot(), s.pii.sample_every()))
        .collect();
    report(policy, graph, &snaps)
}

/// Logs each new alarm once (a warning), every [`WATCH_EVERY`] until `token` is cancelled.
pub async fn watch(
    policy: Arc<Policy>,
    graph: Arc<Graph>,
    sources: Vec<Arc<HttpSource>>,
    token: CancellationToken,
) {
    let mut raised: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        for a in of_sources(&policy, &graph, &sources).alarms {
            if raised.insert((a.field.clone(), a.sink.clone())) {
                warn!(field = %a.field, sink = %a.sink, "undeclared PII: {}", a.message());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::detect::Counts;

    #[test]
    fn an_alarm_needs_undeclared_suspected_pii_reaching_a_sink_that_does_not_allow_it() {
        let toml = r#"
[engine]
kind = "embedded"
data_dir = "./data"
[sources.api]
type = "http"
topic = "orders"
pii = ["email"]
[sinks.partner]
type = "http"
input = "orders"
url = "http://127.0.0.1:9/x"
[sinks.vault]
type = "http"
input = "orders"
url = "http://127.0.0.1:9/x"
allow_pii = ["*"]
"#;
        let loaded =
            crate::config::LoadedConfig::parse("p.toml".as_ref(), toml.to_owned()).unwrap();
        let topology = crate::topology::Topology::derive(&loaded).unwrap();
        let policy = &topology.pii;
        assert!(policy.check(&loaded).is_err(), "partner receives email");
        let counts = |n: u64| Counts {
            sampled: 10,
            looks_like: BTreeMap::from([(Kind::Phone, n)]),
        };
        let snap = Snapshot {
            sampled_events: 10,
            fields: BTreeMap::from([
                ("email".to_owned(), counts(10)),
                ("notes".to_owned(), counts(9)),
                ("misc".to_owned(), counts(0)),
            ]),
            fields_not_tracked: 0,
        };
        let r = report(policy, &topology.lineage, &[("api".into(), snap, 1)]);
        let alarms: Vec<(&str, &str)> = r
            .alarms
            .iter()
            .map(|a| (a.field.as_str(), a.sink.as_str()))
            .collect();
        assert_eq!(alarms, vec![("api.notes", "partner")]);
        assert!(r.sources["api"].fields["email"].declared);
        assert_eq!(
            r.sources["api"].fields["notes"].suspected,
            vec![Kind::Phone]
        );
        assert!(
            r.alarms[0].message().contains("api.notes → partner"),
            "{}",
            r.alarms[0].message()
        );
    }
}
