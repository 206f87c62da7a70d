//! The CloudEvents HTTP binding's binary content mode, both ways: a request whose
//! attributes are `ce-*` headers and whose body is the event's data becomes the
//! structured (JSON) form hifi stores; a stored event becomes headers and a body again
//! for sinks with `format = "binary"` (or only the body, for `format = "raw"`).
//!
//! | binary mode | structured form |
//! |---|---|
//! | `ce-NAME: value` (percent-encoded UTF-8) | `"NAME": "value"` |
//! | `Content-Type` | `datacontenttype` |
//! | body, when the content type is JSON (`application/json`, `*/*+json`) or absent and the body is JSON | `data` (the producer's bytes, unchanged) |
//! | body, `text/*` | `data` as a string |
//! | any other body | `data_base64` |
//! | `traceparent` / `tracestate` headers (without `ce-` ones) | the distributed-tracing extension |
//!
//! A missing `ce-specversion` is taken as `1.0` (the other required attributes are
//! checked where every CloudEvent is, in [`crate::ingest`]).
//!
//! Header values are percent-decoded on the way in (bytes that are not UTF-8 are read as
//! ISO-8859-1, as HTTP/1.1 header text). On the way out only what cannot stand in a
//! header as itself is percent-encoded — control characters, non-ASCII and `%` — and
//! spaces and `"` are left as they are: the binding asks for those to be encoded too,
//! but SDKs that never decode (the Python SDK 1.x) would then read `%20` literally,
//! while a decoding receiver reads the value correctly either way. (Such an SDK still
//! reads `%25` and non-ASCII as their encodings: there is no header form of those that
//! both it and a decoding receiver read the same.)

use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::value::RawValue;

/// Header prefix of binary-mode attributes.
const PREFIX: &str = "ce-";

/// Whether a request with these header names is in binary mode: it carries one of the
/// required attributes as a header.
pub fn is_binary<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| {
        ["ce-specversion", "ce-id", "ce-source", "ce-type"]
            .iter()
            .any(|r| n.eq_ignore_ascii_case(r))
    })
}

/// A binary-mode request as the structured CloudEvent it stands for. `headers` are all
/// the request's headers (name, value); `content_type` its `Content-Type`.
pub fn to_structured<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut trace: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let (attr, into) = match lower.strip_prefix(PREFIX) {
            Some(a) => (a.to_owned(), &mut attrs),
            None if lower == "traceparent" || lower == "tracestate" => (lower, &mut trace),
            None => continue,
        };
        if attr.is_empty()
            || !attr
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "header {name:?}: a CloudEvents attribute name is lower-case letters and digits"
            ));
        }
        if matches!(attr.as_str(), "data" | "data_base64" | "datacontenttype") {
            return Err(format!(
                "header {name:?}: the data and its content type travel as the body and Content-Type"
            ));
        }
        // Bytes that are not UTF-8 are ISO-8859-1 (what HTTP/1.1 header text was, and
        // what SDKs that do not percent-encode send).
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => std::borrow::Cow::Owned(value.iter().map(|&b| char::from(b)).collect()),
        };
        let value = percent_decode_str(&value)
            .decode_utf8()
            .map_err(|_| format!("header {name:?}: its percent-encoding is not UTF-8"))?;
        if into.iter().any(|(a, _)| *a == attr) {
            return Err(format!("header {name:?} is given more than once"));
        }
        into.push((attr, value.into_owned()));
    }
    // The ce- form wins over the plain tracing headers.
    for (name, value) in trace {
        if !attrs.iter().any(|(a, _)| *a == name) {
            attrs.push((name, value));
        }
    }
    if !attrs.iter().any(|(a, _)| a == "specversion") {
        attrs.insert(0, ("specversion".to_owned(), "1.0".to_owned()));
    }
    let mut out = Vec::with_capacity(body.len() + 64 * (attrs.len() + 1));
    out.push(b'{');
    for (i, (name, value)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, name);
        out.push(b':');
        push_json_str(&mut out, value);
    }
    if let Some(ct) = content_type {
        out.extend_from_slice(b",\"datacontenttype\":");
        push_json_str(&mut out, ct);
    }
    if !body.is_empty() {
        match data_kind(content_type, body) {
            Data::Json => {
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    return Err(format!(
                        "the body is not JSON although Content-Type says so: {e}"
                    ));
                }
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(body);
            }
            Data::Text(text) => {
                out.extend_from_slice(b",\"data\":");
                push_json_str(&mut out, text);
            }
            Data::Binary => {
                out.extend_from_slice(b",\"data_base64\":");
                push_json_str(
                    &mut out,
                    &base64::engine::general_purpose::STANDARD.encode(body),
                );
            }
        }
    }
    out.push(b'}');
    Ok(out)
}

