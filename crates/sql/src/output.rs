//! What a window query gives (plain types: a build without the engine has them too).

use serde_json::{Map, Value};

/// Columns the stage adds to every output row: the window's bounds.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";

/// One output row of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    /// The same for the same group every time the window is computed.
    pub key: String,
    /// The row (without the window's bounds, which the stage adds).
    pub value: Map<String, Value>,
}

/// What a window's query gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowOutput {
    /// The rows.
    pub rows: Vec<WindowRow>,
    /// Events left out, by their index in the window, with the reason (not of the input
    /// schema, not JSON, or the query fails on them).
    pub refused: Vec<(usize, String)>,
}
