//! The engine conformance suite (`hifi_log::conformance`) on the embedded engine; the
//! Kafka engine runs the same suite in `crates/kafka/tests/conformance.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hifi_log::conformance::{run_all, Engine};
use hifi_log::{EmbeddedLog, Log, LogConfig};

struct Embedded {
    dir: PathBuf,
    open: Mutex<Option<EmbeddedLog>>,
}

#[async_trait::async_trait]
impl Engine for Embedded {
    async fn open(&self) -> Arc<dyn Log> {
        let dir = self.dir.clone();
        let log = tokio::task::spawn_blocking(move || EmbeddedLog::open(dir, LogConfig::default()))
            .await
            .unwrap()
            .unwrap();
        *self.open.lock().unwrap() = Some(log.clone());
        Arc::new(log)
    }

    async fn close(&self, log: Arc<dyn Log>) {
        drop(log);
        let open = self.open.lock().unwrap().take();
        if let Some(log) = open {
            log.close().await;
        }
    }
}

#[tokio::test]
async fn the_embedded_engine_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_all(&Embedded {
        dir: dir.path().to_owned(),
        open: Mutex::new(None),
    })
    .await;
}
