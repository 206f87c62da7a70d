//! Which partitions of a topic this process works on, for one consumer group.
//!
//! With the embedded engine one process owns every partition, always. With the Kafka
//! engine, processes in the same group share the partitions and the set changes on every
//! rebalance. Before the engine gives a partition away it tells the owner (the set shrinks)
//! and waits until the owner has stopped taking new work from it, finished or abandoned
//! what was in flight and committed what is done — the owner says so with
//! [`Membership::release`]. The next owner then resumes from that committed position.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Partitions that must be released before the engine hands them to another owner.
#[derive(Debug, Default)]
struct Releases {
    waiting: Mutex<BTreeSet<u32>>,
    done: Condvar,
}

/// The partitions one process owns in one group, as they change.
pub struct Membership {
    owned: watch::Receiver<BTreeSet<u32>>,
    releases: Arc<Releases>,
    /// Keeps the engine's group member alive; dropping the membership leaves the group.
    _member: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("owned", &*self.owned.borrow())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Every partition, for good (one process owns the whole topic).
    pub fn fixed(partitions: u32) -> Self {
        let (tx, rx) = watch::channel((0..partitions).collect());
        // The sender is dropped: `changed` then reports that nothing will change.
        drop(tx);
        Membership {
            owned: rx,
            releases: Arc::default(),
            _member: None,
        }
    }

    /// A membership driven by an engine through the returned [`MembershipControl`].
    pub fn dynamic() -> (Self, MembershipControl) {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let releases = Arc::<Releases>::default();
        let control = MembershipControl {
            owned: tx,
            releases: releases.clone(),
        };
        let m = Membership {
            owned: rx,
            releases,
            _member: None,
        };
        (m, control)
    }

    /// Keeps the engine's group member alive as long as this membership.
    pub fn holding(mut self, member: Box<dyn Any + Send + Sync>) -> Self {
        self._member = Some(member);
        self
    }

    /// The partitions owned now.
    pub fn owned(&self) -> BTreeSet<u32> {
        self.owned.borrow().clone()
    }

    /// Waits until the owned set changes; `false` when it never will again.
    pub async fn changed(&mut self) -> bool {
        self.owned.changed().await.is_ok()
    }

    /// Says that work on `partitions` has stopped and what was done is committed.
    /// Releasing a partition nobody asked for is harmless.
    pub fn release(&self, partitions: &BTreeSet<u32>) {
        self.release_where(|p| partitions.contains(&p));
    }

    /// Releases every partition outside `owned` (a set read earlier with
    /// [`Membership::owned`], once the work on the others has stopped).
    pub fn release_all_but(&self, owned: &BTreeSet<u32>) {
        self.release_where(|p| !owned.contains(&p));
    }

    fn release_where(&self, release: impl Fn(u32) -> bool) {
        let mut waiting = self
            .releases
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiting.retain(|&p| !release(p));
        self.releases.done.notify_all();
    }
}

/// A name this process holds among all processes using an engine ([`crate::Log::claim`]);
/// dropping it gives the name up.
#[derive(Default)]
pub struct Claim {
    /// Kept only to be dropped with the claim.
    _held: Option<Box<dyn Any + Send + Sync>>,
}

impl Claim {
    /// A claim kept alive by what the engine holds for it.
    pub fn holding(held: Box<dyn Any + Send + Sync>) -> Self {
        Claim { _held: Some(held) }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").finish_non_exhaustive()
    }
}

/// The engine's side of a [`Membership`].
#[derive(Debug)]
pub struct MembershipControl {
    owned: watch::Sender<BTreeSet<u32>>,
    releases: Arc<Releases>,
}

impl MembershipControl {
    /// Adds partitions to the owned set.
    pub fn assign(&self, partitions: &BTreeSet<u32>) {
        self.owned.send_modify(|o| o.extend(partitions));
    }

    /// Takes partitions away and waits (blocking; call from the engine's own thread) up
    /// to `timeout` for the owner to release them. Returns those not released in time:
    /// their in-flight work is abandoned uncommitted and will be redone by the next owner.
    pub fn revoke(&self, partitions: &BTreeSet<u32>, timeout: Duration) -> BTreeSet<u32> {
        let deadline = Instant::now() + timeout;
        let mut waiting = self
            .releases
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiting.extend(partitions);
        self.owned
            .send_modify(|o| o.retain(|p| !partitions.contains(p)));
        if self.owned.receiver_count() == 0 {
            waiting.clear();
        }
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return std::mem::take(&mut *waiting);
            }
            waiting = self
                .releases
                .done
                .wait_timeout(waiting, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        BTreeSet::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_owns_everything_and_never_changes() {
        let mut m = Membership::fixed(3);
        assert_eq!(m.owned(), BTreeSet::from([0, 1, 2]));
        assert!(!m.changed().await);
    }

    #[tokio::test]
    async fn revoke_waits_for_release() {
        let (mut m, control) = Membership::dynamic();
        control.assign(&BTreeSet::from([0, 1]));
        assert!(m.changed().await);
        assert_eq!(m.owned(), BTreeSet::from([0, 1]));
        let revoker = std::thread::spawn(move || {
            control.revoke(&BTreeSet::from([1]), Duration::from_secs(30))
        });
        assert!(m.changed().await);
        assert_eq!(m.owned(), BTreeSet::from([0]));
        m.release(&BTreeSet::from([1]));
        assert_eq!(revoker.join().ok(), Some(BTreeSet::new()));
    }

    #[tokio::test]
    async fn revoke_gives_up_after_the_timeout() {
        let (m, control) = Membership::dynamic();
        control.assign(&BTreeSet::from([0]));
        let left = control.revoke(&BTreeSet::from([0]), Duration::from_millis(50));
        assert_eq!(left, BTreeSet::from([0]));
        assert!(m.owned().is_empty());
    }
}
