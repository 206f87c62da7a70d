//! `[sinks.*]`: destinations (HTTP, Kafka), batching, retries, classification and the circuit breaker.

use super::*;

/// Sink node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// HTTP delivery of CloudEvents batches.
    Http,
    /// Produced to a Kafka topic (any cluster, whichever engine hifi runs on).
    Kafka,
}

/// `[sinks.NAME] format`: how events are put in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// A JSON array of structured CloudEvents
    /// (`application/cloudevents-batch+json`).
    #[default]
    Batch,
    /// Structured CloudEvents, one per line (`application/x-ndjson`).
    Ndjson,
    /// One structured CloudEvent per request (`application/cloudevents+json`).
    Structured,
    /// One event per request in CloudEvents binary mode: attributes as `ce-*` headers,
    /// the data as the body.
    Binary,
    /// One event per request: the data alone (the producer's JSON), no CloudEvents
    /// attributes.
    Raw,
}

impl SinkFormat {
    /// Whether a request carries exactly one event.
    pub fn one_per_request(self) -> bool {
        matches!(
            self,
            SinkFormat::Structured | SinkFormat::Binary | SinkFormat::Raw
        )
    }
}

/// `[sinks.NAME] concurrency`: `"adaptive"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// Follows the destination (AIMD on response times and errors).
    #[default]
    Adaptive,
    /// This many requests at once, whatever the destination does.
    Fixed(usize),
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "concurrency is \"adaptive\" or a number of requests (at least 1), e.g. 8",
            )
        };
        match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::Number(n) if n >= 1 => Ok(Concurrency::Fixed(n as usize)),
            Raw::Text(t) if t == "adaptive" => Ok(Concurrency::Adaptive),
            _ => Err(bad()),
        }
    }
}

impl SinkConfig {
    /// Most fresh-batch requests in flight at once.
    pub fn concurrency_limit_max(&self) -> usize {
        match self.concurrency {
            Concurrency::Adaptive => self.concurrency_max,
            Concurrency::Fixed(n) => n,
        }
    }

    /// The format, with the sink type's default.
    pub fn format(&self) -> SinkFormat {
        match (self.format_set, self.kind) {
            (Some(f), _) => f,
            (None, SinkType::Http) => SinkFormat::Batch,
            (None, SinkType::Kafka) => SinkFormat::Structured,
        }
    }
}

/// `[sinks.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `"http"` or `"kafka"`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Topic delivered.
    pub input: Spanned<String>,
    /// Set by [`crate::versions`], not the file: records of the input to pass over
    /// (a published version's events whose previous version's were already delivered).
    #[serde(skip)]
    pub skip: Option<std::sync::Arc<crate::versions::Cut>>,
    /// Set by [`crate::versions`]: the version of the stage whose output this sink reads
    /// (sent as the CloudEvents extension `hifiversion`).
    #[serde(skip)]
    pub version: Option<String>,
    /// Another sink that receives the same events as this one, e.g. `"sinks.candidate"`
    /// (a new destination or format being proven): the ledger compares what both
    /// destinations acknowledged, per event and bucket (`GET /v1/shadow`). It must read
    /// the same topic. Default none.
    #[serde(default)]
    pub shadow: Option<Spanned<String>>,
    /// PII fields (as this sink receives them) it may deliver, e.g. `["email"]`; `["*"]`
    /// allows every one. A PII field reaching the sink without being allowed stops
    /// `hifi validate` and `hifi run`. Default none.
    #[serde(default)]
    pub allow_pii: Vec<String>,
    /// HTTP: destination URL (`http://` or `https://`); batches are POSTed to it.
    #[serde(default)]
    pub url: String,
    /// HTTP: extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What a request (HTTP) or a record (Kafka) carries. Default `"batch"` (HTTP),
    /// `"structured"` (Kafka); see [`SinkConfig::format`].
    #[serde(default, rename = "format")]
    pub format_set: Option<SinkFormat>,
    /// Kafka: bootstrap brokers of the destination cluster, `"host:port,host:port"`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: the topic produced to (its exact name; it must exist).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: JSON pointer into the CloudEvent (e.g. `"/data/user"`) whose value is the
    /// record key; events without it get no key. Default: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Kafka: librdkafka producer settings passed as they are (TLS, SASL,
    /// `compression.type`); `acks` and `enable.idempotence` cannot be changed.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// How events are grouped into requests.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Requests of fresh batches in flight at once: `"adaptive"` (the default: a limit
    /// that follows the destination's response times and errors, up to
    /// `concurrency_max`) or a fixed number. Batches that failed once use as many again
    /// of their own (the recovery lane).
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Most requests in flight with `concurrency = "adaptive"`. Default 32.
    #[serde(default = "default_concurrency_max")]
    pub concurrency_max: usize,
    /// A request that takes longer fails (and is retried). Default `"10s"`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Local and global retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Failure-class overrides.
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// `[sinks.NAME.batch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events per request. Default 500.
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    /// Most body bytes per request. Default `"1MiB"`.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: Size,
    /// While all `concurrency` requests are busy, a batch keeps filling for up to this
    /// long; with a free request slot it is sent at once. Default `"50ms"`.
    #[serde(default = "default_batch_wait")]
    pub max_wait: Dur,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_events(),
            max_bytes: default_batch_bytes(),
            max_wait: default_batch_wait(),
        }
    }
}

