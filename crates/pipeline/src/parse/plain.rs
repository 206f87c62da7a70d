//! Plain JSON events: the id and event time found by JSON pointers, in one pass over
//! each event's object.

use super::cloudevent::{event_time, JsonStr};
use super::*;

/// What plain JSON events of one request share.
pub(super) struct Plain<'a> {
    pub(super) opts: &'a ParseOptions,
    pub(super) source: Text,
    pub(super) event_type: Text,
    /// The id and event-time pointers, split into reference tokens.
    pub(super) pointers: [Option<Vec<String>>; 2],
}

impl<'a> Plain<'a> {
    pub(super) fn new(opts: &'a ParseOptions) -> Self {
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

pub(super) fn parse_plain<'a>(
    item: impl Input<'a>,
    plain: &Plain<'_>,
) -> Result<ParsedEvent, String> {
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
pub(super) fn plain_event<'a>(
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
pub(super) fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
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
pub(super) fn follow<'v>(value: &'v Value, tokens: &[String]) -> Option<&'v Value> {
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
pub(super) struct Pointed<'p>(pub(super) &'p [Option<Vec<String>>; 2]);

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
