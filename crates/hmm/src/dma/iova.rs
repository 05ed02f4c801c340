//! An IOVA space: page-granular, size-aligned reservations of contiguous
//! device addresses, first fit, failing on exhaustion. It is what an IOMMU
//! domain's IOVA allocator does for `dma_iova_try_alloc`: a reservation of
//! `n` pages starts at a multiple of the smallest power of two ≥ `n` pages
//! (the kernel allocates "size aligned" ranges).
//!
//! Owns only address arithmetic; [`super::soft::SoftDmaDevice`] uses it
//! both for whole-map reservations and for per-page IOMMU mappings.
//!
//! Linux: `drivers/iommu/iova.c` (`alloc_iova` with `size_aligned`),
//! `dma_iova_try_alloc`, `dma_iova_free`.

use std::collections::BTreeMap;

use hmm_types::PAGE_SIZE;

/// Reservations in `[base, base + len)`.
#[derive(Clone, Debug)]
pub struct IovaAllocator {
    base: u64,
    end: u64,
    /// Reserved ranges: start → end.
    reserved: BTreeMap<u64, u64>,
}

impl IovaAllocator {
    /// A space of `len` bytes at `base`, both rounded to pages (base up,
    /// end down); an empty space refuses every reservation.
    pub fn new(base: u64, len: u64) -> Self {
        let first = base.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let end = base.saturating_add(len) / PAGE_SIZE * PAGE_SIZE;
        Self { base: first, end: end.max(first), reserved: BTreeMap::new() }
    }

    /// Reserves `len` bytes (rounded up to pages), aligned to the smallest
    /// power of two of pages that holds them; `None` when `len` is 0 or no
    /// aligned gap is left.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let pages = len.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE;
        if pages == 0 {
            return None;
        }
        let align = pages.checked_next_power_of_two()?.checked_mul(PAGE_SIZE)?;
        let size = pages * PAGE_SIZE;
        let mut cursor = self.base;
        for (&start, &end) in self.reserved.iter().chain(core::iter::once((&self.end, &self.end))) {
            let candidate = cursor.checked_next_multiple_of(align)?;
            if candidate.checked_add(size)? <= start {
                self.reserved.insert(candidate, candidate + size);
                return Some(candidate);
            }
            cursor = cursor.max(end);
        }
        None
    }

    /// Releases the reservation starting at `start`; returns its length,
    /// or `None` if no reservation starts there.
    pub fn free(&mut self, start: u64) -> Option<u64> {
        self.reserved.remove(&start).map(|end| end - start)
    }

    /// The reservation containing `addr`, as `(start, end)`.
    pub fn find(&self, addr: u64) -> Option<(u64, u64)> {
        self.reserved.range(..=addr).next_back().filter(|(_, &end)| addr < end).map(|(&s, &e)| (s, e))
    }

    /// Live reservations.
    pub fn len(&self) -> usize {
        self.reserved.len()
    }

    /// True when nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.reserved.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn reservations_are_size_aligned_and_exhaust() {
        let mut space = IovaAllocator::new(0x10_0000, 8 * P);
        let a = space.alloc(P).unwrap();
        assert_eq!(a, 0x10_0000);
        // Three pages align to four.
        let b = space.alloc(3 * P).unwrap();
        assert_eq!(b % (4 * P), 0);
        assert_eq!(b, 0x10_0000 + 4 * P);
        // One page fits in the gap left by the alignment.
        assert_eq!(space.alloc(P), Some(0x10_0000 + P));
        // Two pages fit at +2 pages (aligned to 2).
        assert_eq!(space.alloc(2 * P), Some(0x10_0000 + 2 * P));
        // Page 7: three pages reserve three, not four.
        assert_eq!(space.alloc(P), Some(0x10_0000 + 7 * P));
        assert_eq!(space.alloc(P), None, "exhausted");
        assert_eq!(space.free(b), Some(3 * P));
        assert_eq!(space.alloc(4 * P), None, "page 7 still breaks the only aligned four");
        assert_eq!(space.alloc(2 * P), Some(b));
        assert_eq!(space.alloc(0), None);
        assert_eq!(space.free(b + P), None, "not the start of a reservation");
    }

    #[test]
    fn a_request_larger_than_the_space_or_overflowing_fails() {
        let mut space = IovaAllocator::new(0, 4 * P);
        assert_eq!(space.alloc(5 * P), None);
        assert_eq!(space.alloc(u64::MAX), None);
        assert!(space.is_empty());
    }

    proptest! {
        /// Against a brute-force reference: every reservation is inside the
        /// space, size aligned and disjoint from the others; a refusal means
        /// no aligned gap existed.
        #[test]
        fn allocator_matches_a_page_bitmap(ops in proptest::collection::vec((any::<bool>(), 1u64..9, any::<u8>()), 1..60)) {
            let pages = 32u64;
            let base = 0x40_0000;
            let mut space = IovaAllocator::new(base, pages * P);
            let mut used = vec![false; pages as usize];
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (is_alloc, n, pick) in ops {
                if is_alloc || live.is_empty() {
                    let align = n.next_power_of_two();
                    let fits = (0..pages).step_by(align as usize).any(|s| s + n <= pages && (s..s + n).all(|p| !used[p as usize]));
                    match space.alloc(n * P) {
                        Some(at) => {
                            prop_assert!(fits);
                            let first = (at - base) / P;
                            prop_assert_eq!(first % align, 0);
                            prop_assert!(first + n <= pages);
                            for p in first..first + n {
                                prop_assert!(!used[p as usize], "overlap at page {}", p);
                                used[p as usize] = true;
                            }
                            prop_assert_eq!(space.find(at + (n - 1) * P), Some((at, at + n * P)));
                            live.push((at, n));
                        }
                        None => prop_assert!(!fits, "refused {} pages with an aligned gap free", n),
                    }
                } else {
                    let (at, n) = live.swap_remove(pick as usize % live.len());
                    prop_assert_eq!(space.free(at), Some(n * P));
                    let first = (at - base) / P;
                    for p in first..first + n {
                        used[p as usize] = false;
                    }
                }
            }
            prop_assert_eq!(space.len(), live.len());
        }
    }
}
