//! A binary buddy allocator over frame indices `0..nr_frames`.
//!
//! Free blocks sit on one stack per order. A stack entry is trusted only if
//! the per-frame `free_order` byte still says "free head of this order";
//! merging a buddy just clears that byte, leaving a stale stack entry that is
//! skipped (and compacted away) later. That keeps alloc and free O(orders)
//! without intrusive lists.
//!
//! A bitmap remembers which frames were ever handed out: the others still
//! hold the zeroes the host's anonymous mapping gave them, so a zeroed
//! allocation of only such frames need not write them (the host zeroes
//! each page on its first touch, as Linux zeroes a page on allocation).
//!
//! Linux: `mm/page_alloc.c` (`__rmqueue_smallest`, `__free_one_page`).

/// Largest order handed out: 1 GiB, so gigantic hugetlb pages and device-DAX
/// PUD leaves can come from the same allocator.
pub(crate) const MAX_ORDER: u32 = 18;

#[derive(Debug)]
pub(crate) struct Buddy {
    nr_frames: u64,
    /// `order + 1` where a free block of that order starts, else 0.
    free_order: Vec<u8>,
    stacks: Vec<Vec<u64>>,
    /// Live (non-stale) entries per order.
    live: Vec<u64>,
    free_frames: u64,
    /// One bit per frame, set once the frame was first allocated.
    used: Vec<u64>,
}

impl Buddy {
    /// Bookkeeping bytes per frame (`free_order`).
    pub(crate) const BYTES_PER_FRAME: usize = core::mem::size_of::<u8>();

    /// Every frame free.
    pub(crate) fn new(nr_frames: u64) -> Self {
        let mut buddy = Self {
            nr_frames,
            free_order: vec![0; nr_frames as usize],
            stacks: vec![Vec::new(); MAX_ORDER as usize + 1],
            live: vec![0; MAX_ORDER as usize + 1],
            free_frames: 0,
            used: vec![0; nr_frames.div_ceil(64) as usize],
        };
        let mut index = 0;
        while index < nr_frames {
            let mut order = MAX_ORDER;
            while index % (1 << order) != 0 || index + (1 << order) > nr_frames {
                order -= 1;
            }
            buddy.push(index, order);
            buddy.free_frames += 1 << order;
            index += 1 << order;
        }
        buddy
    }

    /// Frames currently free.
    pub(crate) fn free_frames(&self) -> u64 {
        self.free_frames
    }

    fn push(&mut self, index: u64, order: u32) {
        self.free_order[index as usize] = order as u8 + 1;
        self.stacks[order as usize].push(index);
        self.live[order as usize] += 1;
    }

    fn is_free_head(&self, index: u64, order: u32) -> bool {
        self.free_order[index as usize] == order as u8 + 1
    }

    fn pop(&mut self, order: u32) -> Option<u64> {
        let o = order as usize;
        while let Some(index) = self.stacks[o].pop() {
            if self.is_free_head(index, order) {
                self.free_order[index as usize] = 0;
                self.live[o] -= 1;
                return Some(index);
            }
        }
        None
    }

    fn unlink(&mut self, index: u64, order: u32) {
        self.free_order[index as usize] = 0;
        let o = order as usize;
        self.live[o] -= 1;
        // Bound the stale entries so a churning workload cannot grow a stack
        // without limit.
        if self.stacks[o].len() as u64 > 2 * self.live[o] + 64 {
            let mut stack = core::mem::take(&mut self.stacks[o]);
            stack.retain(|&i| self.is_free_head(i, order));
            stack.dedup();
            self.stacks[o] = stack;
        }
    }

    /// True when `index` lies in a block that is already free (a double
    /// free even after the first free merged it into a larger block).
    pub(crate) fn is_inside_free_block(&self, index: u64) -> bool {
        (0..=MAX_ORDER).any(|order| {
            let head = index & !((1u64 << order) - 1);
            head + (1 << order) <= self.nr_frames && self.is_free_head(head, order)
        })
    }

    /// A naturally aligned block of `1 << order` frames.
    pub(crate) fn alloc(&mut self, order: u32) -> Option<u64> {
        self.alloc_fresh(order).map(|(index, _)| index)
    }

    /// Like [`Self::alloc`], and whether no frame of the block was ever
    /// handed out before (all still zero).
    pub(crate) fn alloc_fresh(&mut self, order: u32) -> Option<(u64, bool)> {
        let (mut at, index) = (order..=MAX_ORDER).find_map(|o| self.pop(o).map(|i| (o, i)))?;
        while at > order {
            at -= 1;
            self.push(index + (1 << at), at);
        }
        self.free_frames -= 1 << order;
        Some((index, self.mark_used(index, order)))
    }

