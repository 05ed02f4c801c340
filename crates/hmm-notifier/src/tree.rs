//! The set of subscribed intervals and the stabbing query "which intervals
//! overlap `[start, last]`".
//!
//! Intervals are bucketed by the bit length of their size; within a bucket
//! they sit in a B-tree ordered by start. An interval of bucket `b` is
//! shorter than `2^(b+1)`, so one overlapping `[start, last]` starts in
//! `[start - 2^(b+1) + 1, last]`: each bucket answers with one range scan.
//! A query costs O(B log n + k) for B non-empty buckets (at most 65) and k
//! results, plus the intervals of a bucket that start in that window yet
//! end before `start`, which for intervals that do not pile up on each
//! other is a constant.
//!
//! Linux: `include/linux/interval_tree.h` (an augmented rbtree there).

use std::collections::BTreeMap;

/// Intervals `[start, last]` (closed, as Linux stores them) with values.
#[derive(Debug)]
pub(crate) struct IntervalSet<V> {
    buckets: Vec<BTreeMap<(u64, u64), V>>,
    len: usize,
}

impl<V> Default for IntervalSet<V> {
    fn default() -> Self {
        Self { buckets: (0..=64).map(|_| BTreeMap::new()).collect(), len: 0 }
    }
}

fn bucket(start: u64, last: u64) -> usize {
    let span = last - start; // size - 1, never overflows for a closed interval
    (u64::BITS - span.leading_zeros()) as usize
}

impl<V: Clone> IntervalSet<V> {
    /// Number of intervals.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `[start, last]` under `id` (unique per interval).
    pub(crate) fn insert(&mut self, start: u64, last: u64, id: u64, value: V) {
        if self.buckets[bucket(start, last)].insert((start, id), value).is_none() {
            self.len += 1;
        }
    }

    /// Removes the interval `[start, last]` with `id`; returns whether it was there.
    pub(crate) fn remove(&mut self, start: u64, last: u64, id: u64) -> bool {
        let removed = self.buckets[bucket(start, last)].remove(&(start, id)).is_some();
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// True when `[start, last]` with `id` is present.
    pub(crate) fn contains(&self, start: u64, last: u64, id: u64) -> bool {
        self.buckets[bucket(start, last)].contains_key(&(start, id))
    }

    /// Values of the intervals overlapping `[start, last]`, pushed to `out`
    /// in ascending start order per bucket.
    pub(crate) fn overlapping(&self, start: u64, last: u64, out: &mut Vec<V>, ends: impl Fn(&V) -> u64) {
        for (b, tree) in self.buckets.iter().enumerate() {
            if tree.is_empty() {
                continue;
            }
            // Longest span in bucket b is 2^b - 1 (2^64 - 1 for b = 64).
            let max_span = if b == 64 { u64::MAX } else { (1u64 << b) - 1 };
            let from = start.saturating_sub(max_span);
            for (_, value) in tree.range((from, 0)..=(last, u64::MAX)) {
                if ends(value) >= start {
                    out.push(value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_linear_scan(
            intervals in proptest::collection::vec((0u64..1 << 20, 0u64..1 << 18), 0..64),
            queries in proptest::collection::vec((0u64..1 << 20, 0u64..1 << 18), 1..16),
            wide in any::<bool>(),
        ) {
            let mut set = IntervalSet::default();
            let mut all: Vec<(u64, u64, u64)> = Vec::new();
            for (id, &(start, len)) in intervals.iter().enumerate() {
                let last = start + len;
                set.insert(start, last, id as u64, (id as u64, last));
                all.push((start, last, id as u64));
            }
            if wide {
                set.insert(0, u64::MAX, 999, (999, u64::MAX));
                all.push((0, u64::MAX, 999));
            }
            for (qs, qlen) in queries {
                let ql = qs + qlen;
                let mut got = Vec::new();
                set.overlapping(qs, ql, &mut got, |v| v.1);
                let mut got: Vec<u64> = got.into_iter().map(|v| v.0).collect();
                got.sort_unstable();
                let mut want: Vec<u64> = all.iter().filter(|i| i.0 <= ql && qs <= i.1).map(|i| i.2).collect();
                want.sort_unstable();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn remove_and_contains() {
        let mut set = IntervalSet::default();
        set.insert(10, 20, 1, 'a');
        assert!(set.contains(10, 20, 1));
        assert!(set.remove(10, 20, 1));
        assert!(!set.remove(10, 20, 1));
        assert_eq!(set.len(), 0);
    }
}
