//! Field-level lineage of a query, from its logical plan: for every output column, the
//! input columns **selected** into it (their values flow into it) and those used
//! **non-selected** (they decide which rows exist or where they go: `WHERE`, `GROUP BY`,
//! join conditions, `HAVING`, `ORDER BY`, a window's `PARTITION BY`/`ORDER BY`).
//!
//! A query reads one table, `input`, so every source is an input column name. The walk
//! follows the plan bottom-up: each node says, for each of its output columns, which input
//! columns reach it, and which input columns decided its rows. CTEs and subqueries in
//! `FROM` are plan nodes like any other; a subquery inside an expression (`IN (SELECT …)`,
//! `EXISTS`, a scalar subquery) adds what it reads to the expression that holds it. A
//! column used both ways is listed as selected only.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};

use crate::row::ROW;

/// Where one output column comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldLineage {
    /// The output column.
    pub field: String,
    /// Input columns whose values flow into it.
    pub selected: Vec<String>,
    /// Input columns that decide its rows without flowing into it.
    pub non_selected: Vec<String>,
}

/// Input columns reaching one column of a plan node.
#[derive(Debug, Clone, Default)]
struct Sources {
    selected: BTreeSet<String>,
    non_selected: BTreeSet<String>,
}

impl Sources {
    fn add(&mut self, other: &Sources) {
        self.selected.extend(other.selected.iter().cloned());
        self.non_selected.extend(other.non_selected.iter().cloned());
    }

    /// Everything, as non-selected (a column deciding rows passes all it depends on).
    fn all(&self) -> impl Iterator<Item = &String> {
        self.selected.iter().chain(&self.non_selected)
    }
}

/// What a plan node gives: per output column its sources, and the input columns that
/// decided which rows exist (they are non-selected for every column).
#[derive(Debug, Clone, Default)]
struct Node {
    columns: Vec<Sources>,
    rows: BTreeSet<String>,
}

/// The lineage of each output column of `sql` over events of `input`, for any query
/// (aggregates, joins, subqueries: not only what a row stage takes).
pub async fn of_query(sql: &str, input: &crate::Schema) -> Result<Vec<FieldLineage>, String> {
    of_plan(&crate::row::plan(sql, input).await?.plan)
}

/// The lineage of each output column of `plan`, in output order (the hidden row column
/// left out).
pub fn of_plan(plan: &LogicalPlan) -> Result<Vec<FieldLineage>, String> {
    let node = walk(plan)?;
    let fields = plan.schema().fields();
    Ok(fields
        .iter()
        .zip(node.columns)
        .filter(|(f, _)| f.name() != ROW)
        .map(|(f, s)| {
            let non_selected = s
                .non_selected
                .iter()
                .chain(&node.rows)
                .filter(|c| !s.selected.contains(*c))
                .cloned()
                .collect::<BTreeSet<_>>();
            FieldLineage {
                field: f.name().clone(),
                selected: s.selected.into_iter().collect(),
                non_selected: non_selected.into_iter().collect(),
            }
        })
        .collect())
}

/// A conservative lineage for a plan the walk cannot follow (UNNEST, a recursive CTE):
/// every output column selected from every input column.
pub fn every_input(plan: &LogicalPlan, input: &crate::Schema) -> Vec<FieldLineage> {
    let all: Vec<String> = input.fields.iter().map(|f| f.name.clone()).collect();
    plan.schema()
        .fields()
        .iter()
        .filter(|f| f.name() != ROW)
        .map(|f| FieldLineage {
            field: f.name().clone(),
            selected: all.clone(),
            non_selected: Vec::new(),
        })
        .collect()
}

