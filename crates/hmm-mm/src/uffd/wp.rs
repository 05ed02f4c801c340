//! Write-protect mode: `UFFDIO_WRITEPROTECT` sets or clears the uffd-wp
//! bit of the present pages of a WP-registered range (setting it also
//! takes the write permission away); a write to such a page is a WP fault
//! (`wait.rs` queues a PAGEFAULT message with `WRITE|WP`, or with
//! `UFFD_FEATURE_WP_ASYNC` the fault clears the bit itself and proceeds);
//! pagemap reports the bit as `PM_UFFD_WP` (bit 57).
//!
//! None entries get a uffd-wp marker (`PTE_MARKER_UFFD_WP`) in file memory
//! (shmem) always, in anonymous memory with `UFFD_FEATURE_WP_UNPOPULATED`.
//! A fault there is a none fault whose new page (or zero page) comes
//! protected, so a read maps it and a write then takes a WP fault;
//! pagemap shows `PM_SWAP|PM_UFFD_WP`. Resolving and unregistering
//! remove the markers; MADV_DONTNEED drops them in anonymous memory and
//! keeps them in file memory, where it (and truncation and hole punching,
//! `fs/truncate.rs`) also turns a protected page into a marker
//! (`pte_install_uffd_wp_if_needed`); fork keeps them only for a
//! child that stays registered (EVENT_FORK), mremap only with EVENT_REMAP.
//!
//! A protected page written to swap keeps the bit in its swap entry
//! (pagemap `PM_UFFD_WP` on the swap entry) and comes back protected;
//! WRITEPROTECT and resolving set and clear it on swap entries too.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mwriteprotect_range`, `uffd_wp_range`),
//! `mm/mprotect.c` (`change_pte_range` with `MM_CP_UFFD_WP`),
//! `mm/memory.c` (`handle_pte_marker`, `pte_marker_handle_uffd_wp`),
//! `include/linux/mm_inline.h` (`pte_install_uffd_wp_if_needed`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, Level, SwapKind, Visit, PTE_MARKER_UFFD_WP};
use hmm_types::{Event, VmFlags, PAGE_SIZE, PMD_SIZE};

use super::{
    check_range, UffdError, Userfaultfd, UFFDIO_WRITEPROTECT_MODE_DONTWAKE, UFFDIO_WRITEPROTECT_MODE_WP,
    UFFD_FEATURE_WP_UNPOPULATED,
};
use crate::mm::Mm;
use crate::vma::Vma;

