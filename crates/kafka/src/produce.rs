//! Producing to a Kafka topic that is not hifi's: the Kafka sink's destination
//! (`[sinks.X] type = "kafka"`), on any cluster, whichever engine hifi runs on.
//!
//! The producer is idempotent with `acks=all` (settings the sink cannot override); a
//! send answers only once every record of the batch has its delivery report, so the sink
//! commits its position only after the broker acknowledged every event.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use tracing::warn;

use crate::config::{client_config, PRODUCER_FIXED};
use crate::enqueue;

/// One record to produce.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
    pub timestamp_ms: Option<i64>,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// May work later (broker unreachable, leader moving, timeout). `outage`: no broker
    /// answered at all.
    Recoverable { reason: String, outage: bool },
    /// Never will for these records (too large, not authorized, invalid record).
    Refused { reason: String },
}

/// A producer for one external topic.
///
/// Kafka refuses a whole record *batch* larger than the topic's `max.message.bytes`, and
/// librdkafka does not split a refused batch: one oversized record would fail every
/// record batched with it, again and again. So the producer is created on first use,
/// fitted to the topic: records larger than its limit (less room for the batch framing)
/// are refused locally, one by one, and batches are kept below it.
pub struct TopicProducer {
    brokers: String,
    topic: String,
    client: BTreeMap<String, String>,
    producer: tokio::sync::OnceCell<FutureProducer>,
}

impl std::fmt::Debug for TopicProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Kafka's default `max.message.bytes`, assumed when the topic's cannot be read.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;
/// Room kept under the topic's limit for the batch and record framing.
const FRAMING_BYTES: usize = 512;

impl TopicProducer {
    /// A producer for `topic` on `brokers`; `client` are librdkafka settings (TLS, SASL,
    /// `compression.type`, ...), except the ones zero loss depends on. Checks the
    /// settings now; connects on the first send.
    pub fn new(
        brokers: &str,
        topic: &str,
        client: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let p = TopicProducer {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            client: client.clone(),
            producer: tokio::sync::OnceCell::new(),
        };
        let _check: FutureProducer = p
            .config(DEFAULT_MAX_MESSAGE_BYTES)
            .create()
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(p)
    }

    fn config(&self, max_message_bytes: usize) -> ClientConfig {
        let fit = max_message_bytes.saturating_sub(FRAMING_BYTES).max(1000);
        let (fit_text, batch_text) = (fit.to_string(), fit.min(1_000_000).to_string());
        let defaults = [
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
            ("message.max.bytes", fit_text.as_str()),
            ("batch.size", batch_text.as_str()),
        ];
        client_config(&self.brokers, &defaults, &self.client, PRODUCER_FIXED)
    }

    /// The topic's `max.message.bytes` (Kafka's default when it cannot be read).
    async fn max_message_bytes(&self) -> usize {
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            client_config(&self.brokers, &[], &self.client, &[]).create();
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let read = match &admin {
            Ok(a) => a
                .describe_configs(&[ResourceSpecifier::Topic(&self.topic)], &opts)
                .await
                .map_err(|e| e.to_string())
                .and_then(|mut r| r.pop().ok_or_else(|| "no answer".to_owned()))
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|res| {
                    res.entry_map()
                        .get("max.message.bytes")
                        .and_then(|e| e.value.as_deref()?.parse().ok())
                        .ok_or_else(|| "no max.message.bytes".to_owned())
                }),
            Err(e) => Err(e.to_string()),
        };
        read.unwrap_or_else(|e| {
            warn!(topic = %self.topic, %e, "cannot read the topic's max.message.bytes; assuming Kafka's default (1 MiB)");
            DEFAULT_MAX_MESSAGE_BYTES
        })
    }

    async fn producer(&self) -> Result<&FutureProducer, SendFailure> {
        self.producer
            .get_or_try_init(|| async {
                let max = self.max_message_bytes().await;
                self.config(max)
                    .create()
                    .map_err(|e| SendFailure::Recoverable {
                        reason: format!("cannot create the Kafka producer: {e}"),
                        outage: false,
                    })
            })
            .await
    }

    /// Connects now: creates the producer (fitted to the topic) and fetches the topic's
    /// metadata, so that the first send does not wait for either. Sends nothing.
    pub async fn connect(&self, timeout: Duration) -> Result<(), SendFailure> {
        let producer = self.producer().await?.clone();
        let topic = self.topic.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await;
        match fetched {
            Ok(Ok(md)) => match md.topics().iter().find_map(|t| t.error()) {
                None => Ok(()),
                Some(e) => Err(SendFailure::Refused {
                    reason: format!(
                        "topic {:?}: {}",
                        self.topic,
                        rdkafka::error::RDKafkaErrorCode::from(e)
                    ),
                }),
            },
            Ok(Err(e)) => Err(classify(&e)),
            Err(e) => Err(SendFailure::Recoverable {
                reason: format!("fetching the topic's metadata failed: {e}"),
                outage: false,
            }),
        }
    }

    /// Produces `records` and waits until each has its delivery report, at most
    /// `timeout`. Success means the broker acknowledged every record (`acks=all`).
    pub async fn send(
        &self,
        records: &[OutRecord<'_>],
        timeout: Duration,
    ) -> Result<(), SendFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let producer = self.producer().await?;
        let mut waiting = Vec::with_capacity(records.len());
        for r in records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (name, value) in r.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(*value),
                });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .payload(r.value)
                .headers(headers);
            if let Some(k) = r.key {
                rec = rec.key(k);
            }
            if let Some(t) = r.timestamp_ms {
                rec = rec.timestamp(t);
            }
            match enqueue(producer, rec, Some(deadline)).await {
                Ok(f) => waiting.push(f),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    return Err(SendFailure::Recoverable {
                        reason: "the producer's queue stayed full".into(),
                        outage: false,
                    })
                }
                Err(e) => return Err(classify(&e)),
            }
        }
        let mut failure: Option<SendFailure> = None;
        for f in waiting {
            let this = match tokio::time::timeout_at(deadline, f).await {
                Err(_) => {
                    return Err(SendFailure::Recoverable {
                        reason: format!("no acknowledgement from the cluster within {timeout:?}"),
                        outage: no_broker_up(producer, &self.topic),
                    })
                }
                Ok(Ok(Ok(_))) => continue,
                Ok(Ok(Err((e, _)))) => classify(&e),
                Ok(Err(_)) => SendFailure::Recoverable {
                    reason: "the producer dropped a delivery report".into(),
                    outage: false,
                },
            };
            // A refusal wins: retrying the batch would never succeed.
            if !matches!(failure, Some(SendFailure::Refused { .. })) {
                failure = Some(this);
            }
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// Whether the producer reaches no broker (a cluster outage).
fn no_broker_up(producer: &FutureProducer, topic: &str) -> bool {
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_millis(500))
        .is_err()
}

/// Refusals are errors no retry can mend; everything else is worth retrying.
fn classify(e: &KafkaError) -> SendFailure {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    if crate::errors::refused(e) {
        SendFailure::Refused {
            reason: format!("Kafka refused the record: {e}"),
        }
    } else {
        SendFailure::Recoverable {
            reason: format!("Kafka: {e}"),
            // Also a topic that does not exist (yet): the sink waits behind its breaker
            // until an operator creates it, instead of dead-lettering everything.
            outage: matches!(
                code,
                Some(
                    C::AllBrokersDown
                        | C::BrokerTransportFailure
                        | C::Resolve
                        | C::MessageTimedOut
                        | C::UnknownTopic
                        | C::UnknownTopicOrPartition
                )
            ),
        }
    }
}
