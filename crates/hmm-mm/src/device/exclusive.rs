//! Device-exclusive access: a page taken away from the CPU so a device can
//! do atomics on it. The CPU entry becomes a device-exclusive entry; the
//! next CPU access restores the original entry, announcing an EXCLUSIVE
//! invalidation with no owner (so the device that made it exclusive drops
//! its mapping too).
//!
//! Linux: `mm/rmap.c` (`make_device_exclusive`), `mm/memory.c`
//! (`remove_device_exclusive_entry`).

use hmm_pagetable::{Entry, LeafFlags, Level, Slot, SwapKind};
use hmm_types::{Event, Owner, Pfn, VmFlags, PAGE_SIZE};

use crate::cpu::translate_or_fault;
use crate::error::MmError;
use crate::huge::split_to_pte;
use crate::mm::{Mm, MmapReadGuard};
use crate::phys::{PageFlags, PhysMem};
use crate::vma::Vma;

/// A page made device-exclusive, locked and referenced until dropped (the
/// driver maps it for atomics in between, then drops it).
#[must_use = "dropping it unlocks the page at once"]
#[derive(Debug)]
pub struct ExclusivePage<'a> {
    phys: &'a PhysMem,
    pfn: Pfn,
}

impl ExclusivePage<'_> {
    /// The page.
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }
}

impl Drop for ExclusivePage<'_> {
    fn drop(&mut self) {
        self.phys.unlock_put(self.pfn);
    }
}

/// Makes the page at `addr` exclusive to the device `owner`
/// (`make_device_exclusive`): faults it in writable (breaking COW,
/// splitting a THP mapping), then, under an EXCLUSIVE invalidation carrying
/// `owner` (which that device must ignore), replaces its entry. `None` is
/// Linux's `owner = NULL`: every mirror, the caller's too, drops the page.
/// Fault errors as GUP gives them (a read-only VMA is `EFAULT`), then
/// `EOPNOTSUPP` for a folio that is not anonymous (file, shmem), which
/// stays faulted in (by a PTE: a huge file leaf is dropped first); device-DAX aligned above 4K is `EFAULT`, its leaf
/// zapped.
pub fn make_device_exclusive<'a>(
    guard: &MmapReadGuard<'a>,
    addr: u64,
    owner: impl Into<Option<Owner>>,
) -> Result<ExclusivePage<'a>, MmError> {
    let owner = owner.into();
    let mm = guard.mm();
    let phys = mm.phys();
    let addr = addr & !(PAGE_SIZE - 1);
    loop {
        let vma = guard
            .vma(addr)
            .ok_or(MmError::Fault { addr, error: crate::FaultError::Segv(crate::SegvReason::NotMapped) })?;
        if vma.flags.contains(VmFlags::HUGETLB) {
            return Err(MmError::NotSupported("device-exclusive access on hugetlb (FOLL_SPLIT_PMD)"));
        }
        // GUP with FOLL_WRITE | FOLL_SPLIT_PMD: fault the page in first
        // (untouched memory may get a THP; a read-only VMA is EFAULT),
        // then make sure a PTE maps it; only a PTE can become a
        // device-exclusive entry.
        let pfn = translate_or_fault(guard, addr, true)?.keep();
        if let crate::vma::VmaBacking::DevDax(dev) = &vma.backing {
            if dev.align() != hmm_types::PageSize::Size4K {
                // FOLL_SPLIT_PMD removes the device's leaf whole and puts
                // an empty page table in its place (follow_pmd_mask's
                // pte_alloc), and the 4K fault GUP then makes refuses a
                // device aligned above 4K: SIGBUS, which GUP reports as
                // EFAULT. The table stays, so the CPU's next access there
                // takes that 4K fault too.
                phys.put(pfn);
                split_to_pte(mm, addr)?;
                mm.pgtable().ensure(addr, Level::Pte).map_err(|_| MmError::NoMem)?;
                let error = crate::FaultError::Sigbus("device-dax alignment above the 4K fault size");
                return Err(MmError::Fault { addr, error });
            }
        }
        // Only now is the folio's kind known: a shared file or shmem page
        // stays faulted in, and the call is EOPNOTSUPP.
        if !phys.meta(phys.folio_head(pfn)).flags().contains(PageFlags::ANON) {
            phys.put(pfn);
            let slot = mm.pgtable().find(addr);
            if slot.level() > Level::Pte && slot.load().is_leaf(slot.level()) {
                // FOLL_SPLIT_PMD ran before the folio was looked at: a file
                // leaf (fs-dax, a shmem THP) goes whole, and GUP refaults
                // the page through the empty page table left in its place,
                // by a PTE (the 7.3.4 guest: an fs-dax block's first page
                // mapped writable, the rest of the block unmapped).
                split_to_pte(mm, addr)?;
                mm.pgtable().ensure(addr, Level::Pte).map_err(|_| MmError::NoMem)?;
                phys.put(translate_or_fault(guard, addr, true)?.keep());
            }
            return Err(MmError::NotSupported("device-exclusive access needs an anonymous folio"));
        }
        if let Err(error) = split_to_pte(mm, addr) {
            phys.put(pfn);
            return Err(error);
        }
        if !phys.meta(pfn).try_lock() {
            phys.put(pfn);
            std::thread::yield_now();
            continue;
        }
        let invalidation = match owner {
            Some(owner) => mm.notifiers().start_owned(mm.id(), addr, addr + PAGE_SIZE, Event::Exclusive, owner),
            None => mm.notifiers().start(mm.id(), addr, addr + PAGE_SIZE, Event::Exclusive),
        };
        let slot = mm.pgtable().find(addr);
        let entry = slot.load();
        let still = slot.level() == Level::Pte && entry.is_accessible() && entry.is_write() && entry.pfn() == pfn;
        let swapped =
            still && slot.compare_exchange(entry, Entry::swap(SwapKind::DeviceExclusive, pfn.0, false)).is_ok();
        invalidation.end();
        if !swapped {
            phys.unlock_put(pfn);
            continue;
        }
        if entry.is_dirty() {
            phys.meta(pfn).set_flags(PageFlags::DIRTY);
        }
        return Ok(ExclusivePage { phys, pfn });
    }
}

