//! The Kafka engine's `[engine]` settings and the librdkafka client settings made from
//! them.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

/// `[engine]` settings of the Kafka engine.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port,...`
    pub brokers: String,
    /// Prefix of every topic and group name (default `hifi.`).
    pub topic_prefix: String,
    /// Replication factor of created topics (default 3).
    pub replication_factor: u16,
    /// Client settings passed to librdkafka as they are (TLS, SASL, timeouts); they
    /// override hifi's defaults, except the ones zero loss depends on.
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "hifi.".into(),
            replication_factor: 3,
            client: BTreeMap::new(),
        }
    }
}

/// Producer settings no user setting overrides: zero loss depends on them.
pub(crate) const PRODUCER_FIXED: &[(&str, &str)] =
    &[("enable.idempotence", "true"), ("acks", "all")];

/// Consumer settings no user setting overrides: positions move only when hifi commits.
pub(crate) const CONSUMER_FIXED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Client settings: the bootstrap brokers, hifi's `defaults`, then the user's settings
/// (`[engine.client]`, a connector's `client`), which override the defaults, then
/// `fixed`, which nothing overrides.
pub(crate) fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    user: &BTreeMap<String, String>,
    fixed: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in user {
        c.set(k, v);
    }
    for (k, v) in fixed {
        c.set(*k, *v);
    }
    c
}

impl KafkaConfig {
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        client_config(&self.brokers, defaults, &self.client, &[])
    }

    pub(crate) fn producer_config(&self) -> ClientConfig {
        let defaults = [
            // A record not delivered within this is reported failed (the append errs and
            // the ingest answers 503) instead of hanging while the cluster is away.
            ("message.timeout.ms", "10000"),
            ("linger.ms", "1"),
            // hifi creates its topics itself; a producer's metadata refresh for a topic
            // deleted since (`hifi versions gc`) must not bring it back.
            ("allow.auto.create.topics", "false"),
        ];
        client_config(&self.brokers, &defaults, &self.client, PRODUCER_FIXED)
    }

    pub(crate) fn consumer_config(&self, group: Option<&str>) -> ClientConfig {
        let defaults = [
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("fetch.wait.max.ms", "100"),
            ("auto.offset.reset", "error"),
            ("partition.assignment.strategy", "range"),
        ];
        let mut c = client_config(&self.brokers, &defaults, &self.client, CONSUMER_FIXED);
        match group {
            // Group members and committers never fetch (a member's partitions are
            // paused): "error" would only log a reset error for every new partition.
            Some(g) => c.set("group.id", g).set("auto.offset.reset", "latest"),
            // librdkafka wants a group id even for consumers that never join one.
            None => c.set("group.id", format!("{}__reader", self.topic_prefix)),
        };
        c
    }
}