    /// Sets the used bits of a block; whether none was set before.
    fn mark_used(&mut self, index: u64, order: u32) -> bool {
        let (first, frames) = (index as usize, 1usize << order);
        if frames < 64 {
            // A block below order 6 is aligned, so it lies in one word.
            let mask = (u64::MAX >> (64 - frames)) << (first % 64);
            let word = &mut self.used[first / 64];
            let fresh = *word & mask == 0;
            *word |= mask;
            return fresh;
        }
        let words = &mut self.used[first / 64..(first + frames) / 64];
        let fresh = words.iter().all(|&w| w == 0);
        words.fill(u64::MAX);
        fresh
    }

    /// Returns a block obtained from [`Self::alloc`] with the same order.
    pub(crate) fn free(&mut self, mut index: u64, mut order: u32) {
        debug_assert!(index % (1 << order) == 0 && index + (1 << order) <= self.nr_frames);
        debug_assert!(!self.is_inside_free_block(index), "double free of frame {index} (order {order})");
        self.free_frames += 1 << order;
        while order < MAX_ORDER {
            let buddy = index ^ (1 << order);
            if buddy + (1 << order) > self.nr_frames || !self.is_free_head(buddy, order) {
                break;
            }
            self.unlink(buddy, order);
            index = index.min(buddy);
            order += 1;
        }
        self.push(index, order);
    }

    /// Returns many blocks, each as by [`Self::free`].
    pub(crate) fn free_many(&mut self, blocks: impl IntoIterator<Item = (u64, u32)>) {
        for (index, order) in blocks {
            self.free(index, order);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_and_merges_back() {
        let mut b = Buddy::new(1024);
        let a = b.alloc(0).unwrap();
        let c = b.alloc(9).unwrap();
        assert_eq!(c % 512, 0);
        assert_eq!(b.free_frames(), 1024 - 513);
        b.free(a, 0);
        b.free(c, 9);
        assert_eq!(b.free_frames(), 1024);
        assert_eq!(b.alloc(10), Some(0), "everything merged back into one block");
    }

    #[test]
    fn a_block_is_fresh_only_until_any_of_its_frames_was_handed_out() {
        let mut b = Buddy::new(1024);
        let (page, fresh) = b.alloc_fresh(0).unwrap();
        assert!(fresh);
        b.free(page, 0);
        let (again, fresh) = b.alloc_fresh(0).unwrap();
        assert_eq!((again, fresh), (page, false), "the same frame, used before");
        let (block, fresh) = b.alloc_fresh(9).unwrap();
        assert!(fresh, "a block away from the used frame");
        b.free(block, 9);
        b.free(again, 0);
        let (whole, fresh) = b.alloc_fresh(10).unwrap();
        assert_eq!((whole, fresh), (0, false), "the merged block holds used frames");
        b.free(whole, 10);
        let mut b = Buddy::new(1024);
        let small = b.alloc(3).unwrap();
        assert!(!b.mark_used(small, 0), "a frame inside a used order-3 block");
        assert!(b.alloc_fresh(3).unwrap().1, "its neighbour in the same word is fresh");
    }

    #[test]
    fn odd_sizes_and_exhaustion() {
        let mut b = Buddy::new(5);
        let got: Vec<_> = (0..5).map(|_| b.alloc(0).unwrap()).collect();
        assert_eq!(b.alloc(0), None);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn free_many_is_free_one_by_one() {
        let mut b = Buddy::new(1024);
        let mut blocks: Vec<(u64, u32)> = (0..8).map(|_| (b.alloc(0).unwrap(), 0)).collect();
        blocks.push((b.alloc(9).unwrap(), 9));
        assert_eq!(b.free_frames(), 1024 - 520);
        b.free_many(blocks);
        assert_eq!(b.free_frames(), 1024);
        assert_eq!(b.alloc(10), Some(0), "everything merged back into one block");
    }

    proptest! {
        #[test]
        fn never_hands_out_a_frame_twice(ops in proptest::collection::vec((0u32..4, any::<bool>()), 1..300)) {
            let mut b = Buddy::new(256);
            let mut owned: Vec<(u64, u32)> = Vec::new();
            let mut used = vec![false; 256];
            for (order, free_one) in ops {
                if free_one && !owned.is_empty() {
                    let (i, o) = owned.swap_remove(0);
                    for f in i..i + (1 << o) { used[f as usize] = false; }
                    b.free(i, o);
                } else if let Some(i) = b.alloc(order) {
                    prop_assert_eq!(i % (1 << order), 0);
                    for f in i..i + (1 << order) {
                        prop_assert!(!used[f as usize]);
                        used[f as usize] = true;
                    }
                    owned.push((i, order));
                }
                let in_use: u64 = owned.iter().map(|&(_, o)| 1u64 << o).sum();
                prop_assert_eq!(b.free_frames(), 256 - in_use);
            }
        }
    }
}
