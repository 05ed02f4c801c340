//! Write-protect mode: `UFFDIO_WRITEPROTECT` sets or clears the uffd-wp
//! bit of the present pages of a WP-registered range (setting it also
//! takes the write permission away); a write to such a page is a WP fault
//! (`wait.rs` queues a PAGEFAULT message with `WRITE|WP`, or with
//! `UFFD_FEATURE_WP_ASYNC` the fault clears the bit itself and proceeds);
//! pagemap reports the bit as `PM_UFFD_WP` (bit 57).
//!
//! Not modelled: PTE markers, so none entries stay unprotected (Linux
//! puts a uffd-wp marker on the none entries of shmem, and of anonymous
//! memory with `UFFD_FEATURE_WP_UNPOPULATED`); a shmem range with a none
//! entry is refused (`EOPNOTSUPP`) rather than protected halfway.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mwriteprotect_range`, `uffd_wp_range`),
//! `mm/mprotect.c` (`change_pte_range` with `MM_CP_UFFD_WP`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, Visit};
use hmm_types::{Event, VmFlags};

use super::{
    check_range, is_mine, UffdError, Userfaultfd, UFFDIO_WRITEPROTECT_MODE_DONTWAKE, UFFDIO_WRITEPROTECT_MODE_WP,
};
use crate::mm::Mm;

impl Userfaultfd {
    /// `UFFDIO_WRITEPROTECT`: with `WP`, protects the present pages of
    /// `[start, start + len)`; without, resolves them and wakes the faults
    /// waiting there (unless `DONTWAKE`). Every VMA met must be registered
    /// here in WP mode (`ENOENT`, also for a range with no VMA);
    /// `WP|DONTWAKE` and unknown bits are `EINVAL`.
    pub fn writeprotect(&self, start: u64, len: u64, mode: u64) -> Result<(), UffdError> {
        self.features()?;
        if mode & !(UFFDIO_WRITEPROTECT_MODE_WP | UFFDIO_WRITEPROTECT_MODE_DONTWAKE) != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_WRITEPROTECT mode"));
        }
        let protect = mode & UFFDIO_WRITEPROTECT_MODE_WP != 0;
        if protect && mode & UFFDIO_WRITEPROTECT_MODE_DONTWAKE != 0 {
            return Err(UffdError::Invalid("UFFDIO_WRITEPROTECT_MODE_DONTWAKE only goes with resolving"));
        }
        let end = check_range(start, len)?;
        self.check_changing()?;
        let mm = self.mm()?;
        {
            let guard = mm.mmap_read();
            let mut chunks = Vec::new();
            for vma in guard.overlapping(start, end) {
                if !is_mine(&self.ctx, vma) || !vma.flags.contains(VmFlags::UFFD_WP) {
                    return Err(UffdError::NoEntry("the range is not registered for WP with this userfaultfd"));
                }
                let (s, e) = (vma.start.max(start), vma.end.min(end));
                if protect && !vma.is_anonymous() && has_none(&mm, s, e) {
                    return Err(UffdError::NotModelled("write-protecting unpopulated shmem (PTE markers)"));
                }
                chunks.push((s, e));
            }
            if chunks.is_empty() {
                return Err(UffdError::NoEntry("no mapping in the range"));
            }
            for (s, e) in chunks {
                if protect {
                    protect_range(&mm, s, e);
                } else {
                    clear_range(&mm, s, e);
                }
            }
        }
        if !protect && mode & UFFDIO_WRITEPROTECT_MODE_DONTWAKE == 0 {
            self.ctx.wake_range(start, end);
        }
        Ok(())
    }
}

