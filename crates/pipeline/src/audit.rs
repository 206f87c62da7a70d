//! Audits: CEL checks over a complete bucket's fingerprint (`[[stages.X.audits]]`,
//! `[[sources.X.audits]]`), e.g. `v.count >= 0.99 * input.count && v.null_rate.email <
//! 0.01`. A check sees `v` (this node's bucket), `input` (the same bucket of a stage's
//! input topic, which must be fingerprinted too) and `previous` (this node's bucket
//! before, when kept), each as `{count, not_objects, untracked, nulls, null_rate,
//! distinct, min, max, mean, entropy}` — the per-field figures as maps by field name
//! (`v.entropy.country`); `input` and `previous` are `{}` when there is none
//! (`!has(previous.count) || …`). A bucket's audits run when it is complete and again
//! when late events update it; a failing check (false, or an error such as a field the bucket
//! does not have) is signalled as `hifi.audit.failed` with the numbers it saw.

use cel_interpreter::{Context, ExecutionError, Program, Value as CelValue};
use hifi_fingerprint::Summary;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::AuditConfig;

/// The variables a check may name.
pub const VARIABLES: [&str; 4] = ["v", "input", "previous", "published"];

/// A compiled audit.
pub struct Audit {
    pub name: String,
    pub check: String,
    program: Program,
    /// Whether the check names `input` (the bucket then waits for its input's).
    pub needs_input: bool,
    /// Whether the check names `published` (the bucket then waits for the published
    /// version's).
    pub needs_published: bool,
    /// Whether a failure keeps a candidate version unpublished.
    pub blocking: bool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("name", &self.name)
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

/// One audit's verdict on one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub audit: String,
    pub check: String,
    pub passed: bool,
    /// Whether its failure keeps a candidate version unpublished.
    #[serde(default)]
    pub blocking: bool,
    /// Why it could not be decided (then it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Compiles a node's audits (`versioned`: a stage with versions, whose checks may name
/// `published`); the error names the audit and what is wrong.
pub fn compile(cfgs: &[AuditConfig], versioned: bool) -> Result<Vec<Audit>, (usize, String)> {
    cfgs.iter()
        .enumerate()
        .map(|(i, c)| {
            let program = Program::compile(&c.check)
                .map_err(|e| (i, format!("check does not parse as CEL: {e}")))?;
            let refs = program.references();
            if refs.has_variable("published") && !versioned {
                return Err((i, "`published` is the published version's fingerprint: it needs `versions = { … }` on the stage; compare with `input` or `previous`".to_owned()));
            }
            if let Some(other) = refs
                .variables()
                .into_iter()
                .find(|v| !VARIABLES.contains(v))
            {
                return Err((
                    i,
                    format!("check names `{other}`; a check sees only v, input, previous and published"),
                ));
            }
            Ok(Audit {
                name: c.name.clone().unwrap_or_else(|| format!("audits[{i}]")),
                check: c.check.clone(),
                needs_input: refs.has_variable("input"),
                needs_published: refs.has_variable("published"),
                blocking: c.blocking,
                program,
            })
        })
        .collect()
}

/// A bucket's figures as a check sees them. Every figure is a double: CEL's unsigned
/// integers panic (or wrap) on `v.count - input.count` when the result is negative, and
/// counts up to 2^53 are exact as doubles.
pub fn variables(s: &Summary) -> Value {
    let mut per: [(&str, Map<String, Value>); 7] = [
        ("nulls", Map::new()),
        ("null_rate", Map::new()),
        ("distinct", Map::new()),
        ("min", Map::new()),
        ("max", Map::new()),
        ("mean", Map::new()),
        ("entropy", Map::new()),
    ];
    for (name, f) in &s.fields {
        let values = [
            Some(json!(f.nulls as f64)),
            Some(json!(f.null_rate)),
            Some(json!(f.distinct as f64)),
            f.min.map(|x| json!(x)),
            f.max.map(|x| json!(x)),
            f.mean.map(|x| json!(x)),
            f.entropy.map(|e| json!(e.bits)),
        ];
        for ((_, map), v) in per.iter_mut().zip(values) {
            if let Some(v) = v {
                map.insert(name.clone(), v);
            }
        }
    }
    let mut out = Map::new();
    out.insert("count".into(), json!(s.count as f64));
    out.insert("not_objects".into(), json!(s.not_objects as f64));
    out.insert("untracked".into(), json!(s.untracked as f64));
    for (k, m) in per {
        out.insert(k.into(), Value::Object(m));
    }
    Value::Object(out)
}

/// Runs every audit on a bucket.
pub fn run(
    audits: &[Audit],
    v: &Value,
    input: Option<&Value>,
    previous: Option<&Value>,
    published: Option<&Value>,
) -> Vec<Verdict> {
    let mut root = Context::default();
    root.add_function("abs", abs);
    audits
        .iter()
        .map(|a| {
            let mut ctx = root.new_inner_scope();
            let none = Value::Object(Map::new());
            let bound = [
                ("v", Some(v)),
                ("input", input),
                ("previous", previous),
                ("published", published),
            ]
            .into_iter()
            .try_for_each(|(k, x)| {
                ctx.add_variable(k, x.unwrap_or(&none))
                    .map_err(|e| e.to_string())
            });
            let result = bound.and_then(|()| {
                let run = crate::health::contained(|| a.program.execute(&ctx))
                    .map_err(|p| format!("the check's evaluation failed: {p}"))?;
                match run {
                    Ok(CelValue::Bool(b)) => Ok(b),
                    Ok(other) => Err(format!("the check gave {other:?}, not true or false")),
                    Err(e) => Err(e.to_string()),
                }
            });
            Verdict {
                audit: a.name.clone(),
                check: a.check.clone(),
                passed: result == Ok(true),
                blocking: a.blocking,
                error: result.err(),
            }
        })
        .collect()
}

/// `abs(x)`, which CEL's standard functions lack (`abs(v.entropy.country -
/// previous.entropy.country) <= 0.1`).
fn abs(x: CelValue) -> Result<CelValue, ExecutionError> {
    match x {
        CelValue::Int(i) => Ok(CelValue::Int(i.saturating_abs())),
        CelValue::UInt(u) => Ok(CelValue::UInt(u)),
        CelValue::Float(f) => Ok(CelValue::Float(f.abs())),
        other => Err(ExecutionError::function_error(
            "abs",
            format!("{other:?} is not a number"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hifi_fingerprint::{Bucket, Settings};

    fn summary(events: &[&str]) -> Value {
        let mut b = Bucket::default();
        let s = Settings {
            fields_max: 8,
            entropy: vec!["country".into()],
        };
        for e in events {
            b.add(e.as_bytes(), &s);
        }
        variables(&b.summary())
    }

    fn audits(checks: &[&str]) -> Vec<Audit> {
        let cfgs: Vec<AuditConfig> = checks
            .iter()
            .map(|c| AuditConfig {
                name: None,
                check: (*c).to_owned(),
                blocking: false,
            })
            .collect();
        compile(&cfgs, false).unwrap()
    }

    #[test]
    fn checks_see_the_figures_by_field() {
        let input = summary(&[
            r#"{"country":"de"}"#,
            r#"{"country":"fr"}"#,
            r#"{"country":"de"}"#,
        ]);
        let v = summary(&[r#"{"country":"de","email":null}"#, r#"{"country":"fr"}"#]);
        let verdicts = run(
            &audits(&[
                "v.count >= 0.5 * input.count",
                "v.null_rate.email < 0.01",
                "v.entropy.country == 1.0 && v.distinct.country == 2",
                "v.mean.amount > 0.0",
                "abs(v.entropy.country - input.entropy.country) <= 0.1 * input.entropy.country",
                "abs(v.count - input.count) == 1 && abs(-2.5) == 2.5 && v.count - input.count == -1",
                "v.count == 2 && v.count >= 2 && v.distinct.country < 3",
                "1u - 2u > 0u",
                "!has(previous.count) || v.count >= 0.5 * previous.count",
                "!('country' in v.entropy) || abs(v.entropy.country - input.entropy.country) <= 0.5",
                "previous.count > 0.0",
            ]),
            &v,
            Some(&input),
            None,
            None,
        );
        let passed: Vec<bool> = verdicts.iter().map(|v| v.passed).collect();
        assert_eq!(
            passed,
            [true, false, true, false, true, true, true, false, true, true, false],
            "{verdicts:?}"
        );
        assert!(
            verdicts[1].error.is_some(),
            "email was never non-null: no such key"
        );
        assert!(verdicts[3].error.is_some());
        assert_eq!(verdicts[0].audit, "audits[0]");
    }

    #[test]
    fn unknown_variables_and_published_are_refused() {
        let cfg = |check: &str| AuditConfig {
            name: Some("a".into()),
            check: check.into(),
            blocking: false,
        };
        let err = compile(&[cfg("published.count > 0")], false).unwrap_err();
        assert!(err.1.contains("versions"), "{err:?}");
        let err = compile(&[cfg("w.count > 0")], true).unwrap_err();
        assert!(err.1.contains("`w`"), "{err:?}");
        let err = compile(&[cfg("v.count >")], true).unwrap_err();
        assert!(err.1.contains("CEL"), "{err:?}");
        assert!(compile(&[cfg("v.count > previous.count * 0.5")], false).is_ok());
        assert!(compile(&[cfg("v.count >= published.count")], true).unwrap()[0].needs_published);
    }
}
