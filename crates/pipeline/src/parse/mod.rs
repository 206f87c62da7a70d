//! Parsing and validating ingest request bodies into events.
//!
//! Accepted bodies (`Content-Type`):
//! - `application/json` — one JSON object (one event) or an array of objects;
//! - `application/x-ndjson` — one JSON object per line (blank lines ignored);
//! - `application/cloudevents+json` — one structured-mode CloudEvent;
//! - `application/cloudevents-batch+json` — an array of CloudEvents.
//!
//! Validation is all-or-nothing: every event is checked and every problem reported with
//! its index, so a producer can fix them all at once. The producer's bytes are kept
//! unchanged as the record value.

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{EventFormat, Text};

mod cloudevent;
mod plain;
#[cfg(test)]
mod tests;

use cloudevent::{cloudevent, kind, parse_cloudevent};
use plain::{parse_plain, plain_event, Plain, Pointed};

/// A body format, from the request's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON object or an array of them.
    Json,
    /// Newline-delimited JSON objects.
    Ndjson,
    /// One structured CloudEvent.
    CloudEvent,
    /// A JSON array of structured CloudEvents.
    CloudEventBatch,
}

/// Content types that [`BodyFormat::from_content_type`] understands, for messages.
pub const ACCEPTED_CONTENT_TYPES: &str = "application/json, application/x-ndjson, \
    application/cloudevents+json, application/cloudevents-batch+json";

impl BodyFormat {
    /// The format for a `Content-Type` header value (parameters such as `charset` are
    /// ignored); `None` when unsupported.
    pub fn from_content_type(ct: &str) -> Option<BodyFormat> {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(BodyFormat::Ndjson)
            }
            "application/cloudevents+json" => Some(BodyFormat::CloudEvent),
            "application/cloudevents-batch+json" => Some(BodyFormat::CloudEventBatch),
            _ => None,
        }
    }
}

/// How a source reads metadata from plain JSON events.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// JSON pointer to the event time (required when set).
    pub event_time: Option<String>,
    /// JSON pointer to the event id.
    pub id_field: Option<String>,
    /// CloudEvents `source` given to plain JSON events.
    pub default_source: String,
    /// CloudEvents `type` given to plain JSON events.
    pub event_type: String,
    /// Most events in one request.
    pub max_events: usize,
}

/// One valid event of a request. Its text and value are slices of the request body
/// wherever possible (an allocation per field per event showed in profiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// Event id (`None`: hifi assigns one).
    pub id: Option<Text>,
    /// CloudEvents source.
    pub source: Text,
    /// CloudEvents type.
    pub event_type: Text,
    /// Event time, epoch ms (`None`: the ingest time).
    pub time_ms: Option<i64>,
    /// Value shape.
    pub format: EventFormat,
    /// The producer's JSON, byte for byte.
    pub value: Bytes,
    /// Where the event was first held when that is not the source's topic (a Kafka
    /// source's record: `kafka:<topic>/<partition>/<offset>`), so the ledger names it
    /// by that place; `None`: its position in the source's topic.
    pub origin: Option<hifi_ledger::Origin>,
}

/// A problem with one event of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventError {
    /// Position of the event in the request (array index or NDJSON line, from 0);
    /// `None` for a problem with the body as a whole.
    pub index: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Some events are invalid (each with its reason); nothing may be written.
    Invalid(Vec<EventError>),
    /// More events than `max_events`.
    TooManyEvents { count: usize, max: usize },
}

/// Parses and validates a request body.
pub fn parse_body(
    body: &Bytes,
    format: BodyFormat,
    opts: &ParseOptions,
) -> Result<Vec<ParsedEvent>, ParseError> {
    // A UTF-8 body (checked once, here) is read as text: serde_json then checks no string
    // again and event attributes are sliced out of it without another check. Any other
    // body is read as bytes, where each event's strings are checked (and reported) alone.
    match ByteString::try_from(body.clone()) {
        Ok(text) => parse_items(
            TextInput {
                body: &text,
                part: &text,
            },
            format,
            opts,
        ),
        Err(_) => parse_items(RawInput { body, part: body }, format, opts),
    }
}

fn parse_items<'a, I: Input<'a>>(
    body: I,
    format: BodyFormat,
    opts: &ParseOptions,
) -> Result<Vec<ParsedEvent>, ParseError> {
    let plain = Plain::new(opts);
    let parsed = match format {
        BodyFormat::Json => one_pass(body, opts, Pointed(&plain.pointers), |item, [id, time]| {
            plain_event(item, id.as_ref(), time.as_ref(), &plain)
        }),
        BodyFormat::CloudEventBatch => one_pass(body, opts, PhantomData, cloudevent),
        BodyFormat::Ndjson | BodyFormat::CloudEvent => None,
    };
    match parsed {
        Some(events) => events,
        None => parse_each(body, format, &plain),
    }
}

