//! Reading an ingest request's body within its bounds — bytes, time and the listener's
//! in-flight memory budget — and answering early errors so that every client sees them.
//!
//! - **Budget**: bytes are counted against `max_inflight_bytes` as they **arrive**, not
//!   reserved from the declared `Content-Length` up front. A client that trickles its
//!   body in holds only what it has sent (before, ~16 slow clients that declared 4 MiB
//!   each held the whole 64 MiB budget and everyone else got 503).
//! - **Time**: the whole body must arrive within `body_read_timeout` (408 after it).
//! - **Lingering close**: when the server answers before the body was read (413 on a
//!   declared or counted size, 503 over the budget), it first reads and discards the
//!   rest of the body for at most [`LINGER_TIME`] / [`LINGER_BYTES`], then answers with
//!   `Connection: close`. A client that writes its whole body before reading the answer
//!   (Python's `http.client` and `requests`) would otherwise get a connection reset
//!   instead of the status and its reason — nginx's `lingering_close` for the same
//!   reason. A client that asked `Expect: 100-continue` is answered at once (it sends
//!   nothing until told to).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// In-flight bytes are counted in units of this many bytes (semaphore permits).
pub const PERMIT_BYTES: u64 = 1024;

/// Longest time an early answer waits while the rest of the body is discarded.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// Most bytes discarded before an early answer.
pub const LINGER_BYTES: u64 = 256 << 20;

/// Bytes of one request counted against the listener's in-flight budget; released when
/// dropped.
#[derive(Debug)]
pub struct Budget {
    pool: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    /// Bytes counted so far (permits held cover them, rounded up).
    bytes: u64,
}

impl Budget {
    /// An empty budget drawing on `pool`.
    pub fn new(pool: Arc<Semaphore>) -> Self {
        Budget {
            pool,
            held: None,
            bytes: 0,
        }
    }

    /// Counts `n` more bytes; false if the pool has not that much left (nothing taken).
    pub fn take(&mut self, n: u64) -> bool {
        let covered = self.bytes.div_ceil(PERMIT_BYTES);
        let needed = (self.bytes + n).div_ceil(PERMIT_BYTES);
        let more = (needed - covered).min(u32::MAX as u64) as u32;
        if more > 0 {
            let Ok(p) = self.pool.clone().try_acquire_many_owned(more) else {
                return false;
            };
            match &mut self.held {
                Some(h) => h.merge(p),
                None => self.held = Some(p),
            }
        }
        self.bytes += n;
        true
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit; the rest of the body is still unread.
    TooLarge(Body),
    /// The in-flight budget is exhausted; the rest of the body is still unread.
    Busy(Body),
    /// Not complete within the time limit.
    Timeout,
    /// The connection failed or the body was malformed.
    Read(String),
}

/// Reads a whole body of at most `max` bytes within `timeout`, counting it against
/// `budget` as it arrives.
pub async fn read(
    mut body: Body,
    max: u64,
    timeout: Duration,
    budget: &mut Budget,
    declared: Option<u64>,
) -> Result<Bytes, BodyError> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max) as usize);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() as u64 + data.len() as u64 > max {
            return Err(BodyError::TooLarge(body));
        }
        if !budget.take(data.len() as u64) {
            return Err(BodyError::Busy(body));
        }
        buf.extend_from_slice(&data);
    }
}

/// Answers `response` after discarding what is left of `body` (bounded), with
/// `Connection: close`; at once when the client waits for `100 Continue`.
pub async fn linger(body: Body, expects_continue: bool, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if expects_continue {
        return response;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut body = body;
    let mut discarded = 0u64;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => discarded += f.data_ref().map_or(0, |d| d.len() as u64),
            _ => break, // end, error or time up
        }
    }
    response
}

/// Content codings a body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Identity,
    /// `gzip`.
    Gzip,
    /// `zstd`.
    Zstd,
}

/// Why a body could not be decompressed.
#[derive(Debug)]
pub enum DecodeError {
    /// Larger than the limit once decompressed.
    TooLarge,
    /// Not valid in its coding.
    Bad(String),
}

/// Decompresses with a bound on the output (a zip bomb is a 413, not an allocation).
pub fn decode(encoding: Encoding, raw: Bytes, max: u64) -> Result<Bytes, DecodeError> {
    let reader: Box<dyn Read> = match encoding {
        Encoding::Identity => return Ok(raw),
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(std::io::Cursor::new(raw))),
        Encoding::Zstd => match zstd::stream::read::Decoder::new(std::io::Cursor::new(raw)) {
            Ok(d) => Box::new(d),
            Err(e) => return Err(DecodeError::Bad(format!("invalid zstd body: {e}"))),
        },
    };
    let mut out = Vec::new();
    match reader.take(max + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > max => Err(DecodeError::TooLarge),
        Ok(_) => Ok(out.into()),
        Err(e) => Err(DecodeError::Bad(format!(
            "could not decompress the body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_bytes_as_they_arrive_and_releases_them() {
        let pool = Arc::new(Semaphore::new(4)); // 4 KiB
        let mut a = Budget::new(pool.clone());
        assert!(a.take(1000));
        assert!(a.take(24)); // still one permit
        assert_eq!(pool.available_permits(), 3);
        assert!(a.take(3 * 1024));
        assert_eq!(pool.available_permits(), 0);
        let mut b = Budget::new(pool.clone());
        assert!(!b.take(1), "the pool is empty");
        drop(a);
        assert_eq!(pool.available_permits(), 4);
        assert!(b.take(1));
    }
}
