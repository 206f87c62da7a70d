//! Loss tallies: per 1-minute event-time bucket, per node and outcome, the exact set of
//! origins (Roaring bitmaps of offsets per origin partition). Duplicates are set members
//! already, so they never count twice.
//!
//! # Journal record (topic `__ledger`, value; little-endian)
//! ```text
//! version:u8 (=1)  node_len:u16 node  outcome:u8  bucket_minute:i64
//! topic_len:u16 topic  partition:u32  offsets: RoaringTreemap (portable serialization)
//! ```
//! One record per (node, outcome, bucket, origin partition) delta.

use std::collections::BTreeMap;

use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};

/// What finally happened to an event at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written on to the next topic (sources, stages).
    Passed,
    /// Acknowledged by the destination (sinks).
    Delivered,
    /// Dropped on purpose by a filter.
    Filtered,
    /// Moved to a dead-letter queue.
    DeadLettered,
    /// Waiting for another delivery attempt.
    Retrying,
    /// Taken into an event-time window's result (a window stage): the window's output
    /// events carry it on as new origins.
    Aggregated,
    /// Delivered again after a publish with `--redeliver-from` (a sink; together with
    /// `Delivered`): counted apart, neither a duplicate nor loss.
    Redelivered,
}

impl Outcome {
    /// All outcomes, in code order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Passed,
        Outcome::Delivered,
        Outcome::Filtered,
        Outcome::DeadLettered,
        Outcome::Retrying,
        Outcome::Aggregated,
        Outcome::Redelivered,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<Outcome> {
        Outcome::ALL.get(c as usize).copied()
    }
}

/// An event's position in the first durable topic it entered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// An event's origin, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginRef<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

impl Origin {
    /// Borrowed.
    pub fn as_ref(&self) -> OriginRef<'_> {
        OriginRef {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl std::fmt::Display for OriginRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.rsplitn(3, '/');
        let (offset, partition, topic) = (it.next(), it.next(), it.next());
        match (
            topic,
            partition.and_then(|p| p.parse().ok()),
            offset.and_then(|o| o.parse().ok()),
        ) {
            (Some(t), Some(partition), Some(offset)) if !t.is_empty() => Ok(Origin {
                topic: t.to_owned(),
                partition,
                offset,
            }),
            _ => Err(format!("{s:?} is not an origin (topic/partition/offset)")),
        }
    }
}

/// An origin partition: (topic, partition).
pub type OriginPartition = (String, u32);
/// Sets of origin offsets per origin partition.
pub type OriginSet = BTreeMap<OriginPartition, RoaringTreemap>;

/// The 1-minute bucket of an event time (minutes since the epoch).
pub fn bucket_of(event_time_ms: i64) -> i64 {
    event_time_ms.div_euclid(60_000)
}

/// What one node recorded since its last flush.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    /// (bucket, outcome) → origins.
    pub sets: BTreeMap<(i64, Outcome), OriginSet>,
    /// Events recorded (with repeats).
    pub events: u64,
}

impl Delta {
    /// Adds one outcome.
    pub fn add(&mut self, bucket: i64, outcome: Outcome, origin: OriginRef<'_>) {
        self.add_run(bucket, outcome, origin, 1);
    }