/// Reads a JSON array body in one pass: each element is deserialized with `seed` and
/// handed to `event` with its bytes, the array's brackets and commas are checked between
/// them. `None` when the body is not an array of 1 to `max_events` objects that each
/// deserialize with `seed`: [`parse_each`] then finds and reports what is wrong (reading the
/// array first and each element on its own doubled the parse's cost).
fn one_pass<'a, I: Input<'a>, S: DeserializeSeed<'a> + Copy>(
    body: I,
    opts: &ParseOptions,
    seed: S,
    event: impl Fn(I, S::Value) -> Result<ParsedEvent, String>,
) -> Option<Result<Vec<ParsedEvent>, ParseError>> {
    let bytes = body.bytes();
    let mut at = skip_whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    let mut events = Vec::new();
    let mut errors = Vec::new();
    loop {
        at = skip_whitespace(bytes, at + 1);
        if bytes.get(at) != Some(&b'{') || events.len() + errors.len() == opts.max_events {
            return None;
        }
        let (value, item, end) = body.element(at, seed)?;
        match event(item, value) {
            Ok(e) => events.push(e),
            Err(reason) => errors.push(EventError {
                index: Some(events.len() + errors.len()),
                reason,
            }),
        }
        at = skip_whitespace(bytes, end);
        match bytes.get(at) {
            Some(b',') => continue,
            Some(b']') if skip_whitespace(bytes, at + 1) == bytes.len() => break,
            _ => return None,
        }
    }
    Some(if errors.is_empty() {
        Ok(events)
    } else {
        Err(ParseError::Invalid(errors))
    })
}

/// The position of the first byte at or after `at` that is not JSON whitespace.
fn skip_whitespace(bytes: &[u8], at: usize) -> usize {
    at + bytes
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// Reads a body's events one by one, reporting each problem with the event's index.
fn parse_each<'a, I: Input<'a>>(
    body: I,
    format: BodyFormat,
    plain: &Plain<'_>,
) -> Result<Vec<ParsedEvent>, ParseError> {
    let opts = plain.opts;
    let items: Vec<I> = match format {
        BodyFormat::Ndjson => body.lines(),
        BodyFormat::Json | BodyFormat::CloudEventBatch => {
            let trimmed = body.trimmed();
            if trimmed.bytes().first() == Some(&b'[') {
                match trimmed.array() {
                    Ok(items) => items,
                    Err(e) => return Err(whole(format!("body is not a valid JSON array: {e}"))),
                }
            } else if format == BodyFormat::CloudEventBatch {
                return Err(whole("a CloudEvents batch must be a JSON array".into()));
            } else {
                vec![trimmed]
            }
        }
        BodyFormat::CloudEvent => vec![body.trimmed()],
    };
    if items.is_empty() {
        return Err(whole("the body holds no events".into()));
    }
    if items.len() > opts.max_events {
        return Err(ParseError::TooManyEvents {
            count: items.len(),
            max: opts.max_events,
        });
    }
    let cloud = matches!(format, BodyFormat::CloudEvent | BodyFormat::CloudEventBatch);
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let parsed = if cloud {
            parse_cloudevent(item)
        } else {
            parse_plain(item, plain)
        };
        match parsed {
            Ok(e) => events.push(e),
            Err(reason) => errors.push(EventError {
                index: Some(i),
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(ParseError::Invalid(errors))
    }
}

/// A part of a request body (the whole body, or one event of it), as serde_json reads
/// it: [`TextInput`] or [`RawInput`].
trait Input<'a>: Copy {
    /// Its bytes.
    fn bytes(self) -> &'a [u8];
    /// Without leading and trailing ASCII whitespace.
    fn trimmed(self) -> Self;
    /// Its non-blank lines, trimmed.
    fn lines(self) -> Vec<Self>;
    /// The elements of a JSON array.
    fn array(self) -> serde_json::Result<Vec<Self>>;
    /// Deserialized with `seed` (strings borrowed where they have no escapes).
    fn json_with<S: DeserializeSeed<'a>>(self, seed: S) -> serde_json::Result<S::Value>;
    /// Deserialized as `T`.
    fn json<T: Deserialize<'a>>(self) -> serde_json::Result<T> {
        self.json_with(PhantomData)
    }
    /// A string read from it by serde, as text sharing the body's buffer when borrowed.
    fn text(self, s: Cow<'a, str>) -> Text;
    /// Its bytes, sharing the body's buffer.
    fn shared(self) -> Bytes;
    /// The JSON value starting at byte `at`, deserialized with `seed`, with its part and
    /// the position just after it; `None` if it is not valid JSON that `seed` takes.
    fn element<S: DeserializeSeed<'a>>(self, at: usize, seed: S)
        -> Option<(S::Value, Self, usize)>;
}

/// Part of a body that is UTF-8.
#[derive(Clone, Copy)]
struct TextInput<'a> {
    body: &'a ByteString,
    part: &'a str,
}

/// Part of a body that is not UTF-8 as a whole.
#[derive(Clone, Copy)]
struct RawInput<'a> {
    body: &'a Bytes,
    part: &'a [u8],
}

