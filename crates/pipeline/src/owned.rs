//! One worker per partition this process owns in a consumer group, following
//! rebalances: a worker is stopped (and waited for) before its partition is released to
//! another process, and started when a partition arrives.

use std::collections::BTreeMap;
use std::future::Future;

use hifi_log::{Log, Membership};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::consumer::retry_until_ok;

/// Runs `work(partition, stop)` for every partition of `topic` that this process owns in
/// `group`, until `shutdown`. `stop` is cancelled when the partition is revoked or at
/// shutdown; the worker must then stop taking new work, and may only have committed
/// what is done.
///
/// Returns the membership, still in the group (`None` if it never joined): dropping it
/// leaves, so a caller with work still in flight after its workers stopped (a sink's
/// deliveries) can finish and commit it before another process takes the partitions.
pub async fn run_owned<F, Fut>(
    log: &dyn Log,
    node: &str,
    group: &str,
    topic: &str,
    shutdown: &CancellationToken,
    work: F,
) -> Option<Membership>
where
    F: Fn(u32, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let join = || log.join(group, topic);
    let mut membership = retry_until_ok(shutdown, node, "join the consumer group", join).await?;
    let mut running: BTreeMap<u32, (CancellationToken, JoinHandle<()>)> = BTreeMap::new();
    let mut more_changes = true;
    loop {
        let owned = membership.owned();
        let revoked: Vec<u32> = running
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        for p in &revoked {
            if let Some((stop, worker)) = running.remove(p) {
                stop.cancel();
                let _ = worker.await;
            }
        }
        membership.release_all_but(&owned);
        let started: Vec<u32> = owned
            .iter()
            .filter(|p| !running.contains_key(p))
            .copied()
            .collect();
        for &p in &started {
            let stop = shutdown.child_token();
            running.insert(p, (stop.clone(), tokio::spawn(work(p, stop))));
        }
        if !revoked.is_empty() || (!started.is_empty() && more_changes) {
            info!(node, topic, revoked = ?revoked, started = ?started, "partitions this process works on changed");
        }
        if !more_changes {
            shutdown.cancelled().await;
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = membership.changed() => more_changes = changed,
        }
    }
    for (_, (stop, worker)) in std::mem::take(&mut running) {
        stop.cancel();
        let _ = worker.await;
    }
    Some(membership)
}