fn walk(plan: &LogicalPlan) -> Result<Node, String> {
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let mut node = Node {
                columns: scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| Sources {
                        selected: BTreeSet::from([f.name().clone()]),
                        ..Sources::default()
                    })
                    .collect(),
                rows: BTreeSet::new(),
            };
            for f in &scan.filters {
                for c in f.column_refs() {
                    node.rows.insert(c.name.clone());
                }
            }
            node.rows.remove(ROW);
            for c in &mut node.columns {
                c.selected.remove(ROW);
            }
            node
        }
        LogicalPlan::Projection(p) => {
            let input = walk(&p.input)?;
            let columns = p
                .expr
                .iter()
                .map(|e| of_expr(e, p.input.schema(), &input))
                .collect::<Result<_, _>>()?;
            Node {
                columns,
                rows: input.rows,
            }
        }
        LogicalPlan::Filter(f) => {
            let mut input = walk(&f.input)?;
            let used = of_expr(&f.predicate, f.input.schema(), &input)?;
            input.rows.extend(used.all().cloned());
            input
        }
        LogicalPlan::Aggregate(a) => {
            let input = walk(&a.input)?;
            let schema = a.input.schema();
            let groups = grouping_set_to_exprlist(&a.group_expr).map_err(|e| e.to_string())?;
            let mut node = Node {
                columns: Vec::new(),
                rows: input.rows.clone(),
            };
            for g in &groups {
                let s = of_expr(g, schema, &input)?;
                node.rows.extend(s.all().cloned());
                node.columns.push(s);
            }
            for e in &a.aggr_expr {
                node.columns.push(of_expr(e, schema, &input)?);
            }
            // Grouping sets add a grouping id: it comes from the group keys.
            let keys = node.rows.clone();
            while node.columns.len() < a.schema.fields().len() {
                node.columns.push(Sources {
                    non_selected: keys.clone(),
                    ..Sources::default()
                });
            }
            node
        }
        LogicalPlan::Window(w) => {
            let mut node = walk(&w.input)?;
            let extra = w
                .window_expr
                .iter()
                .map(|e| of_expr(e, w.input.schema(), &node))
                .collect::<Result<Vec<_>, _>>()?;
            node.columns.extend(extra);
            node
        }
        LogicalPlan::Sort(s) => {
            let mut node = walk(&s.input)?;
            for e in &s.expr {
                let used = of_expr(&e.expr, s.input.schema(), &node)?;
                node.rows.extend(used.all().cloned());
            }
            node
        }
        LogicalPlan::Join(j) => {
            let (left, right) = (walk(&j.left)?, walk(&j.right)?);
            let both = Node {
                columns: left.columns.iter().chain(&right.columns).cloned().collect(),
                rows: left.rows.union(&right.rows).cloned().collect(),
            };
            let schema = j
                .left
                .schema()
                .join(j.right.schema())
                .map_err(|e| e.to_string())?;
            let mut rows = both.rows.clone();
            let conditions = j.on.iter().flat_map(|(l, r)| [l, r]).chain(&j.filter);
            for e in conditions {
                rows.extend(of_expr(e, &schema, &both)?.all().cloned());
            }
            // Semi and anti joins keep one side's columns; a mark join adds a column
            // saying whether the row matched (the join's conditions decide it).
            let mut columns = match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left.columns,
                JoinType::RightSemi | JoinType::RightAnti => right.columns,
                _ => both.columns,
            };
            let mark = Sources {
                non_selected: rows.clone(),
                ..Sources::default()
            };
            columns.resize(j.schema.fields().len(), mark);
            Node { columns, rows }
        }
        LogicalPlan::Union(u) => {
            let mut node = Node::default();
            for input in &u.inputs {
                let n = walk(input)?;
                if node.columns.len() < n.columns.len() {
                    node.columns.resize_with(n.columns.len(), Sources::default);
                }
                for (acc, s) in node.columns.iter_mut().zip(&n.columns) {
                    acc.add(s);
                }
                node.rows.extend(n.rows);
            }
            node
        }
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let mut node = walk(input)?;
            // Which rows are distinct depends on every column.
            let every: Vec<String> = node.columns.iter().flat_map(|c| c.all().cloned()).collect();
            node.rows.extend(every);
            node
        }
        LogicalPlan::Distinct(Distinct::On(d)) => {
            let input = walk(&d.input)?;
            let schema = d.input.schema();
            let mut rows = input.rows.clone();
            let sort = d.sort_expr.iter().flatten().map(|s| &s.expr);
            for e in d.on_expr.iter().chain(sort) {
                rows.extend(of_expr(e, schema, &input)?.all().cloned());
            }
            let columns = d
                .select_expr
                .iter()
                .map(|e| of_expr(e, schema, &input))
                .collect::<Result<_, _>>()?;
            Node { columns, rows }
        }
        LogicalPlan::SubqueryAlias(s) => walk(&s.input)?,
        LogicalPlan::Subquery(s) => walk(&s.subquery)?,
        LogicalPlan::Limit(l) => walk(&l.input)?,
        LogicalPlan::Repartition(r) => walk(&r.input)?,
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Node {
            columns: vec![Sources::default(); plan.schema().fields().len()],
            rows: BTreeSet::new(),
        },
        other => {
            return Err(format!(
                "field lineage cannot be derived through a {} node",
                other.display()
            ))
        }
    })
}

