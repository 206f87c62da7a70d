//! Finding the test cluster: `KAFKA_BROKERS` (CI starts a 3-node Apache Kafka on
//! loopback with `scripts/test-broker`). Without it the Kafka tests say so and pass,
//! unless `HIFI_REQUIRE_KAFKA=1` (as in CI) makes that a failure.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use hifi_kafka::{KafkaConfig, KafkaLog};

/// The brokers to test against, or `None` (test skipped, said on stderr).
pub fn brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            assert!(
                std::env::var("HIFI_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "HIFI_REQUIRE_KAFKA=1 but KAFKA_BROKERS is not set"
            );
            eprintln!("KAFKA_BROKERS is not set: Kafka engine test skipped");
            None
        }
    }
}

/// A prefix no other test run uses, so runs never see each other's topics.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("t{}-{nanos}-{test}.", std::process::id())
}

/// Settings for a test engine: replication factor 3, as zero loss needs (the test
/// cluster, `scripts/test-broker`, has 3 brokers), and short session timeouts so a dead
/// member is noticed quickly.
pub fn config(brokers: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        topic_prefix: prefix.to_owned(),
        replication_factor: 3,
        client: [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    }
}

/// A connected engine.
pub fn connect(brokers: &str, prefix: &str) -> KafkaLog {
    KafkaLog::connect(config(brokers, prefix)).expect("connect")
}
