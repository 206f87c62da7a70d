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
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Column;
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, TableScan};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Map, Value};

use crate::lineage::FieldLineage;
use crate::schema::{timestamp_ms, FieldType, Schema};

/// The hidden column naming each event's place in its batch.
pub const ROW: &str = "__hifi_row";
/// The table name a query reads.
pub const INPUT: &str = "input";
/// Arrow field metadata marking a column that holds JSON text (a `json` field).
const JSON_META: &str = "hifi.type";

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
    plan: LogicalPlan,
    ctx: SessionContext,
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

/// Plans `sql` over an empty table of `input`'s schema (no row restrictions).
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
    let empty = MemTable::try_new(input_arrow.clone(), vec![vec![]]).map_err(|e| e.to_string())?;
    ctx.register_table(INPUT, Arc::new(empty))
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
        Ok(RowQuery {
            input: input.clone(),
            input_arrow,
            output,
            lineage,
            plan,
            ctx,
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
        let mut rows: Vec<(usize, Value)> = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match serde_json::from_slice::<Value>(v) {
                Ok(v) => match self.input.check(&v) {
                    Ok(()) => rows.push((i, v)),
                    Err(why) => {
                        results[i] = Some(RowResult::Refused(format!(
                            "not of the input schema: {why}"
                        )))
                    }
                },
                Err(e) => results[i] = Some(RowResult::Refused(format!("not JSON: {e}"))),
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
    async fn execute(&self, rows: &[(usize, Value)]) -> Result<Vec<(usize, RowResult)>, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.to_batch(rows)?;
        let out = run_plan(&self.ctx, &self.plan, &self.input_arrow, batch).await?;
        let mut results: Vec<(usize, RowResult)> = rows
            .iter()
            .map(|(i, _)| (*i, RowResult::Filtered))
            .collect();
        let place: HashMap<usize, usize> =
            rows.iter().enumerate().map(|(k, (i, _))| (*i, k)).collect();
        for b in &out {
            let ids = b
                .column_by_name(ROW)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                .ok_or("the query lost its row ids")?;
            let json = to_json(b)?;
            for (r, obj) in json.into_iter().enumerate() {
                let i = ids.value(r) as usize;
                let k = place.get(&i).ok_or("a row id out of its batch")?;
                let bytes = serde_json::to_vec(&Value::Object(obj)).map_err(|e| e.to_string())?;
                results[*k].1 = RowResult::Out(bytes.into());
            }
        }
        Ok(results)
    }

    fn to_batch(&self, rows: &[(usize, Value)]) -> Result<RecordBatch, String> {
        to_batch(&self.input, &self.input_arrow, rows)
    }
}

/// Runs a plan planned over the empty `input` table over one batch instead.
pub(crate) async fn run_plan(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    arrow: &SchemaRef,
    batch: RecordBatch,
) -> Result<Vec<RecordBatch>, String> {
    let table = MemTable::try_new(arrow.clone(), vec![vec![batch]]).map_err(|e| e.to_string())?;
    let source = provider_as_source(Arc::new(table));
    let plan = plan
        .clone()
        .transform_up(|node| match node {
            LogicalPlan::TableScan(scan) => {
                Ok(Transformed::yes(LogicalPlan::TableScan(TableScan {
                    source: source.clone(),
                    ..scan
                })))
            }
            other => Ok(Transformed::no(other)),
        })
        .map_err(|e| e.to_string())?
        .data;
    ctx.execute_logical_plan(plan)
        .await
        .map_err(|e| clean(e.to_string()))?
        .collect()
        .await
        .map_err(|e| clean(e.to_string()))
}

/// Arrow arrays of checked events (with their places in [`ROW`]), by the input schema.
pub(crate) fn to_batch(
    input: &Schema,
    arrow: &SchemaRef,
    rows: &[(usize, Value)],
) -> Result<RecordBatch, String> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(input.fields.len() + 1);
    for f in &input.fields {
        let get = |v: &Value| v.get(&f.name).filter(|v| !v.is_null()).cloned();
        let col: ArrayRef = match f.ty {
            FieldType::String | FieldType::Json => {
                let mut b = StringBuilder::new();
                for (_, v) in rows {
                    match get(v) {
                        Some(Value::String(s)) if f.ty == FieldType::String => b.append_value(s),
                        Some(other) => b.append_value(other.to_string()),
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Int64 => {
                let mut b = Int64Builder::new();
                rows.iter()
                    .for_each(|(_, v)| b.append_option(get(v).and_then(|v| v.as_i64())));
                Arc::new(b.finish())
            }
            FieldType::Float64 => {
                let mut b = Float64Builder::new();
                rows.iter()
                    .for_each(|(_, v)| b.append_option(get(v).and_then(|v| v.as_f64())));
                Arc::new(b.finish())
            }
            FieldType::Bool => {
                let mut b = BooleanBuilder::new();
                rows.iter()
                    .for_each(|(_, v)| b.append_option(get(v).and_then(|v| v.as_bool())));
                Arc::new(b.finish())
            }
            FieldType::Timestamp => {
                let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                rows.iter()
                    .for_each(|(_, v)| b.append_option(get(v).as_ref().and_then(timestamp_ms)));
                Arc::new(b.finish())
            }
        };
        columns.push(col);
    }
    columns.push(Arc::new(UInt32Array::from_iter_values(
        rows.iter().map(|(i, _)| *i as u32),
    )));
    RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
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

/// A batch's rows as JSON objects (without [`ROW`]), columns in query order.
pub(crate) fn to_json(b: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    let mut rows = vec![Map::new(); b.num_rows()];
    let schema = b.schema();
    for (f, col) in schema.fields().iter().zip(b.columns()) {
        if f.name() == ROW {
            continue;
        }
        let json_text = f.metadata().get(JSON_META).is_some();
        let ty = FieldType::of_arrow(f.data_type())
            .ok_or_else(|| format!("column `{}` has type {}", f.name(), f.data_type()))?;
        let values = column_values(col, ty, json_text)?;
        for (row, v) in rows.iter_mut().zip(values) {
            row.insert(f.name().clone(), v);
        }
    }
    Ok(rows)
}

fn column_values(col: &ArrayRef, ty: FieldType, json_text: bool) -> Result<Vec<Value>, String> {
    let target = match ty {
        FieldType::String | FieldType::Json => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
    };
    // Not `safe`: a value that does not fit (an unsigned count past i64) fails the row
    // (dead-lettered with the reason) instead of becoming null unnoticed.
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let col = cast_with_options(col, &target, &strict).map_err(|e| e.to_string())?;
    let n = col.len();
    let any = col.as_any();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if col.is_null(i) {
            out.push(Value::Null);
            continue;
        }
        out.push(match ty {
            FieldType::String | FieldType::Json => {
                let s = any.downcast_ref::<StringArray>().ok_or("utf8")?.value(i);
                if json_text {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
                } else {
                    Value::String(s.to_owned())
                }
            }
            FieldType::Int64 => any
                .downcast_ref::<Int64Array>()
                .ok_or("int64")?
                .value(i)
                .into(),
            FieldType::Float64 => {
                let f = any
                    .downcast_ref::<Float64Array>()
                    .ok_or("float64")?
                    .value(i);
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
            FieldType::Bool => any
                .downcast_ref::<BooleanArray>()
                .ok_or("bool")?
                .value(i)
                .into(),
            FieldType::Timestamp => {
                let ms = any
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or("timestamp")?
                    .value(i);
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .map_or(Value::Null, Value::String)
            }
        });
    }
    Ok(out)
}

/// DataFusion's messages, without the hidden column among "valid fields".
pub(crate) fn clean(msg: String) -> String {
    msg.replace(&format!(", input.{ROW}"), "")
        .replace(&format!("input.{ROW}, "), "")
}
