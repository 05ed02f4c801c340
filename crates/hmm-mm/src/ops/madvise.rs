//! madvise: DONTNEED and FREE (announced as CLEAR), REMOVE
//! (`super::madvise_remove`), HUGEPAGE and
//! NOHUGEPAGE, DONTFORK and DOFORK, POPULATE_READ and POPULATE_WRITE,
//! COLLAPSE (a synchronous THP collapse, `super::collapse`),
//! PAGEOUT (anonymous pages go to swap or, if clean after FREE, are
//! discarded; page-cache pages mapped only here are unmapped and stay
//! cached; a CLEAR per page, see `crate::swap`), GUARD_INSTALL and
//! GUARD_REMOVE (`super::guard`). Discarding advice on a sealed read-only
//! anonymous VMA is EPERM (`super::mseal::check_madvise_sealed`).
//!
//! Linux: `mm/madvise.c`.

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, SwapKind, Visit};
use hmm_types::{Event, MadviseAdvice, VaRange, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::error::MmError;
use crate::huge::{drop_huge_zero_at, split_huge_edge};
use crate::mm::{Mm, MmapWriteGuard};
use crate::phys::PageFlags;
use crate::swap::{pageout_range, Scope};
use crate::zap::{zap_range_keep_guards, Gather};

use crate::vma::{Vma, VmaTree};

use super::madvise_populate;
use super::mseal::check_madvise_sealed;

impl Mm {
    /// Gives advice about `[addr, addr + len)`; a zero length is a
    /// successful no-op. As on Linux (`madvise_walk_vmas`), every VMA of
    /// the range gets the advice for its part, in address order, and gaps
    /// do not stop the walk: the first per-VMA error is returned at once
    /// (earlier VMAs keep the advice), else `ENOMEM` if the range had a
    /// gap. MADV_POPULATE_* instead faults page by page and stops at the
    /// first problem (see `populate::madvise_populate`).
    pub fn madvise(&self, addr: u64, len: u64, advice: MadviseAdvice) -> Result<(), MmError> {
        self.check_alive()?;
        if addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("madvise address not page aligned"));
        }
        if len == 0 {
            return Ok(());
        }
        // A length rounding to zero or an end that wraps is EINVAL; a range
        // past the address space just ends in a gap (ENOMEM).
        let rounded = len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1));
        let Some(end) = rounded.and_then(|l| addr.checked_add(l)) else {
            return Err(MmError::Invalid("madvise range wraps"));
        };
        let start = addr;
        match advice {
            MadviseAdvice::PopulateRead | MadviseAdvice::PopulateWrite => {
                let mut guard = self.mmap_read();
                madvise_populate(self, &mut guard, start, end, advice == MadviseAdvice::PopulateWrite)
            }
            MadviseAdvice::DontNeed | MadviseAdvice::Free | MadviseAdvice::PageOut => {
                let mut guard = self.mmap_read();
                Walk::new(&guard, start, end).run(|piece_start, mut piece_end| {
                    // `userfaultfd_remove`: a REMOVE event first, the lock
                    // dropped while the monitor reads it; then the VMA is
                    // looked up again (gone: ENOMEM) and the piece cut to it.
                    if advice != MadviseAdvice::PageOut
                        && crate::uffd::remove_before_zap(&mut guard, piece_start, piece_end)
                    {
                        let vma = guard.lookup(piece_start).ok_or(MmError::NoMem)?;
                        piece_end = piece_end.min(vma.end);
                    }
                    let vma = guard.lookup(piece_start).expect("a piece lies in a VMA");
                    discard_piece(self, vma, piece_start, piece_end, advice)
                })
            }
            MadviseAdvice::Remove => {
                let mut guard = self.mmap_read();
                Walk::new(&guard, start, end).run(|piece_start, piece_end| {
                    super::madvise_remove::remove_piece(&mut guard, piece_start, piece_end)
                })
            }
            MadviseAdvice::Collapse => {
                let mut guard = self.mmap_write();
                Walk::new(&guard, start, end).run(|piece_start, piece_end| {
                    guard.check_split(piece_start)?;
                    guard.check_split(piece_end)?;
                    super::collapse::collapse_piece(&mut guard, piece_start, piece_end)
                })
            }
            MadviseAdvice::GuardInstall | MadviseAdvice::GuardRemove => {
                let mut guard = self.mmap_write();
                Walk::new(&guard, start, end).run(|piece_start, piece_end| {
                    if advice == MadviseAdvice::GuardRemove {
                        return super::guard::remove_piece(&guard, piece_start, piece_end);
                    }
                    check_madvise_sealed(guard.lookup(piece_start).expect("a piece lies in a VMA"), advice)?;
                    super::guard::install_piece(&mut guard, piece_start, piece_end)
                })
            }
            MadviseAdvice::HugePage
            | MadviseAdvice::NoHugePage
            | MadviseAdvice::DontFork
            | MadviseAdvice::DoFork
            | MadviseAdvice::WipeOnFork
            | MadviseAdvice::KeepOnFork => {
                let mut guard = self.mmap_write();
                Walk::new(&guard, start, end)
                    .run(|piece_start, piece_end| set_flags_piece(self, &mut guard, piece_start, piece_end, advice))
            }
        }
    }
}

