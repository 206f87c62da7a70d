//! The topic `__versions`: one JSON record per change of a versioned stage (a version
//! created, published, backfilled again, collected), read whole at start. Kept (a century): it is small
//! (one record per edit of a stage) and it is what says which topic readers follow.

use std::collections::BTreeMap;

use hifi_log::{Log, LogError, ReadLimits, Record, Retention, TopicSpec};
use serde::{Deserialize, Serialize};

/// The registry's topic.
pub const VERSIONS_TOPIC: &str = "__versions";

/// Per reader (`sinks.X`, `stages.Y`): per origin partition (`topic/partition`), the
/// least origin offset it had not handled from the version published before.
pub type Cuts = BTreeMap<String, BTreeMap<String, u64>>;

/// What a window stage reading a versioned stage's output still reads of the version
/// published before (see [`super::publish`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The previous version's topic.
    pub topic: String,
    /// Its partitions' ends when the new version was published (it is not written
    /// after, but a version returning as a candidate would write it again).
    pub ends: Vec<u64>,
    /// The new version's topic's ends then: the window stage passes over everything
    /// below them (see `Cut::passes_over_once`).
    #[serde(default)]
    pub input_ends: Vec<u64>,
}

/// One change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    /// A version started: its definition, consumer group and where its backfill began.
    Created {
        stage: String,
        version: String,
        /// The stage's table, canonical TOML (what the hash is of, with the input schema).
        definition: String,
        /// The input topic's declared schema, if any (part of the hash).
        input_schema: Option<String>,
        /// The published version of the versioned stage it reads, if any (part of the
        /// hash).
        #[serde(default)]
        input_version: Option<String>,
        group: String,
        /// The topic it writes (`OUTPUT.v<hash>`; for a stage's first version, the
        /// unversioned `OUTPUT` when that already held records, so that its readers
        /// lose nothing of it).
        topic: String,
        /// Event time the backfill started from (ms; `None`: the oldest retained input).
        backfill_from_ms: Option<i64>,
        at_ms: i64,
    },
    /// Readers follow this version from now on.
    Published {
        stage: String,
        version: String,
        /// Each reader passes over its records of this version from below its cut.
        cuts: Cuts,
        at_ms: i64,
        /// `"auto"` or who asked (`"hifi publish"`).
        by: String,
        /// Readers deliver again this version's events from this event time (ms).
        #[serde(default)]
        redeliver_from_ms: Option<i64>,
        /// … and up to this one (a window stage's: what its previous version emitted;
        /// the new one emits the later windows again).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redeliver_to_ms: Option<i64>,
        /// Per window-stage reader: the previous version's topic, which it reads to
        /// these ends before it is done with it (its open windows hold events of it).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        drains: BTreeMap<String, Drain>,
    },
    /// A window stage's version published before runs as a candidate again: its window
    /// state and group's positions were reset to backfill anew from this event time
    /// (ms; `None`: the oldest retained input). Recorded after the reset, so a crash
    /// before it resets again.
    Backfilled {
        stage: String,
        version: String,
        backfill_from_ms: Option<i64>,
        at_ms: i64,
    },
    /// A retired version's topics and consumer group are being removed (`hifi versions
    /// gc`), recorded before they are: a version run again after this starts anew in
    /// a topic and group of new names.
    Collected {
        stage: String,
        version: String,
        /// What is deleted: its topic and its fingerprint's checkpoint topic.
        topics: Vec<String>,
        group: String,
        at_ms: i64,
    },
}

/// One version as the registry knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: String,
    pub definition: String,
    pub input_schema: Option<String>,
    pub input_version: Option<String>,
    pub group: String,
    pub topic: String,
    pub backfill_from_ms: Option<i64>,
    pub created_ms: i64,
    /// When it was published (the latest time), if ever.
    pub published_ms: Option<i64>,
    /// Published since it last backfilled: a window stage's version that runs as a
    /// candidate again must backfill anew (its candidate window state is older than
    /// its group's positions, which are where it stopped as the published stage).
    /// Decided by the order of the registry's records, not by clocks.
    pub backfill_due: bool,
    /// When its topics were collected (`hifi versions gc`), if they were.
    pub collected_ms: Option<i64>,
    /// How many times it was collected before (its topic and group of this life are
    /// named after it: [`super::generation_suffix`]).
    pub collections: u32,
}

