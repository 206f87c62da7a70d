//! Window queries: a SQL query run once over the events of one closed event-time window
//! — a bounded batch, so anything SQL can say is allowed (aggregates, `DISTINCT`, window
//! functions, joins of the window's events with themselves).
//!
//! Each output row gets a **key**, so that the stage can give it an id that is the same
//! every time the window is computed: the values of its group-key columns (the columns
//! a `GROUP BY` made, selected as they are); one empty key when the query aggregates
//! without groups (one row per window); otherwise the whole row.

use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Expr, LogicalPlan};
use serde_json::Value;

use crate::held::WindowEvents;
use crate::input::Physical;
use crate::json::to_json;
use crate::lineage::FieldLineage;
pub use crate::output::{WindowOutput, WindowRow, WINDOW_END, WINDOW_START};
use crate::row::{clean, plan, Planned};
use crate::schema::{FieldSpec, FieldType, Schema};

/// How output rows are keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keys {
    /// By the values of these output columns (group keys).
    Columns(Vec<String>),
    /// One row per window: the empty key.
    Single,
    /// By the whole row.
    Row,
}

/// A compiled window query.
pub struct WindowQuery {
    input: Arc<Schema>,
    input_arrow: SchemaRef,
    output: Schema,
    keys: Keys,
    lineage: Vec<FieldLineage>,
    query: Physical,
}

impl std::fmt::Debug for WindowQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowQuery")
            .field("output", &self.output)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl WindowQuery {
    /// Plans `sql` over the events of one window of `input`.
    pub async fn compile(sql: &str, input: &Schema) -> Result<WindowQuery, String> {
        let Planned {
            plan,
            ctx,
            input_arrow,
        } = plan(sql, input).await?;
        let mut output = Schema::of_arrow(plan.schema().as_arrow())?;
        if output.fields.is_empty() {
            return Err("the query selects no column".into());
        }
        for name in [WINDOW_START, WINDOW_END] {
            if output.fields.iter().any(|f| f.name == name) {
                return Err(format!(
                    "the query selects a column `{name}`; the stage adds it (the window's bounds): rename yours"
                ));
            }
            output.fields.push(FieldSpec {
                name: name.into(),
                ty: FieldType::Timestamp,
                optional: false,
            });
        }
        // A plan the lineage walk cannot follow still runs: its lineage is conservative.
        let mut lineage = crate::lineage::of_plan(&plan)
            .unwrap_or_else(|_| crate::lineage::every_input(&plan, input));
        // The window's bounds come from event times (the events' metadata), not fields.
        for name in [WINDOW_START, WINDOW_END] {
            lineage.push(FieldLineage {
                field: name.into(),
                selected: Vec::new(),
                non_selected: Vec::new(),
            });
        }
        let keys = keys_of(&plan);
        let query = Physical::of(ctx, &plan)
            .await
            .map_err(|e| clean(e.to_string()))?;
        Ok(WindowQuery {
            input: Arc::new(input.clone()),
            input_arrow,
            output,
            keys,
            lineage,
            query,
        })
    }

    /// The schema of the events the stage writes (the query's columns, then
    /// [`WINDOW_START`] and [`WINDOW_END`]).
    pub fn output(&self) -> &Schema {
        &self.output
    }

    /// Where each output column comes from.
    pub fn lineage(&self) -> &[FieldLineage] {
        &self.lineage
    }

    /// An empty window, to hold events of this query's input as they arrive.
    pub fn events(&self) -> WindowEvents {
        WindowEvents::new(self.input.clone())
    }

    /// Runs the query over one window's events (stored values). Events that are not of
    /// the input schema are left out and listed; when the query fails on the window, the
    /// events it fails on alone are found, listed and left out, and it runs again.
    pub async fn run(&self, values: &[&[u8]]) -> WindowOutput {
        let mut events = self.events();
        let mut refused = Vec::new();
        // Place in `events` → place in `values`.
        let mut place = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match events.push(v) {
                Ok(()) => place.push(i),
                Err(why) => refused.push((i, why)),
            }
        }
        let mut out = self.run_held(&mut events).await;
        out.refused = out
            .refused
            .into_iter()
            .map(|(k, why)| (place[k], why))
            .chain(refused)
            .collect();
        out.refused.sort_by_key(|(i, _)| *i);
        out
    }

    /// Runs the query over a window's held events; refused events are listed by their
    /// place in `events` (the query fails on every part holding them, down to them alone:
    /// they are left out and it runs again). The window keeps its events less the refused ones (the stage removes the
    /// same places from its own list of them).
    pub async fn run_held(&self, events: &mut WindowEvents) -> WindowOutput {
        let mut out = WindowOutput::default();
        let n = events.len();
        let batch = match events.batch(&self.input_arrow) {
            Ok(b) => b,
            Err(why) => {
                out.refused = (0..n).map(|i| (i, why.clone())).collect();
                events.clear();
                return out;
            }
        };
        let why = match self.execute(batch.clone()).await {
            Ok(rows) => {
                out.rows = rows;
                return out;
            }
            Err(why) => why,
        };
        // Find the events the query fails on alone, by halves (a part it runs on holds
        // none of them): about 2·k·log2(n) runs for k such events among n, where one run
        // per event would take a million runs for a window of a million. Without them it
        // may pass.
        let mut kept = Vec::with_capacity(n);
        let mut parts = vec![(0usize, n)];
        while let Some((from, len)) = parts.pop() {
            if len == 0 {
                continue;
            }
            match self.execute(batch.slice(from, len)).await {
                Ok(_) => kept.extend((from..from + len).map(|i| i as u32)),
                Err(e) if len == 1 => out.refused.push((from, e)),
                Err(_) => {
                    let half = len / 2;
                    // The second half first, so the first is taken (and kept) first.
                    parts.push((from + half, len - half));
                    parts.push((from, half));
                }
            }
        }
        kept.sort_unstable();
        let indices = UInt32Array::from(kept.clone());
        let again = match take_record_batch(&batch, &indices) {
            Ok(b) => {
                events.replace(&b);
                self.execute(b).await
            }
            Err(e) => Err(e.to_string()),
        };
        match again {
            Ok(rows) => out.rows = rows,
            Err(_) => {
                out.refused
                    .extend(kept.into_iter().map(|i| (i as usize, why.clone())));
                events.clear();
            }
        }
        out.refused.sort_by_key(|(i, _)| *i);
        out
    }

    async fn execute(&self, batch: RecordBatch) -> Result<Vec<WindowRow>, String> {
        let batches = self
            .query
            .run(batch)
            .await
            .map_err(|e| clean(e.to_string()))?;
        let mut out = Vec::new();
        for b in &batches {
            for value in to_json(b)? {
                let key = match &self.keys {
                    Keys::Single => String::new(),
                    Keys::Row => Value::Object(value.clone()).to_string(),
                    Keys::Columns(names) => {
                        let vals: Vec<&Value> = names
                            .iter()
                            .map(|n| value.get(n).unwrap_or(&Value::Null))
                            .collect();
                        serde_json::to_string(&vals).map_err(|e| e.to_string())?
                    }
                };
                out.push(WindowRow { key, value });
            }
        }
        Ok(out)
    }
}

