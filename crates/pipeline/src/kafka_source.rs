//! A Kafka source (`[sources.X] type = "kafka"`): records of the user's topics become
//! events in the source's topic, through the same path as HTTP ingest
//! ([`HttpSource::store_within`]: validation, de-duplication, the ledger's `passed`
//! outcomes). The consumer group's position moves only after the events are durable
//! (at-least-once), and a record read again after a crash carries the same event id —
//! by default `<topic>/<partition>/<offset>` — so the de-duplication window drops it.
//!
//! The ledger names each event by where it was first held — `kafka:<topic>/<partition>/
//! <offset>` of the user's cluster ([`origin`]) — so `hifi loss` and
//! `GET /v1/events/{origin}/trace` speak of the record the user produced. (A record
//! holding an array of events gives several events one place; those are named by their
//! positions in the source's topic instead.)
//!
//! A record that is not a valid event (not JSON, an event time outside the window, too
//! deep) never blocks its partition: it goes to the source's dead letters
//! (`__dlq.<source>`, with the reason), counts in `hifi_source_dead_lettered_events`
//! and is dead-lettered at the source in the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hifi_kafka::{InRecord, TopicConsumer};
use hifi_ledger::Origin;
use hifi_log::{Bytes, Header, Record};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::SourceConfig;
use crate::consumer::{retry_until_ok, sleep_or_cancel};
use crate::event::Text;
use crate::parse::{parse_body, BodyFormat, ParsedEvent};
use crate::retry::retry_header;
use crate::source::HttpSource;

/// Records read per batch at most.
const BATCH_MAX: usize = 1000;
/// How long a batch keeps filling after its first record.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// The consumer group a Kafka source commits in.
fn group(name: &str, cfg: &SourceConfig) -> String {
    cfg.group.clone().unwrap_or_else(|| format!("hifi.{name}"))
}

/// Joins the source's consumer group (nothing is read until [`run`]).
pub fn connect(name: &str, cfg: &SourceConfig) -> Result<TopicConsumer, String> {
    TopicConsumer::new(
        cfg.brokers.as_deref().unwrap_or_default(),
        &cfg.topics,
        &group(name, cfg),
        &cfg.client,
    )
}

