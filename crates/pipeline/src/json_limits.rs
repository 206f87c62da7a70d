//! The JSON limits every stage needs, checked at ingest so that no event is stored that a
//! stage could not read: nesting at most [`DEPTH_MAX`] levels (serde_json's recursion
//! limit) and no lone UTF-16 surrogate in a `\u` escape (`"\ud800"` is valid JSON text
//! but no string). Without this check such an event was acknowledged, then every stage
//! passed it unchanged — unfiltered and unredacted.
//!
//! The input has already been read as JSON by ingest (syntax, UTF-8); this is one pass
//! over its bytes looking only at brackets outside strings and escapes inside them.

/// Deepest nesting accepted: what serde_json reads without its recursion limit.
pub const DEPTH_MAX: usize = 127;

/// Whether a JSON document (already known to be well-formed) stays within the limits.
pub fn check(json: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return Err(format!(
                        "nested deeper than {DEPTH_MAX} levels; stages could not read it"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => i = string_end(json, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the closing quote of a string starting at `i`, checking its escapes.
fn string_end(json: &[u8], mut i: usize) -> Result<usize, String> {
    while i < json.len() {
        match json[i] {
            b'"' => return Ok(i),
            b'\\' if json.get(i + 1) == Some(&b'u') => {
                let unit = hex4(json, i + 2);
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        let low = (json.get(i + 6) == Some(&b'\\')
                            && json.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(json, i + 8))
                        .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(lone(unit));
                        }
                        i += 12;
                        continue;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(lone(unit)),
                    _ => i += 6,
                }
                continue;
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

fn lone(unit: Option<u32>) -> String {
    format!(
        "a string holds a lone UTF-16 surrogate (\\u{:04x}), which is no character; stages could not read it",
        unit.unwrap_or(0)
    )
}

fn hex4(json: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(json.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_reads(json: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(json).is_ok()
    }

    #[test]
    fn the_depth_limit_is_serde_jsons() {
        for depth in 120..135 {
            let doc = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                check(doc.as_bytes()).is_ok(),
                serde_reads(doc.as_bytes()),
                "{depth}"
            );
            let doc = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            assert_eq!(
                check(doc.as_bytes()).is_ok(),
                serde_reads(doc.as_bytes()),
                "{depth}"
            );
        }
    }

    #[test]
    fn lone_surrogates_are_refused_pairs_are_not() {
        for (doc, ok) in [
            (r#"{"card":"\ud800"}"#, false),
            (r#"{"card":"\udc00x"}"#, false),
            (r#"{"card":"\ud83d\ude00"}"#, true),
            (r#"{"card":"\ud83d\u0041"}"#, false),
            (r#"{"card":"\\ud800"}"#, true), // an escaped backslash, then text
            (r#"{"a":"[[[[", "b":"\"]"}"#, true),
            (r#"{"x":"\u00e9\n\t\"\\"}"#, true),
        ] {
            assert_eq!(check(doc.as_bytes()).is_ok(), ok, "{doc}");
            assert_eq!(serde_reads(doc.as_bytes()), ok, "serde disagrees on {doc}");
        }
    }

    fn leaf() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("1"),
            Just("\"plain\""),
            Just("\"s\\ud800\""),
            Just("\"\\udc01\""),
            Just("\"\\ud800\\udc01\""),
            Just("\"\\\\ud800\""),
            Just("\"[{\\\"\""),
            Just("\"\\u00e9\""),
        ]
    }

    proptest! {
        /// On well-formed documents (one path nested up to 140 levels, with a sibling
        /// at each level) the check agrees with serde_json reading it.
        #[test]
        fn agrees_with_serde_json(
            levels in proptest::collection::vec((any::<bool>(), leaf()), 0..140),
            inner in leaf(),
        ) {
            let mut doc = String::new();
            for (object, _) in &levels {
                doc.push_str(if *object { "{\"k\":" } else { "[" });
            }
            doc.push_str(inner);
            for (object, sibling) in levels.iter().rev() {
                if *object {
                    doc.push_str(&format!(",\"k2\":{sibling}}}"));
                } else {
                    doc.push_str(&format!(",{sibling}]"));
                }
            }
            prop_assert_eq!(check(doc.as_bytes()).is_ok(), serde_reads(doc.as_bytes()), "{}", doc);
        }
    }
}
