//! A hugetlbfs mapping's object: the huge page size, the reservation it
//! still holds, and (for shared mappings) its pages by index, shared with
//! every process that maps it, fork children included.
//!
//! Linux: `fs/hugetlbfs/inode.c`, `mm/hugetlb.c` (`hugetlb_reserve_pages`,
//! resv_map).

use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use hmm_types::{PageSize, Pfn};

use crate::error::MmError;
use crate::phys::{OutOfMemory, PhysMem};

/// The object behind a `MAP_HUGETLB` mapping.
pub struct HugetlbFile {
    phys: Arc<PhysMem>,
    size: PageSize,
    shared: bool,
    reserved: AtomicU64,
    pages: Mutex<BTreeMap<u64, Pfn>>,
}

impl core::fmt::Debug for HugetlbFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HugetlbFile").field("size", &self.size).field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl HugetlbFile {
    /// Reserves `nr_pages` huge pages of `size` (`ENOMEM` if the pool
    /// cannot promise them).
    pub(crate) fn new(phys: Arc<PhysMem>, size: PageSize, nr_pages: u64, shared: bool) -> Result<Arc<Self>, MmError> {
        phys.hugetlb_reserve(size, nr_pages).map_err(|_| MmError::NoMem)?;
        Ok(Arc::new(Self {
            phys,
            size,
            shared,
            reserved: AtomicU64::new(nr_pages),
            pages: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The huge page size.
    pub fn page_size(&self) -> PageSize {
        self.size
    }

    fn take_reserved(&self) -> bool {
        self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1)).is_ok()
    }

    /// A fresh zeroed huge page with one reference (the caller's), from
    /// the reservation while it lasts.
    pub(crate) fn alloc(&self) -> Result<Pfn, OutOfMemory> {
        let reserved = self.take_reserved();
        self.phys.hugetlb_alloc(self.size, reserved)
    }

    /// The shared page at huge-page `index`, allocated on first use; the
    /// object keeps a reference and the caller gets one more.
    pub(crate) fn shared_page(&self, index: u64) -> Result<Pfn, OutOfMemory> {
        let mut pages = self.pages.lock();
        let pfn = match pages.get(&index) {
            Some(&pfn) => pfn,
            None => {
                let pfn = self.alloc()?;
                pages.insert(index, pfn);
                pfn
            }
        };
        self.phys.get(pfn);
        Ok(pfn)
    }

    /// Whether a shared page exists at huge-page `index` (userfaultfd's
    /// MINOR mode: a page in the hugetlbfs page cache). A private mapping's
    /// pages are anonymous, never cached.
    pub(crate) fn is_cached(&self, index: u64) -> bool {
        self.pages.lock().contains_key(&index)
    }

    /// The shared page at huge-page `index` if there is one, with a
    /// reference for the caller (`UFFDIO_CONTINUE`).
    pub(crate) fn cached_page(&self, index: u64) -> Option<Pfn> {
        let pfn = *self.pages.lock().get(&index)?;
        self.phys.get(pfn);
        Some(pfn)
    }

    /// Adds the caller's fresh page `pfn` at huge-page `index` of the shared
    /// object (`UFFDIO_COPY` into shared hugetlb), the object taking its own
    /// reference; `false` if a page is there already.
    pub(crate) fn add_shared_page(&self, index: u64, pfn: Pfn) -> bool {
        let mut pages = self.pages.lock();
        if pages.contains_key(&index) {
            return false;
        }
        pages.insert(index, pfn);
        self.phys.get(pfn);
        true
    }
}

impl HugetlbFile {
    /// The physical memory its pages come from.
    pub(crate) fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }

    /// Drops the shared pages at huge-page indexes `[first, last)` from the
    /// object (`remove_inode_hugepages`; the caller unmapped them).
    pub(crate) fn remove_pages(&self, first: u64, last: u64) {
        let gone: Vec<Pfn> = {
            let mut pages = self.pages.lock();
            let keys: Vec<u64> = pages.range(first..last).map(|(k, _)| *k).collect();
            keys.iter().filter_map(|k| pages.remove(k)).collect()
        };
        for pfn in gone {
            self.phys.put(pfn);
        }
    }
}

