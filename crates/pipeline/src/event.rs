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
//! | `hifi-traceparent`, `hifi-tracestate` | W3C trace context of the ingest request (plain JSON events; a CloudEvent keeps its own extension attributes) |
//! | `hifi-origin` | `topic/partition/offset` in the first durable topic; absent on the records *of* that first topic, whose origin is their own position |
//!
//! The record key is the event id; the record timestamp is the ingest time (so retention
//! and `offset_for_time` follow arrival, while lag and buckets use event time).

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;
use hifi_log::StoredRecord;

/// UTF-8 text held as shared bytes: a slice of the request body or of a record read
/// back (no copy), a buffer of its own otherwise. UTF-8 is checked once, when made.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(ByteString);

impl Text {
    /// A string read from `body` by serde: borrowed strings are sliced out of `body`.
    pub fn of(body: &Bytes, s: Cow<'_, str>) -> Text {
        match s {
            Cow::Borrowed(b) => Text::from_utf8(body.slice_ref(b.as_bytes()))
                .unwrap_or_else(|| Text::from(b.to_owned())),
            Cow::Owned(o) => Text::from(o),
        }
    }

    /// A part of `text` (no copy, no check).
    pub fn slice_of(text: &ByteString, part: &str) -> Text {
        Text(text.slice_ref(part))
    }

