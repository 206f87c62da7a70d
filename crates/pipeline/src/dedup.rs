//! The de-duplication window of an HTTP source: which (source, id) pairs were accepted
//! recently, in a compact flat table.
//!
//! # Keys
//! An event is known by a **keyed** 128-bit hash of its (source, id): SipHash-1-3 with a
//! random key drawn when the process starts ([`DedupKeyer::random`]). Producers choose
//! ids, so an unkeyed hash would let one craft an id that collides with another
//! producer's and have that event acknowledged as a duplicate and never stored. Nothing
//! keyed is persisted: the window is rebuilt from the topic's tail at every start, with
//! that process's key.
//!
//! # Layout and memory
//! - `ring`: the keys in acceptance order (16 bytes each), a ring of at most `max`.
//! - `index`: a hash table of `u32` slots into the ring (about 5 bytes per bucket,
//!   buckets a power of two at most 7/8 full), found by the key's own low bits — the
//!   key is already a uniform hash, so it is not hashed again.
//! - `marks`: one (time, sequence) pair per second of acceptance, so that expiry by
//!   time needs no timestamp per key.
//!
//! For 1 000 000 ids that is 16 MB of ring and 10 MB of index (the previous map of
//! `u128 → i64` plus a queue of `(i64, u128)` took ~100 MB). An id re-accepted while
//! still remembered (two concurrent requests with the same new id) keeps its first
//! place; it is forgotten at most one second early by the coarse marks, never late.

use std::collections::VecDeque;
use std::hash::Hasher;

use hashbrown::HashTable;
use siphasher::sip128::{Hasher128, SipHasher13};

/// Hashes (source, id) with a secret key, for the window and the test receiver.
#[derive(Clone)]
pub struct DedupKeyer {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for DedupKeyer {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupKeyer(..)")
    }
}

impl DedupKeyer {
    /// A keyer with a fresh random key.
    pub fn random() -> Self {
        DedupKeyer {
            k0: rand::random(),
            k1: rand::random(),
        }
    }

    /// The 128-bit key of an event. The source and id are separated by their lengths,
    /// so ("ab", "c") and ("a", "bc") differ.
    pub fn key(&self, source: &[u8], id: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(source.len() as u64);
        h.write(source);
        h.write(id);
        h.finish128().as_u128()
    }
}

/// Keys that are already uniform hashes (keyed (source, id) hashes), folded into 64 bits
/// instead of hashed again (SipHash over a hash showed in profiles).
pub type PreHashed = std::hash::BuildHasherDefault<FoldHasher>;

/// The hasher of [`PreHashed`].
#[derive(Debug, Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u128 keys; a plain FNV-1a for anything else.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Marks are one per this many milliseconds of acceptance time.
const MARK_MS: i64 = 1000;

/// Recently accepted keys: at most `max`, none older than `window_ms` (plus up to a
/// second, see the module header).
#[derive(Debug)]
pub struct Dedup {
    /// How long an id is remembered.
    window_ms: i64,
    /// Most ids remembered; past it the oldest are forgotten early.
    max: usize,
    /// Keys in acceptance order; slot of sequence `s` is `s % max` once full.
    ring: Vec<u128>,
    /// Sequence number of the oldest key still remembered.
    head: u64,
    /// Sequence number the next key gets.
    tail: u64,
    /// Ring slots of the remembered keys, found by the key's low 64 bits.
    index: HashTable<u32>,
    /// (acceptance time of a second's first key, its sequence), oldest first.
    marks: VecDeque<(i64, u64)>,
}

impl Dedup {
    /// An empty window.
    pub fn new(window_ms: i64, max: usize) -> Self {
        Dedup {
            window_ms,
            max: max.clamp(1, u32::MAX as usize),
            ring: Vec::new(),
            head: 0,
            tail: 0,
            index: HashTable::new(),
            marks: VecDeque::new(),
        }
    }

    /// How long an id is remembered, and how many at most.
    pub fn bounds(&self) -> (i64, usize) {
        (self.window_ms, self.max)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Makes room for `n` more keys at once (a rebuild), within the bound.
    pub fn reserve(&mut self, n: usize) {
        let n = n.min(self.max);
        self.ring.reserve(n.saturating_sub(self.ring.len()));
        self.index
            .reserve(n, |&slot| self.ring[slot as usize] as u64);
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.max as u64) as usize
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: u128) -> bool {
        let ring = &self.ring;
        self.index
            .find(key as u64, |&slot| ring[slot as usize] == key)
            .is_some()
    }

    /// Remembers `key` as accepted at `at_ms` (an earlier time than the newest mark's is
    /// taken as that mark's). A key already remembered keeps its place. When full, the
    /// oldest key is forgotten before its time: then returns true.
    pub fn insert(&mut self, key: u128, at_ms: i64) -> bool {
        if self.contains(key) {
            return false;
        }
        let full = self.len() == self.max;
        if full {
            self.pop_oldest();
        }
        if self
            .marks
            .back()
            .is_none_or(|&(t, _)| at_ms >= t.saturating_add(MARK_MS))
        {
            self.marks.push_back((at_ms, self.tail));
        }
        let slot = self.slot(self.tail);
        if slot == self.ring.len() {
            self.ring.push(key);
        } else {
            self.ring[slot] = key;
        }
        let ring = &self.ring;
        self.index
            .insert_unique(key as u64, slot as u32, |&s| ring[s as usize] as u64);
        self.tail += 1;
        full
    }