/// A CPU access met a device-exclusive entry: restore the original entry
/// (writable if the VMA is), under the page lock (so not while the driver
/// still holds the page), after an EXCLUSIVE invalidation with no owner.
pub(crate) fn restore(mm: &Mm, vma: &Vma, slot: Slot<'_>, entry: Entry) {
    let phys = mm.phys();
    let page = entry.pfn();
    if !phys.try_get(page) {
        return;
    }
    while !phys.meta(page).try_lock() {
        if slot.load() != entry {
            phys.put(page);
            return;
        }
        std::thread::yield_now();
    }
    let va = slot.va();
    let invalidation = mm.notifiers().start(mm.id(), va, va + PAGE_SIZE, Event::Exclusive);
    let write = vma.flags.contains(VmFlags::WRITE);
    let restored =
        Entry::present(entry.pfn(), LeafFlags { write, dirty: write, accessed: true, special: false }, false);
    let _ = slot.compare_exchange(entry, restored);
    invalidation.end();
    phys.unlock_put(page);
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::{Level, SwapKind};
    use hmm_types::{MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

    use super::make_device_exclusive;
    use crate::testing::{kernel, leaf};
    use crate::ThpMode;

    /// Regression: on untouched memory eligible for a THP, the write fault
    /// mapped a PMD and the PMD itself became the device-exclusive entry;
    /// exit then underflowed the mapcount. Linux faults the page in with
    /// `FOLL_WRITE | FOLL_SPLIT_PMD`: a PTE of a zeroed page becomes
    /// exclusive, and the CPU reads zeros back.
    #[test]
    fn untouched_memory_is_faulted_in_and_a_pte_becomes_exclusive() {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        {
            let guard = mm.mmap_read();
            for page in 0..10 {
                drop(make_device_exclusive(&guard, va + page * PAGE_SIZE, None).unwrap());
            }
        }
        for page in 0..10 {
            let (level, entry) = leaf(&mm, va + page * PAGE_SIZE);
            assert_eq!((level, entry.swap_kind()), (Level::Pte, Some(SwapKind::DeviceExclusive)));
        }
        assert_eq!(mm.read_u64(va + 9 * PAGE_SIZE).unwrap(), 0);
        mm.write_u64(va, 7).unwrap();
        mm.exit();
        drop(mm);
        assert_eq!(k.phys().check_frames().unwrap().in_use, 0);
    }
}
