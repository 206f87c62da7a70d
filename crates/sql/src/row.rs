//! Row stages: a SQL query over each batch of a topic's events, one output event (or none,
//! when `WHERE` filters it) per input event.
//!
//! The query is planned once against the input topic's schema, with a hidden column
//! `__hifi_row` (the event's place in the batch) added to the input and carried through
//! every projection, so each output row names the event it came from: the stage keeps that
//! event's id, time and origin, and the ledger follows it. A query that could change the
//! number of rows per event otherwise (aggregates, joins, window functions, `UNNEST`,
//! `DISTINCT`, `LIMIT`, set operations, subqueries) is refused with the reason.
//!
//! Each batch: events → Arrow arrays (by the schema) → the plan over them → JSON objects.
//! When the query fails on a batch at run time (a cast, an overflow), each event is run on
//! its own, so only the events it fails on are refused (the stage dead-letters them).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::input::{InputTable, Physical};
use crate::json::{read_row, to_batch, to_json_bytes, Row};
use crate::lineage::FieldLineage;
use crate::schema::{FieldType, Schema};

/// The hidden column naming each event's place in its batch.
pub const ROW: &str = "__hifi_row";
/// The table name a query reads.
pub const INPUT: &str = "input";
/// Arrow field metadata marking a column that holds JSON text (a `json` field).
pub(crate) const JSON_META: &str = "hifi.type";

/// What a query did with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum RowResult {
    /// Its output event (a JSON object).
    Out(Bytes),
    /// `WHERE` removed it.
    Filtered,
    /// It cannot go through: not an object of the input schema, or the query failed on it.
    Refused(String),
}

/// A compiled row query.
pub struct RowQuery {
    input: Schema,
    /// The input's Arrow schema, with [`ROW`] last.
    input_arrow: SchemaRef,
    output: Schema,
    lineage: Vec<FieldLineage>,
    query: Physical,
}

impl std::fmt::Debug for RowQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowQuery")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// A query planned over the table [`INPUT`] of `input`'s events (with [`ROW`] last).
pub(crate) struct Planned {
    pub plan: LogicalPlan,
    pub ctx: SessionContext,
    pub input_arrow: SchemaRef,
}

/// Plans `sql` over the table [`INPUT`] of `input`'s schema (no row restrictions).
pub(crate) async fn plan(sql: &str, input: &Schema) -> Result<Planned, String> {
    let mut fields: Vec<Field> = input
        .fields
        .iter()
        .map(|f| {
            let field = Field::new(&f.name, f.ty.arrow(), f.optional);
            if f.ty == FieldType::Json {
                field.with_metadata(HashMap::from([(JSON_META.into(), "json".into())]))
            } else {
                field
            }
        })
        .collect();
    fields.push(Field::new(ROW, DataType::UInt32, false));
    let input_arrow = Arc::new(ArrowSchema::new(fields));
    // One partition: a batch is small, and no repartitioning is worth its cost.
    let mut ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    datafusion_functions_json::register_all(&mut ctx).map_err(|e| e.to_string())?;
    ctx.register_table(INPUT, Arc::new(InputTable::new(input_arrow.clone())))
        .map_err(|e| e.to_string())?;
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| clean(e.to_string()))?;
    Ok(Planned {
        plan,
        ctx,
        input_arrow,
    })
}

impl RowQuery {
    /// Plans `sql` over events of `input`. The error says what is wrong and, where
    /// DataFusion knows it, where in the query and which columns exist.
    pub async fn compile(sql: &str, input: &Schema) -> Result<RowQuery, String> {
        let Planned {
            plan,
            ctx,
            input_arrow,
        } = plan(sql, input).await?;
        refuse_non_row(&plan)?;
        let lineage = crate::lineage::of_plan(&plan)?;
        let plan = carry_row_ids(plan)?;
        let output = Schema::of_arrow(plan.schema().as_arrow())?;
        if output.fields.is_empty() {
            return Err("the query selects no column".into());
        }
        let query = Physical::of(ctx, &plan)
            .await
            .map_err(|e| clean(e.to_string()))?;
        Ok(RowQuery {
            input: input.clone(),
            input_arrow,
            output,
            lineage,
            query,
        })
    }

    /// Where each output field comes from (selected and non-selected input fields).
    pub fn lineage(&self) -> &[FieldLineage] {
        &self.lineage
    }

    /// The schema of the events the query writes.
    pub fn output(&self) -> &Schema {
        &self.output
    }

