//! The per-page loop every resolving ioctl shares (COPY, ZEROPAGE,
//! CONTINUE, POISON, MOVE): the range is checked, the pages are done one by
//! one under the mmap read lock, the faults waiting on the pages done are
//! woken (unless `DONTWAKE`), and a failure after the first page becomes
//! [`UffdError::Partial`] (`EAGAIN`, the bytes done reported, as Linux
//! stores them in the `copy`/`zeropage`/`mapped`/`updated`/`move` field),
//! while a failure on the first page is the call's own error. Each page
//! goes into a none PTE only ([`none_pte`]: `EEXIST` over anything).
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mfill_atomic`, `mfill_atomic_pte`,
//! `move_pages`), `fs/userfaultfd.c` (`userfaultfd_copy` and its siblings:
//! `mmap_changing` first, `EAGAIN` with the partial count).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, Slot};
use hmm_types::Pfn;
use hmm_types::PAGE_SIZE;

use super::{check_range, UffdError, Userfaultfd};
use crate::mm::{Mm, MmapReadGuard};

impl Userfaultfd {
    /// The prologue of every resolving ioctl: `EINVAL` before
    /// `UFFDIO_API`, then `EAGAIN` while an event is unread.
    pub(super) fn ready(&self) -> Result<(), UffdError> {
        self.features()?;
        self.check_changing()
    }

    /// Runs `setup` once, then `page(guard, offset)` for each page offset
    /// of `[start, start + len)` until one fails; wakes the faults waiting
    /// on the pages done unless `dontwake`. Returns the bytes done. A hugetlb
    /// VMA at `start` makes the pages huge ([`super::hugetlb::mfill_step`]).
    pub(super) fn mfill(
        &self,
        start: u64,
        len: u64,
        dontwake: bool,
        setup: impl FnOnce(&MmapReadGuard<'_>) -> Result<(), UffdError>,
        mut page: impl FnMut(&MmapReadGuard<'_>, u64) -> Result<(), UffdError>,
    ) -> Result<u64, UffdError> {
        check_range(start, len)?;
        let mm = self.mm()?;
        let mut done = 0;
        let result = {
            let guard = mm.mmap_read();
            setup(&guard)?;
            // A hugetlb destination goes in huge pages (`mfill_atomic_hugetlb`).
            let step = match guard.vma(start) {
                Some(vma) => super::hugetlb::mfill_step(vma, start, len)?.unwrap_or(PAGE_SIZE),
                None => PAGE_SIZE,
            };
            let mut result = Ok(());
            while done < len {
                if let Err(error) = page(&guard, done) {
                    result = Err(error);
                    break;
                }
                done += step;
            }
            result
        };
        if !dontwake && done > 0 {
            self.ctx.wake_range(start, start + done);
        }
        match result {
            Ok(()) => Ok(done),
            Err(_) if done > 0 => Err(UffdError::Partial { copied: done }),
            Err(error) => Err(error),
        }
    }
}

/// The PTE slot of `va`, built if missing, which must be none, markers
/// included (ZEROPAGE, POISON, MOVE check `pte_none`): `EEXIST` over an
/// entry or a huge leaf, `ENOMEM` without a table page.
pub(super) fn none_pte(mm: &Mm, va: u64) -> Result<Slot<'_>, UffdError> {
    let pte = match mm.pgtable().ensure(va, Level::Pte) {
        Ok(slot) => slot,
        Err(EnsureError::NoMem(_)) => return Err(UffdError::NoMem),
        Err(EnsureError::Leaf(_)) => return Err(UffdError::Exists(va)),
    };
    if !pte.load().is_none() {
        return Err(UffdError::Exists(va));
    }
    Ok(pte)
}

/// [`none_pte`] for COPY and CONTINUE (`mfill_atomic_install_pte` checks
/// `pte_none_mostly`): a uffd-wp or poison marker counts as none and is
/// cleared for the fill, which protects the page again only with its own
/// WP mode (the 6.18 host copies over both).
pub(super) fn fill_pte(mm: &Mm, va: u64) -> Result<Slot<'_>, UffdError> {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    if slot.level() == Level::Pte && (entry.is_uffd_wp_marker() || super::poison::is_poison_marker(entry)) {
        let _ = slot.compare_exchange(entry, Entry::NONE);
    }
    none_pte(mm, va)
}

/// Maps page-cache page `pfn`, on which the caller holds a reference that
/// the mapping takes over, into the none `pte` (`mfill_atomic_install_pte`):
/// dirty, young, writable if `write`, uffd-wp if `wp`. A racing fault that
/// filled the slot first makes it `EEXIST`, the reference dropped.
pub(super) fn install_pte(mm: &Mm, pte: &Slot<'_>, va: u64, pfn: Pfn, write: bool, wp: bool) -> Result<(), UffdError> {
    let phys = mm.phys();
    let mut new = Entry::present(pfn, LeafFlags { write, dirty: true, accessed: true, special: false }, false);
    if wp {
        new = new.mkuffd_wp();
    }
    phys.map_add(pfn, 1);
    if pte.compare_exchange(Entry::NONE, new).is_err() {
        phys.map_sub(pfn, 1);
        phys.put(pfn);
        return Err(UffdError::Exists(va));
    }
    Ok(())
}
