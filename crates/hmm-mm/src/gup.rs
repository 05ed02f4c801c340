//! Pinning user pages: `get_user_pages` takes a reference per page,
//! `pin_user_pages` a pin (a reference biased by 1024, so a pin is visible
//! in the count, as `folio_maybe_dma_pinned` checks). Pages are faulted in
//! as needed; `FOLL_WRITE` breaks copy-on-write first.
//!
//! This is the contrast HMM exists for: a pinned page keeps its frame (and,
//! on DAX, its file block) busy until it is unpinned, while a mirror built
//! with `range_fault` holds nothing and is simply invalidated. A pinned page
//! cannot migrate either: [`Mm::migrate_pages`] skips it.
//!
//! Linux: `mm/gup.c` (`get_user_pages_remote`, `pin_user_pages`,
//! `check_vma_flags`, `GUP_PIN_COUNTING_BIAS`).

mod fast;

use std::sync::Arc;

use bitflags::bitflags;

use hmm_types::{Pfn, VmFlags, PAGE_SIZE};

use crate::cpu::{gup_unlockable_translate, translate_or_fault};
use crate::device::MigrateDevice;
use crate::error::{FaultError, MmError, SegvReason};
use crate::fs::InodeKind;
use crate::mm::Mm;
use crate::phys::{MemoryType, PageFlags, PhysMem};
use crate::vma::{Vma, VmaBacking};

/// References a pin adds (`GUP_PIN_COUNTING_BIAS`).
pub const GUP_PIN_COUNTING_BIAS: u32 = 1024;

bitflags! {
    /// `FOLL_*`.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct FollFlags: u32 {
        /// The caller will write (`FOLL_WRITE`).
        const WRITE = 1 << 0;
        /// The pin may last indefinitely (`FOLL_LONGTERM`): refused on
        /// fs-dax, whose blocks must stay reclaimable by the filesystem.
        const LONGTERM = 1 << 1;
        /// Anonymous memory only (`FOLL_ANON`): any other VMA is `EFAULT`.
        const ANON = 1 << 2;
    }
}

/// Pages pinned by [`Mm::pin_user_pages`]; dropping unpins them.
#[must_use = "dropping the pins unpins the pages at once"]
pub struct PinnedPages {
    phys: Arc<PhysMem>,
    pfns: Vec<Pfn>,
}

impl core::fmt::Debug for PinnedPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PinnedPages").field("pfns", &self.pfns).finish()
    }
}

impl PinnedPages {
    /// The pinned frames, one per page in order.
    pub fn pfns(&self) -> &[Pfn] {
        &self.pfns
    }
    /// Unpins now (`unpin_user_pages`).
    pub fn unpin(self) {}
    /// Adds the pages of `more` after these.
    pub fn extend(&mut self, mut more: PinnedPages) {
        self.pfns.append(&mut more.pfns);
    }
}

impl Drop for PinnedPages {
    fn drop(&mut self) {
        for &pfn in &self.pfns {
            self.phys.put_many(pfn, GUP_PIN_COUNTING_BIAS);
        }
    }
}

/// Whether GUP's faults may release the mmap lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Locking {
    /// The lock stays held: no `FAULT_FLAG_ALLOW_RETRY`.
    Held,
    /// `FOLL_UNLOCKABLE`: `FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE`.
    Unlockable,
}

