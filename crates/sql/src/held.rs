//! The events of one open window, held as Arrow columns of the input schema: each event
//! is read (and checked) once, when it arrives, and holds only its declared fields'
//! values — tens of bytes for a small event, where its stored record with its headers
//! would hold a kilobyte and more.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::json::{read_row, Builders};
use crate::schema::Schema;

/// Rows appended before the builders are finished into a chunk: bounds what growing
/// builders hold beyond their rows.
const CHUNK_ROWS: usize = 4096;

/// One window's events as Arrow columns, in the order they were held.
pub struct WindowEvents {
    input: Arc<Schema>,
    builders: Builders,
    /// Rows in the builders.
    pending: usize,
    /// Finished chunks, each a column per input field.
    chunks: Vec<Vec<ArrayRef>>,
    len: usize,
}

impl std::fmt::Debug for WindowEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowEvents")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl WindowEvents {
    pub(crate) fn new(input: Arc<Schema>) -> WindowEvents {
        WindowEvents {
            builders: Builders::new(&input),
            input,
            pending: 0,
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Reads an event (a stored value) into the window; the error says why it is not of
    /// the input schema (then nothing is held).
    pub fn push(&mut self, value: &[u8]) -> Result<(), String> {
        let row = read_row(&self.input, value)?;
        self.builders.append(&row);
        self.pending += 1;
        self.len += 1;
        if self.pending >= CHUNK_ROWS {
            self.seal();
        }
        Ok(())
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no event is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal(&mut self) {
        if self.pending > 0 {
            self.chunks.push(self.builders.finish());
            self.pending = 0;
        }
    }

    /// Holds no event any more (every one was refused).
    pub(crate) fn clear(&mut self) {
        self.builders = Builders::new(&self.input);
        self.pending = 0;
        self.chunks.clear();
        self.len = 0;
    }

    /// Holds only the rows of `kept` (a batch made by [`WindowEvents::batch`], some of its
    /// rows left out), in its order.
    pub(crate) fn replace(&mut self, kept: &RecordBatch) {
        let fields = self.input.fields.len();
        self.chunks = vec![kept.columns()[..fields].to_vec()];
        self.len = kept.num_rows();
    }

    /// Every event held, as one batch of `arrow` (the input schema with [`crate::row::ROW`]
    /// last, each row's place in the window). The window keeps its events (compacted into
    /// one chunk), so later events can be added and the batch made again.
    pub(crate) fn batch(&mut self, arrow: &SchemaRef) -> Result<RecordBatch, String> {
        self.seal();
        let fields = self.input.fields.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields + 1);
        if self.chunks.len() > 1 {
            let mut joined = Vec::with_capacity(fields);
            for k in 0..fields {
                let parts: Vec<&dyn Array> = self.chunks.iter().map(|c| c[k].as_ref()).collect();
                joined.push(concat(&parts).map_err(|e| e.to_string())?);
            }
            self.chunks = vec![joined];
        }
        match self.chunks.first() {
            Some(chunk) => columns.extend(chunk.iter().cloned()),
            None => columns.extend(self.builders.finish()),
        }
        columns.push(Arc::new(UInt32Array::from_iter_values(0..self.len as u32)));
        RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
    }
}
