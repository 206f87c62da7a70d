//! `[stages.*]`: a CEL filter and transforms, or a SQL query, between two topics.

use super::*;

/// `[stages.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Topic read.
    pub input: Spanned<String>,
    /// Topic written.
    pub output: Spanned<String>,
    /// Transforms applied in order; none = pass-through.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// A SQL query run on each event (instead of transforms), reading the table `input`
    /// (the input topic, which needs a schema), e.g.
    /// `SELECT id, amount * 0.2 AS vat FROM input WHERE amount >= 10`. Events `WHERE`
    /// removes get the outcome `filtered`; events the query fails on are dead-lettered.
    pub sql: Option<Spanned<String>>,
    /// Run `sql` once per closed event-time window over that window's events, e.g.
    /// `window = { size = "1m", allowed_lateness = "30s" }` (a window stage).
    pub window: Option<Spanned<WindowConfig>>,
    /// Summary statistics of the output topic per event-time bucket
    /// (`GET /v1/fingerprints`), e.g. `fingerprint = { entropy = ["country"] }`.
    pub fingerprint: Option<FingerprintConfig>,
    /// Checks on each complete bucket of its fingerprint (needs `fingerprint`).
    #[serde(default)]
    pub audits: Vec<AuditConfig>,
    /// Records read per batch. Default 1000.
    #[serde(default = "default_stage_batch")]
    pub batch_max_events: usize,
    /// Immutable versions of the stage's output (`versions = { publish = "auto" }`):
    /// each definition writes its own topic `OUTPUT.v<hash>`; a changed definition
    /// backfills beside the published one, which readers of `OUTPUT` follow until the
    /// new one is published. See [`crate::versions`].
    pub versions: Option<VersionsConfig>,
    /// Set by [`crate::versions`], not the file: the consumer group of the version
    /// running under this name (default `stage.NAME`).
    #[serde(skip)]
    pub group: Option<String>,
    /// Set by [`crate::versions`]: this stage is a candidate version of that stage (it
    /// has no place in the ledger until published).
    #[serde(skip)]
    pub candidate_of: Option<String>,
    /// Set by [`crate::versions`]: records of the input to pass over (a published
    /// version's events whose previous version's were already handled).
    #[serde(skip)]
    pub skip: Option<std::sync::Arc<crate::versions::Cut>>,
    /// Test builds only (cargo feature `test-hooks`, never in a release build): silently
    /// drop events whose id matches this regex, recording no outcome — a simulated bug,
    /// so tests can prove the ledger finds the loss. Without the feature the key is
    /// unknown and refused like any other.
    #[cfg(feature = "test-hooks")]
    pub test_drop_ids_matching: Option<String>,
    /// Test builds only: panic on an event whose id matches this regex — a simulated
    /// bug, so tests can prove a node that dies is reported and stops the pipeline.
    #[cfg(feature = "test-hooks")]
    pub test_panic_ids_matching: Option<String>,
    /// Test builds only: a publish of this versioned stage waits this long (ms) after
    /// its cuts and positions are written and before it is recorded, so that a test can
    /// kill the process in between.
    #[cfg(feature = "test-hooks")]
    pub test_publish_pause_ms: Option<u64>,
}

impl StageConfig {
    /// The consumer group of the stage running as `name`: the one [`crate::versions`]
    /// set, else [`stage_group`].
    pub fn consumer_group(&self, name: &str) -> String {
        self.group.clone().unwrap_or_else(|| stage_group(name))
    }
}

/// The consumer group a stage running as `name` has unless [`crate::versions`] gives it
/// another: `stage.NAME`.
pub fn stage_group(name: &str) -> String {
    format!("stage.{name}")
}

/// `window = { … }` of a SQL stage: tumbling event-time windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Length of each window (`"1m"`); windows start at multiples of it since the epoch.
    pub size: crate::units::Dur,
    /// How far behind the largest event time seen a window may still get events: a
    /// window closes when the watermark (largest event time − this) passes its end.
    /// Default 0.
    #[serde(default = "zero")]
    pub allowed_lateness: crate::units::Dur,
    /// What an event for a window already emitted becomes: `"dead-letter"` (default) or
    /// `"update"` (the window is computed again and its rows emitted with the next
    /// revision).
    #[serde(default)]
    pub late: LateMode,
    /// An input partition read to its end that gets nothing for this long stops holding
    /// windows open (its watermark is not waited for; one whose reader is behind, or
    /// fails before reaching its end, holds them); when every partition is idle, windows
    /// close by the wall clock. Default `"10s"`.
    #[serde(default = "default_idle")]
    pub idle_timeout: crate::units::Dur,
    /// Most events held in open windows (memory: each event's JSON and headers). Past
    /// it the oldest open window closes early (logged; its later events are late).
    /// Default 1 000 000.
    #[serde(default = "default_max_held")]
    pub max_held_events: usize,
}

