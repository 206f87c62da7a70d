//! Computing on the stream: topic schemas ([`schema`]) and SQL row stages ([`row`]),
//! planned and run by Apache DataFusion over Arrow batches of events. Without the
//! `engine` feature (on by default) only [`schema`] is built: no DataFusion.
#![forbid(unsafe_code)]

#[cfg(feature = "engine")]
pub mod row;
pub mod schema;

#[cfg(feature = "engine")]
pub use row::{RowQuery, RowResult};
pub use schema::{FieldSpec, FieldType, Schema};
