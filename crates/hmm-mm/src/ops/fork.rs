//! fork: a child address space. Private memory becomes copy-on-write in both
//! (the parent's writable entries are write-protected under a
//! PROTECTION_PAGE invalidation), swap entries are copied and share their
//! slot, shared memory stays shared (the child faults it in from the shared
//! object), DONTCOPY VMAs are skipped and WIPEONFORK VMAs start empty.
//! Migrations in flight finish first.
//!
//! Linux: `kernel/fork.c` (`dup_mmap`), `mm/memory.c` (`copy_page_range`,
//! `copy_present_pte`, `copy_nonpresent_pte`, `copy_huge_pmd`).

use core::ops::ControlFlow;
use std::sync::Arc;

use hmm_pagetable::{EnsureError, Level, SwapKind, Visit};
use hmm_types::{Event, VmFlags, TASK_SIZE};

use crate::error::MmError;
use crate::mm::Mm;
use crate::vma::{Vma, VmaBacking};
use crate::zap::has_entries;

impl Mm {
    /// Forks this address space; returns the child's.
    /// With userfaultfd FORK events the call returns only once the monitor
    /// read them (`dup_userfaultfd_complete`, inside `copy_process`: the
    /// child does not run before).
    pub fn fork(&self) -> Result<Arc<Mm>, MmError> {
        let result = self.fork_locking();
        match &result {
            Ok(_) => crate::uffd::complete_events(),
            Err(_) => crate::uffd::discard_events(),
        }
        result
    }

    fn fork_locking(&self) -> Result<Arc<Mm>, MmError> {
        self.check_alive()?;
        let child = self.kernel().create_mm()?;
        // Migration entries are not copied: the migrator could not find
        // the child's copy to restore it. Wait for them to go first.
        let guard = self.mmap_write_settled(0, TASK_SIZE);
        self.check_alive()?;
        let mut child_guard = child.mmap_write();
        let mut forks = crate::uffd::ForkContexts::default();
        for vma in guard.iter() {
            if vma.flags.contains(VmFlags::DONTCOPY) {
                continue;
            }
            let mut copy = vma.clone();
            // Without UFFD_FEATURE_EVENT_FORK the child's VMAs are not
            // registered; with it they are, with a new context.
            let keeps_uffd = crate::uffd::dup_userfaultfd(&mut copy, &child, &mut forks);
            if let Some(inode) = vma.file() {
                inode.add_mapper(child.weak());
            }
            if vma.flags.contains(VmFlags::WIPEONFORK) && matches!(vma.backing, VmaBacking::Anon) {
                copy.anon_vma.clear();
                child_guard.vmas_mut().insert(copy);
                continue;
            }
            // The child's copies of the anonymous pages are found through
            // the parent's roots; its new pages get a root of its own
            // (`anon_vma_fork`).
            for root in vma.anon_vma.roots() {
                root.link(child.weak());
            }
            copy.anon_vma = vma.anon_vma.forked(&child);
            let child_vma = copy.clone();
            child_guard.vmas_mut().insert(copy);
            // `vma_needs_copy`: only driver-inserted frames (which cannot
            // refault) and VMAs with an anon_vma are copied; everything else
            // (shared mappings, private ones holding only page cache or
            // zero-page reads) is refaulted in the child from its object.
            // Guard markers cannot be refaulted either (`VM_MAYBE_GUARD`).
            // A child that stays WP-registered needs the uffd-wp bits and markers.
            let needs_copy = vma.flags.intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP | VmFlags::MAYBE_GUARD)
                || vma.anon_vma.get().is_some()
                || (keeps_uffd && vma.flags.contains(VmFlags::UFFD_WP));
            if !needs_copy || !has_entries(self, vma.start, vma.end) {
                continue;
            }
            split_device_private_pmds(self, vma.start, vma.end)?;
            if vma.is_cow_mapping() && self.has_pinned.load(core::sync::atomic::Ordering::Acquire) {
                split_pinned_thps(self, vma.start, vma.end)?;
            }
            let invalidation = vma
                .is_cow_mapping()
                .then(|| self.notifiers().start(self.id(), vma.start, vma.end, Event::ProtectionPage));
            let copied = copy_range(self, &child, &child_vma, vma.is_cow_mapping(), keeps_uffd);
            drop(invalidation);
            copied?;
            let child_flags = child_guard.overlapping(vma.start, vma.end).next().map_or(vma.flags, |v| v.flags);
            crate::uffd::rwp::disarm_unregistered(&child, vma.flags, child_flags, vma.start, vma.end);
        }
        drop(child_guard);
        Ok(child)
    }
}

