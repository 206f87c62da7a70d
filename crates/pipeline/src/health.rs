//! Whether the running pipeline can keep its promise, for `/readyz` and for `hifi run`.
//!
//! A node that cannot run (its task ended with an error) is **fatal**: ingest must not
//! acknowledge events that would never move, so `hifi run` stops and exits non-zero,
//! and `/readyz` answers 503 with the reason from that moment on. A full disk is
//! **transient**: `/readyz` is not ready for [`DISK_FULL_NOT_READY`] after an append
//! failed for lack of space (ingest answers 503 meanwhile), then ready again so that the
//! next request can find out whether space came back.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

/// How long `/readyz` stays not ready after an append failed because the disk is full.
pub const DISK_FULL_NOT_READY: Duration = Duration::from_secs(5);

/// The pipeline's health, shared by its nodes and the HTTP listeners.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the engine is open, every node started and every listener bound.
    started: AtomicBool,
    /// The first fatal failure: which node, and why.
    failure: Mutex<Option<String>>,
    /// Cancelled at the first fatal failure (`hifi run` waits on it).
    failed: CancellationToken,
    /// When an append last failed for lack of space (epoch ms; 0 = never).
    disk_full_at_ms: AtomicI64,
}

/// The running pipeline's health, for the panic hook.
static CURRENT: Mutex<Option<std::sync::Weak<Health>>> = Mutex::new(None);

tokio::task_local! {
    /// Set while an HTTP connection is served: a panic there ends that connection only.
    static SERVING: ();
}

/// Runs `f` (an HTTP connection) so that a panic in it ends only it (the client gets no
/// answer on that connection) and leaves the pipeline running: a request must never be
/// able to stop the pipeline. A panic in a node's own work still does
/// ([`fail_on_panic`]).
pub async fn serving<F: std::future::Future>(f: F) -> F::Output {
    SERVING.scope((), f).await
}

std::thread_local! {
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic in it into an error with its message instead of a failure
/// of the pipeline: for code evaluating what users wrote (CEL in filters and audits),
/// whose library can panic on some input (an unsigned integer going below zero).
pub fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let before = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(before));
    result.map_err(|p| panic_text(p.as_ref()))
}

/// A panic's message (`panic!` gives a `&str` or a `String`).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Makes a panic in any task of this process (a bug: in a stage's partition worker, a
/// sink's reader, an append) a fatal failure of the running pipeline, after the usual
/// message — rather than a task that ends quietly while the rest runs on without it.
/// Panics while an HTTP connection is served ([`serving`]) are left to end it alone.
/// `health` becomes the pipeline the hook fails (a reloaded pipeline takes over).
pub fn fail_on_panic(health: &std::sync::Arc<Health>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::downgrade(health));
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            if SERVING.try_with(|_| ()).is_ok() {
                return; // an HTTP connection's: it ends alone
            }
            if CONTAINED.with(std::cell::Cell::get) {
                return; // caught by `contained`
            }
            let text = panic_text(info.payload());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let current = CURRENT.lock().ok().and_then(|c| c.as_ref()?.upgrade());
            if let Some(h) = current {
                h.fail(
                    "a task",
                    &format!("it panicked{at} (a bug; please report it): {text}"),
                );
            }
        }));
    });
}

impl Health {
    /// Marks the pipeline started (ready unless something failed).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Records a fatal failure of `node` (`stages.clean`); the first one is kept.
    pub fn fail(&self, node: &str, reason: &str) {
        error!(node, reason, "node cannot run; the pipeline stops");
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(format!("{node} cannot run: {reason}"));
        }
        self.failed.cancel();
    }

    /// The first fatal failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves at the first fatal failure.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Records that an append failed because the disk is full.
    pub fn disk_full(&self, now_ms: i64) {
        self.disk_full_at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Why the pipeline is not ready now (`None`: ready).
    pub fn not_ready(&self, now_ms: i64) -> Option<String> {
        if let Some(f) = self.failure() {
            return Some(f);
        }
        if !self.started.load(Ordering::Acquire) {
            return Some("starting".into());
        }
        let full_at = self.disk_full_at_ms.load(Ordering::Relaxed);
        let window = DISK_FULL_NOT_READY.as_millis() as i64;
        if full_at > 0 && now_ms.saturating_sub(full_at) < window {
            return Some("the disk is full: appends fail, ingest answers 503".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_started_and_nothing_failed() {
        let h = Health::default();
        assert_eq!(h.not_ready(1_000).as_deref(), Some("starting"));
        h.set_started();
        assert_eq!(h.not_ready(1_000), None);
        h.disk_full(1_000);
        assert!(h
            .not_ready(1_000)
            .is_some_and(|r| r.contains("disk is full")));
        assert_eq!(h.not_ready(1_000 + 5_000), None, "ready again to probe");
        h.fail("sinks.out", "topic __dlq.out has 3 partitions");
        h.fail("stages.s", "second failure is not kept");
        let r = h.not_ready(99_000).unwrap_or_default();
        assert!(
            r.starts_with("sinks.out cannot run: topic __dlq.out"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn a_panic_fails_the_pipeline_unless_an_http_connection_had_it() {
        let health = std::sync::Arc::new(Health::default());
        fail_on_panic(&health);
        let served = tokio::spawn(serving(async { panic!("a bad request's bug") }));
        assert!(served.await.unwrap_err().is_panic());
        assert_eq!(health.failure(), None, "a connection's panic ends it alone");
        let node = tokio::spawn(async { panic!("a node's bug") });
        assert!(node.await.unwrap_err().is_panic());
        let failure = health.failure().unwrap();
        assert!(
            failure.contains("panicked at") && failure.contains("a node's bug"),
            "{failure}"
        );
    }
}