/// Whether a PTE-level slot in `[start, end)` is none (or has no table).
fn has_none(mm: &Mm, start: u64, end: u64) -> bool {
    mm.pgtable()
        .walk(start, end, |visit| match visit {
            Visit::Hole { .. } => ControlFlow::Break(()),
            Visit::Slot { entry, .. } if entry.is_none() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
}

/// Changes every present leaf of `[start, end)` with `change`, inside a
/// PROTECTION_VMA invalidation when there is any (`change_pmd_range`
/// starts one at the first populated table).
pub(super) fn change_range(mm: &Mm, start: u64, end: u64, change: impl Fn(Entry) -> Entry) {
    if !crate::zap::has_entries(mm, start, end) {
        return;
    }
    let _invalidation = mm.notifiers().start(mm.id(), start, end, Event::ProtectionVma);
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, mut entry } = visit {
            while entry.is_present() {
                match slot.compare_exchange(entry, change(entry)) {
                    Ok(_) => break,
                    Err(now) => entry = now,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Sets the uffd-wp bit (and clears WRITE) of the present pages.
pub(crate) fn protect_range(mm: &Mm, start: u64, end: u64) {
    change_range(mm, start, end, Entry::mkuffd_wp);
}

/// Clears the uffd-wp bit of the present pages (the next write faults
/// normally and makes the page writable again).
pub(crate) fn clear_range(mm: &Mm, start: u64, end: u64) {
    let any = mm
        .pgtable()
        .walk(start, end, |visit| match visit {
            Visit::Slot { entry, .. } if entry.is_uffd_wp() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break();
    if any {
        change_range(mm, start, end, Entry::clear_uffd_wp);
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot};

    use super::super::{
        Userfaultfd, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP, UFFD_API, UFFD_FEATURE_SIGBUS,
        UFFD_FEATURE_WP_ASYNC,
    };
    use crate::proc_pagemap::PM_UFFD_WP;
    use crate::testing::kernel;
    use crate::{MmError, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_write_to_a_protected_page_is_a_wp_fault_until_resolved() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 5).unwrap();
        let uffd = Userfaultfd::new(&mm, 0).unwrap();
        uffd.api(UFFD_API, UFFD_FEATURE_SIGBUS).unwrap();
        uffd.register(va, 2 * 4096, UFFDIO_REGISTER_MODE_WP).unwrap();
        uffd.writeprotect(va, 2 * 4096, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
        assert_ne!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
        assert_eq!(mm.read_u64(va).unwrap(), 5, "reads are not affected");
        assert!(matches!(mm.write_u64(va, 6), Err(MmError::Fault { .. })), "SIGBUS with UFFD_FEATURE_SIGBUS");
        // The none page was not protected (no markers without WP_UNPOPULATED).
        mm.write_u64(va + 4096, 1).unwrap();
        uffd.writeprotect(va, 4096, 0).unwrap();
        assert_eq!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
        mm.write_u64(va, 6).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 6);
    }

    #[test]
    fn wp_async_resolves_in_the_fault_and_unregister_drops_the_bits() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.write_u64(va + 4096, 1).unwrap();
        let uffd = Userfaultfd::new(&mm, 0).unwrap();
        uffd.api(UFFD_API, UFFD_FEATURE_WP_ASYNC).unwrap();
        uffd.register(va, 2 * 4096, UFFDIO_REGISTER_MODE_WP).unwrap();
        uffd.writeprotect(va, 2 * 4096, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
        mm.write_u64(va, 2).unwrap();
        assert_eq!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0, "written: no longer protected");
        assert_ne!(mm.pagemap_entry(va + 4096).unwrap() & PM_UFFD_WP, 0);
        uffd.unregister(va, 2 * 4096).unwrap();
        assert_eq!(mm.pagemap_entry(va + 4096).unwrap() & PM_UFFD_WP, 0);
    }

    #[test]
    fn writeprotect_needs_a_wp_registration_and_a_valid_mode() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let uffd = Userfaultfd::new(&mm, 0).unwrap();
        uffd.api(UFFD_API, 0).unwrap();
        uffd.register(va, 4096, super::super::UFFDIO_REGISTER_MODE_MISSING).unwrap();
        let errno = |r: Result<(), super::UffdError>| r.unwrap_err().errno();
        assert_eq!(errno(uffd.writeprotect(va, 4096, 1)), hmm_types::Errno::NoEnt);
        assert_eq!(errno(uffd.writeprotect(va, 4096, 3)), hmm_types::Errno::Inval);
        assert_eq!(errno(uffd.writeprotect(va, 4096, 4)), hmm_types::Errno::Inval);
    }
}
