//! Dropping references on many folios with one buddy lock: the last
//! reference of a folio of system RAM queues it, and [`PhysMem::free_batch`]
//! returns the queue to the buddy allocator at once.
//!
//! Linux: `folios_put_refs`, `free_unref_folios` (a batch of folios freed
//! under one zone lock).

use core::sync::atomic::Ordering;

use hmm_types::Pfn;

use super::{PageFlags, PhysMem};

/// Folios of system RAM whose last reference was dropped, not yet given
/// back to the buddy allocator; see [`PhysMem::put_many_batched`].
#[derive(Debug, Default)]
pub struct FreeBatch {
    /// (frame index in RAM, order)
    blocks: Vec<(u64, u32)>,
}

impl FreeBatch {
    /// An empty batch able to hold `n` folios without reallocating.
    pub fn with_capacity(n: usize) -> Self {
        Self { blocks: Vec::with_capacity(n) }
    }
}

impl PhysMem {
    /// Drops `n` references like [`Self::put_many`], except that a folio
    /// of system RAM whose last reference goes is queued on `batch`
    /// instead of freed: it is free (reset, counted) but its frames reach
    /// the buddy allocator only at [`Self::free_batch`]. Anything else
    /// (hugetlb, device memory) is released at once, as by `put_many`.
    pub fn put_many_batched(&self, pfn: Pfn, n: u32, batch: &mut FreeBatch) {
        let head = self.folio_head(pfn);
        let meta = self.meta(head);
        if !self.is_ram(head) || meta.flags().contains(PageFlags::HUGETLB) {
            self.put_many(head, n);
            return;
        }
        let old = meta.refcount.fetch_sub(n, Ordering::AcqRel);
        assert!(old >= n, "reference count underflow on {head:?}");
        if old != n {
            return;
        }
        let order = meta.order();
        debug_assert!(!meta.flags().contains(PageFlags::RESERVED), "freeing a reserved page {head:?}");
        debug_assert_eq!(meta.mapcount(), 0, "freeing a mapped folio {head:?}");
        self.stats.folio_frees.fetch_add(1, Ordering::Relaxed);
        for i in 0..(1u64 << order) {
            self.meta(head.add(i)).reset();
        }
        batch.blocks.push((Self::local(head), order));
    }

    /// Gives every folio queued on `batch` back to the buddy allocator,
    /// taking its lock once; leaves the batch empty.
    pub fn free_batch(&self, batch: &mut FreeBatch) {
        if batch.blocks.is_empty() {
            return;
        }
        self.buddy.lock().free_many(batch.blocks.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_frees_on_the_last_reference_and_returns_frames_at_the_end() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let free = mem.free_frames();
        let pages: Vec<Pfn> = (0..40).map(|_| mem.alloc_folio(0, false).unwrap()).collect();
        let thp = mem.alloc_folio(9, false).unwrap();
        mem.get(pages[0]);
        let mut batch = FreeBatch::default();
        for &p in pages.iter().chain([&thp]) {
            mem.put_many_batched(p, 1, &mut batch);
        }
        assert_eq!(mem.free_frames(), free - 40 - 512, "nothing reaches the buddy before free_batch");
        mem.free_batch(&mut batch);
        assert_eq!(mem.free_frames(), free - 1, "all but the page still referenced");
        assert_eq!(mem.folio_counts(pages[0]), (1, 0));
        mem.put(pages[0]);
        assert_eq!(mem.free_frames(), free);
        assert!(!mem.try_get(pages[1]), "a freed page has no references");
    }
}
