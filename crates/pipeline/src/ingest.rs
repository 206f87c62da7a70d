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

/// What plain JSON events of one request share.
struct Plain<'a> {
    opts: &'a ParseOptions,
    source: Text,
    event_type: Text,
    /// The id and event-time pointers, split into reference tokens.
    pointers: [Option<Vec<String>>; 2],
}

impl<'a> Plain<'a> {
    fn new(opts: &'a ParseOptions) -> Self {
        Plain {
            opts,
            source: Text::from(opts.default_source.clone()),
            event_type: Text::from(opts.event_type.clone()),
            pointers: [
                opts.id_field.as_deref().and_then(pointer_tokens),
                opts.event_time.as_deref().and_then(pointer_tokens),
            ],
        }
    }
}

fn parse_plain<'a>(item: impl Input<'a>, plain: &Plain<'_>) -> Result<ParsedEvent, String> {
    if item.bytes().first() != Some(&b'{') {
        let value: Value = item.json().map_err(|e| format!("invalid JSON: {e}"))?;
        return Err(format!(
            "an event must be a JSON object, not {}",
            kind(&value)
        ));
    }
    let [id, time] = item
        .json_with(Pointed(&plain.pointers))
        .map_err(|e| format!("invalid JSON: {e}"))?;
    plain_event(item, id.as_ref(), time.as_ref(), plain)
}

/// A plain JSON event (an object) from its bytes and the values at its id and event-time
/// pointers.
fn plain_event<'a>(
    item: impl Input<'a>,
    id: Option<&Value>,
    time: Option<&Value>,
    plain: &Plain<'_>,
) -> Result<ParsedEvent, String> {
    let opts = plain.opts;
    let id = match &opts.id_field {
        None => None,
        Some(ptr) => match id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(Text::from(s.clone())),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Some(Text::from(n.to_string()))
            }
            Some(other) => {
                return Err(format!(
                    "id at {ptr} must be a non-empty string or an integer, not {}",
                    kind(other)
                ))
            }
        },
    };
    let time_ms = match &opts.event_time {
        None => None,
        Some(ptr) => match time {
            None | Some(serde_json::Value::Null) => {
                return Err(format!("missing event time at {ptr}"))
            }
            Some(v) => Some(event_time(v).map_err(|why| format!("event time at {ptr} {why}"))?),
        },
    };
    Ok(ParsedEvent {
        id,
        source: plain.source.clone(),
        event_type: plain.event_type.clone(),
        time_ms,
        format: EventFormat::Json,
        value: item.shared(),
        origin: None,
    })
}

/// A JSON pointer's reference tokens (`~1` and `~0` unescaped), as
/// `serde_json::Value::pointer` reads it; `None` when it points nowhere (not empty and
/// not starting with `/`).
fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// An array index in a JSON pointer, as `serde_json::Value::pointer` reads it.
fn pointer_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// Where a pointer leads from `value`, by its tokens.
fn follow<'v>(value: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(value, |v, token| match v {
        Value::Object(map) => map.get(token),
        Value::Array(items) => items.get(pointer_index(token)?),
        _ => None,
    })
}

/// Reads an event for the values at two JSON pointers (id, event time), skipping
/// everything else while checking it is valid JSON: building a `serde_json::Value` of
/// every event took over half of a plain JSON batch's parse. Finds what
/// `Value::pointer` finds, a repeated key's last value included.
#[derive(Clone, Copy)]
struct Pointed<'p>(&'p [Option<Vec<String>>; 2]);

impl<'de> DeserializeSeed<'de> for Pointed<'_> {
    type Value = [Option<Value>; 2];
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut found = [None, None];
        let mut targets = [(0, &[][..]); 2];
        let mut n = 0;
        for (slot, tokens) in self.0.iter().enumerate() {
            if let Some(tokens) = tokens {
                targets[n] = (slot, tokens.as_slice());
                n += 1;
            }
        }
        Seek {
            targets: &targets[..n],
            found: &mut found,
        }
        .deserialize(d)?;
        Ok(found)
    }
}

/// One value inside an event, and the pointers that lead into it: (slot in `found`, the
/// tokens left to follow).
struct Seek<'t, 'f> {
    targets: &'t [(usize, &'t [String])],
    found: &'f mut [Option<Value>; 2],
}

