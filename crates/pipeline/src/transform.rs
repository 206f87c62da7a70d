//! A stage's per-event transforms, compiled once from the configuration.
//!
//! Transforms see the stored value as JSON: for plain JSON events the event itself, for
//! CloudEvents the whole envelope (so conditions read `event.data.amount`). Filter
//! conditions are CEL (crate `cel-interpreter`) with the event bound to `event`.
//!
//! **Errors never drop data.** When a transform cannot apply (the value is not JSON, the
//! condition fails to evaluate — e.g. a missing field — or is not a boolean), the event
//! passes that transform unchanged and the error is counted and logged: a broken filter
//! lets data through visibly instead of silently discarding it. Write
//! `has(event.x) && event.x > 1` to treat a missing field as false.

use bytes::Bytes;
use cel_interpreter::{Context, Program, Value as CelValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{RedactMode, TransformConfig};

/// One compiled transform.
#[derive(Debug)]
enum Transform {
    Filter {
        source: String,
        program: Program,
    },
    Set {
        field: Vec<String>,
        value: Value,
    },
    Rename {
        from: Vec<String>,
        to: Vec<String>,
    },
    Remove {
        fields: Vec<Vec<String>>,
    },
    Redact {
        field: Vec<String>,
        mode: RedactMode,
        salt: String,
        keep_last: usize,
    },
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Pass on this value (unchanged bytes when no transform changed anything).
    Keep(Bytes),
    /// A filter dropped it on purpose (outcome `filtered`).
    Filtered,
    /// The value cannot be read as JSON, so no transform can be applied (neither a
    /// filter nor a redaction): the stage dead-letters it, never passes it on.
    Unreadable(String),
    /// A SQL stage's query cannot take it (not of the input schema, or the query fails
    /// on it): dead-lettered with the reason.
    Refused(String),
}

/// The transforms of one stage, in order.
#[derive(Debug, Default)]
pub struct Transforms {
    list: Vec<Transform>,
}

/// A transform that could not be compiled: which one and why.
#[derive(Debug, thiserror::Error)]
#[error("transforms[{index}] ({kind}): {message}")]
pub struct CompileError {
    /// Position in the stage's `transforms` list.
    pub index: usize,
    /// The transform's type.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Parses a JSON pointer (`/a/b~1c` → `["a", "b/c"]`).
pub fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Err("a field pointer must not be empty (it would be the whole event)".into());
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("{p:?} is not a JSON pointer; write it as \"/field/sub\""))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

impl Transforms {
    /// Compiles a stage's transforms.
    pub fn compile(configs: &[TransformConfig]) -> Result<Self, CompileError> {
        let mut list = Vec::with_capacity(configs.len());
        for (index, c) in configs.iter().enumerate() {
            let err = |kind, message: String| CompileError {
                index,
                kind,
                message,
            };
            list.push(match c {
                TransformConfig::Filter { condition } => {
                    let program = Program::compile(condition)
                        .map_err(|e| err("filter", format!("cannot parse condition {condition:?}: {e}")))?;
                    Transform::Filter { source: condition.clone(), program }
                }
                TransformConfig::Set { field, value } => Transform::Set {
                    field: parse_pointer(field).map_err(|m| err("set", m))?,
                    value: serde_json::to_value(value).map_err(|e| err("set", format!("value cannot be JSON: {e}")))?,
                },
                TransformConfig::Rename { from, to } => Transform::Rename {
                    from: parse_pointer(from).map_err(|m| err("rename", m))?,
                    to: parse_pointer(to).map_err(|m| err("rename", m))?,
                },
                TransformConfig::Remove { fields } => Transform::Remove {
                    fields: fields.iter().map(|f| parse_pointer(f)).collect::<Result<_, _>>().map_err(|m| err("remove", m))?,
                },
                TransformConfig::Redact { field, mode, salt, keep_last } => {
                    if *mode == RedactMode::Hash && salt.as_deref().is_none_or(str::is_empty) {
                        return Err(err("redact", "mode = \"hash\" needs a non-empty `salt` (without one, hashes of small values are reversible)".into()));
                    }
                    Transform::Redact {
                        field: parse_pointer(field).map_err(|m| err("redact", m))?,
                        mode: *mode,
                        salt: salt.clone().unwrap_or_default(),
                        keep_last: *keep_last,
                    }
                }
            });
        }
        Ok(Transforms { list })
    }

    /// Whether there is nothing to do (a pass-through stage copies bytes as they are).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Applies every transform to one value. `errors` gets one line per transform that
    /// could not apply (the event then passes it unchanged); a value that is not JSON
    /// at all is [`Applied::Unreadable`].
    pub fn apply(
        &self,
        cel_root: &Context<'_>,
        value: &Bytes,
        errors: &mut Vec<String>,
    ) -> Applied {
        if self.list.is_empty() {
            return Applied::Keep(value.clone());
        }
        let mut json: Value = match serde_json::from_slice(value) {
            Ok(v) => v,
            Err(e) => return Applied::Unreadable(format!("the value is not readable JSON ({e})")),
        };
        let mut changed = false;
        for t in &self.list {
            match t {
                Transform::Filter { source, program } => {
                    match eval_condition(cel_root, program, &json) {
                        Ok(true) => {}
                        Ok(false) => return Applied::Filtered,
                        Err(e) => errors.push(format!("filter {source:?}: {e}; event kept")),
                    }
                }
                Transform::Set { field, value } => {
                    set(&mut json, field, value.clone());
                    changed = true;
                }
                Transform::Rename { from, to } => {
                    if let Some(v) = remove(&mut json, from) {
                        set(&mut json, to, v);
                        changed = true;
                    }
                }
                Transform::Remove { fields } => {
                    for f in fields {
                        changed |= remove(&mut json, f).is_some();
                    }
                }
                Transform::Redact {
                    field,
                    mode,
                    salt,
                    keep_last,
                } => {
                    if let Some(v) = get_mut(&mut json, field) {
                        *v = Value::String(redact(v, *mode, salt, *keep_last));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            Applied::Keep(serde_json::to_vec(&json).map_or_else(|_| value.clone(), Bytes::from))
        } else {
            Applied::Keep(value.clone())
        }
    }
}

fn eval_condition(root: &Context<'_>, program: &Program, event: &Value) -> Result<bool, String> {
    let mut ctx = root.new_inner_scope();
    ctx.add_variable_from_value("event", cel_value(event));
    let run = crate::health::contained(|| program.execute(&ctx))
        .map_err(|p| format!("the condition's evaluation failed: {p}"))?;
    match run {
        Ok(CelValue::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("condition returned {other:?}, not a boolean")),
        Err(e) => Err(e.to_string()),
    }
}

/// An event as CEL sees it. A JSON integer becomes a signed `int` (an unsigned one only
/// past `i64::MAX`): as CEL `uint`s — what serde would make of non-negative numbers —
/// `event.a - event.b` panicked, or wrapped around in a release build, whenever the
/// result was negative.
fn cel_value(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => CelValue::Int(i),
            (None, Some(u)) => CelValue::UInt(u),
            _ => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(std::sync::Arc::new(a.iter().map(cel_value).collect())),
        Value::Object(o) => CelValue::Map(cel_interpreter::objects::Map {
            map: std::sync::Arc::new(
                o.iter()
                    .map(|(k, v)| {
                        let key =
                            cel_interpreter::objects::Key::String(std::sync::Arc::new(k.clone()));
                        (key, cel_value(v))
                    })
                    .collect(),
            ),
        }),
    }
}

fn redact(v: &Value, mode: RedactMode, salt: &str, keep_last: usize) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match mode {
        RedactMode::Hash => {
            let mut h = Sha256::new();
            h.update(salt.as_bytes());
            h.update(text.as_bytes());
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        }
        RedactMode::Mask => {
            let chars: Vec<char> = text.chars().collect();
            let keep = keep_last.min(chars.len());
            let tail: String = chars[chars.len() - keep..].iter().collect();
            format!("****{tail}")
        }
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, tok| match cur {
        Value::Object(m) => m.get_mut(tok),
        Value::Array(a) => tok.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
        _ => None,
    })
}

fn remove(v: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match get_mut(v, parent)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|&i| i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    }
}

/// Sets `path` to `new`, creating objects on the way (a non-object in the way is
/// replaced by an object).
fn set(v: &mut Value, path: &[String], new: Value) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for tok in parent {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(tok.clone())
            .or_insert(Value::Null);
    }
    if !cur.is_object() {
        *cur = Value::Object(Default::default());
    }
    cur.as_object_mut()
        .expect("made an object above")
        .insert(last.clone(), new);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(toml_text: &str) -> Transforms {
        #[derive(serde::Deserialize)]
        struct W {
            transforms: Vec<TransformConfig>,
        }
        let w: W = toml::from_str(toml_text).unwrap();
        Transforms::compile(&w.transforms).unwrap()
    }

    fn run(ts: &Transforms, v: &str) -> (Applied, Vec<String>) {
        let mut errs = Vec::new();
        let root = Context::default();
        (
            ts.apply(&root, &Bytes::copy_from_slice(v.as_bytes()), &mut errs),
            errs,
        )
    }

    #[test]
    fn filter_set_rename_remove_redact() {
        let ts = t(r#"
            [[transforms]]
            type = "filter"
            condition = 'event.amount > 100 && event.country == "DE"'
            [[transforms]]
            type = "set"
            field = "/meta/stage"
            value = "clean"
            [[transforms]]
            type = "rename"
            from = "/country"
            to = "/geo/country"
            [[transforms]]
            type = "remove"
            fields = ["/debug", "/missing"]
            [[transforms]]
            type = "redact"
            field = "/card"
            mode = "mask"
            keep_last = 4
        "#);
        let (out, errs) = run(
            &ts,
            r#"{"amount":150,"country":"DE","debug":1,"card":"4111111111111111"}"#,
        );
        assert!(errs.is_empty());
        let Applied::Keep(bytes) = out else { panic!() };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"amount":150,"geo":{"country":"DE"},"meta":{"stage":"clean"},"card":"****1111"})
        );
        assert_eq!(
            run(&ts, r#"{"amount":50,"country":"DE"}"#).0,
            Applied::Filtered
        );
    }

    #[test]
    fn integers_are_signed_so_differences_can_be_negative() {
        let ts = t("[[transforms]]\ntype = \"filter\"\ncondition = 'event.a - event.b < 0 && event.c > 1.5 && event.a == 1u'\n");
        let (out, errs) = run(&ts, r#"{"a":1,"b":2,"c":2}"#);
        assert!(matches!(out, Applied::Keep(_)), "{out:?} {errs:?}");
        assert!(errs.is_empty(), "{errs:?}");
        let (out, errs) = run(&ts, r#"{"a":3,"b":2,"c":2}"#);
        assert_eq!(out, Applied::Filtered, "{errs:?}");
        let big =
            t("[[transforms]]\ntype = \"filter\"\ncondition = 'event.n > 9223372036854775807u'\n");
        let (out, errs) = run(&big, r#"{"n":18446744073709551615}"#);
        assert!(
            matches!(out, Applied::Keep(_)) && errs.is_empty(),
            "{out:?} {errs:?}"
        );
    }

    #[test]
    fn a_failing_condition_keeps_the_event_and_says_why() {
        let ts = t("[[transforms]]\ntype = \"filter\"\ncondition = 'event.amount > 100'\n");
        let (out, errs) = run(&ts, r#"{"other":1}"#);
        assert_eq!(out, Applied::Keep(Bytes::from_static(br#"{"other":1}"#)));
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn a_value_that_is_not_json_is_unreadable_never_kept() {
        let ts = t("[[transforms]]\ntype = \"redact\"\nfield = \"/card\"\nmode = \"mask\"\n");
        for v in ["not json", r#"{"card":"4111111111111111","x":"\ud800"}"#] {
            let (out, _) = run(&ts, v);
            assert!(matches!(out, Applied::Unreadable(_)), "{v}: {out:?}");
        }
    }

    #[test]
    fn hash_redaction_is_salted_and_stable() {
        let ts = t("[[transforms]]\ntype = \"redact\"\nfield = \"/email\"\nmode = \"hash\"\nsalt = \"s1\"\n");
        let (Applied::Keep(a), _) = run(&ts, r#"{"email":"a@b.c"}"#) else {
            panic!()
        };
        let (Applied::Keep(b), _) = run(&ts, r#"{"email":"a@b.c"}"#) else {
            panic!()
        };
        assert_eq!(a, b);
        assert!(!String::from_utf8(a.to_vec()).unwrap().contains("a@b.c"));
        let bad = vec![TransformConfig::Redact {
            field: "/x".into(),
            mode: RedactMode::Hash,
            salt: None,
            keep_last: 0,
        }];
        assert!(Transforms::compile(&bad)
            .unwrap_err()
            .to_string()
            .contains("salt"));
    }

    #[test]
    fn bad_conditions_and_pointers_fail_to_compile() {
        let cfg = vec![TransformConfig::Filter {
            condition: "event.a >".into(),
        }];
        assert!(Transforms::compile(&cfg).is_err());
        let cfg = vec![TransformConfig::Remove {
            fields: vec!["nope".into()],
        }];
        let e = Transforms::compile(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("transforms[0] (remove)") && e.contains("JSON pointer"),
            "{e}"
        );
    }
}