/// Device-private PMDs of `[start, end)` become 512 PTEs and their device
/// folios order-0 pages before the copy, so that each process can later
/// bring back (and copy on write) the pages it touches, one at a time: a
/// device THP mapped by two processes could otherwise move neither whole
/// nor in parts.
fn split_device_private_pmds(mm: &Mm, start: u64, end: u64) -> Result<(), MmError> {
    let mut found = Vec::new();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if slot.level() == Level::Pmd && entry.swap_kind().is_some_and(|k| k.is_device_private()) {
                found.push((slot.va(), entry));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    for (va, entry) in found {
        let slot = mm.pgtable().find(va);
        if slot.level() == Level::Pmd && crate::huge::split_huge_leaf(mm, slot, entry)? {
            mm.phys().split_folio(entry.pfn(), hmm_pagetable::ENTRIES_PER_TABLE as u32);
        }
    }
    Ok(())
}

/// Maybe-pinned exclusive anonymous THPs of `[start, end)` are mapped by
/// PTEs before the copy, each page then copied for the child as an order-0
/// page (`copy_huge_pmd`: `folio_try_dup_anon_rmap_pmd` refuses the pinned
/// folio, the PMD is split and the range copied by PTEs). The parent keeps
/// its folio, PTE-mapped.
fn split_pinned_thps(mm: &Mm, start: u64, end: u64) -> Result<(), MmError> {
    let phys = mm.phys();
    let mut found = Vec::new();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if slot.level() == Level::Pmd && entry.is_present() && needs_cow_for_dma(phys, entry.pfn()) {
                found.push((slot.va(), entry));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    for (va, entry) in found {
        let slot = mm.pgtable().find(va);
        if slot.level() == Level::Pmd {
            crate::huge::split_huge_leaf(mm, slot, entry)?;
        }
    }
    Ok(())
}

/// Copies the entries of the child's VMA `child_vma` (same range in the
/// parent) into `child`, write-protecting both sides when `cow` (keeping the
/// uffd-wp bits when the child stays registered, `keeps_uffd`). The parent
/// holds its mmap write lock, so no fault runs concurrently; entries are
/// still swapped atomically against the CPU's accessed/dirty updates.
fn copy_range(parent: &Mm, child: &Mm, child_vma: &Vma, cow: bool, keeps_uffd: bool) -> Result<(), MmError> {
    let (start, end) = (child_vma.start, child_vma.end);
    let phys = parent.phys();
    let has_pinned = parent.has_pinned.load(core::sync::atomic::Ordering::Acquire);
    let swap = parent.kernel().swap();
    let flow = parent.pgtable().walk(start, end, |visit| {
        let Visit::Slot { slot, mut entry } = visit else {
            return ControlFlow::Continue(());
        };
        if entry.is_none() {
            return ControlFlow::Continue(());
        }
        debug_assert!(!crate::migrate::is_migration_entry(entry), "fork waits for migrations first");
        let target = match child.pgtable().ensure(slot.va(), slot.level()) {
            Ok(target) => target,
            Err(EnsureError::NoMem(_)) => return ControlFlow::Break(MmError::NoMem),
            Err(EnsureError::Leaf(_)) => unreachable!("the child's table is built in order"),
        };
        if entry.swap_kind() == Some(SwapKind::DeviceExclusive) {
            // The device loses exclusivity; the page is copied as a normal
            // present page (`try_restore_exclusive_pte`).
            let restored = hmm_pagetable::Entry::present(
                entry.pfn(),
                hmm_pagetable::LeafFlags { write: true, dirty: true, accessed: true, special: false },
                false,
            );
            let invalidation =
                parent.notifiers().start(parent.id(), slot.va(), slot.va() + hmm_types::PAGE_SIZE, Event::Exclusive);
            if slot.compare_exchange(entry, restored).is_ok() {
                entry = restored;
            }
            invalidation.end();
        }
        if entry.swap_kind().is_some_and(|k| k.is_device_private()) {
            // Device-private pages are shared read-only by both processes;
            // a write faults the page back to RAM, then copies.
            if cow && entry.swap_kind() == Some(SwapKind::DevicePrivateWrite) {
                let read_only = hmm_pagetable::Entry::swap(SwapKind::DevicePrivateRead, entry.pfn().0, entry.is_huge());
                while let Err(now) = slot.compare_exchange(entry, read_only) {
                    entry = now;
                }
                entry = read_only;
            }
            phys.get(entry.pfn());
            phys.map_add(entry.pfn(), 1);
            target.store(entry);
        } else if entry.is_present() {
            let pinned_copy = if cow && has_pinned { copy_if_pinned(child, child_vma, slot.va(), entry) } else { None };
            if let Some(copied) = pinned_copy {
                return match copied {
                    Ok(new) => {
                        target.store(keep_uffd_bit(new, entry, child_vma));
                        ControlFlow::Continue(())
                    }
                    Err(error) => ControlFlow::Break(error),
                };
            }
            if cow && entry.is_write() {
                loop {
                    match slot.compare_exchange(entry, entry.wrprotect()) {
                        Ok(_) => break,
                        Err(now) => entry = now,
                    }
                }
                entry = entry.wrprotect();
            }
            if !entry.is_special() && !phys.is_zero_pfn(entry.pfn()) {
                phys.get(entry.pfn());
                phys.map_add(entry.pfn(), 1);
                // Shared with the child now: no longer exclusive to the
                // parent (`folio_try_dup_anon_rmap_pte`) until a write
                // fault reuses it.
                if cow {
                    phys.meta(phys.folio_head(entry.pfn())).clear_flags(crate::phys::PageFlags::ANON_EXCLUSIVE);
                }
            }
            // A child VMA that is not registered gets no uffd-wp bit
            // (`copy_present_pte` clears it without `userfaultfd_wp`).
            target.store(if keeps_uffd { entry.mkold() } else { entry.mkold().clear_uffd_wp() });
        } else if crate::uffd::is_wp_marker(entry) {
            // Kept only where the child stays WP-registered
            // (`copy_pte_marker`).
            if keeps_uffd {
                target.store(entry);
            }
        } else if entry.is_guard_marker() || crate::uffd::is_poison_marker(entry) {
            // Guard and poison markers are always copied
            // (`copy_nonpresent_pte`).
            target.store(entry);
        } else if entry.swap_kind() == Some(SwapKind::Swap) {
            // Both sides name the slot; the first to fault it in gets a
            // read-only copy (`swap_duplicate`).
            swap.dup(entry.pfn().0);
            // As for a present page, the bit stays only for a child that
            // stays registered (`copy_nonpresent_pte`).
            target.store(if keeps_uffd { entry } else { entry.swp_clear_uffd_wp() });
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

/// The child's own copy of the page `entry` maps at `va` when the parent
/// may have pinned it, `None` when the page can be shared. A later write
/// fault must never replace a pinned page, so the child gets a copy at
/// once and the parent keeps its page, writable: a maybe-pinned exclusive
/// anonymous page (`copy_present_page`, after `folio_try_dup_anon_rmap_pte`
/// refused it), or a pinned private huge page, exclusive while mapped once
/// (`copy_hugetlb_page_range`, after `hugetlb_try_dup_anon_rmap` refused it).
fn copy_if_pinned(
    child: &Mm,
    child_vma: &Vma,
    va: u64,
    entry: hmm_pagetable::Entry,
) -> Option<Result<hmm_pagetable::Entry, MmError>> {
    let phys = child.phys();
    let pfn = entry.pfn();
    match &child_vma.backing {
        VmaBacking::Hugetlb(object) => (phys.folio_counts(pfn).1 == 1 && phys.maybe_pinned(pfn))
            .then(|| copy_pinned_huge_page(object, child_vma, pfn)),
        _ => (!entry.is_huge() && needs_cow_for_dma(phys, pfn))
            .then(|| copy_pinned_page(phys, child, child_vma, va, pfn)),
    }
}

/// `folio_needs_cow_for_dma` for an exclusive anonymous page (the parent
/// has pinned something): the folio may be pinned. A THP's pages are
/// judged by its head, where the model keeps ANON_EXCLUSIVE.
fn needs_cow_for_dma(phys: &crate::phys::PhysMem, pfn: hmm_types::Pfn) -> bool {
    use crate::phys::PageFlags;
    let flags = phys.meta(phys.folio_head(pfn)).flags();
    !phys.is_zero_pfn(pfn) && flags.contains(PageFlags::ANON | PageFlags::ANON_EXCLUSIVE) && phys.maybe_pinned(pfn)
}

/// The child's own copy of the page at `pfn`, mapped at `va`: dirty, and
/// writable when its VMA is.
fn copy_pinned_page(
    phys: &crate::phys::PhysMem,
    child: &Mm,
    child_vma: &Vma,
    va: u64,
    pfn: hmm_types::Pfn,
) -> Result<hmm_pagetable::Entry, MmError> {
    use crate::phys::PageFlags;
    let copy = phys.alloc_folio(0, false).map_err(|_| MmError::NoMem)?;
    phys.copy_frames(copy, pfn, 1);
    phys.meta(copy)
        .set_flags(PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE);
    crate::rmap::folio_add_new_anon_rmap(child, child_vma, copy, va);
    phys.map_add(copy, 1);
    let write = child_vma.flags.contains(VmFlags::WRITE);
    Ok(hmm_pagetable::Entry::present(
        copy,
        hmm_pagetable::LeafFlags { write, dirty: true, accessed: true, special: false },
        false,
    ))
}

/// A copy made at fork keeps the parent entry's uffd bit where the child
/// stays registered for WP or RWP (`copy_present_page`,
/// `hugetlb_install_folio`): write-protected for WP, back to PROT_NONE
/// for RWP so that it keeps trapping.
fn keep_uffd_bit(copy: hmm_pagetable::Entry, parent: hmm_pagetable::Entry, child_vma: &Vma) -> hmm_pagetable::Entry {
    if !parent.is_uffd_wp() {
        copy
    } else if child_vma.flags.contains(VmFlags::UFFD_RWP) {
        copy.mkuffd_rwp()
    } else if child_vma.flags.contains(VmFlags::UFFD_WP) {
        copy.mkuffd_wp()
    } else {
        copy
    }
}

/// The child's own copy of the pinned huge page at `pfn`, from the
/// hugetlb pool (ENOMEM, failing the fork, when it is empty): dirty, and
/// writable when its VMA is (`hugetlb_install_folio`).
fn copy_pinned_huge_page(
    object: &crate::hugetlb::HugetlbFile,
    child_vma: &Vma,
    pfn: hmm_types::Pfn,
) -> Result<hmm_pagetable::Entry, MmError> {
    let phys = object.phys();
    let copy = object.alloc().map_err(|_| MmError::NoMem)?;
    phys.copy_frames(copy, pfn, object.page_size().nr_pages());
    phys.map_add(copy, 1);
    let write = child_vma.flags.contains(VmFlags::WRITE);
    Ok(hmm_pagetable::Entry::present(
        copy,
        hmm_pagetable::LeafFlags { write, dirty: true, accessed: true, special: false },
        true,
    ))
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Event, MapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn private_memory_is_copy_on_write_both_ways() {
        let k = kernel(64, ThpMode::Never);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        parent.write_u64(va, 1).unwrap();
        let rec = record(&parent);
        let child = parent.fork().unwrap();
        assert_eq!(rec.take_events(), [(Event::ProtectionPage, va, va + 2 * 4096)]);
        assert!(!leaf(&parent, va).1.is_write() && !leaf(&child, va).1.is_write());
        assert_eq!(k.phys().folio_counts(leaf(&parent, va).1.pfn()), (2, 2));
        parent.write_u64(va, 2).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + 4096)], "the COW break is a CLEAR");
        assert_eq!(child.read_u64(va).unwrap(), 1);
        child.write_u64(va, 3).unwrap();
        assert_eq!(parent.read_u64(va).unwrap(), 2);
        assert_eq!(child.read_u64(va).unwrap(), 3);
        assert_eq!(k.phys().folio_counts(leaf(&child, va).1.pfn()), (1, 1), "the last sharer reused its page");
        child.exit();
    }

    #[test]
    fn zero_page_reads_are_not_copied_but_the_huge_zero_page_is() {
        // Regression (scenarios/found), Linux 6.18: a VMA with only 4 KiB
        // zero-page reads has no anon_vma, so fork copies no entry and the
        // child's pagemap shows nothing there; a THP read fault prepares
        // the anon_vma first, so the huge zero page is copied.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let small = mm.mmap(0, 3 * 4096, Prot::RW, ANON).unwrap();
        mm.read_u64(small + 2 * 4096).unwrap();
        let child = mm.fork().unwrap();
        assert!(child.pgtable().find(small + 2 * 4096).load().is_none());
        assert_eq!(child.read_u64(small + 2 * 4096), Ok(0));

        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let huge = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.read_u64(huge).unwrap();
        let child = mm.fork().unwrap();
        assert!(child.pgtable().find(huge).load().is_present());
    }

    #[test]
    fn shared_memory_stays_shared() {
        let parent = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = parent.mmap(0, 4096, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
        parent.write_u64(va, 1).unwrap();
        let rec = record(&parent);
        let child = parent.fork().unwrap();
        assert!(rec.take_events().is_empty(), "shared mappings are not write-protected");
        child.write_u64(va, 2).unwrap();
        assert_eq!(parent.read_u64(va).unwrap(), 2);
        parent.write_u64(va, 3).unwrap();
        assert_eq!(child.read_u64(va).unwrap(), 3);
        child.exit();
    }

    #[test]
    fn a_pinned_thp_is_split_in_the_parent_and_copied_by_pages() {
        // 7.3.4 guest (`fork_copies_pinned_huge_pages.hmm`): the parent
        // keeps its folio behind PTEs; the child gets order-0 copies.
        let k = kernel(64, ThpMode::Always);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        parent.write_u64(va + 4096, 1).unwrap();
        let folio = leaf(&parent, va).1.pfn();
        let pinned = parent.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
        let child = parent.fork().unwrap();
        let (level, ours) = leaf(&parent, va + 4096);
        assert_eq!((level, ours.pfn()), (Level::Pte, hmm_types::Pfn(folio.0 + 1)));
        assert!(ours.is_write(), "the parent is not write-protected");
        let (level, theirs) = leaf(&child, va + 4096);
        assert_eq!(level, Level::Pte);
        assert_eq!(k.phys().folio_order(theirs.pfn()), 0);
        assert_ne!(theirs.pfn(), ours.pfn());
        child.write_u64(va + 4096, 2).unwrap();
        assert_eq!(parent.read_u64(va + 4096).unwrap(), 1);
        drop(pinned);
        child.exit();
    }

    #[test]
    fn a_thp_is_shared_then_split_on_write() {
        let k = kernel(64, ThpMode::Always);
        let parent = k.create_mm().unwrap();
        let va = parent.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        parent.write_u64(va + 4096, 1).unwrap();
        let child = parent.fork().unwrap();
        assert_eq!(leaf(&child, va).0, Level::Pmd);
        let rec = record(&parent);
        parent.write_u64(va + 4096, 2).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE), (Event::Clear, va + 4096, va + 8192)]);
        assert_eq!(child.read_u64(va + 4096).unwrap(), 1);
        assert_eq!(parent.read_u64(va + 4096).unwrap(), 2);
        child.exit();
    }
}