impl<'t> Seek<'t, '_> {
    /// The targets going on into the member or element `is` picks, and their slots
    /// cleared (a repeated key replaces what an earlier one held).
    fn enter(&mut self, is: impl Fn(&str) -> bool) -> ([(usize, &'t [String]); 2], usize) {
        let mut inner = [(0, &[][..]); 2];
        let mut n = 0;
        for &(slot, tokens) in self.targets {
            if let Some((first, rest)) = tokens.split_first() {
                if is(first) {
                    inner[n] = (slot, rest);
                    n += 1;
                    self.found[slot] = None;
                }
            }
        }
        (inner, n)
    }
}

impl<'de> DeserializeSeed<'de> for Seek<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.targets.iter().any(|(_, tokens)| tokens.is_empty()) {
            // A pointer ends here: keep this value whole.
            let value = Value::deserialize(d)?;
            for &(slot, tokens) in self.targets {
                self.found[slot] = follow(&value, tokens).cloned();
            }
            return Ok(());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(JsonStr(key)) = map.next_key()? {
            let (inner, n) = self.enter(|token| token == key);
            if n == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Seek {
                    targets: &inner[..n],
                    found: &mut *self.found,
                })?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        for index in 0.. {
            let (inner, n) = self.enter(|token| pointer_index(token) == Some(index));
            let more = if n == 0 {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Seek {
                    targets: &inner[..n],
                    found: &mut *self.found,
                })?
                .is_some()
            };
            if !more {
                break;
            }
        }
        Ok(())
    }
}

/// The attributes of a structured CloudEvent that hifi reads (others pass through).
#[derive(Deserialize)]
struct CeAttributes<'a> {
    #[serde(borrow)]
    specversion: Option<JsonStr<'a>>,
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    source: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "type")]
    ty: Option<JsonStr<'a>>,
    /// Raw: a string is read without a copy; anything else is refused with its kind.
    #[serde(borrow)]
    time: Option<&'a RawValue>,
}

/// A JSON string, borrowed from the input when it has no escapes. (`#[serde(borrow)]`
/// borrows a `Cow<str>` field only when it is not inside an `Option`: an optional
/// `Cow` is always a copy.)
struct JsonStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(V).map(JsonStr)
    }
}

fn parse_cloudevent<'a>(item: impl Input<'a>) -> Result<ParsedEvent, String> {
    if item.bytes().first() != Some(&b'{') {
        return Err("a CloudEvent must be a JSON object".into());
    }
    let ce = item
        .json()
        .map_err(|e| format!("invalid CloudEvent JSON: {e}"))?;
    cloudevent(item, ce)
}

/// A structured CloudEvent from its bytes and its attributes.
fn cloudevent<'a>(item: impl Input<'a>, ce: CeAttributes<'a>) -> Result<ParsedEvent, String> {
    let required = |v: Option<JsonStr<'a>>, name: &str| -> Result<Text, String> {
        match v {
            Some(JsonStr(s)) if !s.is_empty() => Ok(item.text(s)),
            _ => Err(format!(
                "CloudEvent attribute `{name}` is required and must be a non-empty string"
            )),
        }
    };
    let spec = required(ce.specversion, "specversion")?;
    let spec = spec.as_str();
    if spec != "1.0" {
        return Err(format!(
            "CloudEvent specversion must be \"1.0\", not {spec:?}"
        ));
    }
    let id = required(ce.id, "id")?;
    let source = required(ce.source, "source")?;
    let event_type = required(ce.ty, "type")?;
    let time_ms = match ce.time.map(|raw| raw.get()) {
        None | Some("null") => None,
        Some(raw) if raw.starts_with('"') => {
            let JsonStr(text) = serde_json::from_str(raw).unwrap_or(JsonStr(Cow::Borrowed("")));
            Some(parse_rfc3339(&text).map_err(|e| format!("CloudEvent `time` {e}"))?)
        }
        Some(raw) => {
            let other = serde_json::from_str(raw).unwrap_or(serde_json::Value::Null);
            return Err(format!(
                "CloudEvent `time` must be an RFC 3339 string, not {}",
                kind(&other)
            ));
        }
    };
    Ok(ParsedEvent {
        id: Some(id),
        source,
        event_type,
        time_ms,
        format: EventFormat::CloudEvent,
        value: item.shared(),
        origin: None,
    })
}