impl Userfaultfd {
    /// `UFFDIO_WRITEPROTECT`: with `WP`, protects the present pages of
    /// `[start, start + len)`; without, resolves them and wakes the faults
    /// waiting there (unless `DONTWAKE`). Every VMA met must be registered
    /// here in WP mode (`ENOENT`, also for a range with no VMA);
    /// `WP|DONTWAKE` and unknown bits are `EINVAL`.
    pub fn writeprotect(&self, start: u64, len: u64, mode: u64) -> Result<(), UffdError> {
        let features = self.features()?;
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
                // Linux checks the WP registration, not whose it is: a
                // range of another userfaultfd is protected too (only the
                // wake stays with the caller's context).
                if !vma.flags.contains(VmFlags::UFFD_WP) {
                    return Err(UffdError::NoEntry("the range is not registered for WP"));
                }
                // hugetlb goes in whole huge pages (`mwriteprotect_range`
                // checks the caller's start and length, not the piece).
                let huge = super::hugetlb::huge_page(vma);
                if huge.is_some_and(|(size, _)| start & (size - 1) != 0 || len & (size - 1) != 0) {
                    return Err(UffdError::Invalid("hugetlb range not aligned to the huge page size"));
                }
                let (s, e) = (vma.start.max(start), vma.end.min(end));
                chunks.push((s, e, use_markers(vma, features), huge));
            }
            if chunks.is_empty() {
                return Err(UffdError::NoEntry("no mapping in the range"));
            }
            for (s, e, markers, huge) in chunks {
                // A huge leaf straddling an edge is split first
                // (`change_pmd_range` → `__split_huge_pmd`); a hugetlb
                // range is huge-aligned already.
                if huge.is_none() {
                    for edge in [s, e] {
                        crate::huge::split_huge_at(&mm, edge).map_err(|_| UffdError::NoMem)?;
                    }
                }
                if protect {
                    protect_range(&mm, s, e);
                    if markers {
                        install_markers(&mm, s, e, huge)?;
                    }
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

/// `userfaultfd_wp_use_markers`: file memory (hugetlb included) always,
/// anonymous memory with `UFFD_FEATURE_WP_UNPOPULATED`.
fn use_markers(vma: &Vma, features: u64) -> bool {
    !vma.is_anonymous() || features & UFFD_FEATURE_WP_UNPOPULATED != 0
}

/// The uffd-wp marker of a none entry at `level`: a PTE marker, or a
/// hugetlb entry's huge one (`huge_pte_mkuffd_wp(make_pte_marker(..))`).
pub(crate) fn wp_marker(level: Level) -> Entry {
    match level {
        Level::Pte => Entry::uffd_wp_marker(),
        _ => Entry::swap(SwapKind::Marker, PTE_MARKER_UFFD_WP, true),
    }
}

/// Whether `entry` is a uffd-wp marker at any level (`pte_marker_uffd_wp`,
/// also on a hugetlb entry).
pub(crate) fn is_wp_marker(entry: Entry) -> bool {
    entry.is_uffd_wp_marker()
        || (entry.is_huge() && entry.swap_kind() == Some(SwapKind::Marker) && entry.pfn().0 & PTE_MARKER_UFFD_WP != 0)
}

/// Puts a uffd-wp marker in every none PTE of `[start, end)`, building
/// the page tables it needs (`change_pmd_prepare`); a huge leaf was
/// protected whole by [`protect_range`]. In hugetlb memory (`huge` pages)
/// the none huge entries get huge markers (`hugetlb_change_protection`).
fn install_markers(mm: &Mm, start: u64, end: u64, huge: Option<(u64, Level)>) -> Result<(), UffdError> {
    if let Some((size, level)) = huge {
        for va in (start..end).step_by(size as usize) {
            match mm.pgtable().ensure(va, level) {
                Ok(slot) => {
                    let _ = slot.compare_exchange(Entry::NONE, wp_marker(level));
                }
                Err(EnsureError::Leaf(_)) => {}
                Err(EnsureError::NoMem(_)) => return Err(UffdError::NoMem),
            }
        }
        return Ok(());
    }
    let mut va = start;
    while va < end {
        match mm.pgtable().ensure(va, Level::Pte) {
            Ok(slot) => {
                let _ = slot.compare_exchange(Entry::NONE, Entry::uffd_wp_marker());
                va += PAGE_SIZE;
            }
            Err(EnsureError::Leaf(_)) => va = (va | (PMD_SIZE - 1)) + 1,
            Err(EnsureError::NoMem(_)) => return Err(UffdError::NoMem),
        }
    }
    Ok(())
}

/// Removes the uffd-wp markers of `[start, end)` (`MM_CP_UFFD_WP_RESOLVE`
/// clears them).
fn remove_markers(mm: &Mm, start: u64, end: u64) {
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if is_wp_marker(entry) {
                let _ = slot.compare_exchange(entry, Entry::NONE);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Before a fault at `va`: replaces a uffd-wp marker there by a none
/// entry and says whether the page the fault installs must come
/// protected (the VMA is still WP-registered; a leftover marker of an
/// unregistered range is just cleared, `pte_marker_clear`).
pub(crate) fn take_wp_marker(mm: &Mm, vma: &Vma, va: u64) -> bool {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    if !is_wp_marker(entry) || slot.compare_exchange(entry, Entry::NONE).is_err() {
        return false;
    }
    vma.flags.contains(VmFlags::UFFD_WP)
}

/// After the fault that replaced a marker: the page now mapped at `va`
/// gets the uffd-wp bit (and loses WRITE), so a write takes a WP fault.
pub(crate) fn arm_after_marker_fault(mm: &Mm, va: u64) {
    let slot = mm.pgtable().find(va);
    let mut entry = slot.load();
    while entry.is_present() && !entry.is_uffd_wp() {
        match slot.compare_exchange(entry, entry.mkuffd_wp()) {
            Ok(_) => break,
            Err(now) => entry = now,
        }
    }
    if entry.is_none() {
        // The fault installed nothing (an error): the marker stays.
        let _ = slot.compare_exchange(Entry::NONE, wp_marker(slot.level()));
    }
}

/// Before MADV_DONTNEED, truncation or a hole punch zaps `[start, end)`
/// of `vma`: the addresses that must hold a uffd-wp marker afterwards
/// (file memory registered for WP keeps its markers and protected pages
/// as markers; anonymous memory keeps none). hugetlb memory, private
/// too, keeps them at its huge entries (`__unmap_hugepage_range`).
pub(crate) fn markers_to_keep(mm: &Mm, vma: &Vma, start: u64, end: u64) -> Vec<(u64, Level)> {
    let mut keep = Vec::new();
    if vma.is_anonymous() || !vma.flags.contains(VmFlags::UFFD_WP) {
        return keep;
    }
    let hugetlb = super::hugetlb::huge_size(vma).is_some();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            let level = slot.level();
            if is_wp_marker(entry) || (entry.is_uffd_wp() && (level == Level::Pte || hugetlb)) {
                keep.push((slot.va(), level));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    keep
}

/// After the zap: puts the markers [`markers_to_keep`] listed back into
/// the entries that are still none.
pub(crate) fn restore_markers(mm: &Mm, at: &[(u64, Level)]) {
    for &(va, level) in at {
        if let Ok(slot) = mm.pgtable().ensure(va, level) {
            let _ = slot.compare_exchange(Entry::NONE, wp_marker(level));
        }
    }
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

/// Sets the uffd-wp bit (and clears WRITE) of the present pages, and the
/// bit of the swap entries (`change_pte_range`: `pte_swp_mkuffd_wp`).
pub(crate) fn protect_range(mm: &Mm, start: u64, end: u64) {
    change_range(mm, start, end, Entry::mkuffd_wp);
    change_swap_entries(mm, start, end, Entry::swp_mkuffd_wp);
}

/// Changes every swap entry of `[start, end)` with `change` (no
/// invalidation: nothing is mapped there).
pub(super) fn change_swap_entries(mm: &Mm, start: u64, end: u64, change: impl Fn(Entry) -> Entry) {
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, mut entry } = visit {
            while entry.swap_kind() == Some(SwapKind::Swap) {
                match slot.compare_exchange(entry, change(entry)) {
                    Ok(_) => break,
                    Err(now) => entry = now,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Clears the uffd-wp bit of the present pages (the next write faults
/// normally and makes the page writable again) and of the swap entries,
/// and removes the markers.
pub(crate) fn clear_range(mm: &Mm, start: u64, end: u64) {
    remove_markers(mm, start, end);
    change_swap_entries(mm, start, end, Entry::swp_clear_uffd_wp);
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
        UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP, UFFD_FEATURE_SIGBUS, UFFD_FEATURE_WP_ASYNC,
    };
    use crate::proc_pagemap::PM_UFFD_WP;
    use crate::testing::{kernel, userfaultfd};
    use crate::{MmError, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_write_to_a_protected_page_is_a_wp_fault_until_resolved() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 5).unwrap();
        let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
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
        let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_WP_ASYNC);
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
        let uffd = userfaultfd(&mm, 0, 0);
        uffd.register(va, 4096, super::super::UFFDIO_REGISTER_MODE_MISSING).unwrap();
        let errno = |r: Result<(), super::UffdError>| r.unwrap_err().errno();
        assert_eq!(errno(uffd.writeprotect(va, 4096, 1)), hmm_types::Errno::NoEnt);
        assert_eq!(errno(uffd.writeprotect(va, 4096, 3)), hmm_types::Errno::Inval);
        assert_eq!(errno(uffd.writeprotect(va, 4096, 4)), hmm_types::Errno::Inval);
    }
}