/// The parts of the VMAs intersecting `[start, end)`, in address order,
/// taken before the advice changes any VMA, and where the range is first
/// unmapped.
struct Walk {
    pieces: Vec<(u64, u64)>,
    first_gap: Option<u64>,
    end: u64,
}

impl Walk {
    fn new(vmas: &VmaTree, start: u64, end: u64) -> Self {
        let pieces: Vec<(u64, u64)> =
            vmas.overlapping(start, end).map(|v| (v.start.max(start), v.end.min(end))).collect();
        let mut cursor = start;
        let mut first_gap = None;
        for &(piece_start, piece_end) in &pieces {
            if piece_start > cursor {
                first_gap = first_gap.or(Some(cursor));
            }
            cursor = piece_end;
        }
        if cursor < end {
            first_gap = first_gap.or(Some(cursor));
        }
        Self { pieces, first_gap, end }
    }

    /// Runs `apply` on every piece; returns its first error, else `ENOMEM`
    /// if part of the range was not mapped, else success
    /// (`madvise_walk_vmas`).
    fn run(self, mut apply: impl FnMut(u64, u64) -> Result<(), MmError>) -> Result<(), MmError> {
        for (piece_start, piece_end) in self.pieces {
            apply(piece_start, piece_end)?;
        }
        match self.first_gap {
            None => Ok(()),
            Some(gap) => Err(VaRange::from_bounds(gap, self.end.min(TASK_SIZE).max(gap + PAGE_SIZE))
                .map_or(MmError::OutOfRange("madvise range past the address space"), MmError::NotMapped)),
        }
    }
}

/// DONTNEED, FREE or PAGEOUT on `[start, end)`, all inside `vma`.
fn discard_piece(mm: &Mm, vma: &Vma, start: u64, end: u64, advice: MadviseAdvice) -> Result<(), MmError> {
    check_madvise_sealed(vma, advice)?;
    let mut end = end;
    if advice == MadviseAdvice::DontNeed && vma.flags.contains(VmFlags::HUGETLB) {
        // Linux 6.18 on the host: a start inside a huge page is EINVAL, the
        // end is rounded down, so a partly covered huge page is kept
        // (`madvise_dontneed_free_valid_vma`).
        let huge = vma.split_granule();
        if start % huge != 0 {
            return Err(MmError::Invalid("MADV_DONTNEED start inside a huge page"));
        }
        end &= !(huge - 1);
        if end <= start {
            return Ok(());
        }
    }
    // No VMA is split here, so `may_split` is not asked: a device-DAX
    // mapping takes a zap of part of its leaf (the leaf goes whole).
    if advice == MadviseAdvice::PageOut {
        // `can_madv_lru_vma`.
        if vma.flags.intersects(VmFlags::PFNMAP | VmFlags::HUGETLB) {
            return Err(MmError::Invalid("MADV_PAGEOUT on a VM_PFNMAP/VM_HUGETLB mapping"));
        }
        // Shared and file mappings too: their page-cache pages are unmapped
        // (`reclaim_pages` on every LRU folio, the caller owning the files
        // it created, so `can_do_file_pageout` holds).
        let mut unlimited = u64::MAX;
        pageout_range(mm, start, end, &mut unlimited, Scope::WithFile);
        return Ok(());
    }
    if vma.flags.intersects(VmFlags::PFNMAP | VmFlags::IO) {
        return Err(MmError::Invalid("madvise on a VM_PFNMAP/VM_IO mapping"));
    }
    if advice == MadviseAdvice::Free && !vma.is_anonymous() {
        return Err(MmError::Invalid("MADV_FREE applies to private anonymous memory only"));
    }
    let invalidation = mm.notifiers().start(mm.id(), start, end, Event::Clear);
    let mut gather = Gather::new();
    if advice == MadviseAdvice::DontNeed {
        if !vma.is_anonymous() {
            // A DAX hole's huge zero PMD straddling an edge goes whole.
            drop_huge_zero_at(mm, start);
            drop_huge_zero_at(mm, end);
        }
        // File memory registered for WP keeps its protection as markers.
        let markers = crate::uffd::markers_to_keep(mm, vma, start, end);
        zap_range_keep_guards(mm, start, end, &mut gather)?;
        crate::uffd::restore_markers(mm, &markers);
    } else {
        mark_lazyfree(mm, start, end);
    }
    gather.free_after(mm.phys(), invalidation);
    Ok(())
}