fn default_max_held() -> usize {
    1_000_000
}

fn zero() -> crate::units::Dur {
    crate::units::Dur(std::time::Duration::ZERO)
}

fn default_idle() -> crate::units::Dur {
    crate::units::Dur(std::time::Duration::from_secs(10))
}

/// What a late event becomes (`window.late`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LateMode {
    /// Into the stage's dead letters, with the reason.
    #[default]
    DeadLetter,
    /// The window is computed again with it; its rows are emitted as the next revision.
    Update,
}

/// One transform of a stage (`[[stages.NAME.transforms]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keep events for which the CEL `condition` is true (the event's JSON is `event`,
    /// e.g. `event.amount > 100 && event.country == "DE"`); others get the outcome
    /// `filtered`.
    Filter {
        /// A CEL expression evaluating to a boolean.
        condition: String,
    },
    /// Set a field (JSON pointer) to a JSON value, creating objects on the way.
    Set {
        /// JSON pointer, e.g. `"/meta/pipeline"`.
        field: String,
        /// Any TOML value (converted to JSON).
        value: toml::Value,
    },
    /// Move a field.
    Rename {
        /// JSON pointer of the field to move.
        from: String,
        /// JSON pointer of its new place.
        to: String,
    },
    /// Remove fields (missing fields are fine).
    Remove {
        /// JSON pointers.
        fields: Vec<String>,
    },
    /// Replace a field's value with a salted SHA-256 hash (`mode = "hash"`, hex) or a
    /// mask (`mode = "mask"`: `"****"` keeping the last `keep_last` characters).
    Redact {
        /// JSON pointer.
        field: String,
        /// `"hash"` or `"mask"`.
        mode: RedactMode,
        /// Salt for `hash` (required for `hash`).
        salt: Option<String>,
        /// Characters left visible by `mask`. Default 0.
        #[serde(default)]
        keep_last: usize,
    },
}

/// How `redact` hides a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// Salted SHA-256, hex.
    Hash,
    /// `****` plus the last characters.
    Mask,
}

/// `versions = { … }` of a stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsConfig {
    /// `"auto"`: a new version is published once its backfill is done and every
    /// complete bucket passed the stage's blocking audits; `"manual"` (default): by
    /// `hifi publish STAGE VERSION`.
    #[serde(default)]
    pub publish: PublishMode,
    /// Where a new version's backfill starts: `"retention"` (default: the oldest
    /// retained input), a time (`"2026-12-06T10:00:00Z"`), or a duration before the
    /// version starts (`"1h"`).
    #[serde(default = "default_backfill_from")]
    pub backfill_from: String,
    /// Most input events per second a new version reads (in this process), so that its
    /// backfill leaves room for the live path. Default: none (as fast as it can).
    pub backfill_max_rate: Option<u64>,
    /// The live path's E2E lag to keep while a new version backfills, e.g. `"50ms"`:
    /// each 10-second window whose sinks' lag-out p95 is above it halves the backfill's
    /// rate; each one within it raises the rate by a quarter (up to
    /// `backfill_max_rate`). Default: none (the rate stays at `backfill_max_rate`).
    pub live_e2e_p95_max: Option<crate::units::Dur>,
    /// With `publish = "auto"`: the automatic publish also delivers again every event
    /// the new version wrote before it (from its backfill's start), with their ids —
    /// what `hifi publish --redeliver-from` does by hand — so destinations replace what
    /// the previous version sent. Default: false (readers go on from the cut).
    #[serde(default)]
    pub redeliver: bool,
}

/// When a new version is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Once backfilled and audited.
    Auto,
    /// By `hifi publish`.
    #[default]
    Manual,
}

fn default_backfill_from() -> String {
    "retention".into()
}

fn default_stage_batch() -> usize {
    1000
}
