//! Topic schemas: the top-level fields an event of a topic has, and their types.
//!
//! ```toml
//! [topics.orders]
//! schema = { id = "string", ts = "timestamp", amount = "float64", note = "string?" }
//! ```
//! A declared field is required (present and not null) unless its type ends in `?`.
//! Fields that are not declared pass through unchecked (a SQL stage does not see them).
//! Types, with the JSON each accepts:
//! - `string` — a string;
//! - `int64` — an integer in the i64 range;
//! - `float64` — any number;
//! - `bool` — `true` or `false`;
//! - `timestamp` — an RFC 3339 string, or an integer of milliseconds since the epoch;
//! - `json` — any value (a free-form sub-document; SQL sees its JSON text).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use serde_json::Value;

/// The type of one declared field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
    Json,
}

impl FieldType {
    /// The names a schema may use.
    pub const NAMES: &'static str = "string, int64, float64, bool, timestamp, json";

    fn parse(name: &str) -> Option<FieldType> {
        Some(match name {
            "string" => FieldType::String,
            "int64" => FieldType::Int64,
            "float64" => FieldType::Float64,
            "bool" => FieldType::Bool,
            "timestamp" => FieldType::Timestamp,
            "json" => FieldType::Json,
            _ => return None,
        })
    }

    /// The name as written in a schema.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Json => "json",
        }
    }

    /// The Arrow type SQL sees.
    pub fn arrow(self) -> DataType {
        match self {
            FieldType::String | FieldType::Json => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        }
    }

    /// The schema type of an Arrow type a query produces, if hifi can carry it.
    pub fn of_arrow(t: &DataType) -> Option<FieldType> {
        Some(match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::String,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            // Counts (`json_length`); a value past i64 fails its row.
            | DataType::UInt64 => FieldType::Int64,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => FieldType::Float64,
            DataType::Boolean => FieldType::Bool,
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => FieldType::Timestamp,
            _ => return None,
        })
    }
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
    /// May be missing or null (`"string?"`).
    pub optional: bool,
}

impl fmt::Display for FieldSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.ty.name(),
            if self.optional { "?" } else { "" }
        )
    }
}

/// A topic's schema: its declared fields, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub fields: Vec<FieldSpec>,
}

/// Prefix of the columns hifi adds to a query's input; no declared field may use it.
pub const RESERVED_PREFIX: &str = "__hifi";

impl Schema {
    /// Parses `{ field = "type" }`; the error names the field and the valid types.
    pub fn parse(decl: &BTreeMap<String, String>) -> Result<Schema, String> {
        if decl.is_empty() {
            return Err("a schema declares at least one field, e.g. { id = \"string\" }".into());
        }
        let mut fields = Vec::with_capacity(decl.len());
        for (name, ty) in decl {
            if name.is_empty() || name.starts_with(RESERVED_PREFIX) {
                return Err(format!(
                    "field {name:?}: names may not be empty or start with {RESERVED_PREFIX:?}"
                ));
            }
            let (base, optional) = match ty.strip_suffix('?') {
                Some(b) => (b, true),
                None => (ty.as_str(), false),
            };
            let Some(ty) = FieldType::parse(base) else {
                return Err(format!(
                    "field {name:?}: unknown type {ty:?}; use one of {} (add ? for optional: \"string?\")",
                    FieldType::NAMES
                ));
            };
            fields.push(FieldSpec {
                name: name.clone(),
                ty,
                optional,
            });
        }
        Ok(Schema { fields })
    }

    /// Checks one event (a JSON object): every reason it does not fit, by field.
    pub fn check(&self, event: &Value) -> Result<(), String> {
        let Value::Object(map) = event else {
            return Err("the schema needs a JSON object".into());
        };
        self.check_values(self.fields.iter().map(|f| map.get(&f.name)))
    }

