//! GUP-fast: `get_user_pages_fast` and `pin_user_pages_fast` first walk
//! the page tables without the mmap lock and without looking at any VMA,
//! taking each page while its entry is a present, accessible, normal leaf
//! whose folio may be taken that way; at the first page that is not, the
//! rest goes to the slow path, which may fault and release the lock. What
//! only the slow path checks (an fs-dax VMA refusing FOLL_LONGTERM, the
//! VMA's flags) therefore applies only to the pages the walk left: a
//! long-term pin of the anonymous copies in a private fs-dax mapping
//! succeeds. A slow path that fails after the walk took pages returns
//! those pages, as Linux returns their count.
//!
//! Linux: `mm/gup.c` (`gup_fast_fallback`, `gup_fast_pte_range`,
//! `gup_fast_pmd_leaf`, `gup_fast_folio_allowed`, `gup_must_unshare` with
//! no VMA), `include/linux/mm.h` (`folio_is_longterm_pinnable`).

use hmm_types::{Pfn, PAGE_SIZE, TASK_SIZE};

use super::{FollFlags, PinnedPages, GUP_PIN_COUNTING_BIAS};
use crate::error::{FaultError, MmError, SegvReason};
use crate::mm::Mm;
use crate::phys::{MemoryType, PageFlags};