    /// Adds (outcome, origin, event time ms) of each event. A run with the same outcome
    /// and bucket at consecutive offsets of one partition is added as one range.
    pub fn add_all<'a>(&mut self, events: impl IntoIterator<Item = (Outcome, OriginRef<'a>, i64)>) {
        // (bucket, outcome, first origin, count)
        let mut run: Option<(i64, Outcome, OriginRef<'a>, u64)> = None;
        for (outcome, origin, event_time_ms) in events {
            let bucket = bucket_of(event_time_ms);
            match &mut run {
                Some((b, o, first, n))
                    if *b == bucket
                        && *o == outcome
                        && first.partition == origin.partition
                        && first.offset.checked_add(*n) == Some(origin.offset)
                        && first.topic == origin.topic =>
                {
                    *n += 1
                }
                _ => {
                    if let Some((b, o, first, n)) = run.take() {
                        self.add_run(b, o, first, n);
                    }
                    run = Some((bucket, outcome, origin, 1));
                }
            }
        }
        if let Some((b, o, first, n)) = run {
            self.add_run(b, o, first, n);
        }
    }

    /// Adds the same outcome for `count` events of one origin partition with consecutive
    /// offsets from `origin`'s (one stored request, or a run of a delivered batch).
    pub fn add_run(&mut self, bucket: i64, outcome: Outcome, origin: OriginRef<'_>, count: u64) {
        let last = match count {
            0 => return,
            n => origin.offset.saturating_add(n - 1),
        };
        let set = self.sets.entry((bucket, outcome)).or_default();
        // Found without building an owned key (a String per event showed in profiles)
        // while the delta holds few origin partitions, as it usually does.
        let existing = if set.len() <= 16 {
            set.iter_mut()
                .find(|((topic, partition), _)| {
                    *partition == origin.partition && *topic == origin.topic
                })
                .map(|(_, bits)| bits)
        } else {
            set.get_mut(&(origin.topic.to_owned(), origin.partition))
        };
        // A single offset by `insert`: `insert_range` costs more for one.
        let add = |b: &mut RoaringTreemap| {
            if count == 1 {
                b.insert(origin.offset);
            } else {
                b.insert_range(origin.offset..=last);
            }
        };
        match existing {
            Some(b) => add(b),
            None => {
                let mut b = RoaringTreemap::new();
                add(&mut b);
                set.insert((origin.topic.to_owned(), origin.partition), b);
            }
        }
        self.events += count;
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Journal record values, one per (bucket, outcome, origin partition).
    pub fn encode(&self, node: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for ((bucket, outcome), set) in &self.sets {
            for ((topic, partition), bits) in set {
                let mut v =
                    Vec::with_capacity(32 + node.len() + topic.len() + bits.serialized_size());
                v.push(1);
                v.extend_from_slice(&(node.len() as u16).to_le_bytes());
                v.extend_from_slice(node.as_bytes());
                v.push(outcome.code());
                v.extend_from_slice(&bucket.to_le_bytes());
                v.extend_from_slice(&(topic.len() as u16).to_le_bytes());
                v.extend_from_slice(topic.as_bytes());
                v.extend_from_slice(&partition.to_le_bytes());
                bits.serialize_into(&mut v)
                    .expect("writing to a Vec cannot fail");
                out.push(v);
            }
        }
        out
    }
}

/// One decoded journal record.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub node: String,
    pub outcome: Outcome,
    pub bucket: i64,
    pub origin_partition: OriginPartition,
    pub offsets: RoaringTreemap,
}

/// Decodes a journal record value; `None` if it is not one.
pub fn decode_entry(v: &[u8]) -> Option<JournalEntry> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = v.get(pos..pos + n)?;
        pos += n;
        Some(s)
    };
    if take(1)? != [1] {
        return None;
    }
    let nlen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let node = std::str::from_utf8(take(nlen)?).ok()?.to_owned();
    let outcome = Outcome::from_code(take(1)?[0])?;
    let bucket = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let tlen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(take(tlen)?).ok()?.to_owned();
    let partition = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let offsets = RoaringTreemap::deserialize_from(&v[pos..]).ok()?;
    Some(JournalEntry {
        node,
        outcome,
        bucket,
        origin_partition: (topic, partition),
        offsets,
    })
}

/// Union of `b` into `a`.
pub fn union_into(a: &mut OriginSet, b: &OriginSet) {
    for (k, bits) in b {
        match a.get_mut(k) {
            Some(x) => *x |= bits,
            None => {
                a.insert(k.clone(), bits.clone());
            }
        }
    }
}