    /// Bytes that are UTF-8 (checked), shared.
    pub fn from_utf8(b: Bytes) -> Option<Text> {
        ByteString::try_from(b).ok().map(Text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text(ByteString::from_static(s))
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(ByteString::from(s))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

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
    /// W3C `traceparent` of the ingest request.
    pub const TRACEPARENT: &str = "hifi-traceparent";
    /// W3C `tracestate` of the ingest request.
    pub const TRACESTATE: &str = "hifi-tracestate";
    /// `topic/partition/offset` of the first durable topic.
    pub const ORIGIN: &str = "hifi-origin";
    /// On a stage's output re-driven from its dead letters: a reader's publish cut
    /// ([`crate::versions::Cut`]) never passes over it, whatever its origin.
    pub const REDRIVEN: &str = "hifi-redriven";
    /// On a record a sink delivers again after a publish with `--redeliver-from` (one it
    /// had delivered from the version before): its ledger outcome is `redelivered` too.
    /// Set when the sink reads it; kept through its retry topics.
    pub const REDELIVERY: &str = "hifi-redelivery";
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
    pub id: Text,
    /// CloudEvents source.
    pub source: Text,
    /// CloudEvents type.
    pub event_type: Text,
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// Value shape.
    pub format: EventFormat,
    /// Origin in the first durable topic.
    pub origin: Origin,
    /// W3C trace context of the ingest request (plain JSON events).
    pub trace: Option<Trace>,
}

/// A W3C trace context (`traceparent`, `tracestate`): the CloudEvents
/// distributed-tracing extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// `version-traceid-parentid-flags`.
    pub traceparent: Text,
    /// Vendor state, passed on as given.
    pub tracestate: Option<Text>,
}

impl Trace {
    /// The trace context of a request's headers; `None` when `traceparent` is missing
    /// or malformed (W3C: an invalid one is ignored, as if absent).
    pub fn from_headers(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Trace> {
        let tp = std::str::from_utf8(traceparent?).ok()?.trim();
        let parts: Vec<&str> = tp.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let well_formed = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && parts[2].bytes().any(|b| b != b'0')
            && hex(parts[3], 2)
            && (parts.len() == 4 || parts[0] != "00");
        if !well_formed {
            return None;
        }
        let tracestate = tracestate
            .and_then(|t| std::str::from_utf8(t).ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .map(|t| Text::from(t.to_owned()));
        Some(Trace {
            traceparent: Text::from(tp.to_ascii_lowercase()),
            tracestate,
        })
    }
}

impl EventMeta {
    /// Reads the metadata of a record read from `topic`/`partition`. Records written by
    /// something other than hifi get defaults (id = origin, time = record timestamp).
    pub fn of(topic: &str, partition: u32, r: &StoredRecord) -> EventMeta {
        let rec = &r.record;
        // One pass over the headers; the first of each name counts.
        let [mut origin, mut id, mut source, mut event_type, mut time, mut format, mut tp, mut ts] =
            [None; 8];
        for h in &rec.headers {
            let slot = match h.name.as_ref() {
                header::ORIGIN => &mut origin,
                header::ID => &mut id,
                header::SOURCE => &mut source,
                header::TYPE => &mut event_type,
                header::TIME => &mut time,
                header::FORMAT => &mut format,
                header::TRACEPARENT => &mut tp,
                header::TRACESTATE => &mut ts,
                _ => continue,
            };
            slot.get_or_insert(&h.value);
        }
        // Shared with the record (no copy).
        let as_text = |v: Option<&Bytes>| v.and_then(|v| Text::from_utf8(v.clone()));
        let origin = as_str(origin)
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| Origin {
                topic: topic.to_owned(),
                partition,
                offset: r.offset,
            });
        EventMeta {
            id: as_text(id).unwrap_or_else(|| Text::from(origin.to_string())),
            source: as_text(source).unwrap_or_else(|| Text::from("hifi")),
            event_type: as_text(event_type).unwrap_or_else(|| Text::from("hifi.event")),
            time_ms: as_str(time)
                .and_then(|t| t.parse().ok())
                .unwrap_or(rec.timestamp_ms),
            format: match as_str(format) {
                Some("ce") => EventFormat::CloudEvent,
                _ => EventFormat::Json,
            },
            origin,
            trace: as_text(tp).map(|traceparent| Trace {
                traceparent,
                tracestate: as_text(ts),
            }),
        }
    }
}

/// A header value as text, if it is UTF-8.
fn as_str(v: Option<&Bytes>) -> Option<&str> {
    v.and_then(|v| std::str::from_utf8(v).ok())
}

/// Epoch milliseconds as RFC 3339 with millisecond precision (`2026-11-22T03:04:05.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// One event as a CloudEvents JSON object (the sink's body format): a plain JSON event
/// becomes `{"specversion":"1.0","id",...,"data":<value>}`; a stored CloudEvent is the
/// value itself, shared rather than copied.
pub fn cloudevent_body(meta: &EventMeta, value: &Bytes) -> Bytes {
    match meta.format {
        EventFormat::CloudEvent => value.clone(),
        EventFormat::Json => {
            let mut out = Vec::with_capacity(value.len() + 200);
            out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
            push_json_str(&mut out, &meta.id);
            out.extend_from_slice(b",\"source\":");
            push_json_str(&mut out, &meta.source);
            out.extend_from_slice(b",\"type\":");
            push_json_str(&mut out, &meta.event_type);
            out.extend_from_slice(b",\"time\":");
            push_json_str(&mut out, &rfc3339_ms(meta.time_ms));
            if let Some(t) = &meta.trace {
                out.extend_from_slice(b",\"traceparent\":");
                push_json_str(&mut out, &t.traceparent);
                if let Some(state) = &t.tracestate {
                    out.extend_from_slice(b",\"tracestate\":");
                    push_json_str(&mut out, state);
                }
            }
            out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
            out.extend_from_slice(value);
            out.push(b'}');
            Bytes::from(out)
        }
    }
}

/// A structured CloudEvent with an extension attribute added first (`name` must be a
/// valid attribute name; an attribute of that name already there comes later and wins
/// with most parsers). A body that is not a JSON object is returned as it is.
pub fn with_extension(ce: &Bytes, name: &str, value: &str) -> Bytes {
    let Some(rest) = ce.strip_prefix(b"{") else {
        return ce.clone();
    };
    let mut out = Vec::with_capacity(ce.len() + name.len() + value.len() + 8);
    out.push(b'{');
    push_json_str(&mut out, name);
    out.push(b':');
    push_json_str(&mut out, value);
    if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a correctly escaped string; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hifi_log::Record;

    #[test]
    fn metadata_comes_from_the_first_header_of_each_name_or_defaults() {
        let stored = |record: Record| StoredRecord { offset: 42, record };
        let full = Record::new("{}", 1_000)
            .with_header("other", "x")
            .with_header(header::ID, "id-1")
            .with_header(header::ID, "id-2")
            .with_header(header::SOURCE, "src")
            .with_header(header::TYPE, "t")
            .with_header(header::TIME, "1234")
            .with_header(header::FORMAT, "ce")
            .with_header(header::ORIGIN, "raw/3/7");
        let m = EventMeta::of("events", 1, &stored(full));
        assert_eq!(
            (m.id.as_str(), m.source.as_str(), m.event_type.as_str()),
            ("id-1", "src", "t")
        );
        assert_eq!((m.time_ms, m.format), (1234, EventFormat::CloudEvent));
        assert_eq!(m.origin.to_string(), "raw/3/7");
        // A record hifi did not write: its place is its origin and its id.
        let m = EventMeta::of("events", 1, &stored(Record::new("{}", 1_000)));
        assert_eq!(m.origin.to_string(), "events/1/42");
        assert_eq!(
            (m.id.as_str(), m.source.as_str(), m.event_type.as_str()),
            ("events/1/42", "hifi", "hifi.event")
        );
        assert_eq!((m.time_ms, m.format), (1_000, EventFormat::Json));
        // Values that are not text, or not a time, count as missing.
        let bad = Record::new("{}", 1_000)
            .with_header(header::ID, vec![0xff, 0xfe])
            .with_header(header::TIME, "soon");
        let m = EventMeta::of("events", 1, &stored(bad));
        assert_eq!((m.id.as_str(), m.time_ms), ("events/1/42", 1_000));
    }

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
            trace: None,
        };
        let out = cloudevent_body(&meta, &Bytes::from_static(br#"{"x":1}"#));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["x"], 1);
        assert!(v.get("traceparent").is_none());
    }

    #[test]
    fn a_trace_context_is_kept_only_when_well_formed() {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let t = Trace::from_headers(Some(tp), Some(b"congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        for bad in [
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"zz",
        ] {
            assert_eq!(Trace::from_headers(Some(bad), None), None);
        }
        let stored = StoredRecord {
            offset: 0,
            record: hifi_log::Record::new("{}", 1)
                .with_header(header::FORMAT, "json")
                .with_header(header::TRACEPARENT, &tp[..]),
        };
        let meta = EventMeta::of("e", 0, &stored);
        let v: serde_json::Value =
            serde_json::from_slice(&cloudevent_body(&meta, &Bytes::from_static(b"1"))).unwrap();
        assert_eq!(v["traceparent"], std::str::from_utf8(tp).unwrap());
        assert!(v.get("tracestate").is_none());
    }

    #[test]
    fn an_extension_goes_first_into_any_object() {
        let v: serde_json::Value = serde_json::from_slice(&with_extension(
            &Bytes::from_static(br#"{"id":"a","data":1}"#),
            "hifiversion",
            "3f2a",
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"hifiversion": "3f2a", "id": "a", "data": 1})
        );
        let empty = with_extension(&Bytes::from_static(b"{ }"), "x", "y");
        assert_eq!(&empty[..], br#"{"x":"y" }"#);
        assert_eq!(
            &with_extension(&Bytes::from_static(b"[1]"), "x", "y")[..],
            b"[1]"
        );
    }
}
