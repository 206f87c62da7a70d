use super::plain::pointer_tokens;
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
    let Err(ParseError::Invalid(errs)) = parse(bad, BodyFormat::CloudEventBatch, &opts()) else {
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
    let Err(ParseError::Invalid(errs)) = parse(body.as_bytes(), BodyFormat::Json, &opts()) else {
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