    fn pop_oldest(&mut self) {
        let slot = self.slot(self.head);
        let key = self.ring[slot];
        let ring = &self.ring;
        if let Ok(entry) = self.index.find_entry(key as u64, |&s| {
            s as usize == slot && ring[s as usize] == key
        }) {
            entry.remove();
        }
        self.head += 1;
        // Marks whose keys are all gone go too.
        while self.marks.len() > 1 && self.marks[1].1 <= self.head {
            self.marks.pop_front();
        }
        if self.is_empty() {
            self.marks.clear();
        }
    }

    /// Forgets keys older than the window (whole seconds at a time, never early).
    pub fn expire(&mut self, now_ms: i64) {
        let oldest_kept = now_ms.saturating_sub(self.window_ms);
        while let Some(&(t, _)) = self.marks.front() {
            // Every key of this mark was accepted before `t + MARK_MS`.
            if t.saturating_add(MARK_MS) > oldest_kept {
                break;
            }
            let until = self.marks.get(1).map_or(self.tail, |m| m.1);
            while self.head < until {
                self.pop_oldest();
            }
            if self.marks.front().is_some_and(|m| m.0 == t) {
                self.marks.pop_front();
            }
        }
    }

    /// Bytes held by the window's tables (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.ring.capacity() * 16
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.marks.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_key_is_keyed_and_separates_source_from_id() {
        let (a, b) = (DedupKeyer::random(), DedupKeyer::random());
        assert_eq!(a.key(b"s", b"1"), a.key(b"s", b"1"));
        assert_ne!(
            a.key(b"s", b"1"),
            b.key(b"s", b"1"),
            "another key, another hash"
        );
        assert_ne!(a.key(b"ab", b"c"), a.key(b"a", b"bc"));
        assert_eq!(format!("{a:?}"), "DedupKeyer(..)");
    }

    #[test]
    fn ids_expire_by_time_and_by_bound() {
        let mut d = Dedup::new(10_000, 3);
        d.insert(1, 0);
        d.insert(2, 500);
        d.insert(3, 2_000);
        assert!(d.contains(1) && d.contains(2) && d.contains(3));
        assert!(d.insert(4, 2_100), "full: 1 goes early");
        assert!(!d.contains(1) && d.contains(4));
        assert_eq!(d.len(), 3);
        d.expire(10_999);
        assert!(d.contains(2), "not yet a whole mark past the window");
        d.expire(11_000);
        assert!(!d.contains(2) && d.contains(3));
        d.expire(13_100);
        assert!(d.is_empty());
        d.insert(5, 20_000);
        assert!(d.contains(5) && !d.contains(3));
    }

    #[test]
    fn a_million_ids_fit_in_about_26_megabytes() {
        let mut d = Dedup::new(600_000, 1_000_000);
        let keyer = DedupKeyer::random();
        for i in 0..1_000_000u32 {
            d.insert(keyer.key(b"src", &i.to_le_bytes()), i64::from(i / 1000));
        }
        assert_eq!(d.len(), 1_000_000);
        let mb = d.heap_bytes() as f64 / 1e6;
        assert!(mb < 30.0, "{mb} MB");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Expire(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0u16..300).prop_map(|(k, dt)| Op::Insert(k, dt)),
            (0u16..3000).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Against a model (key → first acceptance time, in order): a remembered key is
        /// in the model within its window and bound; a key the model has within the
        /// window (less one mark) and among the newest `max` is remembered.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec(op(), 1..400), max in 1usize..40) {
            let window = 2_000;
            let mut d = Dedup::new(window, max);
            let mut model: BTreeMap<u128, (i64, u64)> = BTreeMap::new();
            let (mut now, mut seq) = (0i64, 0u64);
            for op in ops {
                match op {
                    Op::Insert(k, dt) => {
                        now += i64::from(dt);
                        d.expire(now);
                        model.retain(|_, (t, _)| *t + MARK_MS > now - window);
                        let key = u128::from(k) * 0x9E37_79B9_7F4A_7C15_u128;
                        if !d.contains(key) {
                            model.insert(key, (now, seq));
                            seq += 1;
                        }
                        d.insert(key, now);
                    }
                    Op::Expire(dt) => {
                        now += i64::from(dt);
                        d.expire(now);
                    }
                }
                prop_assert!(d.len() <= max);
                for (&key, &(t, s)) in &model {
                    let newest = s + max as u64 >= seq;
                    if newest && t > now - window {
                        prop_assert!(d.contains(key), "forgot {key} at {now} (t {t})");
                    }
                    if d.contains(key) {
                        prop_assert!(t + MARK_MS > now - window && newest);
                    }
                }
            }
        }
    }
}
