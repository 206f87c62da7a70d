//! Reading a topic partition in order, for every node that consumes one (stages, sinks,
//! retry tiers, and the readers to come): where to start, what to do when records were
//! deleted under the reader, how to back off when the engine is away. The nodes say only
//! what to do with each batch, and when their position is durable.
//!
//! The policy, in one place:
//! - **Start** at the group's committed position; with none, at the oldest record. A
//!   committed position past the end is corruption (the log never reuses an offset):
//!   an error, and the reader starts at the end. One below the oldest record means
//!   retention deleted records the group never handled: an error naming them as lost.
//! - **Records deleted under a reader** (retention passed its position while it
//!   waited): an error naming the range as lost, and the reader moves to the oldest
//!   record left. Nothing else ever moves a reader forward without its records.
//! - **Any other read error** (engine unreachable, a partition failed): logged, and the
//!   read is tried again after [`READ_BACKOFF`]; the position does not move.

use std::time::Duration;

use hifi_ledger::NodeLedger;
use hifi_log::{Log, LogError, ReadLimits, StoredRecord};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Wait after a failed read before the next.
pub const READ_BACKOFF: Duration = Duration::from_secs(5);

/// A reader of one partition, at a position.
pub struct Cursor<'a> {
    log: &'a dyn Log,
    /// The node reading, for its messages.
    node: &'a str,
    topic: String,
    partition: u32,
    limits: ReadLimits,
    pos: u64,
    /// Said after "events lost to retention" (what to change so it does not recur).
    retention_hint: &'static str,
    /// Where the time spent waiting in reads is counted (the node's busy ratio).
    busy: Option<crate::scale::Reader<'a>>,
    /// [`Polled::AtEnd`] was returned and no record came since.
    said_at_end: bool,
    /// [`Polled::Failing`] was returned: the next read waits [`READ_BACKOFF`] first.
    said_failing: bool,
}

impl std::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<'a> Cursor<'a> {
    /// A reader of `topic`/`partition` from `pos` (for a node that keeps its own record
    /// of its positions; others [`Cursor::open`] at their group's).
    pub fn at(
        log: &'a dyn Log,
        node: &'a str,
        topic: &str,
        partition: u32,
        pos: u64,
        limits: ReadLimits,
    ) -> Self {
        Cursor {
            log,
            node,
            topic: topic.to_owned(),
            partition,
            limits,
            pos,
            retention_hint: "",
            busy: None,
            said_at_end: false,
            said_failing: false,
        }
    }

