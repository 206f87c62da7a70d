//! Structured-mode CloudEvents: the required attributes, and event times (RFC 3339).

use super::*;

/// The attributes of a structured CloudEvent that hifi reads (others pass through).
#[derive(Deserialize)]
pub(super) struct CeAttributes<'a> {
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
pub(super) struct JsonStr<'a>(pub(super) Cow<'a, str>);

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

pub(super) fn parse_cloudevent<'a>(item: impl Input<'a>) -> Result<ParsedEvent, String> {
    if item.bytes().first() != Some(&b'{') {
        return Err("a CloudEvent must be a JSON object".into());
    }
    let ce = item
        .json()
        .map_err(|e| format!("invalid CloudEvent JSON: {e}"))?;
    cloudevent(item, ce)
}

/// A structured CloudEvent from its bytes and its attributes.
pub(super) fn cloudevent<'a>(
    item: impl Input<'a>,
    ce: CeAttributes<'a>,
) -> Result<ParsedEvent, String> {
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
pub(super) fn event_time(v: &serde_json::Value) -> Result<i64, String> {
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

pub(super) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
}

pub(super) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
