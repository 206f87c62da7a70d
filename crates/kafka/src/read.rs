//! The engine's reads: a pool of consumers per partition (one per concurrent reader,
//! up to 8), each assigned to the partition and positioned where its last read ended.

use std::sync::Arc;
use std::time::Duration;

use hifi_log::{Bytes, Header, LogError, ReadLimits, Record, StoredRecord};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use tracing::warn;

use crate::errors::{is_connection_error, kafka_err};
use crate::{KafkaLog, REQUEST_TIMEOUT};

/// One partition's reader: a consumer assigned to it, and where the last read ended.
pub(crate) struct Reader {
    consumer: StreamConsumer,
    next: Option<u64>,
    /// When its last read ended (a reader unused for [`READER_IDLE`] is closed).
    used: std::time::Instant,
}

/// A reader, used by one read at a time.
pub(crate) type SharedReader = Arc<tokio::sync::Mutex<Reader>>;

/// Most readers (consumers) kept per partition: one per node reading it at once in this
/// process (a stage and a candidate version of it, two sinks of one topic), so that a
/// read neither waits behind another node's read waiting at the end nor moves a
/// consumer another node's reads were positioned on. Past it, reads share.
const READERS_PER_PARTITION: usize = 8;
/// How long a reader stays open unused: an assigned consumer keeps fetching its
/// partition into its queue (memory) and holds its threads.
const READER_IDLE: Duration = Duration::from_secs(60);
/// How long a free reader positioned by another read is left to it before a read from
/// elsewhere moves it (seeks) instead of opening one more.
const READER_MOVE_AFTER: Duration = Duration::from_secs(1);

impl KafkaLog {
    /// Points a partition's reader at `offset` (the next record it returns).
    fn seek(&self, r: &Reader, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        let what = "positioning a reader";
        let tpl = self.one_partition(topic, partition, offset as i64, what)?;
        r.consumer.assign(&tpl).map_err(|e| kafka_err(what, e))
    }

