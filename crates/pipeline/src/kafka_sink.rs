//! The Kafka sink's request: a batch of events produced to an external topic, one record
//! per event (`[sinks.X] type = "kafka"`). Everything else — batching, retries, dead
//! letters, the breaker, commits after the fates are durable — is the sink's
//! ([`crate::sink`]), as for HTTP.

use std::time::Duration;

use hifi_kafka::{OutRecord, SendFailure, TopicProducer};

use crate::ce_binary;
use crate::config::{SinkConfig, SinkFormat};
use crate::delivery::Class;

/// One event's record, owned until the send returns.
struct Prepared {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Produces one record per event body (a stored CloudEvent as JSON) and classifies the
/// outcome like an HTTP answer: refused records are dead-lettered after the sink splits
/// the batch to isolate them; anything else is retried.
pub(crate) async fn send<'a>(
    producer: &TopicProducer,
    cfg: &SinkConfig,
    bodies: impl Iterator<Item = &'a [u8]>,
    timeout: Duration,
) -> Class {
    let mut prepared = Vec::new();
    for body in bodies {
        match prepare(cfg, body) {
            Ok(p) => prepared.push(p),
            Err(reason) => return Class::NonRecoverable { status: 0, reason },
        }
    }
    let headers: Vec<Vec<(&str, &[u8])>> = prepared
        .iter()
        .map(|p| {
            p.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect()
        })
        .collect();
    let records: Vec<OutRecord<'_>> = prepared
        .iter()
        .zip(&headers)
        .map(|(p, h)| OutRecord {
            key: p.key.as_deref(),
            value: &p.value,
            headers: h,
            timestamp_ms: None,
        })
        .collect();
    match producer.send(&records, timeout).await {
        Ok(()) => Class::Success,
        Err(SendFailure::Recoverable { reason, outage }) => Class::Recoverable {
            reason,
            retry_after: None,
            transport: outage,
        },
        Err(SendFailure::Refused { reason }) => Class::NonRecoverable { status: 0, reason },
    }
}

/// The record of one event in the sink's format, with its key.
fn prepare(cfg: &SinkConfig, body: &[u8]) -> Result<Prepared, String> {
    let key = match cfg.key.as_deref() {
        None | Some("") => None,
        Some(pointer) => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| format!("the stored event is not JSON ({e})"))?;
            match v.pointer(pointer) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone().into_bytes()),
                Some(other) => Some(other.to_string().into_bytes()),
            }
        }
    };
    Ok(match cfg.format() {
        SinkFormat::Raw => {
            let m = ce_binary::from_structured(body)?;
            let headers = m
                .headers
                .into_iter()
                .filter(|(n, _)| !n.starts_with("ce-"))
                .map(|(n, v)| (n, v.into_bytes()))
                .chain(
                    m.content_type
                        .map(|ct| ("content-type".to_owned(), ct.into_bytes())),
                )
                .collect();
            Prepared {
                key,
                value: m.body.to_vec(),
                headers,
            }
        }
        // Structured (checked at load: a Kafka sink is structured or raw).
        _ => Prepared {
            key,
            value: body.to_vec(),
            headers: vec![(
                "content-type".to_owned(),
                b"application/cloudevents+json".to_vec(),
            )],
        },
    })
}
