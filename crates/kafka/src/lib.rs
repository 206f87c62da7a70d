//! hifi's Kafka engine: the [`Log`] trait on any Kafka-protocol cluster (Apache Kafka,
//! Redpanda, MSK, Confluent), through librdkafka.
//!
//! # Mapping
//! - A topic `t` is the Kafka topic `<topic_prefix>t`; a group `g` is the consumer group
//!   `<topic_prefix>g`.
//! - `append` = the idempotent producer with `acks=all`; it answers only after **every**
//!   record's delivery report is a success, with the offsets the broker gave.
//! - `read` = a pool of consumers per partition being read (one per concurrent reader,
//!   up to 8: `read.rs`), assigned (not subscribed) to that partition; a read takes the
//!   one whose last read ended where it starts, else one it seeks. Only records up to the
//!   high watermark (replicated to all in-sync replicas) are ever returned.
//! - `join` = a consumer subscribed to the topic in the group, used only for membership:
//!   its partitions are paused (it fetches nothing) and a thread of its own serves its
//!   rebalances. Before it gives partitions away it waits for the owner to release them
//!   ([`Membership`]), so work in flight is finished and committed first.
//! - `commit`/`committed` = the group's committed offsets, through the group's member
//!   when this process has one (commits must carry its generation), else through a
//!   consumer that only commits.
//! - `offset_for_time` = `offsets_for_times`.
//! - `delete_topic`/`delete_group` = the admin API's deletions (`delete.rs`).
//!
//! No transactions: the pipeline is at-least-once (committed positions that only ever
//! cover finished work) and removes duplicates by event id.
#![forbid(unsafe_code)]

mod config;
mod consume;
mod delete;
mod errors;
mod groups;
mod produce;
mod read;
pub use config::KafkaConfig;
pub use consume::{InRecord, TopicConsumer};
use errors::{append_err, kafka_err, refresh_metadata, retrying, retrying_with};
use groups::Member;
pub use produce::{OutRecord, SendFailure, TopicProducer};
use read::SharedReader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hifi_log::{
    validate_name, Claim, Log, LogError, Membership, PartitionOffsets, ReadLimits, Record,
    StoredRecord, TopicSpec,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

/// How long a blocking cluster request (metadata, offsets, commits) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rebalance waits for the owner to release revoked partitions.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a request that failed transiently (see [`transient`]) is tried again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(15);

/// The Kafka engine.
pub struct KafkaLog {
    cfg: KafkaConfig,
    /// Replaced when librdkafka declares it fatally failed (see [`KafkaLog::producer`]).
    producer: Mutex<Arc<FutureProducer>>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// For metadata, watermarks and offsets for times.
    meta: Arc<BaseConsumer>,
    readers: Mutex<HashMap<(String, u32), Vec<SharedReader>>>,
    /// This process's group members, by group and topic: a process can have several
    /// members of one group (a stage reads its input and its re-drive topic in one).
    members: Mutex<HashMap<(String, String), Weak<Member>>>,
    /// Per group, this process's members that stopped and have not left yet.
    leaving: Arc<Mutex<HashMap<String, usize>>>,
    committers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    partition_counts: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.cfg.brokers)
            .field("topic_prefix", &self.cfg.topic_prefix)
            .finish_non_exhaustive()
    }
}

/// Hands a record to the producer, waiting while its queue is full (until `deadline`,
/// if any: then `QueueFull` is the error).
async fn enqueue<'a>(
    producer: &FutureProducer,
    mut rec: FutureRecord<'a, [u8], [u8]>,
    deadline: Option<tokio::time::Instant>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if deadline.is_none_or(|d| tokio::time::Instant::now() < d) =>
            {
                rec = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Invalid(format!("engine task failed: {e}")))?
}

