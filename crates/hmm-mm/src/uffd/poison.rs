//! `UFFDIO_POISON`: the handler marks pages as poisoned without a page
//! behind them (a `PTE_MARKER_POISONED` marker in a none entry); an access
//! there gets SIGBUS as a hardware-poisoned page would, pagemap shows a
//! non-present entry, and zapping the range (munmap, MADV_DONTNEED)
//! removes the marker. On hugetlb memory the markers are huge, one per
//! huge page (the range in huge pages, `EINVAL` otherwise); pagemap reads
//! them as 0.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mfill_atomic_poison`,
//! `mfill_atomic_pte_poison`), `include/linux/swapops.h`
//! (`make_pte_marker(PTE_MARKER_POISONED)`).

use hmm_pagetable::{EnsureError, Entry, SwapKind};

use super::mfill::none_pte;
use super::{is_mine, UffdError, Userfaultfd, UFFDIO_POISON_MODE_DONTWAKE};

/// `PTE_MARKER_POISONED`: the marker's offset field (Linux's bit value;
/// `PTE_MARKER_UFFD_WP` is 1, `PTE_MARKER_GUARD` 4).
pub(crate) const PTE_MARKER_POISONED: u64 = 1 << 1;

/// A poison marker entry.
pub(crate) fn poison_marker() -> Entry {
    Entry::swap(SwapKind::Marker, PTE_MARKER_POISONED, false)
}

/// Whether `entry` is a UFFDIO_POISON marker.
pub(crate) fn is_poison_marker(entry: Entry) -> bool {
    entry.swap_kind() == Some(SwapKind::Marker) && entry.pfn().0 & PTE_MARKER_POISONED != 0
}

impl Userfaultfd {
    /// `UFFDIO_POISON`: puts a poison marker in every none entry of
    /// `[start, start + len)` (one VMA registered here, else `ENOENT`),
    /// waking the faults waiting there unless `DONTWAKE`. `EEXIST` over an
    /// entry; a failure after the first page is [`UffdError::Partial`].
    pub fn poison(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        self.ready()?;
        if mode & !UFFDIO_POISON_MODE_DONTWAKE != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_POISON mode"));
        }
        self.mfill(
            start,
            len,
            mode & UFFDIO_POISON_MODE_DONTWAKE != 0,
            |guard| {
                guard
                    .vma(start)
                    .filter(|v| is_mine(&self.ctx, v) && start + len <= v.end)
                    .map(|_| ())
                    .ok_or(UffdError::NotRegistered(start))
            },
            |guard, offset| {
                let va = start + offset;
                let huge = guard.vma(va).and_then(super::hugetlb::huge_page);
                let Some((_, level)) = huge else {
                    let pte = none_pte(guard.mm(), va)?;
                    return pte
                        .compare_exchange(Entry::NONE, poison_marker())
                        .map(|_| ())
                        .map_err(|_| UffdError::Exists(va));
                };
                // A hugetlb entry takes a huge marker, and only over a none
                // entry: a uffd-wp marker is EEXIST here
                // (`hugetlb_mfill_atomic_pte` checks `huge_pte_none`).
                let slot = match guard.mm().pgtable().ensure(va, level) {
                    Ok(slot) => slot,
                    Err(EnsureError::NoMem(_)) => return Err(UffdError::NoMem),
                    Err(EnsureError::Leaf(_)) => return Err(UffdError::Exists(va)),
                };
                let marker = Entry::swap(SwapKind::Marker, PTE_MARKER_POISONED, true);
                slot.compare_exchange(Entry::NONE, marker).map(|_| ()).map_err(|_| UffdError::Exists(va))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot};

    use super::super::{Userfaultfd, UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_FEATURE_POISON};
    use crate::proc_pagemap::{PM_PRESENT, PM_SWAP};
    use crate::testing::kernel;
    use crate::{MmError, ThpMode};

    #[test]
    fn a_poisoned_page_faults_until_zapped() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 2 * 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        let uffd = Userfaultfd::new(&mm, 0).unwrap();
        uffd.api(UFFD_API, UFFD_FEATURE_POISON).unwrap();
        uffd.register(va, 2 * 4096, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        assert_eq!(uffd.poison(va, 4096, 0), Ok(4096));
        assert!(matches!(mm.read_u64(va), Err(MmError::Fault { .. })));
        let word = mm.pagemap_entry(va).unwrap();
        assert_eq!(word & (PM_PRESENT | PM_SWAP), PM_SWAP);
        assert_eq!(uffd.poison(va, 4096, 0).unwrap_err().errno(), Errno::Exist);
        assert_eq!(uffd.poison(va, 4096, 2).unwrap_err().errno(), Errno::Inval);
        mm.madvise(va, 4096, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(mm.pagemap_entry(va).unwrap(), 0, "zapped");
    }
}
