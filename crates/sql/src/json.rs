//! Events ↔ Arrow: checked JSON events into a batch of the input schema (with each
//! event's place in [`ROW`]), and a query's result batches back into JSON — as objects
//! (window stages key rows by their values) or written straight to bytes (row stages,
//! one output event per row, no intermediate objects).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::row::{JSON_META, ROW};
use crate::schema::{timestamp_ms, FieldType, Schema};

/// An event's values of the input schema's fields, in the schema's order (`None`: absent).
pub(crate) type Row = Vec<Option<Value>>;

/// Reads an event as a row of `input`; the error says why it is not one. Only the top
/// level and the declared fields' values are parsed: other fields stay unparsed text.
pub(crate) fn read_row(input: &Schema, bytes: &[u8]) -> Result<Row, String> {
    let row: Row = match serde_json::from_slice::<HashMap<&str, &RawValue>>(bytes) {
        Ok(top) => input
            .fields
            .iter()
            .map(|f| {
                top.get(f.name.as_str())
                    .map(|raw| serde_json::from_str(raw.get()))
                    .transpose()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not JSON: {e}"))?,
        // Not an object with plain keys: the whole event, for the reason (or the escapes).
        Err(_) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => input
                .fields
                .iter()
                .map(|f| map.get(&f.name).cloned())
                .collect(),
            Ok(_) => return Err("not of the input schema: the schema needs a JSON object".into()),
            Err(e) => return Err(format!("not JSON: {e}")),
        },
    };
    input
        .check_values(row.iter().map(Option::as_ref))
        .map_err(|why| format!("not of the input schema: {why}"))?;
    Ok(row)
}

/// Arrow arrays of checked events (with their places in [`ROW`]), by the input schema.
pub(crate) fn to_batch(
    input: &Schema,
    arrow: &SchemaRef,
    rows: &[(usize, Row)],
) -> Result<RecordBatch, String> {
    let mut b = Builders::new(input);
    rows.iter().for_each(|(_, row)| b.append(row));
    let mut columns = b.finish();
    columns.push(Arc::new(UInt32Array::from_iter_values(
        rows.iter().map(|(i, _)| *i as u32),
    )));
    RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
}

/// Arrow builders of the input schema's columns, filled one checked row at a time.
pub(crate) struct Builders {
    columns: Vec<Builder>,
}

enum Builder {
    String(StringBuilder),
    /// JSON text: any value, written as its document.
    Json(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl Builders {
    pub(crate) fn new(input: &Schema) -> Builders {
        let columns = input
            .fields
            .iter()
            .map(|f| match f.ty {
                FieldType::String => Builder::String(StringBuilder::new()),
                FieldType::Json => Builder::Json(StringBuilder::new()),
                FieldType::Int64 => Builder::Int64(Int64Builder::new()),
                FieldType::Float64 => Builder::Float64(Float64Builder::new()),
                FieldType::Bool => Builder::Bool(BooleanBuilder::new()),
                FieldType::Timestamp => {
                    Builder::Timestamp(TimestampMillisecondBuilder::new().with_timezone("UTC"))
                }
            })
            .collect();
        Builders { columns }
    }

    /// Appends a row checked against the schema the builders were made for.
    pub(crate) fn append(&mut self, row: &Row) {
        for (k, b) in self.columns.iter_mut().enumerate() {
            let v = value(row, k);
            match b {
                Builder::String(b) => match v {
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                    None => b.append_null(),
                },
                Builder::Json(b) => match v {
                    Some(other) => b.append_value(other.to_string()),
                    None => b.append_null(),
                },
                Builder::Int64(b) => b.append_option(v.and_then(Value::as_i64)),
                Builder::Float64(b) => b.append_option(v.and_then(Value::as_f64)),
                Builder::Bool(b) => b.append_option(v.and_then(Value::as_bool)),
                Builder::Timestamp(b) => b.append_option(v.and_then(timestamp_ms)),
            }
        }
    }

    /// The columns of the rows appended since the last finish (the builders are emptied).
    pub(crate) fn finish(&mut self) -> Vec<ArrayRef> {
        self.columns
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::String(b) | Builder::Json(b) => Arc::new(b.finish()),
                    Builder::Int64(b) => Arc::new(b.finish()),
                    Builder::Float64(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::Timestamp(b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

/// Field `k`'s value in `row`, unless absent or null.
fn value(row: &Row, k: usize) -> Option<&Value> {
    row[k].as_ref().filter(|v| !v.is_null())
}

/// A batch's rows as JSON objects (without [`ROW`]).
pub(crate) fn to_json(b: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    let mut rows = vec![Map::new(); b.num_rows()];
    for col in out_columns(b)? {
        for (i, row) in rows.iter_mut().enumerate() {
            row.insert(col.name.clone(), col.value(i));
        }
    }
    Ok(rows)
}

/// A batch's rows as JSON objects written to bytes, fields in the query's order (without
/// [`ROW`]), each with its row's place in its input batch.
pub(crate) fn to_json_bytes(b: &RecordBatch) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let ids = b
        .column_by_name(ROW)
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
        .ok_or("the query lost its row ids")?;
    let cols = out_columns(b)?;
    let mut rows: Vec<(u32, Vec<u8>)> = (0..b.num_rows())
        .map(|r| (ids.value(r), Vec::with_capacity(128)))
        .collect();
    for (c, col) in cols.iter().enumerate() {
        for (i, (_, out)) in rows.iter_mut().enumerate() {
            out.push(if c == 0 { b'{' } else { b',' });
            out.extend_from_slice(&col.key);
            col.write(i, out);
        }
    }
    for (_, out) in &mut rows {
        if cols.is_empty() {
            out.push(b'{');
        }
        out.push(b'}');
    }
    Ok(rows)
}

/// One output column, cast to the Arrow type its JSON values are read from.
struct OutColumn {
    name: String,
    /// `"name":`, escaped once for every row.
    key: Vec<u8>,
    values: Values,
}

enum Values {
    String(StringArray),
    /// JSON text (a `json` field): written as the document it holds.
    Json(StringArray),
    Int64(Int64Array),
    Float64(Float64Array),
    Bool(BooleanArray),
    Timestamp(TimestampMillisecondArray),
}

fn out_columns(b: &RecordBatch) -> Result<Vec<OutColumn>, String> {
    // Not `safe`: a value that does not fit (an unsigned count past i64) fails the row
    // (dead-lettered with the reason) instead of becoming null unnoticed.
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let schema = b.schema();
    let mut out = Vec::with_capacity(schema.fields().len());
    for (f, col) in schema.fields().iter().zip(b.columns()) {
        if f.name() == ROW {
            continue;
        }
        let ty = FieldType::of_arrow(f.data_type())
            .ok_or_else(|| format!("column `{}` has type {}", f.name(), f.data_type()))?;
        let target = match ty {
            FieldType::String | FieldType::Json => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
        };
        let col = cast_with_options(col, &target, &strict).map_err(|e| e.to_string())?;
        let any = col.as_any();
        let missing = || format!("column `{}` did not cast to {target}", f.name());
        let values = match ty {
            FieldType::String | FieldType::Json => {
                let a = any
                    .downcast_ref::<StringArray>()
                    .ok_or_else(missing)?
                    .clone();
                if f.metadata().get(JSON_META).is_some() {
                    Values::Json(a)
                } else {
                    Values::String(a)
                }
            }
            FieldType::Int64 => Values::Int64(
                any.downcast_ref::<Int64Array>()
                    .ok_or_else(missing)?
                    .clone(),
            ),
            FieldType::Float64 => Values::Float64(
                any.downcast_ref::<Float64Array>()
                    .ok_or_else(missing)?
                    .clone(),
            ),
            FieldType::Bool => Values::Bool(
                any.downcast_ref::<BooleanArray>()
                    .ok_or_else(missing)?
                    .clone(),
            ),
            FieldType::Timestamp => Values::Timestamp(
                any.downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(missing)?
                    .clone(),
            ),
        };
        let mut key = serde_json::to_vec(f.name()).map_err(|e| e.to_string())?;
        key.push(b':');
        out.push(OutColumn {
            name: f.name().clone(),
            key,
            values,
        });
    }
    Ok(out)
}

impl OutColumn {
    fn is_null(&self, i: usize) -> bool {
        match &self.values {
            Values::String(a) | Values::Json(a) => a.is_null(i),
            Values::Int64(a) => a.is_null(i),
            Values::Float64(a) => a.is_null(i),
            Values::Bool(a) => a.is_null(i),
            Values::Timestamp(a) => a.is_null(i),
        }
    }

    /// Row `i`'s value.
    fn value(&self, i: usize) -> Value {
        if self.is_null(i) {
            return Value::Null;
        }
        match &self.values {
            Values::String(a) => Value::String(a.value(i).to_owned()),
            Values::Json(a) => json_text(a.value(i)),
            Values::Int64(a) => a.value(i).into(),
            Values::Float64(a) => {
                serde_json::Number::from_f64(a.value(i)).map_or(Value::Null, Value::Number)
            }
            Values::Bool(a) => a.value(i).into(),
            Values::Timestamp(a) => rfc3339(a.value(i)).map_or(Value::Null, Value::String),
        }
    }

    /// Writes row `i`'s value as JSON.
    fn write(&self, i: usize, out: &mut Vec<u8>) {
        if self.is_null(i) {
            out.extend_from_slice(b"null");
            return;
        }
        // Writing to a Vec fails only for values JSON cannot hold, which these are not.
        let _ = match &self.values {
            Values::String(a) => serde_json::to_writer(&mut *out, a.value(i)),
            Values::Json(a) => serde_json::to_writer(&mut *out, &json_text(a.value(i))),
            Values::Int64(a) => serde_json::to_writer(&mut *out, &a.value(i)),
            Values::Float64(a) => match serde_json::Number::from_f64(a.value(i)) {
                Some(n) => serde_json::to_writer(&mut *out, &n),
                None => {
                    out.extend_from_slice(b"null");
                    Ok(())
                }
            },
            Values::Bool(a) => {
                out.extend_from_slice(if a.value(i) { b"true" } else { b"false" });
                Ok(())
            }
            Values::Timestamp(a) => serde_json::to_writer(&mut *out, &rfc3339(a.value(i))),
        };
    }
}

/// The document a `json` column's text holds (the text itself, if it holds none).
fn json_text(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema as ArrowSchema};
    use serde_json::json;

    fn schema() -> Schema {
        Schema::parse(
            &[("id", "string"), ("n", "int64?"), ("doc", "json?")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .expect("a schema")
    }

    #[test]
    fn a_row_holds_the_declared_fields_whatever_the_keys_look_like() {
        let s = schema();
        let plain = read_row(&s, br#"{"pad":[1,{"x":2}],"n":7,"id":"a","doc":{"k":[1]}}"#);
        assert_eq!(
            plain,
            // The schema's order: doc, id, n.
            Ok(vec![
                Some(json!({"k": [1]})),
                Some(json!("a")),
                Some(json!(7))
            ])
        );
        // Keys with escapes take the full parse, with the same result.
        let escaped = read_row(&s, br#"{"p\u0061d":1,"\u0069d":"a","n":null}"#);
        assert_eq!(escaped, Ok(vec![None, Some(json!("a")), Some(Value::Null)]));
        // The last of duplicate keys counts, as for any JSON object here.
        assert_eq!(
            read_row(&s, br#"{"id":"a","id":"b"}"#).unwrap()[1],
            Some(json!("b"))
        );
    }

    #[test]
    fn what_is_not_a_row_says_why() {
        let s = schema();
        let why = |b: &[u8]| read_row(&s, b).unwrap_err();
        assert!(why(b"{\"id\":").starts_with("not JSON: "), "{}", why(b"{"));
        assert_eq!(
            why(b"[1]"),
            "not of the input schema: the schema needs a JSON object"
        );
        assert!(why(br#"{"n":1}"#).contains("field `id` (string) is missing"));
        assert!(why(br#"{"id":1}"#).contains("field `id`: expected string, got a number (1)"));
    }

    #[test]
    fn rows_written_as_bytes_are_the_objects_in_query_order() {
        let arrow = Arc::new(ArrowSchema::new(vec![
            Field::new("z", DataType::Utf8, true),
            Field::new("a", DataType::Float64, true),
            Field::new(ROW, DataType::UInt32, false),
        ]));
        let batch = RecordBatch::try_new(
            arrow,
            vec![
                Arc::new(StringArray::from(vec![Some("q\"uote"), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(UInt32Array::from(vec![4, 9])),
            ],
        )
        .expect("a batch");
        let bytes = to_json_bytes(&batch).expect("JSON");
        assert_eq!(bytes[0].0, 4);
        assert_eq!(
            String::from_utf8(bytes[0].1.clone()).unwrap(),
            r#"{"z":"q\"uote","a":1.5}"#
        );
        assert_eq!(
            (bytes[1].0, &bytes[1].1[..]),
            (9, &br#"{"z":null,"a":null}"#[..])
        );
        let objects = to_json(&batch).expect("objects");
        for ((_, b), o) in bytes.iter().zip(objects) {
            assert_eq!(
                serde_json::from_slice::<Value>(b).unwrap(),
                Value::Object(o)
            );
        }
    }
}