/// Every versioned stage's versions, and which one is published.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub stages: BTreeMap<String, StageVersions>,
    /// What every collection recorded (`Change::Collected`), in order: names that may
    /// still exist if a collection stopped half-way (a version collected and then run
    /// again has new names; these stay the old ones').
    pub garbage: Vec<Garbage>,
}

/// The topics and group of one collected version.
#[derive(Debug, Clone)]
pub struct Garbage {
    pub stage: String,
    pub version: String,
    pub topics: Vec<String>,
    pub group: String,
}

/// A stage's published version.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: String,
    pub cuts: Cuts,
    pub redeliver_from_ms: Option<i64>,
    pub redeliver_to_ms: Option<i64>,
    pub drains: BTreeMap<String, Drain>,
}

/// One stage's versions.
#[derive(Debug, Clone, Default)]
pub struct StageVersions {
    pub versions: BTreeMap<String, Version>,
    /// The published version and its cuts.
    pub published: Option<Published>,
}

impl Registry {
    /// Creates the topic, kept for a century (a Kafka topic without `retention.ms`
    /// would take the broker's default, a week).
    pub async fn prepare(log: &dyn Log) -> Result<(), LogError> {
        let spec = TopicSpec {
            retention: Some(Retention {
                age: Some(std::time::Duration::from_secs(100 * 365 * 86_400)),
                bytes: None,
                ignore_consumers: false,
            }),
            ..TopicSpec::new(VERSIONS_TOPIC, 1)
        };
        log.ensure_topic(&spec).await.map(|_| ())
    }

    /// Reads every change. A record that does not parse is an error: which version is
    /// published must not be guessed.
    pub async fn read(log: &dyn Log) -> Result<Registry, String> {
        let offsets = log
            .offsets(VERSIONS_TOPIC, 0)
            .await
            .map_err(|e| format!("cannot read {VERSIONS_TOPIC}: {e}"))?;
        let mut registry = Registry::default();
        let mut pos = offsets.start;
        while pos < offsets.end {
            let limits = ReadLimits {
                max_records: 1000,
                max_bytes: 8 << 20,
                wait: std::time::Duration::ZERO,
            };
            let records = log
                .read(VERSIONS_TOPIC, 0, pos, limits)
                .await
                .map_err(|e| format!("cannot read {VERSIONS_TOPIC}: {e}"))?;
            let Some(last) = records.last() else { break };
            pos = last.offset + 1;
            for r in records {
                let change: Change = serde_json::from_slice(&r.record.value).map_err(|e| {
                    format!(
                        "{VERSIONS_TOPIC} offset {}: not a version record: {e}",
                        r.offset
                    )
                })?;
                registry.apply(change);
            }
        }
        Ok(registry)
    }