    /// A reader of the partition for a read from `from`, locked: a free one whose last
    /// read ended there (no seek); else a free one idle for [`READER_MOVE_AFTER`] (or
    /// never positioned); else a new one, up to [`READERS_PER_PARTITION`]; else the
    /// least recently used free one; else whichever is done first. Readers of
    /// any partition unused for [`READER_IDLE`] are closed on the way. A `peek` (a
    /// one-record read: backlog gauges, a record's time) opens a reader only for a
    /// partition that has none: a reader kept for it would prefetch the partition from
    /// there into memory, for every scrape.
    async fn reader(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        peek: bool,
    ) -> Result<tokio::sync::OwnedMutexGuard<Reader>, LogError> {
        enum Pick {
            Got(tokio::sync::OwnedMutexGuard<Reader>),
            New,
            Wait(Vec<SharedReader>),
        }
        let key = (topic.to_owned(), partition);
        let (pick, closed) = {
            let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            let mut closed = Vec::new();
            for list in readers.values_mut() {
                list.retain(|r| {
                    let idle = r.try_lock().is_ok_and(|r| r.used.elapsed() >= READER_IDLE);
                    if idle {
                        closed.push(r.clone());
                    }
                    !idle
                });
            }
            readers.retain(|_, list| !list.is_empty());
            let list = readers.entry(key.clone()).or_default();
            let mut oldest: Option<tokio::sync::OwnedMutexGuard<Reader>> = None;
            let mut pick = None;
            for r in list.iter() {
                if let Ok(guard) = r.clone().try_lock_owned() {
                    if guard.next == Some(from) {
                        pick = Some(Pick::Got(guard));
                        break;
                    }
                    if oldest.as_ref().is_none_or(|o| guard.used < o.used) {
                        oldest = Some(guard);
                    }
                }
            }
            let room = list.len() < READERS_PER_PARTITION && (list.is_empty() || !peek);
            let pick = pick.unwrap_or_else(|| match oldest {
                // Another node's reader between two of its reads is moved only when
                // it has been idle a while or no reader may be added.
                Some(g) if g.next.is_none() || g.used.elapsed() >= READER_MOVE_AFTER || !room => {
                    Pick::Got(g)
                }
                _ if room => Pick::New,
                Some(g) => Pick::Got(g),
                None => Pick::Wait(list.clone()),
            });
            (pick, closed)
        };
        if !closed.is_empty() {
            // Closing a consumer waits for librdkafka's threads: not under the lock, not
            // on a worker thread.
            tokio::task::spawn_blocking(move || drop(closed));
        }
        match pick {
            Pick::Got(guard) => Ok(guard),
            // Locking is cancel-safe: the waits not chosen are dropped.
            Pick::Wait(list) => {
                let waits = list.into_iter().map(|r| Box::pin(r.lock_owned()));
                Ok(futures_util::future::select_all(waits).await.0)
            }
            Pick::New => {
                // Creating one starts librdkafka's threads (and TLS or Kerberos set-up):
                // off the workers, not under the lock.
                let config = self.cfg.consumer_config(None);
                let consumer =
                    tokio::task::spawn_blocking(move || config.create::<StreamConsumer>())
                        .await
                        .map_err(|e| LogError::Io {
                            context: "creating a Kafka consumer".into(),
                            source: std::io::Error::other(e.to_string()),
                        })?
                        .map_err(|e| kafka_err("creating a Kafka consumer", e))?;
                let r = Arc::new(tokio::sync::Mutex::new(Reader {
                    consumer,
                    next: None,
                    used: std::time::Instant::now(),
                }));
                let guard = r.clone().try_lock_owned().expect("a new reader is free");
                self.readers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key)
                    .or_default()
                    .push(r);
                Ok(guard)
            }
        }
    }

    /// [`hifi_log::Log::read`]: records of the partition from `from`, within `limits`.
    pub(crate) async fn read_partition(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.check_partition(topic, partition).await?;
        let mut r = self
            .reader(topic, partition, from, limits.max_records <= 1)
            .await?;
        let mut high = None;
        // Until this read returns, the consumer's position is unknown to the next one: a
        // read cancelled midway (its caller stopped waiting) may have taken records off
        // the consumer's queue, and the next read must seek rather than skip them.
        let positioned = r.next.take() == Some(from);
        if !positioned {
            let (start, end) = self.watermarks(topic, partition).await?;
            if from < start || from > end {
                return Err(LogError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    requested: from,
                    start,
                    end,
                });
            }
            self.seek(&r, topic, partition, from)?;
            high = Some(end);
        }
        // A read that may not wait still has to wait for the fetch when records exist.
        let mut wait = limits.wait;
        if wait.is_zero() {
            let end = match high {
                Some(e) => e,
                None => self.watermarks(topic, partition).await?.1,
            };
            if from >= end {
                r.next = Some(from);
                r.used = std::time::Instant::now();
                return Ok(Vec::new());
            }
            wait = REQUEST_TIMEOUT;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut reseeked = false;
        // The first connection error this read met, if it met no record.
        let mut unreachable = None;
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < limits.max_records.max(1) && (out.is_empty() || bytes < limits.max_bytes)
        {
            let until = if out.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now()
            };
            let m = match tokio::time::timeout_at(until, r.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(KafkaError::PartitionEOF(_))) => continue,
                // librdkafka queues one such error per failed connection attempt: after
                // a long outage hundreds wait in the queue, ahead of the records. They
                // say nothing of this partition's position, so they are taken off here
                // rather than one per read (which held reads back for minutes after the
                // cluster came back).
                Ok(Err(e)) if is_connection_error(&e) => {
                    unreachable.get_or_insert(e);
                    continue;
                }
                // The position is unknown after an error: the next read seeks.
                Ok(Err(e)) if out.is_empty() => {
                    return Err(kafka_err(format!("reading {topic}/{partition}"), e));
                }
                Ok(Err(_)) => return Ok(out),
                Ok(Ok(m)) => m,
            };
            let expected = out.last().map_or(from, |last| last.offset + 1);
            let offset = m.offset() as u64;
            if m.partition() as u32 != partition || offset < expected {
                continue; // left over from before a seek
            }
            if offset > expected && !reseeked {
                // hifi's topics have no gaps (no transactions, no compaction): a record
                // after a gap means the consumer is not where this read thinks. Seek once
                // to where it should be; a gap that is still there is real.
                warn!(
                    topic,
                    partition,
                    expected,
                    got = offset,
                    "reader skipped records; seeking back"
                );
                reseeked = true;
                self.seek(&r, topic, partition, expected)?;
                continue;
            }
            let rec = to_stored(&m);
            bytes += rec.record.value.len() + 64;
            out.push(rec);
        }
        if out.is_empty() {
            if let Some(e) = unreachable {
                // Still unreachable: the caller backs off; the next read seeks.
                return Err(kafka_err(format!("reading {topic}/{partition}"), e));
            }
            if limits.wait.is_zero() {
                // Records are there (below the end) and none came: an empty answer
                // would say there is nothing to read. The next read seeks.
                return Err(LogError::Io {
                    context: format!("reading {topic}/{partition} from {from}"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no record fetched within {wait:?} below the partition's end"),
                    ),
                });
            }
        }
        r.next = Some(out.last().map_or(from, |last| last.offset + 1));
        r.used = std::time::Instant::now();
        Ok(out)
    }
}

fn to_stored(m: &rdkafka::message::BorrowedMessage<'_>) -> StoredRecord {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| Header {
                    name: Header::name_from(h.key),
                    value: h.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    StoredRecord {
        offset: m.offset() as u64,
        record: Record {
            key: m.key().map(Bytes::copy_from_slice),
            value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            headers,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        },
    }
}
