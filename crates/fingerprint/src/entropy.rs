//! Shannon entropy of one field's values in a bucket: exact while the field has at most
//! [`EXACT_MAX`] distinct values, then estimated from a heavy-hitters sketch.
//!
//! Values are counted by a 64-bit hash of their JSON text (two values colliding would be
//! counted as one: with a few thousand values, a chance of about 1e-12).
//!
//! Past the bound the counters become a Space-Saving sketch of [`EXACT_MAX`] counters: a
//! value not counted takes the place of the smallest counter and starts from its count,
//! remembering that count as its possible overestimate. So every value's true count is
//! at least its counter minus the overestimate (its guaranteed count) and at most its
//! counter, and a value the sketch does not hold was seen at most as often as the
//! smallest counter. From that and the field's distinct estimate (HyperLogLog):
//! - the **estimate** is the largest entropy consistent with the guaranteed counts over
//!   the estimated number of distinct values (water-filling: values above the level
//!   keep their guaranteed count, the rest of the events are shared evenly) — exact
//!   for a uniform field and for a few heavy values over a long even tail;
//! - **high** is the same over 10 % more distinct values than estimated (HyperLogLog's
//!   error here is about 2 %);
//! - **low** is the entropy of the counters themselves (they sum to the events counted
//!   and cap every count, so no distribution the sketch allows is more concentrated).
//!
//! The bounds hold given the distinct estimate; they are not a confidence interval.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Distinct values counted exactly; also the sketch's counters past it.
pub const EXACT_MAX: usize = 1024;

/// The counts behind one field's entropy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Counts {
    /// Per value hash: its count and (in a sketch) how much of it may be overestimate.
    counts: HashMap<u64, (u64, u64)>,
    /// Values counted (null and absent values are not values).
    total: u64,
    /// Whether the counts became a sketch (more than [`EXACT_MAX`] distinct values).
    sketch: bool,
    /// In a sketch: (count, hash) of every counter, smallest first.
    order: BTreeSet<(u64, u64)>,
}

/// The stored form: counters as flat triples.
#[derive(Serialize, Deserialize)]
struct Stored {
    total: u64,
    sketch: bool,
    counts: Vec<(u64, u64, u64)>,
}

impl From<Stored> for Counts {
    fn from(s: Stored) -> Counts {
        let counts: HashMap<u64, (u64, u64)> =
            s.counts.into_iter().map(|(h, n, e)| (h, (n, e))).collect();
        let order = if s.sketch {
            counts.iter().map(|(h, (n, _))| (*n, *h)).collect()
        } else {
            BTreeSet::new()
        };
        Counts {
            counts,
            total: s.total,
            sketch: s.sketch,
            order,
        }
    }
}

impl From<Counts> for Stored {
    fn from(c: Counts) -> Stored {
        let mut counts: Vec<_> = c.counts.into_iter().map(|(h, (n, e))| (h, n, e)).collect();
        counts.sort_unstable();
        Stored {
            total: c.total,
            sketch: c.sketch,
            counts,
        }
    }
}

/// A field's entropy, in bits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entropy {
    /// The entropy (exact, or the estimate).
    pub bits: f64,
    /// Whether `bits` is exact (at most [`EXACT_MAX`] distinct values).
    pub exact: bool,
    /// Least and most it can be given the sketch (equal to `bits` when exact).
    pub low: f64,
    pub high: f64,
}