/// A VMA-flag advice on `[start, end)`, inside one VMA
/// (`madvise_update_vma`).
fn set_flags_piece(
    mm: &Mm,
    guard: &mut MmapWriteGuard<'_>,
    start: u64,
    end: u64,
    advice: MadviseAdvice,
) -> Result<(), MmError> {
    let vma = guard.lookup(start).expect("a piece lies in a VMA");
    check_madvise_sealed(vma, advice)?;
    if advice == MadviseAdvice::DoFork && vma.flags.intersects(VmFlags::SPECIAL) {
        return Err(MmError::Invalid("MADV_DOFORK on a VM_SPECIAL mapping (VM_IO, VM_DONTEXPAND: hugetlb...)"));
    }
    if advice == MadviseAdvice::WipeOnFork && !vma.is_anonymous() {
        return Err(MmError::Invalid("MADV_WIPEONFORK applies to private anonymous memory"));
    }
    let (set, clear) = flag_change(advice);
    // `madvise_update_vma`: flags that do not change leave the VMA alone,
    // unsplit (a hugetlb VMA cut at an unaligned edge is no error then).
    let new_flags = (vma.flags - clear) | set;
    if new_flags == vma.flags {
        return Ok(());
    }
    if let Err(refused) = super::vma_modify::check_splits(guard, vma, start, end, new_flags) {
        return Err(refused.settle(guard));
    }
    // A huge leaf must not straddle the new VMA edges (fork copies per
    // VMA), as `vma_adjust_trans_huge` ensures.
    split_huge_edge(mm, guard, start)?;
    split_huge_edge(mm, guard, end)?;
    for vma in guard.vmas_mut().split_range_mut(start, end) {
        vma.flags = new_flags;
    }
    guard.vmas_mut().merge_range(start, end);
    Ok(())
}

/// The VMA flags an advice sets and clears.
fn flag_change(advice: MadviseAdvice) -> (VmFlags, VmFlags) {
    match advice {
        MadviseAdvice::HugePage => (VmFlags::HUGEPAGE, VmFlags::NOHUGEPAGE),
        MadviseAdvice::NoHugePage => (VmFlags::NOHUGEPAGE, VmFlags::HUGEPAGE),
        MadviseAdvice::DontFork => (VmFlags::DONTCOPY, VmFlags::empty()),
        MadviseAdvice::DoFork => (VmFlags::empty(), VmFlags::DONTCOPY),
        MadviseAdvice::WipeOnFork => (VmFlags::WIPEONFORK, VmFlags::empty()),
        _ => (VmFlags::empty(), VmFlags::WIPEONFORK),
    }
}

