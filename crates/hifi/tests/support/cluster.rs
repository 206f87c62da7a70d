//! A Kafka cluster of a test's own, which it can SIGKILL and restart.

use std::path::Path;
use std::process::{Command, Stdio};

/// A 3-node Kafka cluster of this test's own (`scripts/test-broker` on a directory of
/// the test's), which it can SIGKILL and restart on the same storage and ports.
pub struct Cluster {
    script: String,
    dir: std::path::PathBuf,
    pub brokers: String,
}

impl Cluster {
    pub fn start(script: &str, dir: &Path) -> Cluster {
        let mut c = Cluster {
            script: script.to_owned(),
            dir: dir.to_owned(),
            brokers: String::new(),
        };
        let exports = c.run("start");
        c.brokers = exports
            .split_whitespace()
            .find_map(|w| w.strip_prefix("KAFKA_BROKERS="))
            .unwrap_or_else(|| panic!("no KAFKA_BROKERS in {exports:?}"))
            .to_owned();
        c
    }

    /// Runs a command of the script on this cluster (`kill 2`); returns what it printed.
    pub fn run(&self, command: &str) -> String {
        let out = Command::new(&self.script)
            .args(command.split_whitespace())
            .env("HIFI_BROKER_DIR", &self.dir)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/test-broker {command} failed (logs: {})",
            self.dir.display()
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .env("HIFI_BROKER_DIR", &self.dir)
            .status();
    }
}

/// Tests that start a cluster of their own run one at a time (3 more JVMs each, on a
/// machine that already runs the shared cluster).
pub static OWN_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