    /// Applies a change (as read, or as just written).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Created {
                stage,
                version,
                definition,
                input_schema,
                input_version,
                group,
                topic,
                backfill_from_ms,
                at_ms,
            } => {
                let s = self.stages.entry(stage).or_default();
                // A collected version created again starts a new life; any other
                // repeat (a crash before the first was applied) changes nothing.
                let collections = match s.versions.get(&version) {
                    Some(v) if v.collected_ms.is_some() => v.collections + 1,
                    Some(_) => return,
                    None => 0,
                };
                s.versions.insert(
                    version.clone(),
                    Version {
                        version,
                        definition,
                        input_schema,
                        input_version,
                        group,
                        topic,
                        backfill_from_ms,
                        created_ms: at_ms,
                        published_ms: None,
                        backfill_due: false,
                        collected_ms: None,
                        collections,
                    },
                );
            }
            Change::Published {
                stage,
                version,
                cuts,
                at_ms,
                redeliver_from_ms,
                redeliver_to_ms,
                drains,
                ..
            } => {
                let s = self.stages.entry(stage).or_default();
                if let Some(v) = s.versions.get_mut(&version) {
                    v.published_ms = Some(at_ms);
                    v.backfill_due = true;
                }
                s.published = Some(Published {
                    version,
                    cuts,
                    redeliver_from_ms,
                    redeliver_to_ms,
                    drains,
                });
            }
            Change::Backfilled {
                stage,
                version,
                backfill_from_ms,
                ..
            } => {
                let s = self.stages.entry(stage).or_default();
                if let Some(v) = s.versions.get_mut(&version) {
                    v.backfill_from_ms = backfill_from_ms;
                    v.backfill_due = false;
                }
            }
            Change::Collected {
                stage,
                version,
                topics,
                group,
                at_ms,
            } => {
                let s = self.stages.entry(stage.clone()).or_default();
                if let Some(v) = s.versions.get_mut(&version) {
                    v.collected_ms = Some(at_ms);
                }
                self.garbage.push(Garbage {
                    stage,
                    version,
                    topics,
                    group,
                });
            }
        }
    }

    /// Appends a change durably, then applies it.
    pub async fn record(&mut self, log: &dyn Log, change: Change) -> Result<(), LogError> {
        Self::append(log, &change).await?;
        self.apply(change);
        Ok(())
    }

    /// Appends a change durably (apply it after to the registries that should know).
    pub async fn append(log: &dyn Log, change: &Change) -> Result<(), LogError> {
        let value = serde_json::to_vec(change).expect("a version record serializes");
        let now = chrono::Utc::now().timestamp_millis();
        log.append(VERSIONS_TOPIC, 0, vec![Record::new(value, now)])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(version: &str, from: Option<i64>) -> Change {
        Change::Created {
            stage: "s".into(),
            version: version.into(),
            definition: String::new(),
            input_schema: None,
            input_version: None,
            group: format!("stage.s-v{version}"),
            topic: format!("out.v{version}"),
            backfill_from_ms: from,
            at_ms: 0,
        }
    }

    fn published(version: &str, at_ms: i64) -> Change {
        Change::Published {
            stage: "s".into(),
            version: version.into(),
            cuts: Cuts::new(),
            at_ms,
            by: "test".into(),
            redeliver_from_ms: None,
            redeliver_to_ms: None,
            drains: BTreeMap::new(),
        }
    }

    #[test]
    fn a_version_must_backfill_again_once_published_until_it_has() {
        let mut r = Registry::default();
        r.apply(created("1", None));
        r.apply(published("1", 10));
        r.apply(created("2", Some(5)));
        let v = |r: &Registry, h: &str| r.stages["s"].versions[h].clone();
        assert!(
            !v(&r, "2").backfill_due,
            "a new version backfills from its creation"
        );
        assert!(v(&r, "1").backfill_due);
        r.apply(published("2", 20));
        // Version one returns (the file went back to it): it backfills anew, once.
        r.apply(Change::Backfilled {
            stage: "s".into(),
            version: "1".into(),
            backfill_from_ms: Some(7),
            at_ms: 30,
        });
        assert!(!v(&r, "1").backfill_due);
        assert_eq!(
            v(&r, "1").backfill_from_ms,
            Some(7),
            "where its topic begins now"
        );
        // Published again: a later return backfills again — whatever the clocks said.
        r.apply(published("1", 0));
        assert!(v(&r, "1").backfill_due);
    }

    #[test]
    fn a_backfill_record_round_trips() {
        let c = Change::Backfilled {
            stage: "s".into(),
            version: "1".into(),
            backfill_from_ms: None,
            at_ms: 1,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""kind":"backfilled""#), "{text}");
        let mut r = Registry::default();
        r.apply(created("1", Some(3)));
        r.apply(serde_json::from_str(&text).unwrap());
        assert_eq!(r.stages["s"].versions["1"].backfill_from_ms, None);
    }
}