/// The input columns an expression over `input` (with `schema`) reads. A window
/// function's `PARTITION BY` and `ORDER BY` are non-selected; a subquery adds everything
/// it reads (its own filters as non-selected).
fn of_expr(expr: &Expr, schema: &DFSchema, input: &Node) -> Result<Sources, String> {
    let mut out = Sources::default();
    let mut failed = None;
    let column = |c: &datafusion::common::Column, selected: bool, out: &mut Sources| {
        match schema.maybe_index_of_column(c) {
            Some(i) if i < input.columns.len() => {
                let s = &input.columns[i];
                if selected {
                    out.add(s);
                } else {
                    out.non_selected.extend(s.all().cloned());
                }
            }
            // A correlated subquery's reference to the outer query: the outer column's
            // name (an input column, or one the outer query named).
            _ => {
                let into = if selected {
                    &mut out.selected
                } else {
                    &mut out.non_selected
                };
                into.insert(c.name.clone());
            }
        }
    };
    expr.apply(|e| {
        match e {
            Expr::Column(c) => column(c, true, &mut out),
            Expr::OuterReferenceColumn(_, c) => column(c, false, &mut out),
            Expr::WindowFunction(w) => {
                for a in &w.params.args {
                    for c in a.column_refs() {
                        column(c, true, &mut out);
                    }
                }
                let keys = w.params.partition_by.iter();
                for k in keys.chain(w.params.order_by.iter().map(|s| &s.expr)) {
                    for c in k.column_refs() {
                        column(c, false, &mut out);
                    }
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            Expr::ScalarSubquery(s) => match of_subquery(&s.subquery) {
                Ok(sub) => out.add(&sub),
                Err(why) => failed = Some(why),
            },
            Expr::InSubquery(i) => match of_subquery(&i.subquery.subquery) {
                Ok(sub) => out.non_selected.extend(sub.all().cloned()),
                Err(why) => failed = Some(why),
            },
            Expr::Exists(x) => match of_subquery(&x.subquery.subquery) {
                Ok(sub) => out.non_selected.extend(sub.all().cloned()),
                Err(why) => failed = Some(why),
            },
            Expr::SetComparison(x) => match of_subquery(&x.subquery.subquery) {
                Ok(sub) => out.non_selected.extend(sub.all().cloned()),
                Err(why) => failed = Some(why),
            },
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    match failed {
        Some(why) => Err(why),
        None => Ok(out),
    }
}

/// Everything a subquery reads: what its columns select, and what decides its rows as
/// non-selected.
fn of_subquery(plan: &LogicalPlan) -> Result<Sources, String> {
    let node = walk(plan)?;
    let mut out = Sources::default();
    for c in &node.columns {
        out.add(c);
    }
    out.non_selected.extend(node.rows);
    Ok(out)
}