/// Reads, stores and commits until `stop`.
pub async fn run(source: Arc<HttpSource>, consumer: TopicConsumer, stop: CancellationToken) {
    info!(source = %source.name, "reading Kafka topics");
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return,
            b = consumer.next_batch(BATCH_MAX, BATCH_LINGER) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(source = %source.name, %e, "cannot read the Kafka topics; reading again in 1 s");
                if !sleep_or_cancel(&stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        let (events, dead) = events_of(&source, &batch);
        if !events.is_empty() {
            let store = || async {
                source
                    .store_within(events.clone(), None, None)
                    .await
                    .map(|_| ())
            };
            if retry_until_ok(&stop, &source.name, "store the records read", store)
                .await
                .is_none()
            {
                return; // not durable: not committed, read again after the restart
            }
        }
        if !dead.is_empty() {
            let topic = crate::retry::dlq_topic(&source.name);
            let (records, places): (Vec<Record>, Vec<_>) = dead.into_iter().unzip();
            let dlq = || source.log().append(&topic, 0, records.clone());
            if retry_until_ok(&stop, &source.name, "store dead letters", dlq)
                .await
                .is_none()
            {
                return;
            }
            source.dead_lettered(&places);
            // Durable before the position moves past them, as every node's outcomes.
            let flush = || source.flush_ledger();
            if retry_until_ok(&stop, &source.name, "record dead letters", flush)
                .await
                .is_none()
            {
                return;
            }
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in &batch {
            let e = next.entry((r.topic.clone(), r.partition)).or_default();
            *e = (*e).max(r.offset + 1);
        }
        let next: Vec<_> = next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        if let Err(e) = consumer.commit(&next) {
            // Not lost: the records are stored; they are read again and de-duplicated.
            warn!(source = %source.name, %e, "cannot commit the Kafka positions");
        }
    }
}

/// Where a record was first held, as the ledger names it.
fn origin(r: &InRecord) -> Origin {
    Origin {
        topic: format!("kafka:{}", r.topic),
        partition: r.partition as u32,
        offset: r.offset as u64,
    }
}

/// A dead letter and its place in the ledger (origin, event time ms).
type DeadLetter = (Record, (Origin, i64));

/// The valid events of a batch (ids, event times and origins filled in from the
/// records), and the dead letters of the rest.
fn events_of(source: &HttpSource, batch: &[InRecord]) -> (Vec<ParsedEvent>, Vec<DeadLetter>) {
    let mut events = Vec::with_capacity(batch.len());
    let mut from = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        let cloud = r.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v.starts_with(b"application/cloudevents+json")
        });
        let format = if cloud {
            BodyFormat::CloudEvent
        } else {
            BodyFormat::Json
        };
        match parse_body(&r.value, format, &source.parse) {
            Ok(parsed) => {
                let many = parsed.len() > 1;
                for (j, mut e) in parsed.into_iter().enumerate() {
                    if e.id.is_none() {
                        let id = if many {
                            format!("{}/{}/{}/{j}", r.topic, r.partition, r.offset)
                        } else {
                            format!("{}/{}/{}", r.topic, r.partition, r.offset)
                        };
                        e.id = Some(Text::from(id));
                    }
                    if e.time_ms.is_none() {
                        e.time_ms = r.timestamp_ms;
                    }
                    if !many {
                        e.origin = Some(origin(r));
                    }
                    events.push(e);
                    from.push(i);
                }
            }
            Err(e) => dead.push(dead_letter(r, &parse_reason(&e))),
        }
    }
    // Checked as HTTP ingest checks them; a refused event is dead-lettered and the
    // check runs again on the rest (times may have been clamped, which is final).
    let now_ms = crate::now_ms();
    for _ in 0..3 {
        match source.check_events(&mut events, now_ms) {
            Ok(()) => break,
            Err(errors) => {
                let refused: BTreeMap<usize, String> = errors
                    .into_iter()
                    .filter_map(|e| Some((e.index?, e.reason)))
                    .collect();
                let mut kept = Vec::with_capacity(events.len());
                let mut kept_from = Vec::with_capacity(events.len());
                for (k, (e, i)) in events.into_iter().zip(from).enumerate() {
                    match refused.get(&k) {
                        Some(reason) => dead.push(dead_letter(&batch[i], reason)),
                        None => {
                            kept.push(e);
                            kept_from.push(i);
                        }
                    }
                }
                events = kept;
                from = kept_from;
            }
        }
    }
    (events, dead)
}

/// Why a record's value is not an event.
fn parse_reason(e: &crate::parse::ParseError) -> String {
    match e {
        crate::parse::ParseError::Invalid(errors) => errors
            .iter()
            .map(|e| e.reason.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        crate::parse::ParseError::TooManyEvents { count, max } => {
            format!("{count} events in one record; at most {max} (max_events_per_request)")
        }
    }
}

/// A record that is not a valid event, kept with where it came from and why.
fn dead_letter(r: &InRecord, reason: &str) -> DeadLetter {
    let now = crate::now_ms();
    let at = crate::event::rfc3339_ms(now);
    let reason = crate::retry::DlqReason {
        class: "invalid".into(),
        status: 0,
        body: reason.to_owned(),
        attempts: 0,
        first_attempt: at.clone(),
        last_attempt: at,
    };
    let reason = serde_json::to_string(&reason).unwrap_or_default();
    let mut headers = vec![
        Header {
            name: crate::event::header::ID.into(),
            value: format!("{}/{}/{}", r.topic, r.partition, r.offset).into(),
        },
        Header {
            name: crate::event::header::ORIGIN.into(),
            value: origin(r).to_string().into(),
        },
        Header {
            name: retry_header::DLQ_REASON.into(),
            value: reason.into(),
        },
    ];
    headers.extend(r.headers.iter().map(|(k, v)| Header {
        name: format!("kafka-{k}").into(),
        value: Bytes::from(v.clone()),
    }));
    let record = Record {
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp_ms: r.timestamp_ms.unwrap_or(now),
    };
    // In the ledger at the time it was kept aside: its own time may be what was wrong
    // with it (years away).
    (record, (origin(r), now))
}