impl<'a> Input<'a> for TextInput<'a> {
    fn bytes(self) -> &'a [u8] {
        self.part.as_bytes()
    }
    fn trimmed(self) -> Self {
        TextInput {
            part: self.part.trim_ascii(),
            ..self
        }
    }
    fn lines(self) -> Vec<Self> {
        self.part
            .split('\n')
            .map(str::trim_ascii)
            .filter(|l| !l.is_empty())
            .map(|part| TextInput { part, ..self })
            .collect()
    }
    fn array(self) -> serde_json::Result<Vec<Self>> {
        let raws: Vec<&'a RawValue> = serde_json::from_str(self.part)?;
        Ok(raws
            .into_iter()
            .map(|r| TextInput {
                part: r.get(),
                ..self
            })
            .collect())
    }
    fn json_with<S: DeserializeSeed<'a>>(self, seed: S) -> serde_json::Result<S::Value> {
        json_in(self.part, seed)
    }
    fn text(self, s: Cow<'a, str>) -> Text {
        match s {
            Cow::Borrowed(b) => Text::slice_of(self.body, b),
            Cow::Owned(o) => Text::from(o),
        }
    }
    fn shared(self) -> Bytes {
        self.body.as_bytes().slice_ref(self.part.as_bytes())
    }
    fn element<S: DeserializeSeed<'a>>(
        self,
        at: usize,
        seed: S,
    ) -> Option<(S::Value, Self, usize)> {
        let rest = self.part.get(at..)?;
        let mut de = serde_json::Deserializer::from_str(rest);
        let value = seed.deserialize(&mut de).ok()?;
        // Where the value ended: a stream starts there.
        let len = de.into_iter::<serde::de::IgnoredAny>().byte_offset();
        Some((
            value,
            TextInput {
                part: rest.get(..len)?,
                ..self
            },
            at + len,
        ))
    }
}

impl<'a> Input<'a> for RawInput<'a> {
    fn bytes(self) -> &'a [u8] {
        self.part
    }
    fn trimmed(self) -> Self {
        RawInput {
            part: self.part.trim_ascii(),
            ..self
        }
    }
    fn lines(self) -> Vec<Self> {
        self.part
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty())
            .map(|part| RawInput { part, ..self })
            .collect()
    }
    fn array(self) -> serde_json::Result<Vec<Self>> {
        let raws: Vec<&'a RawValue> = serde_json::from_slice(self.part)?;
        Ok(raws
            .into_iter()
            .map(|r| RawInput {
                part: r.get().as_bytes(),
                ..self
            })
            .collect())
    }
    /// Checks the part is UTF-8 first: serde_json does not check the strings it skips
    /// in bytes, and a skipped string with bytes that are not UTF-8 is not JSON.
    fn json_with<S: DeserializeSeed<'a>>(self, seed: S) -> serde_json::Result<S::Value> {
        let text = std::str::from_utf8(self.part).map_err(|e| {
            serde::de::Error::custom(format_args!("not UTF-8 after byte {}", e.valid_up_to()))
        })?;
        json_in(text, seed)
    }
    fn text(self, s: Cow<'a, str>) -> Text {
        Text::of(self.body, s)
    }
    fn shared(self) -> Bytes {
        self.body.slice_ref(self.part)
    }
    /// Always `None`: serde_json does not check that the strings it skips from bytes
    /// are UTF-8, so a body that is not UTF-8 is read event by event (where every
    /// element is checked whole).
    fn element<S: DeserializeSeed<'a>>(
        self,
        _at: usize,
        _seed: S,
    ) -> Option<(S::Value, Self, usize)> {
        None
    }
}

/// `text`, one JSON value, deserialized with `seed`.
fn json_in<'a, S: DeserializeSeed<'a>>(text: &'a str, seed: S) -> serde_json::Result<S::Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

fn whole(reason: String) -> ParseError {
    ParseError::Invalid(vec![EventError {
        index: None,
        reason,
    }])
}