/// `[sinks.NAME.retry]`: two tiers of retries.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries inside the sink.
    #[serde(default)]
    pub local: LocalRetry,
    /// Retries through the sink's retry topics.
    #[serde(default)]
    pub global: GlobalRetry,
}

/// `[sinks.NAME.retry.local]`: exponential backoff with full jitter, at least the
/// destination's `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRetry {
    /// Attempts of one batch before its events go to the retry topic. Default 3.
    #[serde(default = "default_local_attempts")]
    pub attempts: u32,
    /// First backoff. Default `"100ms"`.
    #[serde(default = "default_backoff_min")]
    pub backoff_min: Dur,
    /// Longest backoff. Default `"5s"`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
}

impl Default for LocalRetry {
    fn default() -> Self {
        LocalRetry {
            attempts: default_local_attempts(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
        }
    }
}

/// `[sinks.NAME.retry.global]`: delay tiers (one retry topic each); an event moves up a
/// tier after each failed global retry and stays in the last one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRetry {
    /// Delays. Default `["30s", "2m", "10m", "30m", "1h", "2h"]`.
    #[serde(default = "default_schedule")]
    pub schedule: Vec<Dur>,
    /// Dead-letter events still failing this long after their first failure. Default `"24h"`.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Global retries per second at most (a recovering destination is not flooded). Default 1000.
    #[serde(default = "default_retry_rate")]
    pub rate: u64,
}

impl Default for GlobalRetry {
    fn default() -> Self {
        GlobalRetry {
            schedule: default_schedule(),
            max_age: default_max_age(),
            rate: default_retry_rate(),
        }
    }
}

/// `[sinks.NAME.classify]`: move HTTP statuses between the failure classes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Statuses to retry although non-recoverable by default (e.g. `[404]`).
    #[serde(default)]
    pub recoverable: Vec<u16>,
    /// Statuses to dead-letter although recoverable by default (e.g. `[501]`).
    #[serde(default)]
    pub non_recoverable: Vec<u16>,
}

/// `[sinks.NAME.breaker]`: the circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open it. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// While open, one probe request at most this far apart. Default `"5s"`.
    #[serde(default = "default_breaker_probe")]
    pub probe: Dur,
    /// The first probe this soon after it opens; the gap doubles after each failed probe
    /// up to `probe`, so a short outage pauses delivery briefly and a long one costs one
    /// request per `probe`. Default `"250ms"` (at most `probe`).
    #[serde(default = "default_breaker_probe_min")]
    pub probe_min: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_breaker_failures(),
            probe: default_breaker_probe(),
            probe_min: default_breaker_probe_min(),
        }
    }
}

fn default_local_attempts() -> u32 {
    3
}

fn default_schedule() -> Vec<Dur> {
    [30, 120, 600, 1800, 3600, 7200]
        .iter()
        .map(|s| Dur(Duration::from_secs(*s)))
        .collect()
}

fn default_max_age() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

fn default_retry_rate() -> u64 {
    1000
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_probe() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_breaker_probe_min() -> Dur {
    Dur(Duration::from_millis(250))
}

fn default_concurrency_max() -> usize {
    32
}

fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_batch_events() -> usize {
    500
}

fn default_batch_bytes() -> Size {
    Size(1 << 20)
}

fn default_batch_wait() -> Dur {
    Dur(Duration::from_millis(50))
}

fn default_backoff_min() -> Dur {
    Dur(Duration::from_millis(100))
}

fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(5))
}