/// How a plan's output rows are keyed: by the group-key columns it selects as they are;
/// one row when it aggregates without groups; else by the whole row (also when it
/// groups but does not select every key).
fn keys_of(plan: &LogicalPlan) -> Keys {
    let mut groups = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(a) = node {
            groups = Some(!a.group_expr.is_empty());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match groups {
        None => Keys::Row,
        Some(false) => Keys::Single,
        Some(true) => match key_columns(plan) {
            Some(cols) if cols.iter().any(|k| *k) => Keys::Columns(
                plan.schema()
                    .fields()
                    .iter()
                    .zip(cols)
                    .filter(|(_, k)| *k)
                    .map(|(f, _)| f.name().clone())
                    .collect(),
            ),
            _ => Keys::Row,
        },
    }
}

/// For each output column, whether it is a group key passed through unchanged.
fn key_columns(plan: &LogicalPlan) -> Option<Vec<bool>> {
    match plan {
        LogicalPlan::Aggregate(a) => {
            let n = grouping_set_to_exprlist(&a.group_expr).ok()?.len();
            Some((0..a.schema.fields().len()).map(|i| i < n).collect())
        }
        LogicalPlan::Projection(p) => {
            let inner = key_columns(&p.input)?;
            let schema = p.input.schema();
            Some(
                p.expr
                    .iter()
                    .map(|e| match e.clone().unalias() {
                        Expr::Column(c) => schema
                            .maybe_index_of_column(&c)
                            .is_some_and(|i| inner.get(i) == Some(&true)),
                        _ => false,
                    })
                    .collect(),
            )
        }
        LogicalPlan::Filter(f) => key_columns(&f.input),
        LogicalPlan::Sort(s) => key_columns(&s.input),
        LogicalPlan::Limit(l) => key_columns(&l.input),
        LogicalPlan::SubqueryAlias(s) => key_columns(&s.input),
        LogicalPlan::Window(w) => {
            let mut k = key_columns(&w.input)?;
            k.resize(w.schema.fields().len(), false);
            Some(k)
        }
        _ => None,
    }
}