impl Mm {
    /// `get_user_pages_fast`: the lockless walk, then
    /// [`Self::get_user_pages_unlocked`] for the pages it left.
    pub fn get_user_pages_fast(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<Vec<Pfn>, MmError> {
        Self::check_get(flags)?;
        let mut taken = self.gup_fast(start, nr_pages, flags, false)?;
        let rest = start + taken.len() as u64 * PAGE_SIZE;
        match self.get_user_pages_unlocked(rest, nr_pages - taken.len() as u64, flags) {
            Ok(more) => taken.extend(more),
            Err(error) if taken.is_empty() => return Err(error),
            Err(_) => {}
        }
        Ok(taken)
    }

    /// `pin_user_pages_fast`: the lockless walk, then
    /// [`Self::pin_user_pages_unlocked`] for the pages it left.
    pub fn pin_user_pages_fast(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<PinnedPages, MmError> {
        self.has_pinned.store(true, core::sync::atomic::Ordering::Release);
        let fast = self.gup_fast(start, nr_pages, flags, true)?;
        for &pfn in &fast {
            self.phys().get_many(pfn, GUP_PIN_COUNTING_BIAS - 1);
        }
        let mut pinned = PinnedPages { phys: self.phys().clone(), pfns: fast };
        let rest = start + pinned.pfns.len() as u64 * PAGE_SIZE;
        match self.pin_user_pages_unlocked(rest, nr_pages - pinned.pfns.len() as u64, flags) {
            Ok(more) => pinned.extend(more),
            Err(error) if pinned.pfns.is_empty() => return Err(error),
            Err(_) => {}
        }
        Ok(pinned)
    }

    /// The walk: a reference on each page taken, in order, up to the first
    /// it cannot take. `gup_fast_fallback`'s own checks first: FOLL_ANON is
    /// not among its flags (EINVAL), a range past the user address space is
    /// EFAULT.
    fn gup_fast(&self, start: u64, nr_pages: u64, flags: FollFlags, pin: bool) -> Result<Vec<Pfn>, MmError> {
        if flags.contains(FollFlags::ANON) {
            return Err(MmError::Invalid("FOLL_ANON is not a GUP-fast flag"));
        }
        let start = start & !(PAGE_SIZE - 1);
        let end = nr_pages.checked_mul(PAGE_SIZE).and_then(|len| start.checked_add(len));
        if end.is_none_or(|end| end > TASK_SIZE) {
            return Err(MmError::Fault { addr: start, error: FaultError::Segv(SegvReason::NotMapped) });
        }
        let mut taken = Vec::new();
        while (taken.len() as u64) < nr_pages {
            match self.gup_fast_page(start + taken.len() as u64 * PAGE_SIZE, flags, pin) {
                Some(pfn) => taken.push(pfn),
                None => break,
            }
        }
        Ok(taken)
    }

    /// One page of the walk, with a reference taken, or `None` where the
    /// slow path must take over.
    fn gup_fast_page(&self, va: u64, flags: FollFlags, pin: bool) -> Option<Pfn> {
        let write = flags.contains(FollFlags::WRITE);
        let longterm = flags.contains(FollFlags::LONGTERM);
        let phys = self.phys();
        let slot = self.pgtable().find(va);
        let entry = slot.load();
        // `pte_access_permitted`; special entries (the zero pages, raw
        // PFNs) have no folio to take.
        if entry.is_table(slot.level()) || !entry.is_accessible() || (write && !entry.is_write()) || entry.is_special()
        {
            return None;
        }
        let size = slot.level().entry_bytes();
        let pfn = entry.pfn().add((va & (size - 1)) / PAGE_SIZE);
        if phys.is_zero_pfn(pfn) || phys.memory_type(pfn) == MemoryType::PciP2pDma {
            return None;
        }
        // `folio_is_longterm_pinnable`.
        if longterm && matches!(phys.memory_type(pfn), MemoryType::DeviceCoherent | MemoryType::FsDax) {
            return None;
        }
        if pin && !write && !entry.is_write() && must_unshare_without_vma(self, pfn, longterm) {
            return None;
        }
        if !phys.try_get(pfn) {
            return None;
        }
        // The entry must not have changed under the reference.
        if slot.load() != entry {
            phys.put(pfn);
            return None;
        }
        Some(pfn)
    }
}

/// `gup_must_unshare` with no VMA at hand: a shared anonymous page must be
/// unshared (a private hugetlb page counts as anonymous: the model judges
/// it by mapcount, as `hugetlb_wp` does); for a long-term pin any other
/// page might need it, so the slow path decides.
fn must_unshare_without_vma(mm: &Mm, pfn: Pfn, longterm: bool) -> bool {
    let phys = mm.phys();
    let flags = phys.meta(phys.folio_head(pfn)).flags();
    if flags.contains(PageFlags::HUGETLB) {
        return phys.folio_counts(pfn).1 > 1 || longterm;
    }
    if flags.contains(PageFlags::ANON) {
        return !flags.contains(PageFlags::ANON_EXCLUSIVE);
    }
    longterm
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

    use super::FollFlags;
    use crate::testing::{kernel, leaf};
    use crate::ThpMode;

    #[test]
    fn the_walk_takes_present_pages_and_the_slow_path_the_rest() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        let va = mm.mmap(0, 3 * PAGE_SIZE, Prot::RW, flags).unwrap();
        mm.write_u64(va, 1).unwrap();
        // Page 0 by the walk; 1 (unmapped) and 2 by the slow path's faults.
        let pinned = mm.pin_user_pages_fast(va, 3, FollFlags::WRITE | FollFlags::LONGTERM).unwrap();
        assert_eq!(pinned.pfns().len(), 3);
        assert_eq!(pinned.pfns()[0], leaf(&mm, va).1.pfn());
        assert!(leaf(&mm, va + 2 * PAGE_SIZE).1.is_present());
        assert_eq!(mm.get_user_pages_fast(va, 1, FollFlags::ANON).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn a_slow_path_failure_after_the_walk_returns_what_the_walk_took() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        let va = mm.mmap(0, PAGE_SIZE, Prot::RW, flags).unwrap();
        mm.write_u64(va, 1).unwrap();
        // The page after the mapping is not mapped: EFAULT there.
        assert_eq!(mm.pin_user_pages_fast(va, 2, FollFlags::empty()).unwrap().pfns().len(), 1);
        assert_eq!(mm.pin_user_pages_fast(va + PAGE_SIZE, 1, FollFlags::empty()).unwrap_err().errno(), Errno::Fault);
    }
}
