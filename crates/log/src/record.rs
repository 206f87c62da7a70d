//! Records and their on-disk frame.
//!
//! A record is Kafka's record model: an optional key, a value, headers and a timestamp
//! (milliseconds since the Unix epoch). Once appended it has an offset.
//!
//! # Frame format (all integers little-endian)
//!
//! ```text
//! frame  = body_len:u32  crc:u32  body[body_len]
//! body   = offset:u64  timestamp_ms:i64
//!          key_len:i32 (-1 = no key)  key[key_len]
//!          value_len:u32  value[value_len]
//!          header_count:u16  header*
//! header = name_len:u16  name[name_len] (UTF-8)  value_len:u32  value[value_len]
//! crc    = CRC32C(body)
//! ```
//!
//! The offset is inside the checksummed body, so a frame that is valid but sits at the
//! wrong place (a misdirected or stale write) is caught by the offset-sequence check.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

pub use bytes::Bytes;

/// Bytes before the body: `body_len` and `crc`.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The smallest possible body: offset, timestamp, key_len, value_len, header_count.
pub const BODY_MIN_BYTES: usize = 8 + 8 + 4 + 4 + 2;
/// The smallest possible frame.
pub const FRAME_MIN_BYTES: usize = FRAME_HEADER_BYTES + BODY_MIN_BYTES;

/// One header of a record: a name and opaque bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, UTF-8 (at most 65 535 bytes). Usually a `&'static str`: names are
    /// few and fixed, and an allocation per header per event showed in profiles.
    pub name: Cow<'static, str>,
    /// Header value, opaque bytes (shared: records read back slice their values out of
    /// the read buffer instead of copying each one).
    pub value: Bytes,
}

/// Header names that reading gives as `&'static str` instead of allocating them.
static KNOWN_HEADER_NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();

/// Registers the header names a program uses (the first call wins): records read back
/// then borrow these instead of allocating a `String` per header.
pub fn register_header_names(names: &'static [&'static str]) {
    let _ = KNOWN_HEADER_NAMES.set(names);
}

impl Header {
    /// A header name: a registered name borrowed, any other one owned.
    pub fn name_from(name: &str) -> Cow<'static, str> {
        KNOWN_HEADER_NAMES
            .get()
            .and_then(|known| known.iter().find(|k| **k == name))
            .map_or_else(|| Cow::Owned(name.to_owned()), |k| Cow::Borrowed(*k))
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}",
            self.name,
            String::from_utf8_lossy(&self.value)
        )
    }
}

/// A record to append: the unit the log stores. Its bytes are [`Bytes`]: cheap to
/// clone, and records read back share one buffer instead of an allocation per field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Optional key (used by callers for partitioning; the log does not interpret it).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Metadata travelling beside the payload.
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; drives the time index and age retention.
    pub timestamp_ms: i64,
}

impl Record {
    /// A record with only a value and a timestamp.
    pub fn new(value: impl Into<Bytes>, timestamp_ms: i64) -> Self {
        Record {
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms,
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Bytes>,
    ) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_bytes(name).map(|v| &v[..])
    }

    /// The value of the first header called `name`, shared (cloning it copies nothing).
    pub fn header_bytes(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// Size of this record's frame on disk.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.body_bytes()
    }

    fn body_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| 2 + h.name.len() + 4 + h.value.len())
            .sum();
        BODY_MIN_BYTES + self.key.as_ref().map_or(0, Bytes::len) + self.value.len() + headers
    }

    /// Whether the record's fields fit the frame's length fields.
    pub(crate) fn fits_frame(&self) -> bool {
        self.key
            .as_ref()
            .is_none_or(|k| k.len() <= i32::MAX as usize)
            && self.value.len() <= u32::MAX as usize
            && self.headers.len() <= u16::MAX as usize
            && self
                .headers
                .iter()
                .all(|h| h.name.len() <= u16::MAX as usize && h.value.len() <= u32::MAX as usize)
    }
}

/// A record read back from the log, with its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in its topic-partition.
    pub offset: u64,
    /// The record as appended.
    pub record: Record,
}

impl StoredRecord {
    /// The same record with buffers of its own instead of slices of a shared read
    /// buffer (which stays allocated as long as any slice of it lives).
    pub fn unshared(self) -> StoredRecord {
        let own = |b: &Bytes| Bytes::copy_from_slice(b);
        let r = self.record;
        StoredRecord {
            offset: self.offset,
            record: Record {
                key: r.key.as_ref().map(own),
                value: own(&r.value),
                headers: r
                    .headers
                    .iter()
                    .map(|h| Header {
                        name: h.name.clone(),
                        value: own(&h.value),
                    })
                    .collect(),
                timestamp_ms: r.timestamp_ms,
            },
        }
    }
}