    /// A reader from `group`'s start position ([`start_position`]), retrying while the
    /// engine cannot say it; `None` if `stop` comes first.
    pub async fn open(
        log: &'a dyn Log,
        node: &'a str,
        group: &str,
        topic: &str,
        partition: u32,
        limits: ReadLimits,
        stop: &CancellationToken,
    ) -> Option<Cursor<'a>> {
        let start = || start_position(log, group, topic, partition);
        let pos = retry_until_ok(stop, node, "read the start position", start).await?;
        Some(Cursor::at(log, node, topic, partition, pos, limits))
    }

    /// What to say, after the loss, when retention deleted records under this reader.
    pub fn retention_hint(mut self, hint: &'static str) -> Self {
        self.retention_hint = hint;
        self
    }

    /// Counts this reader and the time it waits in reads in `busy` (its node's).
    pub fn measured(mut self, busy: &'a crate::scale::Busy) -> Self {
        self.busy = Some(busy.reader());
        self
    }

    /// The next offset to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the position (past a batch handled, or back to records abandoned).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The next non-empty batch from the position, waiting for records as the limits
    /// say; `None` once `stop` is cancelled. The position moves only by [`Cursor::seek`]
    /// or past records deleted by retention.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<Vec<StoredRecord>> {
        loop {
            match self.next_or_skip(stop).await? {
                Read::Batch(batch) => return Some(batch),
                Read::Skipped { .. } => {}
            }
        }
    }

    /// [`Cursor::next`], also returning when retention moved the position (for a node
    /// that keeps its own record of where it is).
    pub async fn next_or_skip(&mut self, stop: &CancellationToken) -> Option<Read> {
        loop {
            if let Polled::Read(read) = self.poll(stop, false).await? {
                return Some(read);
            }
        }
    }

    /// [`Cursor::next_or_skip`], also returning [`Polled::AtEnd`] once a read found
    /// nothing there (once until records come again): for a node that must tell a
    /// partition with nothing to read from one whose reader is behind.
    pub async fn next_or_at_end(&mut self, stop: &CancellationToken) -> Option<Polled> {
        self.poll(stop, true).await
    }

    async fn poll(&mut self, stop: &CancellationToken, at_end: bool) -> Option<Polled> {
        // A read that waited can come back empty before records there were fetched
        // (Kafka); one that may not wait returns what is there (an engine waits for the
        // fetch when records exist): only it says the partition is at its end. Said once
        // until records come.
        let mut probe = false;
        if std::mem::take(&mut self.said_failing) && !sleep_or_cancel(stop, READ_BACKOFF).await {
            return None;
        }
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let limits = match probe {
                true => ReadLimits {
                    wait: Duration::ZERO,
                    ..self.limits
                },
                false => self.limits,
            };
            let probed = std::mem::take(&mut probe);
            let began = std::time::Instant::now();
            let read = tokio::select! {
                _ = stop.cancelled() => return None,
                r = self.log.read(&self.topic, self.partition, self.pos, limits) => r,
            };
            if let Some(b) = &self.busy {
                b.busy()
                    .read(began.elapsed(), read.as_ref().map_or(0, Vec::len));
            }
            match read {
                Ok(batch) if !batch.is_empty() => {
                    self.said_at_end = false;
                    return Some(Polled::Read(Read::Batch(batch)));
                }
                Ok(_) if probed => {
                    self.said_at_end = true;
                    return Some(Polled::AtEnd);
                }
                Ok(_) if at_end && !self.said_at_end => probe = true,
                Ok(_) => {}
                Err(_) if probed => {} // read again, waiting: that read says why if it fails
                Err(LogError::OffsetOutOfRange { start, .. }) if self.pos < start => {
                    error!(node = self.node, topic = %self.topic, partition = self.partition,
                        from = self.pos, to = start,
                        "records were deleted by retention before this node handled them; skipping ahead (events lost to retention){}",
                        self.retention_hint);
                    self.pos = start;
                    self.said_at_end = false;
                    return Some(Polled::Read(Read::Skipped { to: start }));
                }
                Err(e) => {
                    error!(node = self.node, topic = %self.topic, partition = self.partition,
                        offset = self.pos, %e, "cannot read; retrying in {READ_BACKOFF:?}");
                    if at_end && self.said_at_end {
                        // What it said no longer holds: records may be arriving there
                        // unread. Said at once; the next call waits, then retries.
                        self.said_at_end = false;
                        self.said_failing = true;
                        return Some(Polled::Failing);
                    }
                    if !sleep_or_cancel(stop, READ_BACKOFF).await {
                        return None;
                    }
                }
            }
        }
    }

    /// After a batch was handled up to the position: makes the node's outcomes durable,
    /// then commits `group`'s position there — each retried until done, never skipped
    /// (tallies are durable before the position moves past their events). False if
    /// `stop` came first (nothing after the failed step happened).
    pub async fn commit(&self, group: &str, ledger: &NodeLedger, stop: &CancellationToken) -> bool {
        let flush = || ledger.flush();
        if retry_until_ok(stop, self.node, "record outcomes in the ledger", flush)
            .await
            .is_none()
        {
            return false;
        }
        let (topic, p, pos) = (&self.topic, self.partition, self.pos);
        let commit = || self.log.commit(group, topic, p, pos);
        retry_until_ok(stop, self.node, "commit the position", commit)
            .await
            .is_some()
    }
}

/// What a read gave.
#[derive(Debug)]
pub enum Read {
    /// Records, in order, from the position.
    Batch(Vec<StoredRecord>),
    /// Retention deleted records under the reader; it moved to `to`.
    Skipped { to: u64 },
}

/// What [`Cursor::next_or_at_end`] found.
#[derive(Debug)]
pub enum Polled {
    Read(Read),
    /// Nothing to read: the position is the partition's end.
    AtEnd,
    /// A read failed after the cursor said it was at the end: whether it still is is not
    /// known (the next call retries after [`READ_BACKOFF`]). Said once, until it is at
    /// its end again.
    Failing,
}

