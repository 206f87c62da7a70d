//! Topic schemas and SQL stages, checked with the graph: each `[topics.X] schema` is
//! parsed, each SQL stage is planned against its input topic's schema (declared, or
//! derived from the SQL stage writing that topic), and its output schema is derived —
//! or, when the output topic declares one, checked against it.

use std::collections::BTreeMap;
use std::sync::Arc;

use hifi_sql::Schema;

use crate::config::{ConfigError, LoadedConfig};
use crate::sql::{RowQuery, WindowQuery};

/// What [`derive`] found: schemas by topic and compiled queries by stage.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// Topic → its schema (declared, or derived from the SQL stage writing it).
    pub schemas: BTreeMap<String, Arc<Schema>>,
    /// SQL stage → its compiled query.
    pub queries: BTreeMap<String, Arc<RowQuery>>,
    /// Window stage → its compiled query.
    pub windows: BTreeMap<String, Arc<WindowQuery>>,
}

/// Parses declared schemas and plans every SQL stage, in the order the graph allows.
pub fn derive(loaded: &LoadedConfig) -> Result<Derived, ConfigError> {
    let cfg = &loaded.config;
    let mut d = Derived::default();
    for (topic, t) in &cfg.topics {
        if let Some(decl) = &t.schema {
            let s = Schema::parse(decl.get_ref())
                .map_err(|m| loaded.error_at(decl, format!("topics.{topic}.schema"), m))?;
            d.schemas.insert(topic.clone(), Arc::new(s));
        }
    }
    let mut pending: Vec<&String> = Vec::new();
    for (name, s) in &cfg.stages {
        if let (Some(w), None) = (&s.window, &s.sql) {
            return Err(loaded.error_at(
                w,
                format!("stages.{name}.window"),
                "a window needs a query to run on each window's events: add sql = \"SELECT … FROM input GROUP BY …\"",
            ));
        }
        if let Some(w) = &s.window {
            if w.get_ref().size.0.as_millis() == 0 {
                return Err(loaded.error_at(
                    w,
                    format!("stages.{name}.window.size"),
                    "must be at least 1ms, e.g. \"1m\"",
                ));
            }
        }
        let Some(sql) = &s.sql else { continue };
        if !s.transforms.is_empty() {
            return Err(loaded.error_at(
                sql,
                format!("stages.{name}.sql"),
                "a stage runs either sql or transforms; put the filter in WHERE and the changes in SELECT",
            ));
        }
        pending.push(name);
    }
    // A SQL stage may read what another writes: plan those whose input schema is known,
    // until none is left (the graph has no cycles, so each round plans at least one).
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for name in pending {
            let s = &cfg.stages[name];
            let (input, output) = (s.input.get_ref(), s.output.get_ref());
            let writer_waits = pending_writer(loaded, input, &d);
            let Some(schema) = d.schemas.get(input).cloned() else {
                if writer_waits {
                    waiting.push(name);
                    continue;
                }
                let sql = s.sql.as_ref().expect("a SQL stage");
                return Err(loaded.error_at(
                    sql,
                    format!("stages.{name}.sql"),
                    format!("a SQL stage needs a schema on its input: declare it, e.g. [topics.{input}] schema = {{ id = \"string\", amount = \"float64\" }}"),
                ));
            };
            let sql = s.sql.as_ref().expect("a SQL stage");
            let at = |m: String| loaded.error_at(sql, format!("stages.{name}.sql"), m);
            let derived = if s.window.is_some() {
                let q = futures_executor::block_on(WindowQuery::compile(sql.get_ref(), &schema))
                    .map_err(at)?;
                let out = q.output().clone();
                d.windows.insert(name.clone(), Arc::new(q));
                out
            } else {
                let q = futures_executor::block_on(RowQuery::compile(sql.get_ref(), &schema))
                    .map_err(at)?;
                let out = q.output().clone();
                d.queries.insert(name.clone(), Arc::new(q));
                out
            };
            match d.schemas.get(output) {
                Some(declared) if cfg.topics.get(output).is_some_and(|t| t.schema.is_some()) => {
                    if let Some(why) = mismatch(declared, &derived) {
                        return Err(loaded.error_at(
                            sql,
                            format!("stages.{name}.sql"),
                            format!("its output does not fit topics.{output}.schema: {why}"),
                        ));
                    }
                }
                Some(_) => {
                    return Err(loaded.error_at(
                        &s.output,
                        format!("stages.{name}.output"),
                        format!("topic {output:?} is written by more than one SQL stage; declare its schema in [topics.{output}] so both are checked against it"),
                    ));
                }
                None => {
                    d.schemas.insert(output.clone(), Arc::new(derived));
                }
            }
        }
        if waiting.len() == before {
            let name = waiting[0];
            return Err(loaded.error(
                format!("stages.{name}.input"),
                "its input's schema depends on a SQL stage that depends on it; declare the schema in [topics.…]",
            ));
        }
        pending = waiting;
    }
    Ok(d)
}

/// Whether a SQL stage not planned yet writes `topic` (its schema is still to come).
fn pending_writer(loaded: &LoadedConfig, topic: &str, d: &Derived) -> bool {
    loaded.config.stages.iter().any(|(n, s)| {
        let planned = d.queries.contains_key(n) || d.windows.contains_key(n);
        s.sql.is_some() && s.output.get_ref() == topic && !planned
    })
}

/// Why `derived` does not fit `declared`, if it does not: every declared field must be
/// produced with its type (nullability is not compared: DataFusion calls most function
/// results nullable).
fn mismatch(declared: &Schema, derived: &Schema) -> Option<String> {
    let mut why = Vec::new();
    for f in &declared.fields {
        match derived.fields.iter().find(|g| g.name == f.name) {
            None => why.push(format!("`{}` ({f}) is not selected", f.name)),
            Some(g) if g.ty != f.ty => why.push(format!(
                "`{}` is {} in the query, {} in the schema",
                f.name,
                g.ty.name(),
                f.ty.name()
            )),
            Some(_) => {}
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}