    /// Checks an event's values of the declared fields, in their order (`None` when
    /// absent): every reason they do not fit, by field.
    pub fn check_values<'v>(
        &self,
        values: impl IntoIterator<Item = Option<&'v Value>>,
    ) -> Result<(), String> {
        let mut why = Vec::new();
        for (f, v) in self.fields.iter().zip(values) {
            match v {
                None | Some(Value::Null) if f.optional => {}
                None => why.push(format!("field `{}` ({f}) is missing", f.name)),
                Some(Value::Null) => why.push(format!("field `{}` ({f}) is null", f.name)),
                Some(v) => {
                    if let Err(e) = fits(f.ty, v) {
                        why.push(format!("field `{}`: expected {}, {e}", f.name, f.ty.name()));
                    }
                }
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// The Arrow schema a query reads (declared fields, nullable when optional).
    pub fn arrow(&self) -> ArrowSchema {
        ArrowSchema::new(
            self.fields
                .iter()
                .map(|f| Field::new(&f.name, f.ty.arrow(), f.optional))
                .collect::<Vec<_>>(),
        )
    }

    /// The schema of a query's output, from its Arrow schema; the error names the column
    /// whose type hifi cannot carry.
    pub fn of_arrow(schema: &ArrowSchema) -> Result<Schema, String> {
        let mut fields = Vec::new();
        for f in schema.fields() {
            if f.name().starts_with(RESERVED_PREFIX) {
                continue;
            }
            let ty = FieldType::of_arrow(f.data_type()).ok_or_else(|| {
                let hint = match f.data_type() {
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                        "; turn bytes into text with encode(…, 'hex')".to_owned()
                    }
                    // `json_get` and `->` give a union of JSON value kinds.
                    DataType::Union(..) => "; take a typed value with json_get_str, json_get_int, json_get_float, json_get_bool or json_get_json (or `->>` for text)".to_owned(),
                    _ => format!("; cast it to one of {}", FieldType::NAMES),
                };
                format!(
                    "column `{}` has type {}, which an event cannot carry{hint}",
                    f.name(),
                    f.data_type(),
                )
            })?;
            fields.push(FieldSpec {
                name: f.name().clone(),
                ty,
                optional: f.is_nullable(),
            });
        }
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Schema { fields })
    }

    /// The Arrow schema, shared.
    pub fn arrow_ref(&self) -> Arc<ArrowSchema> {
        Arc::new(self.arrow())
    }
}

/// Whether `v` is a value of `ty`; else what it is.
fn fits(ty: FieldType, v: &Value) -> Result<(), String> {
    let ok = match ty {
        FieldType::String => v.is_string(),
        FieldType::Int64 => v.is_i64() || v.as_u64().is_some_and(|u| u <= i64::MAX as u64),
        FieldType::Float64 => v.is_number(),
        FieldType::Bool => v.is_boolean(),
        FieldType::Timestamp => match v {
            Value::String(s) => {
                return chrono::DateTime::parse_from_rfc3339(s)
                    .map(|_| ())
                    .map_err(|e| format!("got {s:?}, not RFC 3339 ({e})"));
            }
            _ => v.is_i64(),
        },
        FieldType::Json => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {}", kind(v)))
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) if n.is_f64() => format!("a fractional number ({n})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.len() <= 40 => format!("a string ({s:?})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Milliseconds since the epoch of a value that [`Schema::check`] accepted as a timestamp.
pub fn timestamp_ms(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => v.as_i64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(pairs: &[(&str, &str)]) -> Result<Schema, String> {
        Schema::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn declared_types_check_events_and_name_every_problem() {
        let s = schema(&[
            ("id", "string"),
            ("ts", "timestamp"),
            ("amount", "float64"),
            ("n", "int64"),
            ("ok", "bool"),
            ("extra", "json"),
            ("note", "string?"),
        ])
        .unwrap();
        let good = json!({"id": "a", "ts": "2026-12-06T00:00:00Z", "amount": 3, "n": 2,
            "ok": true, "extra": {"x": [1]}, "undeclared": 1});
        assert_eq!(s.check(&good), Ok(()));
        let ms = json!({"id": "a", "ts": 1_800_000_000_000_i64, "amount": 1.5, "n": -1,
            "ok": false, "extra": [], "note": null});
        assert_eq!(s.check(&ms), Ok(()));
        let bad = json!({"id": 1, "ts": "yesterday", "amount": "3", "n": 1.5, "extra": 1});
        let e = s.check(&bad).unwrap_err();
        for part in [
            "field `amount`: expected float64, got a string (\"3\")",
            "field `id`: expected string, got a number (1)",
            "field `n`: expected int64, got a fractional number (1.5)",
            "field `ok` (bool) is missing",
            "field `ts`: expected timestamp, got \"yesterday\", not RFC 3339",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        assert!(!e.contains("note"), "{e}");
        assert_eq!(
            s.check(&json!([1])),
            Err("the schema needs a JSON object".into())
        );
    }

    #[test]
    fn bad_declarations_say_what_to_write() {
        let e = schema(&[("a", "text")]).unwrap_err();
        assert!(
            e.contains("unknown type \"text\"") && e.contains("string, int64"),
            "{e}"
        );
        assert!(schema(&[("__hifi_row", "int64")]).is_err());
        assert!(schema(&[]).is_err());
    }
}