/// Where a consumer starts: its committed position, or the oldest stored record.
pub async fn start_position(
    log: &dyn Log,
    group: &str,
    topic: &str,
    p: u32,
) -> Result<u64, LogError> {
    let offsets = log.offsets(topic, p).await?;
    Ok(match log.committed(group, topic, p).await? {
        Some(pos) if pos > offsets.end => {
            // The log never reuses an offset (see hifi_log::durable), so this is damage
            // or a replaced data directory, never a normal restart.
            error!(group, topic, partition = p, committed = pos, end = offsets.end,
                "CORRUPTION: committed position is past the end of the topic (records this consumer already handled are gone: data directory replaced or damaged); starting at the end");
            offsets.end
        }
        Some(pos) if pos < offsets.start => {
            error!(group, topic, partition = p, committed = pos, start = offsets.start,
                "records after the committed position were deleted (retention) before this group read them; starting at the oldest record left (those events are lost)");
            offsets.start
        }
        Some(pos) => {
            info!(
                group,
                topic,
                partition = p,
                committed = pos,
                end = offsets.end,
                behind = offsets.end - pos,
                "resuming from the committed position"
            );
            pos
        }
        None => offsets.start,
    })
}

/// Runs `op` until it succeeds, logging each failure as "`node`: cannot `what`" and
/// waiting a second before the next try; `None` if `shutdown` comes first. For work whose
/// failure must not be skipped (ledger flushes, commits, storing fates).
pub async fn retry_until_ok<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    shutdown: &CancellationToken,
    node: &str,
    what: &str,
    mut op: impl FnMut() -> F,
) -> Option<T> {
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                error!(node, %e, "cannot {what}; retrying");
                if !sleep_or_cancel(shutdown, Duration::from_secs(1)).await {
                    return None;
                }
            }
        }
    }
}

/// Sleeps unless shut down first; returns false when shut down.
pub async fn sleep_or_cancel(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hifi_log::{Record, TopicSpec};

    use super::*;

    #[tokio::test]
    async fn a_cursor_says_once_that_it_is_at_the_end_until_records_come() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(
            hifi_log::EmbeddedLog::open(dir.path(), hifi_log::LogConfig::default()).unwrap(),
        );
        log.ensure_topic(&TopicSpec::new("t", 1)).await.unwrap();
        log.append("t", 0, vec![Record::new("a", 1)]).await.unwrap();
        let limits = ReadLimits {
            max_records: 10,
            max_bytes: 1 << 20,
            wait: Duration::from_millis(50),
        };
        let stop = CancellationToken::new();
        let mut cursor = Cursor::at(log.as_ref(), "n", "t", 0, 0, limits);
        let Some(Polled::Read(Read::Batch(b))) = cursor.next_or_at_end(&stop).await else {
            panic!("the record first");
        };
        assert_eq!(b.len(), 1);
        cursor.seek(1);
        let at_end = tokio::time::timeout(Duration::from_secs(5), cursor.next_or_at_end(&stop));
        assert!(matches!(at_end.await, Ok(Some(Polled::AtEnd))));
        // Said once: it waits for records (here until stopped) rather than say it again.
        let again = tokio::time::timeout(Duration::from_millis(300), cursor.next_or_at_end(&stop));
        assert!(
            again.await.is_err(),
            "at its end again without records between"
        );
        log.append("t", 0, vec![Record::new("b", 2)]).await.unwrap();
        let Some(Polled::Read(Read::Batch(b))) = cursor.next_or_at_end(&stop).await else {
            panic!("the new record");
        };
        assert_eq!(b[0].offset, 1);
        cursor.seek(2);
        let at_end = tokio::time::timeout(Duration::from_secs(5), cursor.next_or_at_end(&stop));
        assert!(matches!(at_end.await, Ok(Some(Polled::AtEnd))));
        // Reads failing (here the topic is gone): it no longer says it is at its end.
        log.delete_topic("t").await.unwrap();
        let failing = tokio::time::timeout(Duration::from_secs(5), cursor.next_or_at_end(&stop));
        assert!(matches!(failing.await, Ok(Some(Polled::Failing))));
        // Said once: then it retries until stopped.
        let again = cursor.next_or_at_end(&stop);
        let again = tokio::time::timeout(Duration::from_millis(300), again);
        assert!(again.await.is_err(), "failing said again");
    }
}