/// Appends `record`'s frame with `offset` to `buf`.
///
/// # Panics
/// If the record does not fit the frame's length fields; callers check
/// [`Record::fits_frame`] (the append path rejects such records first).
pub fn encode_frame(buf: &mut Vec<u8>, offset: u64, record: &Record) {
    assert!(record.fits_frame(), "record exceeds frame field limits");
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => {
            buf.extend_from_slice(&(key.len() as i32).to_le_bytes());
            buf.extend_from_slice(key);
        }
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    buf.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record.value);
    buf.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for h in &record.headers {
        buf.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
        buf.extend_from_slice(h.name.as_bytes());
        buf.extend_from_slice(&(h.value.len() as u32).to_le_bytes());
        buf.extend_from_slice(&h.value);
    }
    let body = &buf[start + FRAME_HEADER_BYTES..];
    let body_len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What [`decode_frame`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A verified frame: its offset, the record and the bytes it took.
    Valid {
        offset: u64,
        record: Record,
        frame_bytes: usize,
    },
    /// The buffer ends before the frame does; `needed` bytes would complete it.
    Incomplete { needed: usize },
    /// The frame is damaged: bad length, bad checksum, or a malformed body.
    Invalid { reason: &'static str },
}

/// Decodes and verifies the frame at the start of `buf`.
///
/// `body_max` bounds the length field: a larger length is damage, never an allocation.
pub fn decode_frame(buf: &[u8], body_max: usize) -> Frame {
    decode_frame_with(buf, body_max, Bytes::copy_from_slice)
}

/// [`decode_frame`] on a shared buffer: the record's key, value and header values are
/// slices of `buf` (no copy, no allocation per field).
pub fn decode_shared_frame(buf: &Bytes, body_max: usize) -> Frame {
    decode_frame_with(buf, body_max, |part| buf.slice_ref(part))
}

fn decode_frame_with(buf: &[u8], body_max: usize, share: impl Fn(&[u8]) -> Bytes) -> Frame {
    if buf.len() < FRAME_HEADER_BYTES {
        return Frame::Incomplete {
            needed: FRAME_HEADER_BYTES,
        };
    }
    let body_len = u32_at(buf, 0) as usize;
    if !(BODY_MIN_BYTES..=body_max).contains(&body_len) {
        return Frame::Invalid {
            reason: "frame length out of bounds",
        };
    }
    let frame_bytes = FRAME_HEADER_BYTES + body_len;
    if buf.len() < frame_bytes {
        return Frame::Incomplete {
            needed: frame_bytes,
        };
    }
    let body = &buf[FRAME_HEADER_BYTES..frame_bytes];
    if crc32c::crc32c(body) != u32_at(buf, 4) {
        return Frame::Invalid {
            reason: "checksum mismatch",
        };
    }
    match decode_body(body, share) {
        Some((offset, record)) => Frame::Valid {
            offset,
            record,
            frame_bytes,
        },
        None => Frame::Invalid {
            reason: "malformed record body",
        },
    }
}

/// Reads just the offset of a frame whose checksum is known good, or `None`.
pub(crate) fn peek_offset(buf: &[u8]) -> Option<u64> {
    (buf.len() >= FRAME_HEADER_BYTES + 8).then(|| u64_at(buf, FRAME_HEADER_BYTES))
}

fn decode_body(body: &[u8], share: impl Fn(&[u8]) -> Bytes) -> Option<(u64, Record)> {
    let mut r = Cursor { buf: body, pos: 0 };
    let offset = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let timestamp_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let key_len = i32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let key = match key_len {
        -1 => None,
        n if n >= 0 => Some(share(r.take(n as usize)?)),
        _ => return None,
    };
    let value_len = r.u32()? as usize;
    let value = share(r.take(value_len)?);
    let header_count = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
        let name = Header::name_from(std::str::from_utf8(r.take(name_len)?).ok()?);
        let value_len = r.u32()? as usize;
        headers.push(Header {
            name,
            value: share(r.take(value_len)?),
        });
    }
    if r.pos != body.len() {
        return None;
    }
    Some((
        offset,
        Record {
            key,
            value,
            headers,
            timestamp_ms,
        },
    ))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            key: Some(b"k".to_vec().into()),
            value: b"{\"a\":1}".to_vec().into(),
            headers: vec![Header {
                name: "hifi-id".into(),
                value: b"e-1".to_vec().into(),
            }],
            timestamp_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &sample());
        assert_eq!(buf.len(), sample().frame_bytes());
        match decode_frame(&buf, 1 << 20) {
            Frame::Valid {
                offset,
                record,
                frame_bytes,
            } => {
                assert_eq!((offset, frame_bytes), (42, buf.len()));
                assert_eq!(record, sample());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, &sample());
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode_frame(&damaged, 1 << 20), Frame::Valid { .. }),
                    "flip at byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn short_buffers_are_incomplete_and_huge_lengths_invalid() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &sample());
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_frame(&buf[..cut], 1 << 20),
                Frame::Incomplete { .. }
            ));
        }
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&huge, 1 << 20),
            Frame::Invalid { .. }
        ));
    }
}