impl Drop for HugetlbFile {
    fn drop(&mut self) {
        self.phys.hugetlb_unreserve(self.size, *self.reserved.get_mut());
        for (_, pfn) in core::mem::take(self.pages.get_mut()) {
            self.phys.put(pfn);
        }
    }
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MapFlags, PageSize, Prot, PMD_SIZE};

    use crate::testing::{leaf, record};
    use crate::{Kernel, KernelConfig};

    fn kernel_with_pool(pages_2m: u64) -> std::sync::Arc<Kernel> {
        Kernel::new(KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: pages_2m, ..KernelConfig::default() })
            .unwrap()
    }

    const HUGE: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::HUGETLB);

    #[test]
    fn faults_take_whole_huge_pages_from_the_pool() {
        let k = kernel_with_pool(4);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, HUGE).unwrap();
        assert_eq!(k.phys().hugetlb_stats(PageSize::Size2M).reserved, 2, "reserved at mmap");
        mm.write_u64(va + PMD_SIZE + 8, 5).unwrap();
        assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd);
        let stats = k.phys().hugetlb_stats(PageSize::Size2M);
        assert_eq!((stats.free, stats.reserved), (3, 1));
        mm.munmap(va, 2 * PMD_SIZE).unwrap();
        let stats = k.phys().hugetlb_stats(PageSize::Size2M);
        assert_eq!((stats.free, stats.reserved), (4, 0), "pages and promises return to the pool");
    }

    #[test]
    fn a_hint_rounds_up_to_the_huge_page_size() {
        // 7.3.4 guest (scenarios/corpus/vm-hugetlb-*.hmm): hugetlb's
        // get_unmapped_area aligns a hint up (`ALIGN(addr, size)`), so a
        // hint 3 pages below a 2 MiB boundary maps at the boundary.
        let k = kernel_with_pool(4);
        let mm = k.create_mm().unwrap();
        let base = 0x4000_0000;
        let va = mm.mmap(base + PMD_SIZE - 0x3000, 0xe000, Prot::READ, HUGE).unwrap();
        assert_eq!(va, base + PMD_SIZE);
        assert_eq!(mm.read_u64(va + 0x3000).unwrap(), 0, "the whole huge page is mapped");
        // munmap may not split it off a huge page boundary: EINVAL.
        assert_eq!(mm.munmap(base + PMD_SIZE - 0x2000, PMD_SIZE).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn pagemap_reports_private_hugetlb_pages_as_anonymous() {
        // 7.3.4 guest (scenarios/corpus/fuzz_s1_write_ok_vs_fault.hmm): a
        // private hugetlb page is an anonymous folio, no PM_FILE; a shared
        // one is in the hugetlbfs page cache, PM_FILE.
        use crate::proc_pagemap::{PM_FILE, PM_PRESENT};
        let k = kernel_with_pool(4);
        let mm = k.create_mm().unwrap();
        let private = mm.mmap(0, PMD_SIZE, Prot::RW, HUGE).unwrap();
        mm.write_u64(private, 1).unwrap();
        assert_eq!(mm.pagemap_entry(private + 4096).unwrap() & (PM_PRESENT | PM_FILE), PM_PRESENT);
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::HUGETLB;
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, shared).unwrap();
        mm.write_u64(va, 1).unwrap();
        assert_eq!(mm.pagemap_entry(va).unwrap() & (PM_PRESENT | PM_FILE), PM_PRESENT | PM_FILE);
    }

    #[test]
    fn an_exhausted_pool_is_enomem_at_mmap() {
        let k = kernel_with_pool(1);
        let mm = k.create_mm().unwrap();
        assert_eq!(mm.mmap(0, 2 * PMD_SIZE, Prot::RW, HUGE).unwrap_err().errno(), Errno::NoMem);
        let huge_1g = HUGE | MapFlags::HUGE_1GB;
        assert_eq!(mm.mmap(0, PMD_SIZE, Prot::RW, huge_1g).unwrap_err().errno(), Errno::NoMem);
        assert!(mm.mmap_read().is_empty());
    }

    #[test]
    fn unaligned_splits_are_einval() {
        let k = kernel_with_pool(2);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, HUGE).unwrap();
        assert_eq!(mm.munmap(va + 4096, 4096).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.mprotect(va, 4096, Prot::READ).unwrap_err().errno(), Errno::Inval);
        mm.mprotect(va, PMD_SIZE, Prot::READ).unwrap();
    }

    #[test]
    fn private_fork_copies_the_whole_huge_page_on_write() {
        let k = kernel_with_pool(4);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, HUGE).unwrap();
        parent.write_u64(va + 4096, 1).unwrap();
        let child = parent.fork().unwrap();
        let rec = record(&child);
        child.write_u64(va + 4096, 2).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
        assert_eq!(parent.read_u64(va + 4096).unwrap(), 1);
        assert_eq!(child.read_u64(va + 4096).unwrap(), 2);
        child.exit();
        parent.exit();
        let stats = k.phys().hugetlb_stats(PageSize::Size2M);
        assert_eq!(stats.free, 4);
    }

    #[test]
    fn shared_hugetlb_is_shared_across_fork() {
        let k = kernel_with_pool(2);
        let parent = k.create_mm().unwrap();
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::HUGETLB;
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, shared).unwrap();
        let child = parent.fork().unwrap();
        child.write_u64(va, 7).unwrap();
        assert_eq!(parent.read_u64(va).unwrap(), 7);
        child.exit();
    }

    #[test]
    fn a_read_pin_unshares_a_huge_page_fork_shared() {
        // 7.3.4 guest (`hugetlb_read_pin_unshares.hmm`): the pinning
        // process gets its own copy behind a read-only, clean entry, in a
        // read-only VMA too; the child's page is then mapped once.
        let k = kernel_with_pool(4);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, HUGE).unwrap();
        parent.write_u64(va, 7).unwrap();
        parent.mprotect(va, PMD_SIZE, Prot::READ).unwrap();
        let child = parent.fork().unwrap();
        let shared = leaf(&parent, va).1.pfn();
        let rec = record(&parent);
        let pinned = parent.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
        let entry = leaf(&parent, va).1;
        assert_ne!(entry.pfn(), shared);
        assert_eq!(pinned.pfns(), [entry.pfn()]);
        assert!(!entry.is_write() && !entry.is_dirty(), "read-only and clean");
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
        assert_eq!(k.phys().folio_counts(shared).1, 1, "the child's alone");
        assert_eq!(parent.read_u64(va).unwrap(), 7);
        drop(pinned);
        // Mapped once now: a second pin takes the same page.
        let again = parent.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
        assert_eq!(again.pfns(), [entry.pfn()]);
        child.exit();
    }

    #[test]
    fn fork_copies_a_pinned_huge_page_for_the_child() {
        // 7.3.4 guest (`fork_copies_pinned_huge_pages.hmm`).
        let k = kernel_with_pool(2);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, HUGE).unwrap();
        parent.write_u64(va, 5).unwrap();
        let pinned = parent.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
        let child = parent.fork().unwrap();
        let (theirs, ours) = (leaf(&child, va).1, leaf(&parent, va).1);
        assert_ne!(theirs.pfn(), ours.pfn());
        assert!(theirs.is_write() && theirs.is_dirty() && ours.is_write(), "neither side write-protected");
        child.write_u64(va, 6).unwrap();
        assert_eq!(parent.read_u64(va).unwrap(), 5);
        let mut seen = [0u8; 8];
        k.phys().read(pinned.pfns()[0], 0, &mut seen);
        assert_eq!(u64::from_ne_bytes(seen), 5, "the pin sees the parent's data");
        drop(pinned);
        // An empty pool fails the fork instead.
        let _pin = parent.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
        assert_eq!(parent.fork().unwrap_err().errno(), Errno::NoMem);
        child.exit();
    }
}
