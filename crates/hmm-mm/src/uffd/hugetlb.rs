//! userfaultfd on hugetlb memory: everything happens in huge-page units.
//! Registration and unregistration need a range whose start (in the first
//! VMA) and end (in the VMA holding it) sit on huge-page boundaries; COPY
//! and CONTINUE fill whole huge pages and need an aligned start and length
//! (`EINVAL` otherwise); ZEROPAGE and MOVE are refused (`EINVAL`, so the
//! range's `ioctls` leave them out); a fault is reported at the huge
//! page's address. MISSING fires on a none huge entry with no page in the
//! hugetlbfs page cache (a private mapping's pages are anonymous, so it
//! never has one), MINOR on a none entry with a cached page.
//!
//! Linux 7.3: `fs/userfaultfd.c` (`userfaultfd_register`,
//! `userfaultfd_unregister`: the `vma_hpagesize` checks,
//! `UFFD_API_RANGE_IOCTLS_BASIC`), `mm/userfaultfd.c`
//! (`mfill_atomic_hugetlb`), `mm/hugetlb.c` (`hugetlb_mfill_atomic_pte`,
//! `hugetlb_handle_userfault`).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, SwapKind};
use hmm_types::VmFlags;

use super::{nr, UffdError};
use crate::hugetlb::HugetlbFile;
use crate::mm::MmapReadGuard;
use crate::vma::{Vma, VmaBacking};

/// The range ioctls of a registration that holds hugetlb memory
/// (`UFFD_API_RANGE_IOCTLS_BASIC`): no ZEROPAGE, no MOVE.
pub(super) const BASIC_RANGE_IOCTLS: u64 = !((1 << nr::ZEROPAGE) | (1 << nr::MOVE));

/// The huge page size of a hugetlb VMA (`vma_kernel_pagesize`).
pub(crate) fn huge_size(vma: &Vma) -> Option<u64> {
    match &vma.backing {
        VmaBacking::Hugetlb(object) => Some(object.page_size().bytes()),
        _ => None,
    }
}

/// The huge page size of a hugetlb VMA and the level of its entries.
pub(crate) fn huge_page(vma: &Vma) -> Option<(u64, Level)> {
    match &vma.backing {
        VmaBacking::Hugetlb(object) => Some((object.page_size().bytes(), Level::for_size(object.page_size()))),
        _ => None,
    }
}

/// The REGISTER/UNREGISTER shape check over the VMAs of `[start, end)` in
/// address order: the first one, if hugetlb, needs a huge-aligned start,
/// the hugetlb one holding `end` a huge-aligned end (`EINVAL`).
pub(super) fn check_range_alignment<'a>(
    vmas: impl Iterator<Item = &'a Vma>,
    start: u64,
    end: u64,
) -> Result<(), UffdError> {
    let mut vmas = vmas.peekable();
    if vmas.peek().and_then(|first| huge_size(first)).is_some_and(|size| start & (size - 1) != 0) {
        return Err(UffdError::Invalid("range start not aligned to the huge page size"));
    }
    for vma in vmas {
        if let Some(size) = huge_size(vma) {
            if end > vma.start && end <= vma.end && end & (size - 1) != 0 {
                return Err(UffdError::Invalid("range end not aligned to the huge page size"));
            }
        }
    }
    Ok(())
}

/// The per-call check of COPY, CONTINUE, POISON on a hugetlb VMA: the
/// start and length must be huge-aligned (`EINVAL`). Returns the step.
pub(super) fn mfill_step(vma: &Vma, start: u64, len: u64) -> Result<Option<u64>, UffdError> {
    let Some(size) = huge_size(vma) else { return Ok(None) };
    if start & (size - 1) != 0 || len & (size - 1) != 0 {
        return Err(UffdError::Invalid("hugetlb range not aligned to the huge page size"));
    }
    Ok(Some(size))
}

/// Whether the hugetlbfs page cache holds the page behind `va` (only a
/// shared mapping's pages are cached).
pub(crate) fn is_cached(vma: &Vma, object: &HugetlbFile, va: u64) -> bool {
    vma.flags.is_shared() && object.is_cached(index(vma, object, va))
}

fn index(vma: &Vma, object: &HugetlbFile, va: u64) -> u64 {
    let size = object.page_size();
    vma.page_index(va & !(size.bytes() - 1)) / size.nr_pages()
}

/// What a hugetlb fill puts in the huge page at `va`.
pub(super) enum HugeFill<'a> {
    /// COPY: a new page with these bytes (one huge page's worth).
    Copy(&'a [u8]),
    /// CONTINUE: the page already in the page cache.
    Continue,
}

