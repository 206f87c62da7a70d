//! Producers as a test needs them: they post batches of events with unique ids over
//! real HTTP and remember exactly which ids were acknowledged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Producers posting batches of 10 events with unique ids (and `"user": "user-N"`, N the
/// producer's number), retrying each batch until it is
/// acknowledged (like real producers); every acknowledged id is recorded.
pub struct Producers {
    acked: Arc<Mutex<HashSet<String>>>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Producers {
    pub fn start(n: usize, target: String) -> Producers {
        Producers::named("p", n, target)
    }

    /// Producers whose ids start with `name` (distinct from other producers' ids).
    pub fn named(name: &str, n: usize, target: String) -> Producers {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for task in 0..n {
            let (acked, failed, stop, url, name) = (
                acked.clone(),
                failed.clone(),
                stop.clone(),
                target.clone(),
                name.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> =
                        (0..10).map(|i| format!("{name}{task}-{seq}-{i}")).collect();
                    let user = format!("user-{task}");
                    let body: Vec<_> = ids
                        .iter()
                        .map(|id| serde_json::json!({"id": id, "user": user}))
                        .collect();
                    loop {
                        match client.post(&url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => {
                                acked.lock().unwrap().extend(ids.iter().cloned());
                                break;
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Producers {
            acked,
            failed,
            stop,
            tasks,
        }
    }

    /// Requests that were not acknowledged (each retried until it was).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Keeps producing for at least `at_least`, and until `more` acknowledgements past
    /// `from` arrived (at most `deadline`): a slow machine gets the time it needs to show
    /// progress instead of failing after a fixed sleep. Whether they arrived.
    pub async fn run_past(
        &self,
        at_least: Duration,
        from: usize,
        more: usize,
        deadline: Duration,
    ) -> bool {
        tokio::time::sleep(at_least).await;
        let until = std::time::Instant::now() + deadline.saturating_sub(at_least);
        while self.acked() < from + more && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.acked() >= from + more
    }

    pub async fn stop(self) -> (HashSet<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}