enum Data<'a> {
    Json,
    Text(&'a str),
    Binary,
}

fn data_kind<'a>(content_type: Option<&str>, body: &'a [u8]) -> Data<'a> {
    match content_type {
        Some(ct) if is_json(ct) => Data::Json,
        Some(ct) if essence(ct).starts_with("text/") => match std::str::from_utf8(body) {
            Ok(t) => Data::Text(t),
            Err(_) => Data::Binary,
        },
        Some(_) => Data::Binary,
        // No content type: JSON when it reads as JSON (what SDKs send for JSON data).
        None if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => Data::Json,
        None => match std::str::from_utf8(body) {
            Ok(t) => Data::Text(t),
            Err(_) => Data::Binary,
        },
    }
}

fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type says JSON (`application/json`, `text/json`, `*/*+json`).
pub fn is_json(ct: &str) -> bool {
    let e = essence(ct);
    e == "application/json" || e == "text/json" || e.ends_with("+json")
}

/// One stored event as a binary-mode request: `ce-*` headers, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// `ce-NAME` headers (percent-encoded values), then `traceparent`/`tracestate`.
    pub headers: Vec<(String, String)>,
    /// The `Content-Type` (`datacontenttype`, or `application/json` for JSON data).
    pub content_type: Option<String>,
    /// The data.
    pub body: Bytes,
}

/// Splits a structured CloudEvent (JSON object) into its binary-mode form.
pub fn from_structured(ce: &[u8]) -> Result<BinaryMessage, String> {
    let map: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(ce).map_err(|e| format!("not a CloudEvent object: {e}"))?;
    let mut headers = Vec::with_capacity(map.len() + 1);
    let mut content_type = None;
    let mut data = None;
    let mut data_base64 = None;
    let mut trace = Vec::new();
    for (name, raw) in &map {
        let text = match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(serde_json::Value::Null) => continue,
            Ok(_) => raw.get().to_owned(),
            Err(e) => return Err(format!("attribute {name:?}: {e}")),
        };
        match name.as_str() {
            "data" => data = Some(*raw),
            "data_base64" => data_base64 = Some(text),
            "datacontenttype" => content_type = Some(text),
            _ => {
                if matches!(name.as_str(), "traceparent" | "tracestate") {
                    trace.push((name.clone(), text.clone()));
                }
                headers.push((
                    format!("{PREFIX}{name}"),
                    utf8_percent_encode(&text, HEADER_UNSAFE).to_string(),
                ));
            }
        }
    }
    headers.extend(trace);
    let body = match (data, data_base64) {
        (Some(raw), _) => {
            let json_data = content_type.as_deref().is_none_or(is_json);
            match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(serde_json::Value::String(s)) if !json_data => Bytes::from(s),
                _ => {
                    content_type.get_or_insert_with(|| "application/json".to_owned());
                    Bytes::copy_from_slice(raw.get().as_bytes())
                }
            }
        }
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("data_base64 is not base64: {e}"))?,
        ),
        (None, None) => Bytes::new(),
    };
    Ok(BinaryMessage {
        headers,
        content_type,
        body,
    })
}