/// An event time from a JSON value: an RFC 3339 string or integer epoch milliseconds.
fn event_time(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::String(s) => parse_rfc3339(s),
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{n} is not an integer of epoch milliseconds")),
        other => Err(format!(
            "must be an RFC 3339 string or epoch milliseconds, not {}",
            kind(other)
        )),
    }
}

fn parse_rfc3339(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        body: &[u8],
        format: BodyFormat,
        opts: &ParseOptions,
    ) -> Result<Vec<ParsedEvent>, ParseError> {
        parse_body(&Bytes::copy_from_slice(body), format, opts)
    }

    fn opts() -> ParseOptions {
        ParseOptions {
            event_time: Some("/ts".into()),
            id_field: Some("/id".into()),
            default_source: "hifi/api".into(),
            event_type: "hifi.event".into(),
            max_events: 3,
        }
    }

    #[test]
    fn arrays_and_ndjson_keep_the_producers_bytes() {
        let body = br#"[ {"id":"a","ts":1000,"x": 1} , {"id":7,"ts":"1970-01-01T00:00:02Z"} ]"#;
        let ev = parse(body, BodyFormat::Json, &opts()).unwrap();
        assert_eq!(&ev[0].value[..], br#"{"id":"a","ts":1000,"x": 1}"#);
        assert_eq!(
            (ev[0].id.as_deref(), ev[0].time_ms),
            (Some("a"), Some(1000))
        );
        assert_eq!(
            (ev[1].id.as_deref(), ev[1].time_ms),
            (Some("7"), Some(2000))
        );
        let nd = b"{\"ts\":1}\n\n{\"ts\":2}\r\n";
        let ev = parse(nd, BodyFormat::Ndjson, &opts()).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(&ev[1].value[..], b"{\"ts\":2}");
        assert_eq!(ev[1].id, None);
    }

    #[test]
    fn every_bad_event_is_reported_with_its_index() {
        let body = br#"[{"ts":1}, 5, {"id":"x"}, {"ts":"yesterday"}]"#;
        let o = ParseOptions {
            max_events: 10,
            ..opts()
        };
        let Err(ParseError::Invalid(errs)) = parse(body, BodyFormat::Json, &o) else {
            panic!()
        };
        let idx: Vec<_> = errs.iter().map(|e| e.index.unwrap()).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert!(errs[0].reason.contains("must be a JSON object"));
        assert!(errs[1].reason.contains("missing event time at /ts"));
        assert!(errs[2].reason.contains("RFC 3339"));
    }

    #[test]
    fn cloudevents_are_checked() {
        let ok = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-01T00:00:00.5+01:00","data":{}}"#;
        let ev = parse(ok, BodyFormat::CloudEvent, &opts()).unwrap();
        assert_eq!(ev[0].time_ms, Some(1_767_222_000_500));
        let bad = br#"[{"specversion":"0.3","id":"1","source":"s","type":"t"},{"specversion":"1.0","source":"s","type":"t"}]"#;
        let Err(ParseError::Invalid(errs)) = parse(bad, BodyFormat::CloudEventBatch, &opts())
        else {
            panic!()
        };
        assert!(errs[0].reason.contains("specversion"));
        assert!(errs[1].reason.contains("`id`"));
    }

    #[test]
    fn event_text_is_sliced_from_the_body_and_escaped_text_is_unescaped() {
        let body = Bytes::from_static(
            br#"[{"specversion":"1.0","id":"plain","source":"s","type":"t","data":1},
                 {"specversion":"1.0","id":"a\"b\u00e9","source":"s","type":"t","time":null}]"#,
        );
        let ev = parse_body(&body, BodyFormat::CloudEventBatch, &opts()).unwrap();
        let within = |b: &Bytes| {
            let r = body.as_ptr_range();
            r.contains(&b.as_ptr())
        };
        assert_eq!(&*ev[0].id.clone().unwrap(), "plain");
        assert!(
            within(ev[0].id.as_ref().unwrap().bytes()),
            "a slice, not a copy"
        );
        assert!(within(&ev[0].value));
        assert_eq!(&*ev[1].id.clone().unwrap(), "a\"bé");
        assert!(
            !within(ev[1].id.as_ref().unwrap().bytes()),
            "unescaped into its own buffer"
        );
        assert_eq!(ev[1].time_ms, None);
        let bad = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":5}"#;
        let Err(ParseError::Invalid(errs)) = parse(bad, BodyFormat::CloudEvent, &opts()) else {
            panic!()
        };
        assert!(
            errs[0].reason.contains("not a number"),
            "{}",
            errs[0].reason
        );
    }

    #[test]
    fn text_and_byte_bodies_parse_alike_and_bytes_that_are_not_utf8_are_refused() {
        let o = ParseOptions {
            max_events: 10,
            ..opts()
        };
        let ce = br#"[{"specversion":"1.0","id":"a\"b","source":"s","type":"t","time":"2026-01-01T00:00:00Z","data":{"k":"v"}},
                      {"specversion":"1.0","id":"2","source":"s","type":"t","time":5}]"#;
        for (body, format) in [
            (
                &br#"[ {"id":"a","ts":1000,"x": 1} , {"id":7,"ts":"1970-01-01T00:00:02Z"} ]"#[..],
                BodyFormat::Json,
            ),
            (
                br#"[{"ts":1}, 5, {"id":"x"}, {"ts":"yesterday"}]"#,
                BodyFormat::Json,
            ),
            (
                b"{\"ts\":1,\"id\":\"\\u00e9\xc3\xa9\"}\n\n{\"ts\":2}\r\n",
                BodyFormat::Ndjson,
            ),
            (ce, BodyFormat::CloudEventBatch),
            (&ce[..ce.len() - 1], BodyFormat::CloudEventBatch),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#,
                BodyFormat::CloudEvent,
            ),
        ] {
            let bytes = Bytes::copy_from_slice(body);
            let as_text = parse_body(&bytes, format, &o);
            let as_bytes = parse_items(
                RawInput {
                    body: &bytes,
                    part: &bytes,
                },
                format,
                &o,
            );
            assert_eq!(
                format!("{as_text:?}"),
                format!("{as_bytes:?}"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Not UTF-8: the event holding the bad bytes is refused with its index...
        let nd = b"{\"ts\":1}\n{\"ts\":2,\"x\":\"\xff\"}\n";
        let Err(ParseError::Invalid(errs)) = parse(nd, BodyFormat::Ndjson, &o) else {
            panic!()
        };
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].index, Some(1));
        assert!(
            errs[0].reason.contains("invalid JSON"),
            "{}",
            errs[0].reason
        );
        // ... and an array holding them is refused whole, as any invalid array is, also
        // where the bad bytes sit in a part that is not read (an event's data).
        for batch in [
            &b"[{\"specversion\":\"1.0\",\"id\":\"\xfe\",\"source\":\"s\",\"type\":\"t\"}]"[..],
            b"[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data\":\"\xfe\"}]",
        ] {
            let Err(ParseError::Invalid(errs)) = parse(batch, BodyFormat::CloudEventBatch, &o)
            else {
                panic!("{}", String::from_utf8_lossy(batch))
            };
            assert_eq!(errs[0].index, None);
            assert!(
                errs[0].reason.contains("not a valid JSON array"),
                "{}",
                errs[0].reason
            );
        }
        let json = b"[{\"ts\":1,\"x\":\"\xfe\"}]";
        assert!(matches!(
            parse(json, BodyFormat::Json, &o),
            Err(ParseError::Invalid(e)) if e[0].index.is_none()
        ));
    }

    proptest::proptest! {
        /// Any UTF-8 body reads the same as text as it does as bytes.
        #[test]
        fn text_and_byte_reading_agree(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "[", "]", "{", "}", ",", ":", "\n", " ", "\"", "\\", "\\u00e9", "é", "\u{1F600}",
                "\"specversion\":\"1.0\"", "\"id\":", "\"x\"", "\"source\":\"s\"",
                "\"type\":\"t\"", "\"time\":", "\"2026-01-01T00:00:00Z\"", "\"ts\":", "1", "null",
                "{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":\"t\"}",
            ]), 0..40),
            format in proptest::sample::select(vec![
                BodyFormat::Json, BodyFormat::Ndjson, BodyFormat::CloudEvent, BodyFormat::CloudEventBatch,
            ]),
        ) {
            let o = ParseOptions { max_events: 10, ..opts() };
            let bytes = Bytes::from(parts.concat());
            let as_text = parse_body(&bytes, format, &o);
            let as_bytes = parse_items(RawInput { body: &bytes, part: &bytes }, format, &o);
            proptest::prop_assert_eq!(format!("{as_text:?}"), format!("{as_bytes:?}"));
        }

        /// Reading an array in one pass gives what reading its events one by one gives.
        #[test]
        fn one_pass_and_event_by_event_reading_agree(
            open in proptest::prop_oneof![
                4 => proptest::strategy::Just("["),
                1 => proptest::sample::select(vec![" [\n", "[[", "", "{"]),
            ],
            items in proptest::collection::vec(proptest::prop_oneof![
                6 => proptest::sample::select(vec![
                r#"{"specversion":"1.0","id":"a","source":"s","type":"t"}"#,
                r#"{"specversion":"1.0","id":"a\"b","source":"s","type":"t","time":"2026-01-01T00:00:00Z","data":[1,{"x":"]"}]}"#,
                r#"{"specversion":"0.3","id":"b","source":"s","type":"t"}"#,
                r#"{"specversion":"1.0","id":7,"source":"s","type":"t"}"#,
                r#"{"ts":1,"id":"a","n":{"m":"}"}}"#, r#"{"ts":"x"}"#, r#"{"id":[]}"#, r#" {"ts":2} "#,
                ]),
                1 => proptest::sample::select(vec![
                    "{", "}", "5", "null", "\"s\"", "[]", "{\"ts\":1", "\u{e9}", "\"\\", "",
                ]),
            ], 0..6),
            comma in proptest::prop_oneof![
                4 => proptest::sample::select(vec![",", " , ", ",\n"]),
                1 => proptest::sample::select(vec![",,", " ", ":"]),
            ],
            close in proptest::prop_oneof![
                4 => proptest::sample::select(vec!["]", " ]\n"]),
                1 => proptest::sample::select(vec!["", "],", "]]", "] x"]),
            ],
            format in proptest::sample::select(vec![BodyFormat::Json, BodyFormat::CloudEventBatch]),
        ) {
            let o = ParseOptions { max_events: 4, ..opts() };
            let bytes = Bytes::from(format!("{open}{}{close}", items.join(comma)));
            let text = ByteString::try_from(bytes.clone()).unwrap();
            let one_pass = parse_body(&bytes, format, &o);
            let each = event_by_event(TextInput { body: &text, part: &text }, format, &o);
            proptest::prop_assert_eq!(&one_pass, &each);
            let each = event_by_event(RawInput { body: &bytes, part: &bytes }, format, &o);
            proptest::prop_assert_eq!(one_pass, each);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            proptest::sample::select(vec!["", "a", "x\"y", "é"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            let keys =
                proptest::sample::select(vec!["a", "b", "0", "1", "a/b", "m~n", "m~1n", "", "é"]);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(keys, inner, 0..4).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    /// What `Pointed` finds in `json` at two pointers.
    fn pointed(json: &str, pointers: [&str; 2]) -> [Option<Value>; 2] {
        let tokens = pointers.map(pointer_tokens);
        let mut de = serde_json::Deserializer::from_str(json);
        Pointed(&tokens).deserialize(&mut de).unwrap()
    }

    proptest::proptest! {
        /// The pointer reader finds what `serde_json::Value::pointer` finds.
        #[test]
        fn pointers_are_read_as_serde_json_reads_them(
            doc in json_value(),
            pointers in proptest::array::uniform2(proptest::sample::select(vec![
                "", "/", "/a", "/b", "/a/b", "/a/0", "/0", "/1", "/1/a", "/0/0/a", "/a~1b",
                "/m~0n", "/m~01n", "/a/", "a", "/b/1/a", "/00", "/+1", "/é", "/a/b/0",
            ])),
        ) {
            let json = doc.to_string();
            let expected = pointers.map(|p| doc.pointer(p).cloned());
            proptest::prop_assert_eq!(pointed(&json, pointers), expected);
        }
    }

    #[test]
    fn a_repeated_key_counts_with_its_last_value_as_in_serde_json() {
        for json in [
            r#"{"a":{"b":1},"a":{"c":2}}"#,
            r#"{"a":1,"a":{"b":[5,{"c":2}]}}"#,
            r#"{"a":{"b":1},"x":[],"a":{"b":2}}"#,
        ] {
            let doc: Value = serde_json::from_str(json).unwrap();
            for pointers in [["/a/b", "/a"], ["/a/b", "/x"], ["/a/b/1/c", "/x"]] {
                let expected = pointers.map(|p| doc.pointer(p).cloned());
                assert_eq!(pointed(json, pointers), expected, "{json} {pointers:?}");
            }
        }
    }

    fn event_by_event<'a>(
        body: impl Input<'a>,
        format: BodyFormat,
        opts: &ParseOptions,
    ) -> Result<Vec<ParsedEvent>, ParseError> {
        let plain = Plain::new(opts);
        parse_each(body, format, &plain)
    }

    #[test]
    fn an_array_read_in_one_pass_keeps_each_events_bytes_and_index() {
        let body = " [ {\"ts\":1,\"id\":\"a\"} ,\n{\"ts\":\"x\"},{\"ts\":3} ] \n";
        let Err(ParseError::Invalid(errs)) = parse(body.as_bytes(), BodyFormat::Json, &opts())
        else {
            panic!()
        };
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].index, Some(1));
        let body = body.replace("\"x\"", "2");
        let events = parse(body.as_bytes(), BodyFormat::Json, &opts()).unwrap();
        let values: Vec<&[u8]> = events.iter().map(|e| &e.value[..]).collect();
        assert_eq!(
            values,
            [&br#"{"ts":1,"id":"a"}"#[..], br#"{"ts":2}"#, br#"{"ts":3}"#]
        );
    }

    #[test]
    fn nesting_is_refused_only_where_it_is_read_and_alike_in_every_format() {
        let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let unread = format!(r#"{{"id":"a","ts":1,"x":{}}}"#, nest(20_000));
        let at_time = format!(r#"{{"id":"a","ts":{}}}"#, nest(200));
        for (event, accepted) in [(&unread, true), (&at_time, false)] {
            for (body, format) in [
                (format!("[{event}]"), BodyFormat::Json),
                (event.clone(), BodyFormat::Json),
                (format!("{event}\n"), BodyFormat::Ndjson),
            ] {
                let got = parse(body.as_bytes(), format, &opts());
                match got {
                    Ok(events) if accepted => assert_eq!(&events[0].value[..], event.as_bytes()),
                    Err(ParseError::Invalid(errs)) if !accepted => {
                        assert!(errs[0].reason.contains("recursion limit"), "{errs:?}")
                    }
                    other => panic!("{format:?} {accepted}: {other:?}"),
                }
            }
        }
        // Bytes that are not UTF-8 where nothing is read are refused in every format too.
        let o = opts();
        for (body, format) in [
            (&b"{\"id\":\"a\",\"ts\":1,\"x\":\"\xff\"}\n"[..], BodyFormat::Ndjson),
            (b"{\"id\":\"a\",\"ts\":1,\"x\":\"\xff\"}", BodyFormat::Json),
            (
                b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data\":\"\xff\"}",
                BodyFormat::CloudEvent,
            ),
        ] {
            let Err(ParseError::Invalid(errs)) = parse(body, format, &o) else {
                panic!("{format:?} accepted {}", String::from_utf8_lossy(body))
            };
            assert!(errs[0].reason.contains("not UTF-8"), "{errs:?}");
        }
    }

    #[test]
    fn whole_body_problems() {
        assert!(
            matches!(parse(b"[1,", BodyFormat::Json, &opts()), Err(ParseError::Invalid(e)) if e[0].index.is_none())
        );
        assert!(matches!(
            parse(b"   ", BodyFormat::Ndjson, &opts()),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"[{},{},{},{}]", BodyFormat::Json, &opts()),
            Err(ParseError::TooManyEvents { count: 4, max: 3 })
        ));
        assert_eq!(
            BodyFormat::from_content_type("application/json; charset=utf-8"),
            Some(BodyFormat::Json)
        );
        assert_eq!(BodyFormat::from_content_type("text/plain"), None);
    }
}
