//! Computing on the stream: topic schemas ([`schema`]), SQL row stages ([`row`]) and
//! window stages ([`window`]), planned and run by Apache DataFusion over Arrow batches of
//! events, and each query's field-level lineage ([`lineage`]). Without the
//! `engine` feature (on by default) only [`schema`] is built: no DataFusion.
#![forbid(unsafe_code)]

#[cfg(feature = "engine")]
mod held;
#[cfg(feature = "engine")]
mod input;
#[cfg(feature = "engine")]
mod json;
#[cfg(feature = "engine")]
pub mod lineage;
pub mod output;
#[cfg(feature = "engine")]
pub mod row;
pub mod schema;
#[cfg(feature = "engine")]
pub mod window;

#[cfg(feature = "engine")]
pub use held::WindowEvents;
#[cfg(feature = "engine")]
pub use lineage::FieldLineage;
pub use output::{WindowOutput, WindowRow};
#[cfg(feature = "engine")]
pub use row::{RowQuery, RowResult};
pub use schema::{FieldSpec, FieldType, Schema};
#[cfg(feature = "engine")]
pub use window::WindowQuery;
