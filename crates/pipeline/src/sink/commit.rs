//! Positions: offsets read but without a durable fate, per partition, and the committer
//! that flushes the ledger and commits the lowest of them every 100 ms.

use super::*;

/// Offsets read but without a durable fate yet, per partition.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub(super) outstanding: BTreeSet<u64>,
    /// The next offset the reader will register.
    pub(super) next: u64,
    /// Last committed position.
    pub(super) committed: u64,
    /// Whether this process works on the partition (only owned positions are committed).
    pub(super) owned: bool,
}

impl Tracker {
    fn position(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

impl Sink {
    pub(super) async fn committer(
        &self,
        trackers: Arc<Vec<Mutex<Tracker>>>,
        stop: CancellationToken,
    ) {
        while sleep_or_cancel(&stop, Duration::from_millis(100)).await {
            self.commit_positions(&trackers).await;
        }
    }

    pub(super) async fn commit_positions(&self, trackers: &[Mutex<Tracker>]) {
        // Positions are read before the flush: every event below them has its fate
        // recorded already, and the flush makes those records durable first.
        let positions: Vec<(u64, u64)> = trackers
            .iter()
            .map(|t| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                (
                    t.position(),
                    if t.owned { t.committed } else { t.position() },
                )
            })
            .collect();
        if let Err(e) = self.ledger.flush().await {
            error!(sink = %self.name, %e, "cannot record outcomes in the ledger; not committing this round");
            return;
        }
        // Every moved position in one commit: one fsync for all partitions (each of its
        // own competed with the appends' fsyncs for the disk).
        let moved: Vec<(u32, u64)> = positions
            .into_iter()
            .enumerate()
            .filter(|(_, (pos, committed))| pos != committed)
            .map(|(p, (pos, _))| (p as u32, pos))
            .collect();
        if moved.is_empty() {
            return;
        }
        match self
            .log
            .commit_many(&self.group(), &self.input, &moved)
            .await
        {
            Ok(()) => {
                for (p, pos) in moved {
                    trackers[p as usize]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .committed = pos;
                }
            }
            Err(e) => error!(sink = %self.name, %e, "cannot commit positions"),
        }
    }
}