impl KafkaLog {
    /// Connects to the cluster (clients only; nothing is checked until first use — see
    /// [`KafkaLog::check_cluster`]).
    pub fn connect(cfg: KafkaConfig) -> Result<Self, LogError> {
        validate_name(cfg.topic_prefix.trim_end_matches('.')).or_else(|_| {
            if cfg.topic_prefix.is_empty() {
                Ok(())
            } else {
                Err(LogError::Invalid(format!(
                    "topic_prefix {:?} may only contain letters, digits, '.', '_' and '-'",
                    cfg.topic_prefix
                )))
            }
        })?;
        let cfg_err = |what: &str, e: KafkaError| {
            LogError::Invalid(format!("cannot create the Kafka {what}: {e}"))
        };
        let producer: FutureProducer = cfg
            .producer_config()
            .create()
            .map_err(|e| cfg_err("producer", e))?;
        // Its metadata requests name topics that may be gone (a deletion waiting for
        // them to go): a producer-type client would let the broker create them again.
        let admin: AdminClient<DefaultClientContext> = cfg
            .client_config(&[("allow.auto.create.topics", "false")])
            .create()
            .map_err(|e| cfg_err("admin client", e))?;
        let meta: BaseConsumer = cfg
            .consumer_config(None)
            .create()
            .map_err(|e| cfg_err("consumer", e))?;
        Ok(KafkaLog {
            cfg,
            producer: Mutex::new(Arc::new(producer)),
            admin: Arc::new(admin),
            meta: Arc::new(meta),
            readers: Mutex::default(),
            members: Mutex::default(),
            leaving: Arc::default(),
            committers: Mutex::default(),
            partition_counts: Mutex::default(),
        })
    }