/// `hugetlb_mfill_atomic_pte`: fills the none huge entry at `va`. COPY
/// allocates a page (added to the page cache of a shared mapping,
/// `EEXIST` if one is there); CONTINUE maps the cached page (`EFAULT`
/// without one) read-only in a private mapping. `EEXIST` over any entry.
pub(super) fn fill(
    guard: &MmapReadGuard<'_>,
    vma: &Vma,
    va: u64,
    what: HugeFill<'_>,
    wp: bool,
) -> Result<(), UffdError> {
    let VmaBacking::Hugetlb(object) = &vma.backing else { return Err(UffdError::Invalid("not hugetlb")) };
    let mm = guard.mm();
    let phys = mm.phys();
    let size = object.page_size();
    let slot = match mm.pgtable().ensure(va, Level::for_size(size)) {
        Ok(slot) => slot,
        Err(EnsureError::NoMem(_)) => return Err(UffdError::NoMem),
        Err(EnsureError::Leaf(_)) => return Err(UffdError::Exists(va)),
    };
    // A marker (uffd-wp or poison) counts as none (`huge_pte_none_mostly`;
    // the 6.18 host copies over a poisoned huge page); the fill replaces
    // it, protected again only with its own WP mode.
    let old = slot.load();
    if !old.is_none() && old.swap_kind() != Some(SwapKind::Marker) {
        return Err(UffdError::Exists(va));
    }
    let shared = vma.flags.is_shared();
    let page = match what {
        HugeFill::Copy(src) => {
            if shared && object.is_cached(index(vma, object, va)) {
                return Err(UffdError::Exists(va));
            }
            let page = object.alloc().map_err(|_| UffdError::NoMem)?;
            phys.write(page, 0, src);
            if shared && !object.add_shared_page(index(vma, object, va), page) {
                phys.put(page);
                return Err(UffdError::Exists(va));
            }
            page
        }
        HugeFill::Continue => object.cached_page(index(vma, object, va)).ok_or(UffdError::NoCachedPage(va))?,
    };
    // A private CONTINUE maps the cached page read-only: a write copies it.
    let continue_private = matches!(what, HugeFill::Continue) && !shared;
    let write = vma.flags.contains(VmFlags::WRITE) && !wp && !continue_private;
    let mut new = Entry::present(page, LeafFlags { write, dirty: true, accessed: true, special: false }, true);
    if wp {
        new = new.mkuffd_wp();
    }
    phys.map_add(page, 1);
    if slot.compare_exchange(old, new).is_err() {
        phys.map_sub(page, 1);
        phys.put(page);
        return Err(UffdError::Exists(va));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    //! What the Linux 7.3.4 guest answers (scenarios/device/uffd_hugetlb*.hmm).

    use std::sync::Arc;

    use hmm_pagetable::Level;
    use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

    use super::super::*;
    use crate::testing::leaf;
    use crate::uffd::tests::uffd;
    use crate::{Kernel, KernelConfig, Mm};

    pub(in crate::uffd) const PRIVATE: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::HUGETLB);
    pub(in crate::uffd) const SHARED: MapFlags = MapFlags::SHARED.union(MapFlags::ANONYMOUS).union(MapFlags::HUGETLB);

    /// A machine with eight 2 MiB huge pages reserved.
    pub(in crate::uffd) fn mm() -> Arc<Mm> {
        let config = KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 8, ..KernelConfig::default() };
        Kernel::new(config).unwrap().create_mm().unwrap()
    }

    #[test]
    fn registration_needs_huge_alignment_and_leaves_out_zeropage_and_move() {
        let mm = mm();
        let uffd = uffd(&mm, UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MINOR_HUGETLBFS);
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, PRIVATE).unwrap();
        let missing = UFFDIO_REGISTER_MODE_MISSING;
        let errno = |r: Result<u64, UffdError>| r.unwrap_err().errno();
        assert_eq!(errno(uffd.register(va + PAGE_SIZE, PMD_SIZE, missing)), Errno::Inval, "start");
        assert_eq!(errno(uffd.register(va, PMD_SIZE + PAGE_SIZE, missing)), Errno::Inval, "end");
        // WAKE, COPY, POISON: UFFD_API_RANGE_IOCTLS_BASIC without WP and MINOR.
        assert_eq!(uffd.register(va, 2 * PMD_SIZE, missing), Ok(0x10c));
        assert_eq!(uffd.unregister(va + PAGE_SIZE, PMD_SIZE).unwrap_err().errno(), Errno::Inval);
        assert_eq!(uffd.unregister(va, PMD_SIZE + PAGE_SIZE).unwrap_err().errno(), Errno::Inval);
        uffd.unregister(va, 2 * PMD_SIZE).unwrap();
        assert_eq!(uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_MINOR), Ok(0x18c), "private MINOR too");
        uffd.unregister(va, 2 * PMD_SIZE).unwrap();
        // WAKE, COPY, WRITEPROTECT, POISON (the 6.18 host's answer).
        assert_eq!(uffd.register(va, PMD_SIZE, UFFDIO_REGISTER_MODE_WP), Ok(0x14c));
    }

    #[test]
    fn a_missing_fault_is_reported_at_the_huge_page_and_copy_fills_all_of_it() {
        let mm = mm();
        let uffd = uffd(&mm, 0);
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, PRIVATE).unwrap();
        uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        let reader = {
            let mm = mm.clone();
            std::thread::spawn(move || mm.read_u64(va + PMD_SIZE + PAGE_SIZE + 8))
        };
        let msg = uffd.read().unwrap();
        assert_eq!(msg.address(), va + PMD_SIZE, "the huge page's address");
        let src = vec![5_u8; PMD_SIZE as usize];
        let huge = va + PMD_SIZE;
        assert_eq!(uffd.copy(huge, &src[..PAGE_SIZE as usize], 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(uffd.copy(huge + PAGE_SIZE, &src, 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(uffd.copy(huge, &src, UFFDIO_COPY_MODE_WP).unwrap_err().errno(), Errno::Inval, "not WP");
        assert_eq!(uffd.copy(huge, &src, 0), Ok(PMD_SIZE));
        assert_eq!(reader.join().unwrap(), Ok(0x0505_0505_0505_0505));
        assert_eq!(leaf(&mm, huge).0, Level::Pmd);
        assert_eq!(uffd.copy(huge, &src, 0).unwrap_err().errno(), Errno::Exist);
        assert_eq!(uffd.zeropage(va, PMD_SIZE, 0).unwrap_err().errno(), Errno::Inval, "no ZEROPAGE on hugetlb");
        assert_eq!(uffd.continue_range(va, PMD_SIZE, 0).unwrap_err().errno(), Errno::Fault, "private: no cache");
    }

    #[test]
    fn a_minor_fault_on_shared_hugetlb_waits_for_continue() {
        let mm = mm();
        let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, SHARED).unwrap();
        mm.write_u64(va + 8, 0x11).unwrap();
        mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_MINOR), Ok(0x18c));
        assert!(mm.read_u64(va + 8).is_err(), "cached, not mapped: MINOR (SIGBUS feature)");
        let errno = |r: Result<u64, UffdError>| r.unwrap_err().errno();
        assert_eq!(errno(uffd.continue_range(va + PAGE_SIZE, PAGE_SIZE, 0)), Errno::Inval);
        assert_eq!(errno(uffd.continue_range(va, PMD_SIZE, UFFDIO_CONTINUE_MODE_WP)), Errno::Inval);
        assert_eq!(uffd.continue_range(va, PMD_SIZE, 0), Ok(PMD_SIZE));
        assert_eq!(mm.read_u64(va + 8), Ok(0x11));
        assert_eq!(errno(uffd.continue_range(va, PMD_SIZE, 0)), Errno::Exist);
        assert_eq!(errno(uffd.continue_range(va + PMD_SIZE, PMD_SIZE, 0)), Errno::Fault, "nothing cached");
        // The second huge page: MINOR does not fire without a cached page.
        mm.write_u64(va + PMD_SIZE, 3).unwrap();
    }

    #[test]
    fn a_copy_running_from_anonymous_memory_into_hugetlb_stops_there() {
        let mm = mm();
        let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
        let huge = mm.mmap(0, PMD_SIZE, Prot::RW, PRIVATE).unwrap();
        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let below = mm.mmap(huge - PAGE_SIZE, PAGE_SIZE, Prot::RW, anon).unwrap();
        uffd.register(below, PAGE_SIZE + PMD_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        let src = vec![1_u8; 2 * PAGE_SIZE as usize];
        assert_eq!(uffd.copy(below, &src, 0), Err(UffdError::Partial { copied: PAGE_SIZE }));
        assert!(mm.read_u64(huge).is_err(), "the huge page stays missing");
    }

    #[test]
    fn copy_into_shared_hugetlb_fills_the_page_cache() {
        let mm = mm();
        let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, SHARED).unwrap();
        uffd.register(va, PMD_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        assert!(mm.read_u64(va).is_err(), "MISSING (SIGBUS feature)");
        let src = vec![7_u8; PMD_SIZE as usize];
        assert_eq!(uffd.copy(va, &src, 0), Ok(PMD_SIZE));
        mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
        // The page stayed in the cache: a fault maps it, no MISSING fault.
        assert_eq!(mm.read_u64(va), Ok(0x0707_0707_0707_0707));
        mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(uffd.copy(va, &src, 0).unwrap_err().errno(), Errno::Exist, "cached already");
    }
}