impl Counts {
    /// Counts one value by its hash.
    pub fn add(&mut self, hash: u64) {
        self.total += 1;
        if let Some((n, _)) = self.counts.get_mut(&hash) {
            if self.sketch {
                self.order.remove(&(*n, hash));
                self.order.insert((*n + 1, hash));
            }
            *n += 1;
            return;
        }
        if !self.sketch && self.counts.len() < EXACT_MAX {
            self.counts.insert(hash, (1, 0));
            return;
        }
        if !self.sketch {
            self.sketch = true;
            self.order = self.counts.iter().map(|(h, (n, _))| (*n, *h)).collect();
        }
        // Space-Saving: the new value takes the smallest counter's place.
        if let Some((min, old)) = self.order.pop_first() {
            self.counts.remove(&old);
            self.counts.insert(hash, (min + 1, min));
            self.order.insert((min + 1, hash));
        }
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The entropy, given the field's estimated number of distinct values (used only
    /// once the counts are a sketch).
    pub fn entropy(&self, distinct_estimate: f64) -> Entropy {
        let n = self.total as f64;
        if self.total == 0 {
            return Entropy {
                bits: 0.0,
                exact: true,
                low: 0.0,
                high: 0.0,
            };
        }
        // Summed in a fixed order (a map's order differs between copies of it), so equal
        // counts always give equal figures.
        let mut counts: Vec<(u64, u64)> = self.counts.values().copied().collect();
        counts.sort_unstable();
        if !self.sketch {
            let bits: f64 = counts.iter().map(|(c, _)| term(*c as f64, n)).sum();
            let bits = if bits > 0.0 { bits } else { 0.0 }; // never -0
            return Entropy {
                bits,
                exact: true,
                low: bits,
                high: bits,
            };
        }
        let guaranteed: Vec<u64> = counts.iter().map(|(c, e)| c - e).collect();
        let bits = fill(&guaranteed, self.total, distinct_estimate);
        let high = fill(&guaranteed, self.total, distinct_estimate * 1.1).max(bits);
        // Every count is at most its counter and the counters sum to the total: the
        // counters themselves are the most concentrated the values can be.
        let low = counts
            .iter()
            .map(|(c, _)| term(*c as f64, n))
            .sum::<f64>()
            .min(bits);
        Entropy {
            bits,
            exact: false,
            low,
            high,
        }
    }
}

/// The largest entropy of `total` events over `distinct` values, each value of
/// `guaranteed` having at least its count: water-filling (the values whose guaranteed
/// count is above the level keep it; the rest share the remaining events evenly).
fn fill(guaranteed: &[u64], total: u64, distinct: f64) -> f64 {
    let mut g: Vec<u64> = guaranteed.iter().copied().filter(|c| *c > 0).collect();
    g.sort_unstable_by(|a, b| b.cmp(a));
    let (n, distinct) = (total as f64, distinct.max(g.len() as f64).max(1.0));
    let mut fixed = 0.0;
    for (k, c) in g.iter().enumerate() {
        let rest = n - fixed;
        let level = rest / (distinct - k as f64).max(1.0);
        if (*c as f64) <= level {
            let fixed_terms: f64 = g[..k].iter().map(|c| term(*c as f64, n)).sum();
            return fixed_terms + (distinct - k as f64) * term(level, n);
        }
        fixed += *c as f64;
    }
    let fixed_terms: f64 = g.iter().map(|c| term(*c as f64, n)).sum();
    let others = (distinct - g.len() as f64).max(1.0);
    fixed_terms + others * term((n - fixed).max(0.0) / others, n)
}

/// One value's share of the entropy: −p·log2 p for p = `count` / `total`.
fn term(count: f64, total: f64) -> f64 {
    if count <= 0.0 || total <= 0.0 {
        return 0.0;
    }
    let p = count / total;
    -p * p.log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(counts: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts.iter().map(|c| term(*c as f64, n as f64)).sum()
    }

    #[test]
    fn few_values_are_counted_exactly() {
        let mut c = Counts::default();
        for (h, times) in [(1u64, 50u64), (2, 25), (3, 25)] {
            for _ in 0..times {
                c.add(h);
            }
        }
        let e = c.entropy(3.0);
        assert!(e.exact);
        assert!((e.bits - 1.5).abs() < 1e-12, "{e:?}");
        assert_eq!((e.low, e.high), (e.bits, e.bits));
        let one = {
            let mut c = Counts::default();
            (0..10).for_each(|_| c.add(7));
            c.entropy(1.0)
        };
        assert_eq!(one.bits, 0.0);
        assert_eq!(Counts::default().entropy(0.0).bits, 0.0);
    }

    #[test]
    fn a_skewed_field_past_the_bound_is_estimated_within_its_bounds() {
        // 20 heavy values taking 80 % of the events, then 20 000 values once each.
        let mut c = Counts::default();
        let mut truth = Vec::new();
        for h in 0..20u64 {
            for _ in 0..4_000 {
                c.add(h);
            }
            truth.push(4_000);
        }
        for h in 1_000..21_000u64 {
            c.add(h);
            truth.push(1);
        }
        let want = exact(&truth);
        let e = c.entropy(20_020.0);
        assert!(!e.exact);
        assert!(e.low <= e.bits && e.bits <= e.high, "{e:?}");
        assert!(e.low <= want && want <= e.high, "truth {want}: {e:?}");
        assert!((e.bits - want).abs() / want < 0.05, "truth {want}: {e:?}");
    }

    #[test]
    fn a_uniform_field_past_the_bound_is_estimated_near_log2_of_its_values() {
        let mut c = Counts::default();
        for _ in 0..5 {
            for h in 0..4_096u64 {
                c.add(h * 7_919);
            }
        }
        let want = 12.0; // log2(4096)
        let e = c.entropy(4_096.0);
        assert!(!e.exact);
        assert!(e.low <= want && want <= e.high, "{e:?}");
        assert!((e.bits - want).abs() < 0.6, "{e:?}");
    }

    #[test]
    fn counts_survive_their_stored_form() {
        let mut c = Counts::default();
        for h in 0..3_000u64 {
            c.add(h % 1_500);
        }
        let back: Counts = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back.entropy(1_500.0), c.entropy(1_500.0));
        let mut a = back;
        let mut b = c;
        a.add(99_999);
        b.add(99_999);
        assert_eq!(a.entropy(1_501.0), b.entropy(1_501.0));
    }
}