    /// The producer appends use. An idempotent producer can fail fatally (librdkafka
    /// gives up on it, for example when a broker restarted without the producer's state
    /// and its sequence numbers no longer line up); every later send would then fail.
    /// Such a producer is replaced by a new one, with a new producer id. Nothing is lost:
    /// the appends that failed were never acknowledged, and their producers retry them.
    fn producer(&self) -> Result<Arc<FutureProducer>, LogError> {
        let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fatal) = p.client().fatal_error() {
            error!(error = ?fatal, "the Kafka producer failed fatally; starting a new one");
            *p = Arc::new(
                self.cfg
                    .producer_config()
                    .create()
                    .map_err(|e| kafka_err("creating a new Kafka producer", e))?,
            );
        }
        Ok(p.clone())
    }

    /// A list of one partition of `topic` at `offset` (an offset or, for
    /// `offsets_for_times`, a timestamp).
    fn one_partition(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        what: &str,
    ) -> Result<TopicPartitionList, LogError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.name(topic), partition as i32, Offset::Offset(offset))
            .map_err(|e| kafka_err(what, e))?;
        Ok(tpl)
    }

    /// The group members' session timeout (`session.timeout.ms`, default 10 s).
    pub(crate) fn session_timeout(&self) -> Duration {
        Duration::from_millis(
            self.cfg
                .client
                .get("session.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000),
        )
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.cfg.topic_prefix)
    }

    /// Checks the cluster answers, and warns loudly about settings that cannot give zero
    /// loss (replication factor < 3, `min.insync.replicas` < 2, unclean leader election)
    /// for the given topics. Returns the warnings.
    pub async fn check_cluster(&self, topics: &[String]) -> Result<Vec<String>, LogError> {
        let meta = self.meta.clone();
        let md = blocking(move || {
            meta.fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("reaching the Kafka cluster", e))
        })
        .await?;
        let brokers = md.brokers().len();
        let mut warnings = Vec::new();
        if self.cfg.replication_factor < 3 {
            warnings.push(format!(
                "engine.replication_factor is {}: a broker failure can lose acknowledged events (zero loss needs 3)",
                self.cfg.replication_factor
            ));
        }
        if brokers < 3 {
            warnings.push(format!(
                "the cluster has {brokers} broker(s): a broker failure can lose acknowledged events (zero loss needs 3 brokers, replication factor 3, min.insync.replicas 2)"
            ));
        }
        let names: Vec<String> = topics.iter().map(|t| self.name(t)).collect();
        let specs: Vec<ResourceSpecifier<'_>> =
            names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        match self.admin.describe_configs(&specs, &opts).await {
            Ok(results) => {
                for (name, r) in names.iter().zip(results) {
                    let Ok(res) = r else { continue };
                    let entries = res.entry_map();
                    let value = |k: &str| entries.get(k).and_then(|e| e.value.clone());
                    if let Some(v) = value("min.insync.replicas") {
                        if v.parse::<u32>().unwrap_or(0) < 2 {
                            warnings.push(format!("topic {name}: min.insync.replicas is {v}; zero loss needs 2"));
                        }
                    }
                    if value("unclean.leader.election.enable").as_deref() == Some("true") {
                        warnings.push(format!("topic {name}: unclean.leader.election.enable is true; a lagging replica can become leader and drop acknowledged events"));
                    }
                }
            }
            Err(e) => warnings.push(format!(
                "cannot read the topics' settings to check them ({e}); make sure min.insync.replicas >= 2 and unclean leader election is off"
            )),
        }
        for w in &warnings {
            warn!("ZERO LOSS AT RISK: {w}");
        }
        Ok(warnings)
    }

    /// This process's member of `group` (prefixed) subscribed to `topic` (prefixed), or
    /// else any of its members of the group.
    fn member(&self, group: &str, topic: &str) -> Option<Arc<Member>> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members
            .get(&(group.to_owned(), topic.to_owned()))
            .and_then(Weak::upgrade)
            .or_else(|| {
                members
                    .iter()
                    .filter(|((g, _), _)| g == group)
                    .find_map(|(_, m)| m.upgrade())
            })
    }

    fn committer(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut c = self.committers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = c.get(group) {
            return Ok(k.clone());
        }
        let k: BaseConsumer = self
            .cfg
            .consumer_config(Some(group))
            .create()
            .map_err(|e| kafka_err("creating a Kafka consumer", e))?;
        let k = Arc::new(k);
        c.insert(group.to_owned(), k.clone());
        Ok(k)
    }

    /// Waits (up to [`TRANSIENT_RETRY`]) until the metadata of a topic just created shows
    /// a leader for every partition: before that, brokers and librdkafka's metadata cache
    /// may answer requests for it with "unknown partition" (see [`refresh_metadata`]).
    async fn wait_for_leaders(&self, name: &str) {
        let (meta, topic) = (self.meta.clone(), name.to_owned());
        let led = blocking(move || {
            let deadline = Instant::now() + TRANSIENT_RETRY;
            loop {
                let led = meta
                    .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                    .is_ok_and(|md| {
                        md.topics().iter().any(|t| {
                            t.name() == topic
                                && t.error().is_none()
                                && !t.partitions().is_empty()
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.leader() >= 0 && p.error().is_none())
                        })
                    });
                if led || Instant::now() >= deadline {
                    return Ok(led);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await;
        if !matches!(led, Ok(true)) {
            warn!(
                topic = name,
                "a topic just created still has partitions without a leader"
            );
        }
    }

    async fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        let (meta, name) = (self.meta.clone(), self.name(topic));
        let t = topic.to_owned();
        blocking(move || {
            retrying_with(
                || meta.fetch_watermarks(&name, partition as i32, REQUEST_TIMEOUT),
                || refresh_metadata(&meta, &name),
            )
            .map(|(lo, hi)| (lo.max(0) as u64, hi.max(0) as u64))
            .map_err(|e| kafka_err(format!("reading the offsets of {t}/{partition}"), e))
        })
        .await
    }

    async fn check_partition(&self, topic: &str, partition: u32) -> Result<(), LogError> {
        let partitions = self.partitions(topic).await?;
        if partition >= partitions {
            return Err(LogError::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32, LogError> {
        validate_name(&spec.name)?;
        if spec.partitions == 0 || spec.partitions > 10_000 {
            return Err(LogError::Invalid(format!(
                "topic {:?}: partitions must be 1..=10000",
                spec.name
            )));
        }
        let name = self.name(&spec.name);
        let retention_ms = spec
            .retention
            .and_then(|r| r.age)
            .map(|a| a.as_millis().to_string());
        let retention_bytes = spec.retention.and_then(|r| r.bytes).map(|b| b.to_string());
        let mut new = NewTopic::new(
            &name,
            spec.partitions as i32,
            TopicReplication::Fixed(self.cfg.replication_factor as i32),
        );
        if let Some(ms) = &retention_ms {
            new = new.set("retention.ms", ms);
        }
        if let Some(b) = &retention_bytes {
            new = new.set("retention.bytes", b);
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| kafka_err(format!("creating topic {name}"), e))?;
        for r in results {
            match r {
                Ok(_) => {
                    info!(topic = %name, partitions = spec.partitions, replication_factor = self.cfg.replication_factor, "Kafka topic created");
                    self.wait_for_leaders(&name).await;
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(LogError::Io {
                        context: format!(
                            "creating topic {name} ({} partitions, replication factor {})",
                            spec.partitions, self.cfg.replication_factor
                        ),
                        source: std::io::Error::other(code.to_string()),
                    })
                }
            }
        }
        self.partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&spec.name);
        // A topic just created may take a moment to show in metadata (or to have its
        // leaders).
        let mut tries = 0;
        let existing = loop {
            match self.partitions(&spec.name).await {
                Err(LogError::TopicNotFound { .. } | LogError::Io { .. }) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        if existing != spec.partitions {
            return Err(LogError::PartitionCountMismatch {
                topic: spec.name.clone(),
                existing,
                requested: spec.partitions,
            });
        }
        Ok(existing)
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(n) = self
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Ok(*n);
        }
        let (meta, name) = (self.meta.clone(), self.name(topic));
        let n = blocking(move || {
            let md = meta
                .fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                .map_err(|e| kafka_err(format!("reading metadata of {name}"), e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else {
                return Ok(0);
            };
            // Only a topic the cluster does not know is absent; another error (a leader
            // being elected, authorization) is not an answer: a caller taking it for
            // "absent" would start a window stage without its checkpoint.
            match t.error().map(RDKafkaErrorCode::from) {
                None => Ok(t.partitions().len() as u32),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(0),
                Some(code) => Err(LogError::Io {
                    context: format!("reading metadata of {name}"),
                    source: std::io::Error::other(code.to_string()),
                }),
            }
        })
        .await?;
        if n == 0 {
            return Err(LogError::TopicNotFound {
                topic: topic.to_owned(),
            });
        }
        self.partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<Vec<u64>, LogError> {
        if records.is_empty() {
            return Err(LogError::Invalid(
                "an append needs at least one record".into(),
            ));
        }
        self.check_partition(topic, partition).await?;
        let name = self.name(topic);
        let producer = self.producer()?;
        let mut waiting = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for h in &r.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: &h.name,
                    value: Some(&h.value[..]),
                });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(&name)
                .partition(partition as i32)
                .payload(&r.value[..])
                .timestamp(r.timestamp_ms)
                .headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(&k[..]);
            }
            match enqueue(&producer, rec, None).await {
                Ok(f) => waiting.push(f),
                Err(e) => return Err(append_err(format!("appending to {name}/{partition}"), e)),
            }
        }
        let mut offsets = Vec::with_capacity(waiting.len());
        let mut first_error = None;
        for f in waiting {
            match f.await {
                Ok(Ok(d)) => offsets.push(d.offset as u64),
                Ok(Err((e, _))) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(append_err(format!("appending to {name}/{partition}"), e));
        }
        Ok(offsets)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.read_partition(topic, partition, from, limits).await
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, LogError> {
        self.check_partition(topic, partition).await?;
        let (start, end) = self.watermarks(topic, partition).await?;
        Ok(PartitionOffsets { start, end })
    }

    async fn commit_many(
        &self,
        group: &str,
        topic: &str,
        positions: &[(u32, u64)],
    ) -> Result<(), LogError> {
        validate_name(group)?;
        for &(partition, _) in positions {
            self.check_partition(topic, partition).await?;
        }
        if positions.is_empty() {
            return Ok(());
        }
        let (g, name) = (self.name(group), self.name(topic));
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in positions {
            tpl.add_partition_offset(&name, partition as i32, Offset::Offset(offset as i64))
                .map_err(|e| kafka_err("committing", e))?;
        }
        let what = format!("committing {group} at {topic} {positions:?}");
        // Through the member reading this topic: another member of the group in this
        // process may be joining, and the coordinator answers nothing else it is sent on
        // that member's connection until the join completes — which waits for this
        // partition's release, which waits for this commit.
        if let Some(m) = self.member(&g, &name) {
            return blocking(move || {
                retrying(|| m.consumer.commit(&tpl, CommitMode::Sync))
                    .map_err(|e| kafka_err(what, e))
            })
            .await;
        }
        // Not a member here: the coordinator takes the commit only from outside the
        // group's generation, so while members are still in it (a node of this process
        // that just stopped is leaving, one that was killed is timing out) it answers
        // "unknown member": asked again until its session would have ended.
        let c = self.committer(&g)?;
        let session = self.session_timeout() + Duration::from_secs(5);
        blocking(move || {
            let deadline = Instant::now() + session;
            loop {
                match retrying(|| c.commit(&tpl, CommitMode::Sync)) {
                    Err(e) if errors::membership(&e) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    r => return r.map_err(|e| kafka_err(what, e)),
                }
            }
        })
        .await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        validate_name(group)?;
        self.check_partition(topic, partition).await?;
        let g = self.name(group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.name(topic), partition as i32);
        let what = format!("reading the position of {group} at {topic}/{partition}");
        let c = self.committer(&g)?;
        let got = blocking(move || {
            retrying(|| c.committed_offsets(tpl.clone(), REQUEST_TIMEOUT))
                .map_err(|e| kafka_err(what, e))
        })
        .await?;
        Ok(got.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }))
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, LogError> {
        self.check_partition(topic, partition).await?;
        let tpl = self.one_partition(
            topic,
            partition,
            timestamp_ms,
            "finding an offset for a time",
        )?;
        let (meta, name) = (self.meta.clone(), self.name(topic));
        let got = blocking(move || {
            retrying_with(
                || meta.offsets_for_times(tpl.clone(), REQUEST_TIMEOUT),
                || refresh_metadata(&meta, &name),
            )
            .map_err(|e| kafka_err("finding an offset for a time", e))
        })
        .await?;
        let Some(found) = got.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }) else {
            return Ok(None);
        };
        // Some brokers (tansu 0.6) answer offset 0 instead of "none" when every record is
        // older: check the record found really is at or after the time.
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 1,
            wait: Duration::ZERO,
        };
        let first = self.read(topic, partition, found, limits).await;
        match first.as_deref() {
            Ok([r, ..]) if r.record.timestamp_ms >= timestamp_ms => Ok(Some(found)),
            Ok(_) | Err(LogError::OffsetOutOfRange { .. }) => Ok(None),
            Err(_) => Ok(Some(found)),
        }
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        self.delete_topic_now(topic).await
    }

    async fn delete_group(&self, group: &str) -> Result<(), LogError> {
        self.delete_group_now(group).await
    }

    async fn join(&self, group: &str, topic: &str) -> Result<Membership, LogError> {
        self.join_as(group, topic, None).await
    }

    /// See [`KafkaLog::claim_name`].
    async fn claim(&self, name: &str, topic: &str) -> Result<Claim, LogError> {
        self.claim_name(name, topic).await
    }
}
