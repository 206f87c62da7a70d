//! SQL stages, when this build has them (cargo feature `sql`, on by default: Apache
//! DataFusion through `hifi-sql`). A build without it keeps topic schemas, checked at
//! ingest, and refuses `stages.X.sql` by name when the configuration is checked.

#[cfg(feature = "sql")]
pub use hifi_sql::{RowQuery, WindowEvents, WindowQuery};
#[cfg(not(feature = "sql"))]
pub use off::{RowQuery, WindowEvents, WindowQuery};

use crate::transform::Applied;

/// Runs a stage's query on a batch of event values: one outcome per value, in order.
#[cfg(feature = "sql")]
pub async fn run(q: &RowQuery, values: &[&[u8]]) -> Vec<Applied> {
    use hifi_sql::RowResult;
    let results = q.run(values).await;
    results
        .into_iter()
        .map(|r| match r {
            RowResult::Out(b) => Applied::Keep(b),
            RowResult::Filtered => Applied::Filtered,
            RowResult::Refused(why) => Applied::Refused(why),
        })
        .collect()
}

/// Never called: a build without SQL has no query to run.
#[cfg(not(feature = "sql"))]
pub async fn run(q: &RowQuery, _values: &[&[u8]]) -> Vec<Applied> {
    match *q {}
}

/// Why `stages.X.sql` is refused by a build without the `sql` feature.
pub const NO_SQL: &str =
    "this hifi was built without SQL stages (cargo feature `sql`, on by default)";

#[cfg(not(feature = "sql"))]
mod off {
    use hifi_sql::Schema;

    /// A compiled query in a build without SQL: there is none (the type has no values),
    /// so the stage code that runs one compiles unchanged and never runs.
    #[derive(Debug)]
    pub enum RowQuery {}

    impl RowQuery {
        /// Always refuses, naming the missing feature.
        pub async fn compile(_sql: &str, _input: &Schema) -> Result<RowQuery, String> {
            Err(super::NO_SQL.to_owned())
        }

        pub fn output(&self) -> &Schema {
            match *self {}
        }
    }

    /// A compiled window query in a build without SQL: there is none.
    #[derive(Debug)]
    pub enum WindowQuery {}

    impl WindowQuery {
        /// Always refuses, naming the missing feature.
        pub async fn compile(_sql: &str, _input: &Schema) -> Result<WindowQuery, String> {
            Err(super::NO_SQL.to_owned())
        }

        pub fn output(&self) -> &Schema {
            match *self {}
        }

        pub fn events(&self) -> WindowEvents {
            match *self {}
        }

        pub async fn run_held(&self, _events: &mut WindowEvents) -> hifi_sql::WindowOutput {
            match *self {}
        }
    }

    /// A window's held events in a build without SQL: there are none.
    #[derive(Debug)]
    pub enum WindowEvents {}

    impl WindowEvents {
        pub fn push(&mut self, _value: &[u8]) -> Result<(), String> {
            match *self {}
        }

        pub fn len(&self) -> usize {
            match *self {}
        }

        pub fn is_empty(&self) -> bool {
            match *self {}
        }
    }
}
