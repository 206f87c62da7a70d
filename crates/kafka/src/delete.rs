//! Deleting topics and consumer groups (`hifi versions gc`), through the admin API.

use std::time::{Duration, Instant};

use hifi_log::{validate_name, LogError};
use rdkafka::admin::AdminOptions;
use rdkafka::error::RDKafkaErrorCode;
use tracing::info;

use crate::{blocking, kafka_err, KafkaLog, REQUEST_TIMEOUT, TRANSIENT_RETRY};

impl KafkaLog {
    /// [`hifi_log::Log::delete_topic`]: DeleteTopics, then waits until the cluster's metadata no
    /// longer lists the topic.
    pub(crate) async fn delete_topic_now(&self, topic: &str) -> Result<(), LogError> {
        validate_name(topic)?;
        let name = self.name(topic);
        let opts = AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .delete_topics(&[name.as_str()], &opts)
            .await
            .map_err(|e| kafka_err(format!("deleting topic {name}"), e))?;
        let forget = || {
            self.partition_counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(topic);
            let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = readers
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            let gone: Vec<_> = keys.iter().filter_map(|k| readers.remove(k)).collect();
            drop(readers);
            // Closing a consumer waits for librdkafka's threads: not on a worker.
            tokio::task::spawn_blocking(move || drop(gone));
        };
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    forget();
                    return Err(LogError::TopicNotFound {
                        topic: topic.to_owned(),
                    });
                }
                Err((_, code)) => {
                    return Err(LogError::Io {
                        context: format!("deleting topic {name}"),
                        source: std::io::Error::other(code.to_string()),
                    })
                }
            }
        }
        forget();
        // The controller deletes asynchronously: wait until metadata no longer shows it.
        let deadline = Instant::now() + TRANSIENT_RETRY;
        loop {
            // Asked through the admin client (`allow.auto.create.topics=false`): the
            // request must not create the topic again; and a consumer asked about a
            // topic keeps asking, which (inferred from one hang) held its close.
            let (admin, n) = (self.admin.clone(), name.clone());
            let listed = blocking(move || {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(&n), REQUEST_TIMEOUT)
                    .map_err(|e| kafka_err(format!("reading metadata of {n}"), e))?;
                Ok(md
                    .topics()
                    .iter()
                    .any(|t| t.name() == n && t.error().is_none() && !t.partitions().is_empty()))
            })
            .await?;
            if !listed {
                info!(topic = %name, "Kafka topic deleted");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LogError::Io {
                    context: format!("deleting topic {name}"),
                    source: std::io::Error::other("still listed in the cluster's metadata"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`hifi_log::Log::delete_group`]: DeleteGroups (a group that is not there is no error).
    pub(crate) async fn delete_group_now(&self, group: &str) -> Result<(), LogError> {
        validate_name(group)?;
        let group = self.name(group); // groups carry the prefix too
        self.committers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .delete_groups(&[group.as_str()], &opts)
            .await
            .map_err(|e| kafka_err(format!("deleting group {group}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((_, code)) => {
                    return Err(LogError::Io {
                        context: format!("deleting group {group}"),
                        source: std::io::Error::other(code.to_string()),
                    })
                }
            }
        }
        Ok(())
    }
}
