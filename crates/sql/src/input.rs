//! The table a query reads, `input`, planned once and run on each batch.
//!
//! A stage runs the same query on batch after batch. Planning it each time (optimizing the
//! logical plan, choosing physical operators) costs more than running it on a small batch,
//! so the query is planned once, over [`InputTable`]: its scan is a [`BatchExec`] without
//! data and with unknown statistics (statistics of an empty table would let the optimizer
//! answer `count(*)` with 0 or drop the scan). [`Physical::run`] puts each batch into a
//! copy of the plan and executes it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    collect, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;

/// The `input` table while a query is planned: rows come only when it runs.
#[derive(Debug)]
pub(crate) struct InputTable {
    schema: SchemaRef,
}

impl InputTable {
    pub(crate) fn new(schema: SchemaRef) -> InputTable {
        InputTable { schema }
    }
}

#[async_trait]
impl TableProvider for InputTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(BatchExec::new(&self.schema, projection.cloned())?))
    }
}

/// The scan of `input`: the current batch's rows (projected), once bound to one.
#[derive(Debug, Clone)]
struct BatchExec {
    /// The whole input's schema (the batch's).
    table: SchemaRef,
    projection: Option<Vec<usize>>,
    batch: Option<RecordBatch>,
    properties: Arc<PlanProperties>,
}

impl BatchExec {
    fn new(table: &SchemaRef, projection: Option<Vec<usize>>) -> Result<BatchExec> {
        let schema = match &projection {
            Some(p) => Arc::new(table.project(p)?),
            None => table.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(BatchExec {
            table: table.clone(),
            projection,
            batch: None,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for BatchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "BatchExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for BatchExec {
    fn name(&self) -> &str {
        "BatchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch = self
            .batch
            .clone()
            .ok_or_else(|| DataFusionError::Internal("the input table has no batch".into()))?;
        Ok(Box::pin(MemoryStream::try_new(
            vec![batch],
            self.table.clone(),
            self.projection.clone(),
        )?))
    }
}

/// A query planned once into physical operators, run on one batch at a time.
pub(crate) struct Physical {
    plan: Arc<dyn ExecutionPlan>,
    ctx: SessionContext,
}

impl Physical {
    /// Optimizes and plans `plan` (which reads [`InputTable`]) in `ctx`.
    pub(crate) async fn of(ctx: SessionContext, plan: &LogicalPlan) -> Result<Physical> {
        let plan = ctx.state().create_physical_plan(plan).await?;
        Ok(Physical { plan, ctx })
    }

    /// The query's result over `batch` (of the input table's schema).
    pub(crate) async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let bound = self
            .plan
            .clone()
            .transform_up(|node| match node.downcast_ref::<BatchExec>() {
                Some(scan) => Ok(Transformed::yes(Arc::new(BatchExec {
                    batch: Some(batch.clone()),
                    ..scan.clone()
                })
                    as Arc<dyn ExecutionPlan>)),
                // Operators with state of a past run (dynamic filters) start afresh.
                None => Ok(Transformed::yes(node.reset_state()?)),
            })?
            .data;
        collect(bound, self.ctx.task_ctx()).await
    }
}
