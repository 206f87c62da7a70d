//! The records of `hifi log stress` (the crash-test appender an operator runs against a
//! disk, and the crash tests run against this engine): the bytes of record (`task`,
//! `seq`) are a pure function of the pair, so a checker can regenerate exactly what the
//! appender wrote without keeping a copy. Part of the product because that command is.

use crate::Record;

/// The record that stress task `task` appends as its `seq`-th record.
pub fn stress_record(task: u64, seq: u64, value_bytes: usize) -> Record {
    let mut value = format!("{{\"task\":{task},\"seq\":{seq},\"pad\":\"").into_bytes();
    let fill = b'a' + ((task * 31 + seq) % 26) as u8;
    while value.len() + 2 < value_bytes {
        value.push(fill);
    }
    value.extend_from_slice(b"\"}");
    Record {
        key: Some(task.to_le_bytes().to_vec().into()),
        value: value.into(),
        headers: vec![crate::Header {
            name: "seq".into(),
            value: seq.to_string().into_bytes().into(),
        }],
        timestamp_ms: 1_700_000_000_000 + seq as i64,
    }
}