/// MADV_FREE: pages mapped only here become clean and lazily freeable; a
/// later write dirties them again. Without memory pressure nothing is lost,
/// exactly as on Linux. Swapped-out pages are dropped with their slot use
/// (their data may be discarded anyway).
fn mark_lazyfree(mm: &Mm, start: u64, end: u64) {
    let phys = mm.phys();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if entry.swap_kind() == Some(SwapKind::Swap) && slot.compare_exchange(entry, Entry::NONE).is_ok() {
                mm.kernel().swap().put(entry.pfn().0);
                return ControlFlow::Continue(());
            }
            if !entry.is_present() || entry.is_special() {
                return ControlFlow::Continue(());
            }
            let pfn = entry.pfn();
            let exclusive = phys.folio_counts(pfn).1 == 1;
            let head = phys.meta(phys.folio_head(pfn));
            // `madvise_free_pte_range`: a dirty folio is cleaned only where
            // this is its one mapping; a clean one shared with another
            // process (fork) still has this mapping's entry made clean and
            // old. Only an exclusive folio becomes lazily freeable here: the
            // model's reclaim does not look at the other mappings' entries.
            if head.flags().contains(PageFlags::DIRTY) && !exclusive {
                return ControlFlow::Continue(());
            }
            if slot.compare_exchange(entry, entry.mkclean().mkold()).is_ok() && exclusive {
                head.clear_flags(PageFlags::DIRTY);
                head.set_flags(PageFlags::LAZYFREE);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, VmFlags, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
    const SHARED: MapFlags = MapFlags::SHARED.union(MapFlags::ANONYMOUS);

    #[test]
    fn dontneed_zeroes_private_and_keeps_shared() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let private = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        let shared = mm.mmap(0, 4096, Prot::RW, SHARED).unwrap();
        mm.write_u64(private, 1).unwrap();
        mm.write_u64(shared, 2).unwrap();
        let rec = record(&mm);
        mm.madvise(private, 2 * 4096, MadviseAdvice::DontNeed).unwrap();
        mm.madvise(shared, 4096, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, private, private + 8192), (Event::Clear, shared, shared + 4096)]);
        assert_eq!(mm.read_u64(private).unwrap(), 0);
        assert_eq!(mm.read_u64(shared).unwrap(), 2, "shmem keeps its pages");
    }

    #[test]
    fn free_keeps_data_without_pressure_and_refuses_shared() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 3).unwrap();
        mm.madvise(va, 4096, MadviseAdvice::Free).unwrap();
        assert!(!leaf(&mm, va).1.is_dirty());
        assert_eq!(mm.read_u64(va).unwrap(), 3);
        let shared = mm.mmap(0, 4096, Prot::RW, SHARED).unwrap();
        assert_eq!(mm.madvise(shared, 4096, MadviseAdvice::Free).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn nohugepage_disables_thp_and_splits_the_vma() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.madvise(va, PMD_SIZE, MadviseAdvice::NoHugePage).unwrap();
        assert_eq!(mm.mmap_read().len(), 2);
        mm.write_u64(va, 1).unwrap();
        mm.write_u64(va + PMD_SIZE, 1).unwrap();
        assert_eq!(leaf(&mm, va).0, Level::Pte);
        assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd);
    }

    #[test]
    fn bad_arguments() {
        // Linux 6.18 on the host: unaligned start and a length wrapping the
        // address space are EINVAL whatever the advice; zero length is 0.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4 * 4096, Prot::RW, ANON).unwrap();
        assert_eq!(mm.madvise(va + 1, 4096, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.madvise(va, u64::MAX, MadviseAdvice::PopulateRead).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.madvise(va, u64::MAX - 8191, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.madvise(va, 0, MadviseAdvice::DontNeed), Ok(()));
        assert_eq!(mm.madvise(0x7000_0000, 2 * 4096, MadviseAdvice::HugePage).unwrap_err().errno(), Errno::NoMem);
    }

    #[test]
    fn linux_applies_advice_across_gaps_then_returns_enomem() {
        // Linux 6.18 on the host: VMAs [0,4), [6,10), [12,14), all written;
        // madvise([2,14), NOHUGEPAGE) = ENOMEM and all three parts got
        // VM_NOHUGEPAGE; madvise([2,14), DONTNEED) = ENOMEM and only pages
        // 0 and 1 stay present.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 14 * 4096, Prot::RW, ANON).unwrap();
        let p = |n: u64| va + n * 4096;
        mm.munmap(p(4), 2 * 4096).unwrap();
        mm.munmap(p(10), 2 * 4096).unwrap();
        for page in (0..4).chain(6..10).chain(12..14) {
            mm.write_u64(p(page), page + 1).unwrap();
        }
        assert_eq!(mm.madvise(p(2), 12 * 4096, MadviseAdvice::NoHugePage).unwrap_err().errno(), Errno::NoMem);
        let nohuge: Vec<(u64, bool)> =
            mm.mmap_read().iter().map(|v| (v.start, v.flags.contains(VmFlags::NOHUGEPAGE))).collect();
        assert_eq!(nohuge, [(p(0), false), (p(2), true), (p(6), true), (p(12), true)]);
        let rec = record(&mm);
        assert_eq!(mm.madvise(p(2), 12 * 4096, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(
            rec.take_events(),
            [(Event::Clear, p(2), p(4)), (Event::Clear, p(6), p(10)), (Event::Clear, p(12), p(14))]
        );
        let values: Vec<u64> = (0..4).chain(6..10).chain(12..14).map(|n| mm.read_u64(p(n)).unwrap()).collect();
        assert_eq!(values, [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Starting in the gap, or no VMA at all: ENOMEM.
        assert_eq!(mm.madvise(p(4), 4096, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::NoMem);
    }

    #[test]
    fn linux_stops_at_the_first_vma_error_after_advising_the_earlier_ones() {
        // Linux 6.18 on the host: anon [0,2), shared anon [2,3), anon
        // [3,5), gap, anon [6,7): WIPEONFORK over [0,7) = EINVAL with [0,2)
        // marked and [3,5) not; FREE over [3,7) = ENOMEM (the gap); DONTFORK
        // over [0,7) = ENOMEM with every VMA marked.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 7 * 4096, Prot::RW, ANON).unwrap();
        let p = |n: u64| va + n * 4096;
        mm.mmap(p(2), 4096, Prot::RW, SHARED | MapFlags::FIXED).unwrap();
        mm.munmap(p(5), 4096).unwrap();
        let marked = |flag: VmFlags| -> Vec<bool> { mm.mmap_read().iter().map(|v| v.flags.contains(flag)).collect() };
        assert_eq!(mm.madvise(va, 7 * 4096, MadviseAdvice::WipeOnFork).unwrap_err().errno(), Errno::Inval);
        assert_eq!(marked(VmFlags::WIPEONFORK), [true, false, false, false]);
        assert_eq!(mm.madvise(p(3), 4 * 4096, MadviseAdvice::Free).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(mm.madvise(va, 7 * 4096, MadviseAdvice::Free).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.madvise(va, 7 * 4096, MadviseAdvice::DontFork).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(marked(VmFlags::DONTCOPY), [true, true, true, true]);
    }

    #[test]
    fn linux_populate_errno_table() {
        // Linux 6.18 on the host, VMAs [0,2) RW, [2,4) PROT_NONE, [4,6)
        // PROT_READ, gap, [7,9) RW: POPULATE_READ over [0,4) = EINVAL with
        // [0,2) populated; PROT_NONE is EINVAL for both; POPULATE_WRITE on
        // the read-only VMA is EINVAL, POPULATE_READ there succeeds; a
        // range reaching a gap is ENOMEM with the pages before it
        // populated; PROT_EXEC-only and PROT_WRITE-only VMAs refuse
        // POPULATE_READ (no VM_READ) although x86 lets the CPU read them.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 9 * 4096, Prot::RW, ANON).unwrap();
        let p = |n: u64| va + n * 4096;
        mm.mprotect(p(2), 2 * 4096, Prot::NONE).unwrap();
        mm.mprotect(p(4), 2 * 4096, Prot::READ).unwrap();
        mm.munmap(p(6), 4096).unwrap();
        let errno = |start: u64, pages: u64, advice| mm.madvise(p(start), pages * 4096, advice).map_err(|e| e.errno());
        let present = |n: u64| !leaf(&mm, p(n)).1.is_none();
        assert_eq!(errno(0, 4, MadviseAdvice::PopulateRead), Err(Errno::Inval));
        assert!(present(0) && present(1));
        assert_eq!(errno(2, 2, MadviseAdvice::PopulateRead), Err(Errno::Inval));
        assert_eq!(errno(2, 2, MadviseAdvice::PopulateWrite), Err(Errno::Inval));
        assert_eq!(errno(4, 2, MadviseAdvice::PopulateRead), Ok(()));
        assert_eq!(errno(4, 2, MadviseAdvice::PopulateWrite), Err(Errno::Inval));
        assert_eq!(errno(6, 3, MadviseAdvice::PopulateRead), Err(Errno::NoMem));
        assert!(!present(7), "the gap comes first");
        assert_eq!(errno(7, 3, MadviseAdvice::PopulateRead), Err(Errno::NoMem));
        assert!(present(7) && present(8), "pages before the gap stay populated");
        mm.mprotect(p(0), 4096, Prot::EXEC).unwrap();
        mm.mprotect(p(1), 4096, Prot::WRITE).unwrap();
        assert_eq!(errno(0, 1, MadviseAdvice::PopulateRead), Err(Errno::Inval));
        assert_eq!(errno(1, 1, MadviseAdvice::PopulateRead), Err(Errno::Inval));
        assert_eq!(errno(1, 1, MadviseAdvice::PopulateWrite), Ok(()));
    }

    #[test]
    fn linux_populate_past_a_shmem_object_is_efault() {
        // Linux 6.18 on the host: a one-page MAP_SHARED|MAP_ANONYMOUS
        // mapping grown to 3 pages by mremap: POPULATE_READ/WRITE of it =
        // EFAULT (the fault past the object's size is SIGBUS).
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 4096, Prot::RW, SHARED).unwrap();
        assert_eq!(mm.mremap(va, 4096, 3 * 4096, hmm_types::MremapFlags::empty(), 0), Ok(va));
        assert_eq!(mm.madvise(va, 3 * 4096, MadviseAdvice::PopulateRead).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.madvise(va + 4096, 4096, MadviseAdvice::PopulateWrite).unwrap_err().errno(), Errno::Fault);
        assert!(!leaf(&mm, va).1.is_none(), "the page inside the object was populated first");
    }

    #[test]
    fn linux_refuses_dofork_and_discarding_on_vm_io_but_allows_dontfork() {
        // Linux (madvise_vma_behavior): MADV_DOFORK on a VM_IO VMA is
        // EINVAL, MADV_DONTFORK is not checked; DONTNEED and POPULATE of a
        // VM_PFNMAP VMA are EINVAL. (The host has no /dev/mem to probe
        // VM_IO: these facts come from the 6.18 source.)
        use std::sync::Arc;

        use hmm_types::Owner;

        use crate::phys::{MemoryType, Pagemap};
        let k = kernel(64, ThpMode::Never);
        let pagemap = Arc::new(Pagemap::new(MemoryType::PciP2pDma, Some(Owner(1))));
        let bar = k.phys().add_device_region(pagemap, 16, None).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_pfn_range(4 * 4096, Prot::RW, bar).unwrap();
        let errno = |advice| mm.madvise(va, 4 * 4096, advice).map_err(|e| e.errno());
        assert_eq!(errno(MadviseAdvice::DontFork), Ok(()));
        assert_eq!(errno(MadviseAdvice::DoFork), Err(Errno::Inval));
        assert_eq!(errno(MadviseAdvice::DontNeed), Err(Errno::Inval));
        assert_eq!(errno(MadviseAdvice::PopulateRead), Err(Errno::Inval));
        assert_eq!(errno(MadviseAdvice::PopulateWrite), Err(Errno::Inval));
    }

    #[test]
    fn linux_dontneed_on_hugetlb_rounds_the_end_down() {
        // Linux 6.18 on the host, two 2 MiB hugetlb pages written: DONTNEED
        // at +4 KiB = EINVAL; over 2 MiB + 4 KiB = 0 with only the first
        // page zapped; over 4 KiB or 2 MiB - 4 KiB = 0, nothing zapped.
        let config = crate::KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 2, ..Default::default() };
        let mm = crate::Kernel::new(config).unwrap().create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::HUGETLB).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.write_u64(va + PMD_SIZE, 2).unwrap();
        assert_eq!(mm.madvise(va + 4096, 4096, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::Inval);
        mm.madvise(va, PMD_SIZE + 4096, MadviseAdvice::DontNeed).unwrap();
        assert_eq!([mm.read_u64(va), mm.read_u64(va + PMD_SIZE)], [Ok(0), Ok(2)]);
        mm.write_u64(va, 1).unwrap();
        mm.madvise(va, 4096, MadviseAdvice::DontNeed).unwrap();
        mm.madvise(va, PMD_SIZE - 4096, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(mm.read_u64(va), Ok(1));
    }

    #[test]
    fn dontfork_and_wipeonfork() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let skipped = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let wiped = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(skipped, 1).unwrap();
        mm.write_u64(wiped, 2).unwrap();
        mm.madvise(skipped, 4096, MadviseAdvice::DontFork).unwrap();
        mm.madvise(wiped, 4096, MadviseAdvice::WipeOnFork).unwrap();
        let child = mm.fork().unwrap();
        assert_eq!(child.read_u64(skipped).unwrap_err().errno(), Errno::Fault);
        assert_eq!(child.read_u64(wiped).unwrap(), 0);
        assert_eq!(mm.read_u64(wiped).unwrap(), 2);
        child.exit();
    }
}
