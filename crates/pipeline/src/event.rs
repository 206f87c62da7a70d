//! How an event travels on a topic: the producer's JSON unchanged as the record value,
//! its metadata as record headers.
//!
//! | header | meaning |
//! |---|---|
//! | `hifi-id` | event id (producer's, or a UUID v7 assigned at ingest) |
//! | `hifi-source` | CloudEvents `source` (for plain JSON: `hifi/<source node>`) |
//! | `hifi-type` | CloudEvents `type` (plain JSON: the source's `event_type`) |
//! | `hifi-time` | event time, epoch milliseconds (decimal) |
//! | `hifi-ingest-time` | when the source accepted it, epoch milliseconds |
//! | `hifi-format` | `json` (value is the event's data) or `ce` (value is a whole CloudEvent) |
//! | `hifi-origin` | `topic/partition/offset` in the first durable topic; absent on the records *of* that first topic, whose origin is their own position |
//!
//! The record key is the event id; the record timestamp is the ingest time (so retention
//! and `offset_for_time` follow arrival, while lag and buckets use event time).

use hifi_log::{Record, StoredRecord};

/// Header names.
pub mod header {
    /// Event id.
    pub const ID: &str = "hifi-id";
    /// CloudEvents source.
    pub const SOURCE: &str = "hifi-source";
    /// CloudEvents type.
    pub const TYPE: &str = "hifi-type";
    /// Event time (epoch ms).
    pub const TIME: &str = "hifi-time";
    /// Ingest time (epoch ms).
    pub const INGEST_TIME: &str = "hifi-ingest-time";
    /// `json` or `ce`.
    pub const FORMAT: &str = "hifi-format";
    /// `topic/partition/offset` of the first durable topic.
    pub const ORIGIN: &str = "hifi-origin";
}

/// How the value is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// The value is the event's data (plain JSON).
    Json,
    /// The value is a complete structured-mode CloudEvent.
    CloudEvent,
}

impl EventFormat {
    /// The `hifi-format` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::Json => "json",
            EventFormat::CloudEvent => "ce",
        }
    }
}

pub use hifi_ledger::Origin;

/// A stored event's metadata, read from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// Event id.
    pub id: String,
    /// CloudEvents source.
    pub source: String,
    /// CloudEvents type.
    pub event_type: String,
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// Value shape.
    pub format: EventFormat,
    /// Origin in the first durable topic.
    pub origin: Origin,
}

fn header_str<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

impl EventMeta {
    /// Reads the metadata of a record read from `topic`/`partition`. Records written by
    /// something other than hifi get defaults (id = origin, time = record timestamp).
    pub fn of(topic: &str, partition: u32, r: &StoredRecord) -> EventMeta {
        let rec = &r.record;
        let origin = header_str(rec, header::ORIGIN)
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| Origin {
                topic: topic.to_owned(),
                partition,
                offset: r.offset,
            });
        EventMeta {
            id: header_str(rec, header::ID).map_or_else(|| origin.to_string(), str::to_owned),
            source: header_str(rec, header::SOURCE).unwrap_or("hifi").to_owned(),
            event_type: header_str(rec, header::TYPE)
                .unwrap_or("hifi.event")
                .to_owned(),
            time_ms: header_str(rec, header::TIME)
                .and_then(|t| t.parse().ok())
                .unwrap_or(rec.timestamp_ms),
            format: match header_str(rec, header::FORMAT) {
                Some("ce") => EventFormat::CloudEvent,
                _ => EventFormat::Json,
            },
            origin,
        }
    }
}

/// Epoch milliseconds as RFC 3339 with millisecond precision (`2026-11-22T03:04:05.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Appends one event as a CloudEvents JSON object to `out` (the sink's body format):
/// a plain JSON event becomes `{"specversion":"1.0","id",...,"data":<value>}`; a stored
/// CloudEvent is passed through unchanged.
pub fn write_cloudevent(out: &mut Vec<u8>, meta: &EventMeta, value: &[u8]) {
    match meta.format {
        EventFormat::CloudEvent => out.extend_from_slice(value),
        EventFormat::Json => {
            out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
            push_json_str(out, &meta.id);
            out.extend_from_slice(b",\"source\":");
            push_json_str(out, &meta.source);
            out.extend_from_slice(b",\"type\":");
            push_json_str(out, &meta.event_type);
            out.extend_from_slice(b",\"time\":");
            push_json_str(out, &rfc3339_ms(meta.time_ms));
            out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
            out.extend_from_slice(value);
            out.push(b'}');
        }
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a correctly escaped string; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_becomes_a_cloudevent() {
        let meta = EventMeta {
            id: "a\"b".into(),
            source: "hifi/api".into(),
            event_type: "t".into(),
            time_ms: 0,
            format: EventFormat::Json,
            origin: Origin {
                topic: "e".into(),
                partition: 0,
                offset: 0,
            },
        };
        let mut out = Vec::new();
        write_cloudevent(&mut out, &meta, br#"{"x":1}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["x"], 1);
    }
}
