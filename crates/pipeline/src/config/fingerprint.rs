//! `[sources.X.fingerprint]` and `[stages.X.fingerprint]`: summary statistics of the
//! topic a node writes, per event-time bucket (`crate::fingerprint`).

use super::*;

/// `[signals]`: bucket signals (`hifi.bucket.complete`, `hifi.bucket.updated`) of
/// fingerprinted topics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// Each signal is also POSTed here as a structured CloudEvent. Default none.
    pub webhook: Option<String>,
}

/// `[[sources.X.audits]]`, `[[stages.X.audits]]`: a check on each complete bucket of the
/// node's fingerprint (`crate::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Its name in results and signals. Default `audits[N]`.
    pub name: Option<String>,
    /// A CEL expression over `v`, `input` and `previous` that must be true.
    pub check: String,
    /// Keep a candidate version unpublished while it fails (a stage with `versions`;
    /// refused elsewhere). Default false.
    #[serde(default)]
    pub blocking: bool,
}

/// What to fingerprint of a node's output topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Event-time bucket length (buckets start at multiples of it since the epoch).
    /// Default `"1h"`.
    #[serde(default = "default_bucket")]
    pub bucket: Dur,
    /// Fields whose Shannon entropy is computed (top-level names), e.g.
    /// `["country", "user_agent"]`. Default none.
    #[serde(default)]
    pub entropy: Vec<String>,
    /// Most fields tracked per bucket (the first seen). Default 32.
    #[serde(default = "default_fields_max")]
    pub fields_max: usize,
    /// Buckets further than this behind the newest are dropped (memory; an event for
    /// one is counted as too old). At most 1 000 buckets. Default 48 buckets (`"2d"`
    /// for hourly buckets).
    pub keep: Option<Dur>,
    /// A bucket is complete (signal `hifi.bucket.complete`) once the largest event
    /// time read is this far past its end and the ledger settled its events. Default
    /// `"1m"`.
    #[serde(default = "default_lateness")]
    pub lateness: Dur,
    /// A topic read to its end that got nothing for this long, its writer caught up, is
    /// quiet: its watermark moves with the wall clock. Default `"10s"`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// How often the figures are made durable (with the position they reflect); a
    /// crash re-reads at most this much of the topic. Default `"10s"`.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: Dur,
}

fn default_bucket() -> Dur {
    Dur(Duration::from_secs(3600))
}

fn default_lateness() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_fields_max() -> usize {
    32
}

fn default_checkpoint_every() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Most fields per bucket and entropy fields (memory and checkpoint size).
pub const FINGERPRINT_FIELDS_MAX: usize = 256;
pub const FINGERPRINT_ENTROPY_MAX: usize = 16;
/// Most buckets kept (`keep` ÷ `bucket`).
pub const FINGERPRINT_BUCKETS_MAX: u64 = 1_000;

/// Buckets kept by default.
const DEFAULT_BUCKETS_KEPT: u32 = 48;

impl FingerprintConfig {
    /// `keep`, or 48 buckets.
    pub fn keep(&self) -> Duration {
        self.keep
            .map_or(self.bucket.0 * DEFAULT_BUCKETS_KEPT, |k| k.0)
    }

    /// What is wrong with it, if anything (for `hifi validate`).
    pub fn problem(&self) -> Option<String> {
        let (bucket, keep) = (self.bucket.0, self.keep());
        if bucket < Duration::from_secs(1) || bucket > Duration::from_secs(7 * 86_400) {
            return Some(format!(
                "fingerprint.bucket must be between 1s and 7d, not {}",
                humantime::format_duration(bucket)
            ));
        }
        if keep < bucket || keep.as_secs() / bucket.as_secs().max(1) > FINGERPRINT_BUCKETS_MAX {
            return Some(format!(
                "fingerprint.keep must be at least one bucket and at most {FINGERPRINT_BUCKETS_MAX} buckets (memory: each holds about 2 KiB per field and 56 KiB per entropy field)"
            ));
        }
        if self.fields_max == 0 || self.fields_max > FINGERPRINT_FIELDS_MAX {
            return Some(format!(
                "fingerprint.fields_max must be between 1 and {FINGERPRINT_FIELDS_MAX}"
            ));
        }
        if self.entropy.len() > FINGERPRINT_ENTROPY_MAX {
            return Some(format!(
                "fingerprint.entropy names at most {FINGERPRINT_ENTROPY_MAX} fields"
            ));
        }
        if let Some(e) = self.entropy.iter().find(|e| e.is_empty()) {
            return Some(format!("fingerprint.entropy has an empty field name {e:?}"));
        }
        if self.idle_timeout.0 > Duration::from_secs(86_400) {
            return Some("fingerprint.idle_timeout must be at most 1d".to_owned());
        }
        let every = self.checkpoint_every.0;
        if every < Duration::from_secs(1) || every > Duration::from_secs(3600) {
            return Some("fingerprint.checkpoint_every must be between 1s and 1h".to_owned());
        }
        None
    }
}

/// A node that writes a topic (a source or a stage), with what it declares about that
/// topic's fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// `sources` or `stages`, and its name there.
    pub kind: &'static str,
    pub name: &'a str,
    /// A stage's input topic.
    pub input: Option<&'a str>,
    /// The topic it writes.
    pub topic: &'a str,
    pub fingerprint: Option<&'a FingerprintConfig>,
    pub audits: &'a [AuditConfig],
    /// A stage with `versions` (its audits may block and name `published`).
    pub versioned: bool,
    /// For a candidate version of a stage: that stage.
    pub candidate_of: Option<&'a str>,
}

impl Writer<'_> {
    /// Its node name: `sources.api`, `stages.big`.
    pub fn node_name(&self) -> String {
        format!("{}.{}", self.kind, self.name)
    }
}

impl PipelineConfig {
    /// Every source and stage, with the topic it writes.
    pub fn writers(&self) -> impl Iterator<Item = Writer<'_>> {
        let sources = self.sources.iter().map(|(n, s)| Writer {
            kind: "sources",
            name: n,
            input: None,
            topic: s.topic.get_ref(),
            fingerprint: s.fingerprint.as_ref(),
            audits: &s.audits,
            versioned: false,
            candidate_of: None,
        });
        let stages = self.stages.iter().map(|(n, s)| Writer {
            kind: "stages",
            name: n,
            input: Some(s.input.get_ref()),
            topic: s.output.get_ref(),
            fingerprint: s.fingerprint.as_ref(),
            audits: &s.audits,
            versioned: s.versions.is_some(),
            candidate_of: s.candidate_of.as_deref(),
        });
        sources.chain(stages)
    }
}
