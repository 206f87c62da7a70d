//! What a Kafka error means for hifi: an engine error with its context, a lost
//! connection, or a moment of cluster metadata in motion that a retry outlives — and the
//! retry loops for the last.

use std::time::{Duration, Instant};

use hifi_log::LogError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::warn;

use crate::{REQUEST_TIMEOUT, TRANSIENT_RETRY};

/// Whether a consumer error is about reaching the brokers (not about a partition):
/// queued by librdkafka for every failed connection attempt.
pub(crate) fn is_connection_error(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// An append's error: a record the cluster refuses (too large, invalid, not allowed)
/// is not transient — no retry, and no other engine (a standby) can mend it.
pub(crate) fn append_err(context: String, e: KafkaError) -> LogError {
    if refused(&e) {
        LogError::Invalid(format!("{context}: the cluster refused the records: {e}"))
    } else {
        kafka_err(context, e)
    }
}

/// Whether the cluster refused a produce outright: a record too large or invalid, a
/// topic not allowed. No retry can mend it.
pub(crate) fn refused(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidTopic
        )
    )
}

pub(crate) fn kafka_err(context: impl Into<String>, e: KafkaError) -> LogError {
    LogError::Io {
        context: context.into(),
        source: std::io::Error::other(e),
    }
}

/// Errors a cluster of several brokers answers for a moment while its metadata is not the
/// same everywhere: a topic just created that the broker asked (or the client's metadata
/// cache) does not know yet, a partition whose leader is moving, a group coordinator
/// that is moving or loading. The same request succeeds a little later.
pub(crate) fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnknownPartition
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
        )
    )
}

/// Errors of a commit from outside a group that still has members (or a member whose
/// generation moved on): they pass once the group's members left or rejoined.
pub(crate) fn membership(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownMemberId | C::IllegalGeneration | C::RebalanceInProgress)
    )
}

/// Runs a blocking cluster request until it succeeds, fails otherwise than
/// [`transient`]ly, or [`TRANSIENT_RETRY`] has passed.
pub(crate) fn retrying<T>(request: impl FnMut() -> Result<T, KafkaError>) -> Result<T, KafkaError> {
    retrying_with(request, || {})
}

/// [`retrying`], calling `refresh` before each new try.
pub(crate) fn retrying_with<T>(
    mut request: impl FnMut() -> Result<T, KafkaError>,
    mut refresh: impl FnMut(),
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + TRANSIENT_RETRY;
    loop {
        match request() {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
                refresh();
            }
            r => return r,
        }
    }
}

/// Asks the cluster for a topic's metadata again. librdkafka answers watermark and
/// offsets-for-times queries from its metadata cache, and does not refresh a cached
/// partition without a leader by itself (it takes that for a permanent error): a topic
/// seen just after it was created, before its leaders were elected, stayed "unknown
/// partition" for the cache's lifetime (15 minutes).
pub(crate) fn refresh_metadata(meta: &BaseConsumer, topic: &str) {
    if let Err(e) = meta.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
        warn!(topic, %e, "cannot refresh the topic's metadata");
    }
}