    /// Runs the query over one batch of events (each a stored value): one result per event,
    /// in order.
    pub async fn run(&self, values: &[&[u8]]) -> Vec<RowResult> {
        let mut results: Vec<Option<RowResult>> = vec![None; values.len()];
        let mut rows: Vec<(usize, Row)> = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match read_row(&self.input, v) {
                Ok(row) => rows.push((i, row)),
                Err(why) => results[i] = Some(RowResult::Refused(why)),
            }
        }
        match self.execute(&rows).await {
            Ok(out) => {
                for (i, r) in out {
                    results[i] = Some(r);
                }
            }
            // The query fails somewhere in the batch: find where, event by event.
            Err(_) if rows.len() > 1 => {
                for row in rows {
                    let i = row.0;
                    results[i] = Some(match self.execute(std::slice::from_ref(&row)).await {
                        Ok(mut out) => out.pop().map_or(RowResult::Filtered, |(_, r)| r),
                        Err(why) => RowResult::Refused(why),
                    });
                }
            }
            Err(why) => {
                for (i, _) in rows {
                    results[i] = Some(RowResult::Refused(why.clone()));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(RowResult::Filtered))
            .collect()
    }

    /// The query over `rows` (index in the batch, checked event): each row's result,
    /// `Filtered` for those it removed.
    async fn execute(&self, rows: &[(usize, Row)]) -> Result<Vec<(usize, RowResult)>, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = to_batch(&self.input, &self.input_arrow, rows)?;
        let out = self
            .query
            .run(batch)
            .await
            .map_err(|e| clean(e.to_string()))?;
        let mut results: Vec<(usize, RowResult)> = rows
            .iter()
            .map(|(i, _)| (*i, RowResult::Filtered))
            .collect();
        let place: HashMap<usize, usize> =
            rows.iter().enumerate().map(|(k, (i, _))| (*i, k)).collect();
        for b in &out {
            for (i, json) in to_json_bytes(b)? {
                let k = place
                    .get(&(i as usize))
                    .ok_or("a row id out of its batch")?;
                results[*k].1 = RowResult::Out(json.into());
            }
        }
        Ok(results)
    }
}

/// Refuses a plan that could make other than one row per event.
fn refuse_non_row(plan: &LogicalPlan) -> Result<(), String> {
    let mut why = None;
    plan.apply(|node| {
        let reason = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::Aggregate(_) => Some(
                "an aggregate (GROUP BY, count(*), sum(…)) makes one row of many events; give the stage a window, e.g. window = { size = \"1m\" }",
            ),
            LogicalPlan::Join(_) => Some("a join can make many rows of one event, or none"),
            LogicalPlan::Unnest(_) => Some("UNNEST makes many rows of one event"),
            LogicalPlan::Window(_) => Some(
                "window functions (OVER …) compute across events of a batch, whose bounds are arbitrary",
            ),
            LogicalPlan::Distinct(_) => Some("DISTINCT merges events"),
            LogicalPlan::Limit(_) => Some("LIMIT drops events by their place in a batch"),
            LogicalPlan::Sort(_) => Some("ORDER BY has no meaning for one event at a time"),
            LogicalPlan::Union(_) => Some("a set operation (UNION, INTERSECT, EXCEPT) combines rows"),
            _ => Some("only SELECT … FROM input [WHERE …] keeps one row per event"),
        };
        if let Some(r) = reason {
            why = Some(r.to_owned());
            return Ok(TreeNodeRecursion::Stop);
        }
        let subquery = node.expressions().iter().any(|e| {
            e.exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
                ))
            })
            .unwrap_or(false)
        });
        if subquery {
            why = Some("a subquery in an expression reads other rows than the event's own".into());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    match why {
        Some(w) => Err(format!(
            "a stage without a window runs its query on each event alone: {w}"
        )),
        None => Ok(()),
    }
}

/// Adds [`ROW`] to every projection that does not select it already.
fn carry_row_ids(plan: LogicalPlan) -> Result<LogicalPlan, String> {
    plan.transform_up(|node| match node {
        LogicalPlan::Projection(p) if p.schema.index_of_column_by_name(None, ROW).is_none() => {
            let mut exprs = p.expr.clone();
            let qualified = p
                .input
                .schema()
                .qualified_field_with_unqualified_name(ROW)
                .map(|(q, _)| q.cloned())
                .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
            exprs.push(Expr::Column(Column::new(qualified, ROW)));
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(exprs, p.input.clone())?,
            )))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
    .map_err(|e| e.to_string())
}

/// DataFusion's messages, without the hidden column among "valid fields".
pub(crate) fn clean(msg: String) -> String {
    msg.replace(&format!(", input.{ROW}"), "")
        .replace(&format!("input.{ROW}, "), "")
}
