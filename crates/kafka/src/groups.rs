//! Consumer group membership of the Kafka engine: the members behind
//! [`Log::join`](hifi_log::Log::join) (their partitions paused, a thread serving their
//! rebalances) and the claims behind [`Log::claim`](hifi_log::Log::claim).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hifi_log::{validate_name, Claim, Log, LogError, Membership, MembershipControl};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tracing::{error, info, warn};

use crate::{blocking, kafka_err, KafkaLog, RELEASE_TIMEOUT, REQUEST_TIMEOUT};

/// Serves one group member's rebalances.
pub(crate) struct MemberContext {
    control: MembershipControl,
    closing: AtomicBool,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: BTreeSet<u32> = tpl
                .elements()
                .iter()
                .map(|e| e.partition() as u32)
                .collect();
            let timeout = if self.closing.load(Ordering::Relaxed) {
                Duration::ZERO
            } else {
                RELEASE_TIMEOUT
            };
            let left = self.control.revoke(&revoked, timeout);
            if !left.is_empty() {
                warn!(partitions = ?left, "rebalance: partitions not released in time; their in-flight work will be redone by the next owner");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // The member only holds the assignment; readers fetch. Paused, it fetches
                // nothing.
                if let Err(e) = consumer.pause(tpl) {
                    warn!(%e, "cannot pause the group member's partitions");
                }
                let got: BTreeSet<u32> = tpl
                    .elements()
                    .iter()
                    .map(|e| e.partition() as u32)
                    .collect();
                info!(partitions = ?got, "rebalance: partitions assigned");
                self.control.assign(&got);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => error!(%e, "rebalance failed"),
        }
    }
}

/// A group member: the consumer and the thread polling it.
pub(crate) struct Member {
    pub(crate) consumer: Arc<BaseConsumer<MemberContext>>,
    stop: Arc<AtomicBool>,
    /// Counted here as leaving from its drop until its thread closed the consumer.
    leaving: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    group: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        *self
            .leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.group.clone())
            .or_default() += 1;
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl KafkaLog {
    /// A claim is a consumer group of its own (`<prefix>claim.<name>`) joined by this
    /// process: a newcomer succeeds once the group is stable with it as the only member.
    /// A live holder keeps its membership by heartbeats, so the newcomer is refused; a
    /// holder that was killed is removed by the group coordinator when its session times
    /// out (`session.timeout.ms`), which the newcomer waits for. Two processes starting
    /// at the same moment may both be refused (never both admitted).
    pub(crate) async fn claim_name(&self, name: &str, topic: &str) -> Result<Claim, LogError> {
        let group = format!("claim.{name}");
        validate_name(&group)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let me = format!("hifi-claim-{}-{nanos}", std::process::id());
        let membership = self.join_as(&group, topic, Some(&me)).await?;
        // The claim does no work on the partitions it is given: each is released as soon
        // as it is taken away, so a newcomer's rebalance never waits for this holder.
        let holder = tokio::spawn(async move {
            let mut m = membership;
            while m.changed().await {
                m.release_all_but(&m.owned());
            }
        });
        let held = AbortOnDrop(holder);
        let deadline = Instant::now() + self.session_timeout() + Duration::from_secs(5);
        let g = self.name(&group);
        loop {
            let (meta, g2) = (self.meta.clone(), g.clone());
            let members = blocking(move || {
                let list = meta
                    .fetch_group_list(Some(&g2), REQUEST_TIMEOUT)
                    .map_err(|e| kafka_err(format!("describing group {g2}"), e))?;
                Ok(list
                    .groups()
                    .iter()
                    .filter(|gi| gi.name() == g2)
                    .map(|gi| {
                        let members: Vec<(String, String)> = gi
                            .members()
                            .iter()
                            .map(|m| (m.client_id().to_owned(), m.client_host().to_owned()))
                            .collect();
                        (gi.state().to_owned(), members)
                    })
                    .next())
            })
            .await;
            let others: Vec<String> = match &members {
                Ok(Some((state, members))) => {
                    let mine = members.iter().any(|(id, _)| *id == me);
                    let others: Vec<String> = members
                        .iter()
                        .filter(|(id, _)| *id != me)
                        .map(|(id, host)| format!("{id} on {host}"))
                        .collect();
                    if mine && others.is_empty() && state == "Stable" {
                        return Ok(Claim::holding(Box::new(held)));
                    }
                    others
                }
                Ok(None) => Vec::new(),
                Err(e) => {
                    warn!(group = %g, %e, "cannot describe the claim's group; asking again");
                    Vec::new()
                }
            };
            if Instant::now() >= deadline {
                if let (Err(e), true) = (members, others.is_empty()) {
                    // Nothing says another process holds it: the cluster did not answer.
                    return Err(e);
                }
                return Err(LogError::InUse {
                    name: name.to_owned(),
                    holder: if others.is_empty() {
                        format!("consumer group {g} did not settle with this process alone")
                    } else {
                        format!("member of consumer group {g}: {}", others.join(", "))
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl KafkaLog {
    /// This process's members of group `g` (prefixed) that stopped and are leaving.
    fn leaving_members(&self, g: &str) -> usize {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(g)
            .copied()
            .unwrap_or(0)
    }
}

/// Aborts a task when dropped (the claim's holder).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl KafkaLog {
    /// Joins `group` as a consumer of `topic`, as the client `client_id` when given.
    pub(crate) async fn join_as(
        &self,
        group: &str,
        topic: &str,
        client_id: Option<&str>,
    ) -> Result<Membership, LogError> {
        validate_name(group)?;
        self.partitions(topic).await?;
        let g = self.name(group);
        // A member of this process that stopped (a node restarted: a publish, a reload)
        // leaves first: joining beside it starts a rebalance in which it revokes
        // partitions nobody will release, and commits wait behind it.
        let deadline = Instant::now() + self.session_timeout();
        while self.leaving_members(&g) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (membership, control) = Membership::dynamic();
        let ctx = MemberContext {
            control,
            closing: AtomicBool::new(false),
        };
        let mut config = self.cfg.consumer_config(Some(&g));
        if let Some(id) = client_id {
            config.set("client.id", id);
        }
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(ctx)
            .map_err(|e| kafka_err("creating a Kafka group member", e))?;
        consumer
            .subscribe(&[&self.name(topic)])
            .map_err(|e| kafka_err(format!("joining group {g}"), e))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (consumer, stop, g) = (consumer.clone(), stop.clone(), g.clone());
            let leaving = self.leaving.clone();
            std::thread::Builder::new()
                .name(format!("kafka-member-{group}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Serves rebalances; the partitions are paused, so no messages.
                        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                            warn!(group = %g, %e, "group member");
                        }
                    }
                    consumer.unsubscribe();
                    // The member's own reference goes just after its `drop` set `stop`:
                    // closing (leaving the group, blocking) must happen here, with the
                    // last one, not on the task that dropped the member.
                    let until = Instant::now() + Duration::from_secs(5);
                    while Arc::strong_count(&consumer) > 1 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    drop(consumer);
                    let mut l = leaving.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = l.get_mut(&g) {
                        *n -= 1;
                        if *n == 0 {
                            l.remove(&g);
                        }
                    }
                })
                .map_err(|e| LogError::Io {
                    context: "starting a group member thread".into(),
                    source: e,
                })?;
        }
        let member = Arc::new(Member {
            consumer,
            stop,
            leaving: self.leaving.clone(),
            group: g.clone(),
        });
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((g, self.name(topic)), Arc::downgrade(&member));
        Ok(membership.holding(Box::new(member)))
    }
}
