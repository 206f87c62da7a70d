//! Computing on the stream: topic schemas ([`schema`]) and SQL row stages ([`row`]),
//! planned and run by Apache DataFusion over Arrow batches of events.
#![forbid(unsafe_code)]

pub mod row;
pub mod schema;

pub use row::{RowQuery, RowResult};
pub use schema::{FieldSpec, FieldType, Schema};