/// What is percent-encoded in a header value (see the module's notes): control
/// characters, non-ASCII (always encoded by the encoder) and `%`.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%');

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a correctly escaped string; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structured(headers: &[(&str, &str)], ct: Option<&str>, body: &str) -> serde_json::Value {
        let out = to_structured(
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            ct,
            body.as_bytes(),
        )
        .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn binary_mode_headers_become_attributes_and_the_body_data() {
        let v = structured(
            &[
                ("Ce-Id", "1"),
                ("ce-source", "/shop"),
                ("ce-type", "order"),
                ("ce-time", "2026-01-01T00:00:00Z"),
                ("ce-myext", "caf%C3%A9 %22x%22"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("content-length", "9"),
            ],
            Some("application/json"),
            r#"{"x": 1.50}"#,
        );
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "1");
        assert_eq!(v["myext"], "café \"x\"");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["x"], 1.5);
        assert!(v["traceparent"].as_str().unwrap().starts_with("00-0af7"));
        assert!(v.get("content-length").is_none());
        // Text, binary and untyped bodies.
        let t = structured(&[("ce-id", "1")], Some("text/plain"), "héllo");
        assert_eq!(t["data"], "héllo");
        let b = structured(&[("ce-id", "1")], Some("application/octet-stream"), "ab");
        assert_eq!(b["data_base64"], "YWI=");
        let j = structured(&[("ce-id", "1")], None, "[1,2]");
        assert_eq!(j["data"][1], 2);
        assert!(j.get("datacontenttype").is_none());
        let e = structured(&[("ce-id", "1")], None, "");
        assert!(e.get("data").is_none() && e.get("data_base64").is_none());
    }

    #[test]
    fn bad_binary_mode_requests_say_what_is_wrong() {
        let err = |h: &[(&str, &[u8])], ct: Option<&str>, body: &str| {
            to_structured(h.iter().copied(), ct, body.as_bytes()).unwrap_err()
        };
        assert!(err(&[("ce-id", b"1")], Some("application/json"), "{nope").contains("not JSON"));
        assert!(err(&[("ce-id", b"1"), ("ce-id", b"2")], None, "").contains("more than once"));
        assert!(err(&[("ce-My_Ext", b"1")], None, "").contains("lower-case"));
        assert!(err(&[("ce-data", b"1")], None, "").contains("body"));
        assert!(err(&[("ce-x", b"%ff")], None, "").contains("UTF-8"));
        // Raw bytes that are not UTF-8 are ISO-8859-1.
        let v = structured(&[("ce-x", "")], None, "");
        assert_eq!(v["x"], "");
        let latin = to_structured([("ce-x", &b"caf\xe9"[..])].into_iter(), None, b"").unwrap();
        let latin: serde_json::Value = serde_json::from_slice(&latin).unwrap();
        assert_eq!(latin["x"], "café");
    }

    #[test]
    fn a_structured_event_splits_back_into_the_same_binary_message() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", "a b"),
            ("ce-source", "s"),
            ("ce-type", "t"),
            ("ce-myext", "caf%C3%A9"),
        ];
        for (ct, body) in [
            (Some("application/json"), r#"{"x":[1,"y"]}"#),
            (Some("text/plain"), "plain \"text\""),
            (Some("application/octet-stream"), "\u{1}\u{2}"),
        ] {
            let s = to_structured(
                headers.iter().map(|(n, v)| (*n, v.as_bytes())),
                ct,
                body.as_bytes(),
            )
            .unwrap();
            let m = from_structured(&s).unwrap();
            assert_eq!(m.body, body.as_bytes(), "{ct:?}");
            assert_eq!(m.content_type.as_deref(), ct);
            let mut got: Vec<_> = m
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            got.sort_unstable();
            let mut want = headers.to_vec();
            want.iter_mut().for_each(|h| {
                if h.0 == "ce-id" {
                    h.1 = "a b";
                }
            });
            want.sort_unstable();
            assert_eq!(got, want, "{ct:?}");
        }
        // A plain JSON event's CloudEvent: data is JSON, sent as application/json.
        let m =
            from_structured(br#"{"specversion":"1.0","id":"1","data":{"k":true},"n":5}"#).unwrap();
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(&m.body[..], br#"{"k":true}"#);
        assert!(m.headers.contains(&("ce-n".to_owned(), "5".to_owned())));
    }
}