impl Mm {
    /// Takes a reference on each of `nr_pages` pages from `start` with the
    /// mmap lock held throughout (`get_user_pages`, `get_user_pages_remote`
    /// without `locked`); the caller drops them with [`PhysMem::put`]. A
    /// page a userfaultfd handler must provide fails the call with
    /// `EFAULT` (no `FOLL_UNLOCKABLE`: `handle_userfault` answers SIGBUS).
    pub fn get_user_pages(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<Vec<Pfn>, MmError> {
        Self::check_get(flags)?;
        self.gup(start, nr_pages, flags, false, Locking::Held)
    }

    /// [`Self::get_user_pages`] as `get_user_pages_fast` and
    /// `get_user_pages_remote` with `locked` call it: the slow path may
    /// release the mmap lock (`FOLL_UNLOCKABLE`), so a page a userfaultfd
    /// handler must provide is waited for, and a fatal signal during the
    /// wait is `EINTR`.
    pub fn get_user_pages_unlocked(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<Vec<Pfn>, MmError> {
        Self::check_get(flags)?;
        self.gup(start, nr_pages, flags, false, Locking::Unlockable)
    }

    /// `is_valid_gup_args`: FOLL_LONGTERM only with FOLL_PIN.
    fn check_get(flags: FollFlags) -> Result<(), MmError> {
        if flags.contains(FollFlags::LONGTERM) {
            return Err(MmError::Invalid("FOLL_LONGTERM without FOLL_PIN"));
        }
        Ok(())
    }

    /// Pins `nr_pages` pages from `start` with the mmap lock held
    /// throughout (`pin_user_pages`, `pin_user_pages_remote` without
    /// `locked`): a page a userfaultfd handler must provide is `EFAULT`.
    pub fn pin_user_pages(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<PinnedPages, MmError> {
        self.pin(start, nr_pages, flags, Locking::Held)
    }

    /// [`Self::pin_user_pages`] as `pin_user_pages_fast` and
    /// `pin_user_pages_remote` with `locked` call it (`FOLL_UNLOCKABLE`):
    /// a page a userfaultfd handler must provide is waited for.
    pub fn pin_user_pages_unlocked(&self, start: u64, nr_pages: u64, flags: FollFlags) -> Result<PinnedPages, MmError> {
        self.pin(start, nr_pages, flags, Locking::Unlockable)
    }

    fn pin(&self, start: u64, nr_pages: u64, flags: FollFlags, how: Locking) -> Result<PinnedPages, MmError> {
        self.has_pinned.store(true, core::sync::atomic::Ordering::Release);
        let pfns = self.gup(start, nr_pages, flags, true, how)?;
        for &pfn in &pfns {
            self.phys().get_many(pfn, GUP_PIN_COUNTING_BIAS - 1);
        }
        Ok(PinnedPages { phys: self.phys().clone(), pfns })
    }

    /// GUP proper; a long-term pin first moves the device-coherent pages it
    /// found to system RAM and tries again (`check_and_migrate_movable_pages`
    /// with `migrate_device_coherent_folio`): device memory must stay free
    /// for its device.
    fn gup(&self, start: u64, nr_pages: u64, flags: FollFlags, pin: bool, how: Locking) -> Result<Vec<Pfn>, MmError> {
        const TRIES: usize = 8;
        for _ in 0..TRIES {
            let taken = self.gup_once(start, nr_pages, flags, pin, how)?;
            if !flags.contains(FollFlags::LONGTERM) {
                return Ok(taken);
            }
            let phys = self.phys();
            let coherent: Vec<Pfn> =
                taken.iter().copied().filter(|&p| phys.memory_type(p) == MemoryType::DeviceCoherent).collect();
            if coherent.is_empty() {
                return Ok(taken);
            }
            for pfn in taken {
                phys.put(pfn);
            }
            for pfn in coherent {
                migrate_coherent_page(self.kernel(), pfn)?;
            }
        }
        Err(MmError::Busy("device-coherent pages keep coming back under a long-term pin"))
    }

    fn gup_once(
        &self,
        start: u64,
        nr_pages: u64,
        flags: FollFlags,
        pin: bool,
        how: Locking,
    ) -> Result<Vec<Pfn>, MmError> {
        self.check_alive()?;
        // `is_valid_gup_args`: flags outside the permitted set are EINVAL.
        if FollFlags::from_bits(flags.bits()).is_none() {
            return Err(MmError::Invalid("unknown FOLL_* flags"));
        }
        // As Linux: an unaligned start means the page holding it, no page
        // is no work, and a range running past the user address space (or
        // past 2^64) fails at its first page without a mapping (EFAULT).
        let start = start & !(PAGE_SIZE - 1);
        let mut guard = self.mmap_read();
        // The count is the caller's: reserve a little and grow as pages are
        // taken, so a huge count over an unmapped range fails with EFAULT
        // instead of an impossible allocation.
        let mut taken = Vec::with_capacity(nr_pages.min(512) as usize);
        let mut result = Ok(());
        while (taken.len() as u64) < nr_pages {
            // The last page of 2^64 has no VMA, so this never wraps.
            let va = start + taken.len() as u64 * PAGE_SIZE;
            match self.gup_page(&mut guard, va, flags, pin, how) {
                Ok(Some(pfn)) => taken.push(pfn),
                // The lock was released while a userfaultfd handler
                // worked: the same page again, its VMA looked up afresh.
                Ok(None) => {}
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok(taken),
            Err(error) => {
                for pfn in taken {
                    self.phys().put(pfn);
                }
                Err(error)
            }
        }
    }

    /// One page: its frame with a reference taken, or `None` when the
    /// fault released the mmap lock (only with [`Locking::Unlockable`]).
    fn gup_page(
        &self,
        guard: &mut crate::mm::MmapReadGuard<'_>,
        va: u64,
        flags: FollFlags,
        pin: bool,
        how: Locking,
    ) -> Result<Option<Pfn>, MmError> {
        let write = flags.contains(FollFlags::WRITE);
        let fault = |reason| MmError::Fault { addr: va, error: FaultError::Segv(reason) };
        let vma = guard.vma(va).ok_or(fault(SegvReason::NotMapped))?;
        if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            return Err(fault(SegvReason::Protection));
        }
        if flags.contains(FollFlags::ANON) && !vma.is_anonymous() {
            return Err(fault(SegvReason::Protection));
        }
        if flags.contains(FollFlags::LONGTERM) && vma.file().is_some_and(|i| matches!(i.kind(), InodeKind::Dax(_))) {
            return Err(MmError::NotSupported("FOLL_LONGTERM pins are refused on fs-dax"));
        }
        let cow = CowKind::of(vma);
        let mut held = match how {
            Locking::Held => translate_or_fault(guard, va, write)?,
            Locking::Unlockable => match gup_unlockable_translate(guard, va, write)? {
                Some(held) => held,
                None => return Ok(None),
            },
        };
        // A read-only pin must not see a page a later write fault would
        // replace: a shared anonymous page, or (long-term) a zero or
        // page-cache page of a private mapping, is unshared first
        // (`gup_must_unshare`, FAULT_FLAG_UNSHARE), in read-only VMAs too
        // (7.3.4 guest: a long-term read pin of a read-only private
        // mapping's zero page leaves an exclusive anonymous page there).
        if pin && !write && must_unshare(self, cow, held.pfn(), flags) {
            drop(held);
            let vma = guard.vma(va).ok_or(fault(SegvReason::NotMapped))?;
            crate::fault::unshare(self, guard, vma, va).map_err(|error| MmError::Fault { addr: va, error })?;
            held = translate_or_fault(guard, va, false)?;
        }
        Ok(Some(held.keep()))
    }
}

/// What kind of private mapping a page is pinned from, for
/// [`must_unshare`] (taken before the VMA's borrow ends).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CowKind {
    /// A shared mapping, or one that can never be written.
    NotCow,
    /// A private mapping that may become writable.
    Cow,
    /// A private hugetlb mapping.
    Hugetlb,
}

impl CowKind {
    fn of(vma: &Vma) -> Self {
        match (&vma.backing, vma.is_cow_mapping()) {
            (_, false) => Self::NotCow,
            (VmaBacking::Hugetlb(_), true) => Self::Hugetlb,
            (_, true) => Self::Cow,
        }
    }
}

/// `gup_must_unshare` for a read-only pin of `pfn` from a `cow` mapping.
fn must_unshare(mm: &Mm, cow: CowKind, pfn: Pfn, flags: FollFlags) -> bool {
    let phys = mm.phys();
    if cow == CowKind::Hugetlb {
        // A private hugetlb page is an anonymous folio in Linux, exclusive
        // until fork shares it; the model keeps no ANON flag on hugetlb
        // pages and, as `hugetlb_wp` does, judges by mapcount.
        return phys.folio_counts(pfn).1 > 1;
    }
    let head_flags = phys.meta(phys.folio_head(pfn)).flags();
    if head_flags.contains(PageFlags::ANON) {
        return !head_flags.contains(PageFlags::ANON_EXCLUSIVE);
    }
    flags.contains(FollFlags::LONGTERM) && cow == CowKind::Cow
}

/// Moves one device-coherent page to a new system page wherever it is
/// mapped (`migrate_device_coherent_folio`). Large coherent folios are left
/// in place (the caller then retries and gives up with `EBUSY`).
fn migrate_coherent_page(kernel: &Arc<crate::Kernel>, pfn: Pfn) -> Result<(), MmError> {
    if kernel.phys().folio_order(pfn) == 0 {
        MigrateDevice::to_ram(kernel, pfn, 1)?;
    }
    Ok(())
}

impl PhysMem {
    /// True when the folio holding `pfn` may be pinned
    /// (`folio_maybe_dma_pinned`).
    pub fn maybe_pinned(&self, pfn: Pfn) -> bool {
        self.folio_counts(pfn).0 >= GUP_PIN_COUNTING_BIAS
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

    use super::FollFlags;
    use crate::testing::kernel;
    use crate::ThpMode;

    #[test]
    fn a_huge_count_fails_on_the_first_unmapped_page_without_allocating_for_all() {
        // Regression (found by the API fuzzer): the result vector was
        // reserved for the whole count first, so 2^32 pages aborted the
        // process on an impossible allocation.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let va = mm.mmap(0x1000_0000, 4 * PAGE_SIZE, Prot::RW, flags).unwrap();
        for nr_pages in [1u64 << 32, 1 << 34] {
            let error = mm.pin_user_pages(va, nr_pages, FollFlags::WRITE).unwrap_err();
            assert_eq!(error.errno(), Errno::Fault, "{nr_pages}");
            let error = mm.get_user_pages(0x2000_0000, nr_pages, FollFlags::empty()).unwrap_err();
            assert_eq!(error.errno(), Errno::Fault, "{nr_pages}");
        }
        assert_eq!(mm.pin_user_pages(va, 4, FollFlags::WRITE).unwrap().pfns().len(), 4);
    }

    #[test]
    fn a_long_term_read_pin_unshares_the_zero_page_of_a_read_only_mapping() {
        // Linux 7.3 (the guest, `gup_read_pin_unshares.hmm`): a short-term
        // read pin keeps the zero page; a long-term one leaves an exclusive
        // anonymous page behind a read-only, clean entry.
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let va = mm.mmap(0x1000_0000, 2 * PAGE_SIZE, Prot::READ, flags).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0);
        let zero = k.phys().zero_pfn();
        assert_eq!(crate::testing::leaf(&mm, va).1.pfn(), zero);
        drop(mm.pin_user_pages(va, 1, FollFlags::empty()).unwrap());
        assert_eq!(crate::testing::leaf(&mm, va).1.pfn(), zero, "a short-term pin shares it");
        let pinned = mm.pin_user_pages(va, 1, FollFlags::LONGTERM).unwrap();
        let entry = crate::testing::leaf(&mm, va).1;
        assert_ne!(entry.pfn(), zero);
        assert_eq!(pinned.pfns(), [entry.pfn()]);
        assert!(!entry.is_write() && !entry.is_dirty(), "read-only and clean");
        let meta = k.phys().meta(entry.pfn()).flags();
        assert!(meta.contains(crate::phys::PageFlags::ANON | crate::phys::PageFlags::ANON_EXCLUSIVE));
    }
}
