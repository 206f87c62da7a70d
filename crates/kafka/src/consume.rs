//! Consuming Kafka topics that are not hifi's: the Kafka source's input
//! (`[sources.X] type = "kafka"`), on any cluster, whichever engine hifi runs on.
//!
//! A consumer group member with automatic commits off: positions move only when the
//! source says what it has made durable ([`TopicConsumer::commit`]).

use std::collections::BTreeMap;
use std::time::Duration;

use hifi_log::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{client_config, CONSUMER_FIXED};

/// One record read.
#[derive(Debug, Clone)]
pub struct InRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), epoch ms.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A group member reading external topics.
pub struct TopicConsumer {
    consumer: StreamConsumer,
}

impl std::fmt::Debug for TopicConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicConsumer").finish_non_exhaustive()
    }
}

impl TopicConsumer {
    /// Joins `group` on `brokers` and subscribes to `topics`. `client` are librdkafka
    /// settings (TLS, SASL, `auto.offset.reset` — default `earliest`: a new group starts
    /// at the topics' beginning), except the commit settings.
    pub fn new(
        brokers: &str,
        topics: &[String],
        group: &str,
        client: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let defaults = [
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "100"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ];
        let consumer: StreamConsumer = client_config(brokers, &defaults, client, CONSUMER_FIXED)
            .create()
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
        Ok(TopicConsumer { consumer })
    }

    /// Up to `max` records: waits for the first as long as it takes, then takes what
    /// arrives within `linger`. An error is a consumer error (the caller waits and
    /// reads again: the consumer keeps its position).
    pub async fn next_batch(&self, max: usize, linger: Duration) -> Result<Vec<InRecord>, String> {
        let first = self.consumer.recv().await.map_err(|e| e.to_string())?;
        let mut out = vec![owned(&first)];
        drop(first);
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => out.push(owned(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(%e, "Kafka source: read error; keeping what was read");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Commits `next` positions, (topic, partition, next offset to read).
    pub fn commit(&self, next: &[(String, i32, i64)]) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in next {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| e.to_string())
    }
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> InRecord {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    InRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
    }
}
