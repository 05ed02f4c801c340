//! Reference counts and mapcounts: when a folio is free, and the freeze
//! and split that migration needs.
//!
//! Linux: `include/linux/page_ref.h`, `mm/swap.c` (`folio_put`),
//! `mm/huge_memory.c` (`split_folio`), `mm/memremap.c`
//! (`zone_device_page_init`).

use core::sync::atomic::Ordering;

use hmm_types::Pfn;

use super::{MemoryType, PageFlags, PhysMem};

impl PhysMem {
    /// Takes a reference on the folio containing `pfn` (`folio_get`).
    /// Device memory (DAX) starts idle at zero references, so its first
    /// mapping takes the count from zero; system RAM must be allocated.
    #[inline]
    pub fn get(&self, pfn: Pfn) {
        let old = self.meta(self.folio_head(pfn)).refcount.fetch_add(1, Ordering::AcqRel);
        debug_assert!(old > 0 || self.region(pfn).pagemap.is_some(), "get on a free frame {pfn:?}");
    }

    /// Adds `n` references at once (`folio_ref_add`).
    pub fn get_many(&self, pfn: Pfn, n: u32) {
        self.meta(self.folio_head(pfn)).refcount.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes a reference unless the folio is already free
    /// (`folio_try_get`): the speculative path of lock-free lookups.
    ///
    /// The folio is found before the reference is taken, so it may have
    /// been freed and reused, or split, in between: the head is checked
    /// again once held, and a reference that landed on another folio is
    /// dropped and the lookup retried (as `try_grab_folio_fast` rechecks
    /// `page_folio`). Otherwise a later [`Self::put`] of `pfn` would drop a
    /// reference `pfn`'s folio never had.
    #[inline]
    pub fn try_get(&self, pfn: Pfn) -> bool {
        self.try_get_racing(pfn, || {})
    }

    /// [`Self::try_get`], running `window` between finding the head and
    /// taking the reference: lets a test put a race there.
    #[inline]
    fn try_get_racing(&self, pfn: Pfn, mut window: impl FnMut()) -> bool {
        loop {
            let head = self.folio_head(pfn);
            window();
            if !self.ref_try_add(head) {
                return false;
            }
            if self.folio_head(pfn) == head {
                return true;
            }
            self.put_exact(head, 1);
        }
    }

    /// Adds a reference to the count kept at `head` unless it is zero.
    #[inline]
    fn ref_try_add(&self, head: Pfn) -> bool {
        let refcount = &self.meta(head).refcount;
        let mut current = refcount.load(Ordering::Acquire);
        loop {
            if current == 0 {
                return false;
            }
            match refcount.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Sets the folio's reference count to zero if it is exactly
    /// `expected` (`folio_ref_freeze`): speculative lookups
    /// ([`Self::try_get`]) then fail until [`Self::ref_unfreeze`]. Returns
    /// false, changing nothing, if someone else holds a reference.
    pub(crate) fn ref_freeze(&self, pfn: Pfn, expected: u32) -> bool {
        let refcount = &self.meta(self.folio_head(pfn)).refcount;
        refcount.compare_exchange(expected, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Splits a PTE-mapped anonymous folio of RAM or device memory into
    /// order-0 pages (`split_folio`), when every page is mapped the same
    /// number of times and nothing else references it; returns whether it
    /// split. The count is frozen meanwhile, so speculative lookups fail
    /// and retry.
    ///
    /// `pte_mappings` is how many PTEs naming the folio the caller found.
    /// The folio's mapcount adds PMD and PTE mappings alike, so only when
    /// it equals that number is the folio known not to be PMD-mapped
    /// elsewhere (a fork child): splitting under a PMD mapping would leave
    /// it naming an order-0 page and corrupt every count at its unmap. Linux
    /// splits those PMDs through the reverse map first; the model leaves
    /// such a folio whole (`rmap::split_folio_if_uniform` counts the PTEs
    /// of every process through the reverse map).
    pub fn split_folio(&self, head: Pfn, pte_mappings: u32) -> bool {
        let meta = self.meta(head);
        let order = meta.order();
        let nr = 1u32 << order;
        let (refcount, mapcount) = (meta.refcount(), meta.mapcount());
        let uniform = order > 0
            && mapcount > 0
            && mapcount as u32 == pte_mappings
            && refcount == mapcount as u32
            && refcount % nr == 0;
        // RAM and device memory a driver migrates split; DAX blocks do not.
        let splittable = matches!(
            self.memory_type(head),
            MemoryType::System | MemoryType::DevicePrivate | MemoryType::DeviceCoherent
        );
        if !uniform || !splittable || !self.ref_freeze(head, refcount) {
            return false;
        }
        let per = refcount / nr;
        let flags = meta.flags();
        for i in (1..u64::from(nr)).rev() {
            let tail = self.meta(head.add(i));
            tail.refcount.store(per, Ordering::Relaxed);
            tail.mapcount.store(per as i32, Ordering::Relaxed);
            tail.set_flags(flags);
            self.inherit_identity(head, head.add(i));
            tail.init_single();
        }
        meta.mapcount.store(per as i32, Ordering::Relaxed);
        meta.init_single();
        self.ref_unfreeze(head, per);
        true
    }

    /// Splits an unmapped page-cache folio held by nothing but the cache's
    /// one reference per page around its page `at`, as truncation does
    /// (`folio_split`, the non-uniform split): the folio is halved again
    /// and again, the half without `at` staying one folio each time, until
    /// `at` is a page of its own. A 2 MiB folio split at page 0x180 leaves
    /// folios of 256, 128 pages, page 0x180 and then 1, 2, 4 ... 64 pages.
    /// Each piece keeps the cache's references on its pages. False, and
    /// nothing changed, if it is mapped or held otherwise.
    pub(crate) fn split_cache_folio_at(&self, head: Pfn, at: Pfn) -> bool {
        let meta = self.meta(head);
        let order = meta.order();
        let nr = 1u32 << order;
        let inside = at.0.checked_sub(head.0).is_some_and(|off| off < u64::from(nr));
        if order == 0 || !inside || meta.mapcount() != 0 || self.maybe_pinned(head) || !self.ref_freeze(head, nr) {
            return false;
        }
        let flags = meta.flags();
        let (mut base, mut head_order) = (head.0, 0);
        for k in (0..order).rev() {
            let half = 1u64 << k;
            let (kept, other) = if at.0 - base >= half { (base + half, base) } else { (base, base + half) };
            if other == head.0 {
                head_order = k;
            } else {
                self.make_cache_piece(Pfn(other), k, flags);
            }
            base = kept;
        }
        // `base` is `at` now. The head's own piece comes last: every other
        // piece found the head through its old tail offset, and takes its
        // place in the file from the head's index.
        if at != head {
            self.make_cache_piece(at, 0, flags);
        }
        meta.make_head(head_order);
        for i in 1..(1u64 << head_order) {
            self.meta(head.add(i)).init_tail(i);
        }
        self.ref_unfreeze(head, 1 << head_order);
        true
    }

    /// Makes `[first, first + 2^order)` of a frozen cache folio a folio of
    /// its own, with one cache reference per page.
    fn make_cache_piece(&self, first: Pfn, order: u32, flags: PageFlags) {
        self.split_off_page(first, 1 << order, flags);
        self.meta(first).make_head(order);
        for i in 1..(1u64 << order) {
            self.meta(first.add(i)).init_tail(i);
        }
    }

    /// Makes `pfn` a folio of its own with `refcount` references, no
    /// mapping and `flags`, during the split of its frozen folio.
    pub(crate) fn split_off_page(&self, pfn: Pfn, refcount: u32, flags: PageFlags) {
        let meta = self.meta(pfn);
        meta.refcount.store(refcount, Ordering::Relaxed);
        meta.mapcount.store(0, Ordering::Relaxed);
        meta.set_flags(flags);
        self.inherit_identity(self.folio_head(pfn), pfn);
        meta.init_single();
    }

    /// A page split off its folio keeps its place in the owner: the head's
    /// mapping and the head's index plus its offset (`__split_folio_to_order`).
    fn inherit_identity(&self, head: Pfn, pfn: Pfn) {
        let (head_meta, meta) = (self.meta(head), self.meta(pfn));
        meta.index.store(head_meta.index.load(Ordering::Acquire) + (pfn.0 - head.0), Ordering::Release);
        meta.mapping.store(head_meta.mapping.load(Ordering::Acquire), Ordering::Release);
    }

    /// Gives a frozen folio `count` references again (`folio_ref_unfreeze`).
    pub(crate) fn ref_unfreeze(&self, pfn: Pfn, count: u32) {
        let refcount = &self.meta(self.folio_head(pfn)).refcount;
        debug_assert_eq!(refcount.load(Ordering::Acquire), 0, "unfreezing a folio that is not frozen");
        refcount.store(count, Ordering::Release);
    }

    /// Drops a reference; the last one frees the folio (`folio_put`).
    pub fn put(&self, pfn: Pfn) {
        self.put_many(pfn, 1);
    }

    /// Drops `n` references (`folio_put_refs`).
    #[inline]
    pub fn put_many(&self, pfn: Pfn, n: u32) {
        self.put_exact(self.folio_head(pfn), n);
    }

    /// Drops `n` references from the count kept at `head`, without looking
    /// the head up again.
    #[inline]
    fn put_exact(&self, head: Pfn, n: u32) {
        let meta = self.meta(head);
        let old = meta.refcount.fetch_sub(n, Ordering::AcqRel);
        assert!(old >= n, "reference count underflow on {head:?}");
        if old == n {
            self.free_folio(head);
        }
    }

    fn free_folio(&self, head: Pfn) {
        let order = self.meta(head).order();
        debug_assert!(!self.meta(head).flags().contains(PageFlags::RESERVED), "freeing a reserved page {head:?}");
        debug_assert_eq!(self.meta(head).mapcount(), 0, "freeing a mapped folio {head:?}");
        self.stats.folio_frees.fetch_add(1, Ordering::Relaxed);
        if self.meta(head).flags().contains(PageFlags::HUGETLB) {
            self.hugetlb_free(head);
            return;
        }
        match &self.region(head).pagemap {
            None => {
                for i in 0..(1u64 << order) {
                    self.meta(head.add(i)).reset();
                }
                self.buddy.lock().free(Self::local(head), order);
            }
            // Device memory belongs to its device: the folio is idle now
            // (what `dax_layout_busy_page` waits for) and the owner is told.
            Some(pagemap) => pagemap.folio_idle(head),
        }
    }

    /// Hands a free device page to its driver's use: one reference, locked
    /// (`zone_device_page_init`).
    pub fn zone_device_page_init(&self, pfn: Pfn) {
        self.zone_device_folio_init(pfn, 0);
    }

    /// The same for a folio of `1 << order` aligned device frames
    /// (`zone_device_folio_init`), for compound migration.
    pub fn zone_device_folio_init(&self, head: Pfn, order: u32) {
        self.init_device_folio(head, order);
        self.meta(head).refcount.store(1, Ordering::Release);
        self.meta(head).set_flags(PageFlags::LOCKED);
    }

    /// Unlocks a page and drops a reference (`unlock_page` + `put_page`).
    pub fn unlock_put(&self, pfn: Pfn) {
        self.meta(pfn).unlock();
        self.put(pfn);
    }

    /// Describes `1 << order` device frames from `head` as one folio with
    /// no reference (idle), as a device or DAX filesystem sets its memory
    /// up for mapping (`zone_device_folio_init` without the reference).
    pub fn init_device_folio(&self, head: Pfn, order: u32) {
        assert!(self.region(head).pagemap.is_some(), "only device memory is set up by its owner");
        self.init_folio(head, order);
        self.meta(head).refcount.store(0, Ordering::Release);
    }

    /// Adds `n` page-table mappings to the folio's mapcount.
    pub fn map_add(&self, pfn: Pfn, n: i32) {
        self.meta(self.folio_head(pfn)).mapcount.fetch_add(n, Ordering::AcqRel);
    }

    /// Removes `n` page-table mappings from the folio's mapcount.
    pub fn map_sub(&self, pfn: Pfn, n: i32) {
        let old = self.meta(self.folio_head(pfn)).mapcount.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(old >= n, "mapcount underflow on {pfn:?}");
    }

    /// Folio's reference count and mapcount, read from its head.
    pub fn folio_counts(&self, pfn: Pfn) -> (u32, i32) {
        let meta = self.meta(self.folio_head(pfn));
        (meta.refcount(), meta.mapcount())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 MiB folio mapped by 512 PTEs (after a PMD split), one reference
    /// each: splittable.
    fn pte_mapped_thp(mem: &PhysMem) -> Pfn {
        let thp = mem.alloc_folio(9, false).unwrap();
        mem.get_many(thp, 511);
        mem.map_add(thp, 512);
        thp
    }

    /// Frees all 512 pages of a split `pte_mapped_thp`.
    fn unmap_all(mem: &PhysMem, thp: Pfn) {
        for i in 0..512 {
            mem.map_sub(thp.add(i), 1);
            mem.put(thp.add(i));
        }
    }

    /// 511 PTEs here and one PMD in a fork child add up to 512 mappings,
    /// as 512 PTEs would: only the caller's count of PTEs tells them apart,
    /// and a folio a PMD still maps must stay whole.
    #[test]
    fn a_folio_still_mapped_by_a_pmd_elsewhere_does_not_split() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let thp = pte_mapped_thp(&mem);
        assert!(!mem.split_folio(thp, 511));
        assert_eq!((mem.folio_order(thp), mem.folio_counts(thp)), (9, (512, 512)));
        assert!(mem.split_folio(thp, 512));
        unmap_all(&mem, thp);
    }

    #[test]
    fn try_get_lets_go_of_a_head_split_off_before_the_reference_landed() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let free = mem.free_frames();
        let thp = pte_mapped_thp(&mem);
        let page = thp.add(5);
        let mut split = false;
        assert!(mem.try_get_racing(page, || split = split || mem.split_folio(thp, 512)));
        assert!(split);
        assert_eq!(mem.folio_counts(thp), (1, 1), "the reference that landed on the old head was dropped");
        assert_eq!(mem.folio_counts(page), (2, 1), "the reference is on the page's own folio");
        mem.put(page);
        unmap_all(&mem, thp);
        assert_eq!(mem.free_frames(), free);
    }

    #[test]
    fn try_get_lets_go_of_a_head_freed_and_reused_before_the_reference_landed() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let free = mem.free_frames();
        let thp = pte_mapped_thp(&mem);
        let page = thp.add(5);
        let mut others = Vec::new();
        let mut reused = false;
        // In the window the folio is unmapped and freed, and its head and
        // `page` become order-0 folios of new owners.
        assert!(mem.try_get_racing(page, || {
            if !std::mem::replace(&mut reused, true) {
                mem.map_sub(thp, 512);
                mem.put_many(thp, 512);
                while mem.folio_counts(thp).0 == 0 || mem.folio_counts(page).0 == 0 {
                    others.push(mem.alloc_folio(0, false).unwrap());
                }
            }
        }));
        assert_eq!(mem.folio_counts(thp), (1, 0), "the reference that landed on the old head was dropped");
        assert_eq!(mem.folio_counts(page), (2, 0), "the reference is on the page's own folio");
        mem.put(page);
        others.into_iter().for_each(|pfn| mem.put(pfn));
        assert_eq!(mem.free_frames(), free);
    }

    /// The pieces a split of an unmapped cache folio around `at` leaves,
    /// as (first page offset, order), and every frame back once the cache
    /// lets go of each page.
    #[test]
    fn a_cache_folio_splits_around_one_page_into_buddies() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let free = mem.free_frames();
        let pieces = |at: u64| {
            let thp = mem.alloc_folio(9, false).unwrap();
            mem.get_many(thp, 511);
            mem.meta(thp).index.store(0x200, Ordering::Relaxed);
            assert!(mem.split_cache_folio_at(thp, thp.add(at)));
            let mut out = Vec::new();
            let mut i = 0;
            while i < 512 {
                let order = mem.folio_order(thp.add(i));
                assert_eq!(mem.folio_head(thp.add(i)), thp.add(i), "a piece starts at {i:#x}");
                assert_eq!(mem.folio_counts(thp.add(i)), (1 << order, 0));
                assert_eq!(mem.meta(thp.add(i)).index.load(Ordering::Relaxed), 0x200 + i);
                out.push((i, order));
                i += 1 << order;
            }
            (0..512).for_each(|i| mem.put(thp.add(i)));
            out
        };
        assert_eq!(
            pieces(0x180),
            [
                (0, 8),
                (0x100, 7),
                (0x180, 0),
                (0x181, 0),
                (0x182, 1),
                (0x184, 2),
                (0x188, 3),
                (0x190, 4),
                (0x1a0, 5),
                (0x1c0, 6)
            ]
        );
        assert_eq!(pieces(0)[..3], [(0, 0), (1, 0), (2, 1)]);
        assert_eq!(pieces(0)[9], (0x100, 8));
        assert_eq!(pieces(0x1ff)[..2], [(0, 8), (0x100, 7)]);
        assert_eq!(pieces(0x1ff)[8..], [(0x1fe, 0), (0x1ff, 0)]);
        assert_eq!(mem.free_frames(), free);

        let thp = pte_mapped_thp(&mem);
        assert!(!mem.split_cache_folio_at(thp, thp.add(3)), "mapped");
        assert_eq!(mem.folio_order(thp), 9);
        unmap_all(&mem, thp);
    }
}
