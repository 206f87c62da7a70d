//! The tail cache: the newest groups' encoded frames per partition, so a reader keeping
//! up is answered from memory.

use super::*;

/// The newest group commits' frames, oldest first, with contiguous offsets (see the
/// module docs).
#[derive(Debug, Default)]
pub(crate) struct TailCache {
    /// (offset of the first record, the frames) per group commit.
    pub(crate) groups: VecDeque<(u64, Bytes)>,
    /// Offset after the newest group's last record.
    pub(crate) end: u64,
    /// Bytes of frames held.
    pub(crate) bytes: usize,
}

impl TailCache {
    /// Adds a committed group whose records start at `first` and end before `end`
    /// (`None`: a group too large to keep); drops the oldest groups beyond `max` bytes.
    /// A group that does not follow the newest one, or is not kept, empties the cache, so
    /// it never has a gap.
    pub(crate) fn push(&mut self, first: u64, end: u64, frames: Option<Bytes>, max: usize) {
        if first != self.end || frames.is_none() {
            self.groups.clear();
            self.bytes = 0;
        }
        self.end = end;
        let Some(frames) = frames else { return };
        self.bytes += frames.len();
        self.groups.push_back((first, frames));
        while self.bytes > max {
            let (_, old) = self.groups.pop_front().expect("bytes > 0 means a group");
            self.bytes -= old.len();
        }
    }

    /// The groups holding `from` and what follows it, up to about `max_bytes`; `None`
    /// when `from` is not held.
    pub(crate) fn groups_from(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>> {
        let first = self.groups.front()?.0;
        if from < first || from >= self.end {
            return None;
        }
        let i = self.groups.partition_point(|(start, _)| *start <= from) - 1;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (start, frames) in self.groups.range(i..) {
            if bytes >= max_bytes {
                break;
            }
            bytes += frames.len();
            out.push((*start, frames.clone()));
        }
        Some(out)
    }
}

#[cfg(test)]
impl TailCache {
    /// Flips one bit in every cached frame's bytes at `at` (a memory fault, for tests).
    pub(crate) fn damage(&mut self, at: usize) {
        for (_, frames) in &mut self.groups {
            let mut bytes = frames.to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 0x10;
            }
            *frames = Bytes::from(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Option<Bytes> {
        Some(Bytes::from(vec![0u8; n]))
    }

    fn held(t: &TailCache) -> Vec<u64> {
        t.groups.iter().map(|(first, _)| *first).collect()
    }

    #[test]
    fn the_tail_cache_keeps_the_newest_groups_within_its_bytes_and_never_a_gap() {
        let mut t = TailCache::default();
        t.push(0, 10, frames(400), 1000);
        t.push(10, 20, frames(400), 1000);
        assert_eq!((held(&t), t.bytes), (vec![0, 10], 800));
        // Past the bound the oldest go.
        t.push(20, 25, frames(400), 1000);
        assert_eq!((held(&t), t.bytes, t.end), (vec![10, 20], 800, 25));
        // A group too large to keep empties the cache (keeping the older ones would
        // leave a gap before the next group).
        t.push(25, 30, None, 1000);
        assert_eq!((held(&t), t.bytes, t.end), (vec![], 0, 30));
        t.push(30, 31, frames(10), 1000);
        assert_eq!(held(&t), vec![30]);
        // A group that does not follow the newest one starts over.
        t.push(40, 41, frames(10), 1000);
        assert_eq!((held(&t), t.bytes), (vec![40], 10));
    }

    #[test]
    fn the_tail_cache_answers_only_for_offsets_it_holds() {
        let mut t = TailCache::default();
        assert!(t.groups_from(0, 1 << 20).is_none());
        t.push(0, 10, frames(100), 1000);
        t.push(10, 20, frames(100), 1000);
        t.push(20, 30, frames(100), 1000);
        let starts =
            |g: Option<Vec<(u64, Bytes)>>| g.map(|g| g.iter().map(|x| x.0).collect::<Vec<_>>());
        assert_eq!(starts(t.groups_from(0, 1 << 20)), Some(vec![0, 10, 20]));
        assert_eq!(starts(t.groups_from(15, 1 << 20)), Some(vec![10, 20]));
        assert_eq!(starts(t.groups_from(29, 1 << 20)), Some(vec![20]));
        // Only as many groups as the byte limit needs (at least one).
        assert_eq!(starts(t.groups_from(0, 150)), Some(vec![0, 10]));
        assert_eq!(starts(t.groups_from(0, 1)), Some(vec![0]));
        assert_eq!(
            t.groups_from(30, 1 << 20),
            None,
            "the high watermark is not held"
        );
        t.push(30, 40, frames(950), 1000);
        assert_eq!(t.groups_from(5, 1 << 20), None, "evicted");
    }
}