/// `a − b`.
pub fn difference(a: &OriginSet, b: &OriginSet) -> OriginSet {
    let mut out = OriginSet::new();
    for (k, bits) in a {
        let d = match b.get(k) {
            Some(x) => bits - x,
            None => bits.clone(),
        };
        if !d.is_empty() {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// Number of origins in a set.
pub fn count(s: &OriginSet) -> u64 {
    s.values().map(RoaringTreemap::len).sum()
}

/// Whether `o` is in `s`.
pub fn contains(s: &OriginSet, o: &Origin) -> bool {
    s.get(&(o.topic.clone(), o.partition))
        .is_some_and(|b| b.contains(o.offset))
}

/// Up to `n` origins of a set, as strings.
pub fn examples(s: &OriginSet, n: usize) -> Vec<String> {
    s.iter()
        .flat_map(|((t, p), bits)| bits.iter().map(move |o| format!("{t}/{p}/{o}")))
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_round_trip() {
        let mut d = Delta::default();
        for off in [5u64, 6, 7, 1 << 40] {
            d.add(
                29_000_000,
                Outcome::Delivered,
                OriginRef {
                    topic: "events",
                    partition: 3,
                    offset: off,
                },
            );
        }
        let recs = d.encode("partner");
        assert_eq!(recs.len(), 1);
        let e = decode_entry(&recs[0]).unwrap();
        assert_eq!(
            (e.node.as_str(), e.outcome, e.bucket),
            ("partner", Outcome::Delivered, 29_000_000)
        );
        assert_eq!(e.offsets.len(), 4);
        assert!(e.offsets.contains(1 << 40));
        assert!(decode_entry(&recs[0][..10]).is_none());
    }

    #[test]
    fn a_batch_adds_the_same_as_its_events_one_by_one() {
        // Runs (consecutive offsets, same outcome and bucket) broken by every key: a gap
        // in offsets, another partition, another topic, another outcome, another bucket,
        // an offset seen again, and the end of the offset range.
        let at = |topic, partition, offset| OriginRef {
            topic,
            partition,
            offset,
        };
        let minute = 60_000;
        let mut events = Vec::new();
        for off in 10..20 {
            events.push((Outcome::Passed, at("events", 1, off), 5 * minute));
        }
        events.push((Outcome::Passed, at("events", 1, 25), 5 * minute));
        events.push((Outcome::Passed, at("events", 2, 26), 5 * minute));
        events.push((Outcome::Passed, at("other", 2, 27), 5 * minute));
        events.push((Outcome::Filtered, at("other", 2, 28), 5 * minute));
        events.push((Outcome::Filtered, at("other", 2, 29), 6 * minute));
        events.push((Outcome::Filtered, at("other", 2, 29), 6 * minute));
        events.push((Outcome::Filtered, at("other", 2, u64::MAX - 1), 6 * minute));
        events.push((Outcome::Filtered, at("other", 2, u64::MAX), 6 * minute));
        let mut one_by_one = Delta::default();
        for (outcome, origin, t) in &events {
            one_by_one.add(bucket_of(*t), *outcome, *origin);
        }
        let mut batched = Delta::default();
        batched.add_all(events.iter().copied());
        assert_eq!(batched.events, 18);
        assert_eq!(one_by_one.events, batched.events);
        assert_eq!(one_by_one.encode("n"), batched.encode("n"));
        let entries = batched.encode("n");
        assert_eq!(entries.len(), 5);
        let last = decode_entry(&entries[4]).unwrap();
        assert_eq!(last.offsets.len(), 3, "29 (twice) and the last two offsets");
        assert!(last.offsets.contains(u64::MAX));
    }

    #[test]
    fn origins_parse() {
        let o: Origin = "events/3/1234".parse().unwrap();
        assert_eq!(o.to_string(), "events/3/1234");
        assert!("x/y/z".parse::<Origin>().is_err());
    }
}
