//! madvise: DONTNEED and FREE (announced as CLEAR), HUGEPAGE and
//! NOHUGEPAGE, DONTFORK and DOFORK, POPULATE_READ and POPULATE_WRITE,
//! COLLAPSE (a synchronous THP collapse, announced as CLEAR of the 2 MiB),
//! PAGEOUT (private anonymous pages go to swap or, if clean after FREE, are
//! discarded; a CLEAR per page, see `crate::swap`).
//!
//! Linux: `mm/madvise.c`, `mm/khugepaged.c` (`madvise_collapse`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, SwapKind, Visit};
use hmm_types::{Event, MadviseAdvice, VaRange, VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::{Mm, MmapWriteGuard};
use crate::phys::PageFlags;
use crate::swap::{pageout_range, swappable_vma};
use crate::zap::{release_entry, zap_range, Gather};

use super::populate_locked;

impl Mm {
    /// Gives advice about `[addr, addr + len)`. The whole range must be
    /// mapped (`ENOMEM` otherwise, with nothing done); a zero length is a
    /// successful no-op.
    pub fn madvise(&self, addr: u64, len: u64, advice: MadviseAdvice) -> Result<(), MmError> {
        self.check_alive()?;
        if addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("madvise address not page aligned"));
        }
        if len == 0 {
            return Ok(());
        }
        // Linux: a wrapping range is EINVAL, one past the address space
        // is simply unmapped (ENOMEM).
        let range = VaRange::new_round_len(addr, len).map_err(|errno| match errno {
            hmm_types::Errno::NoMem => MmError::OutOfRange("madvise range ends past the user address space"),
            _ => MmError::Invalid("madvise range wraps"),
        })?;
        let (start, end) = (range.start(), range.end());
        match advice {
            MadviseAdvice::DontNeed | MadviseAdvice::Free => {
                let guard = self.mmap_read();
                if !guard.is_fully_mapped(start, end) {
                    return Err(MmError::NotMapped(range));
                }
                guard.check_split(start)?;
                guard.check_split(end)?;
                let chunks: Vec<_> = guard
                    .overlapping(start, end)
                    .map(|v| (v.start.max(start), v.end.min(end), v.is_anonymous(), v.flags))
                    .collect();
                if chunks.iter().any(|c| c.3.intersects(VmFlags::PFNMAP | VmFlags::IO)) {
                    return Err(MmError::Invalid("madvise on a VM_PFNMAP/VM_IO mapping"));
                }
                if advice == MadviseAdvice::Free && chunks.iter().any(|c| !c.2) {
                    return Err(MmError::Invalid("MADV_FREE applies to private anonymous memory only"));
                }
                for (chunk_start, chunk_end, _, _) in chunks {
                    let invalidation = self.notifiers().start(self.id(), chunk_start, chunk_end, Event::Clear);
                    let mut gather = Gather::new();
                    if advice == MadviseAdvice::DontNeed {
                        zap_range(self, chunk_start, chunk_end, &mut gather)?;
                    } else {
                        mark_lazyfree(self, chunk_start, chunk_end);
                    }
                    gather.free_after(self.phys(), invalidation);
                }
                Ok(())
            }
            MadviseAdvice::PopulateRead | MadviseAdvice::PopulateWrite => {
                let guard = self.mmap_read();
                if !guard.is_fully_mapped(start, end) {
                    return Err(MmError::NotMapped(range));
                }
                guard.check_split(start)?;
                guard.check_split(end)?;
                if guard.overlapping(start, end).any(|v| v.flags.intersects(VmFlags::PFNMAP | VmFlags::IO)) {
                    return Err(MmError::Invalid("populate of a VM_PFNMAP/VM_IO mapping"));
                }
                populate_locked(self, &guard, start, end, advice == MadviseAdvice::PopulateWrite)
            }
            MadviseAdvice::PageOut => {
                let guard = self.mmap_read();
                if !guard.is_fully_mapped(start, end) {
                    return Err(MmError::NotMapped(range));
                }
                guard.check_split(start)?;
                guard.check_split(end)?;
                if guard.overlapping(start, end).any(|v| v.flags.intersects(VmFlags::PFNMAP | VmFlags::HUGETLB)) {
                    return Err(MmError::Invalid("MADV_PAGEOUT on a VM_PFNMAP/VM_HUGETLB mapping"));
                }
                // Shared mappings keep their pages: shmem swap is not modelled.
                let mut unlimited = u64::MAX;
                for vma in guard.overlapping(start, end).filter(|vma| swappable_vma(vma)) {
                    pageout_range(self, vma.start.max(start), vma.end.min(end), &mut unlimited);
                }
                Ok(())
            }
            MadviseAdvice::HugePage
            | MadviseAdvice::NoHugePage
            | MadviseAdvice::DontFork
            | MadviseAdvice::DoFork
            | MadviseAdvice::WipeOnFork
            | MadviseAdvice::KeepOnFork => {
                let (set, clear) = flag_change(advice);
                let mut guard = self.mmap_write();
                if !guard.is_fully_mapped(start, end) {
                    return Err(MmError::NotMapped(range));
                }
                guard.check_split(start)?;
                guard.check_split(end)?;
                let special = VmFlags::PFNMAP | VmFlags::IO;
                if advice == MadviseAdvice::DontFork
                    && guard.overlapping(start, end).any(|v| v.flags.intersects(special))
                {
                    return Err(MmError::Invalid("MADV_DONTFORK on a VM_IO mapping"));
                }
                if advice == MadviseAdvice::WipeOnFork && guard.overlapping(start, end).any(|v| !v.is_anonymous()) {
                    return Err(MmError::Invalid("MADV_WIPEONFORK applies to private anonymous memory"));
                }
                // A huge leaf must not straddle the new VMA edges (fork copies
                // per VMA), as `vma_adjust_trans_huge` ensures.
                split_huge_at(self, start)?;
                split_huge_at(self, end)?;
                for vma in guard.vmas_mut().split_range_mut(start, end) {
                    vma.flags = (vma.flags - clear) | set;
                }
                guard.vmas_mut().merge_range(start, end);
                Ok(())
            }
            MadviseAdvice::Collapse => {
                let mut guard = self.mmap_write();
                if !guard.is_fully_mapped(start, end) {
                    return Err(MmError::NotMapped(range));
                }
                guard.check_split(start)?;
                guard.check_split(end)?;
                collapse(&mut guard, start, end)
            }
        }
    }
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
            let pfn = entry.pfn();
            let exclusive = entry.is_present() && !entry.is_special() && phys.folio_counts(pfn).1 == 1;
            if exclusive && slot.compare_exchange(entry, entry.mkclean().mkold()).is_ok() {
                let head = phys.meta(phys.folio_head(pfn));
                head.clear_flags(PageFlags::DIRTY);
                head.set_flags(PageFlags::LAZYFREE);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// MADV_COLLAPSE: every 2 MiB-aligned block inside a THP-capable anonymous
/// VMA whose entries are all none or present pages becomes one PMD leaf
/// holding a copy of the data. Blocks with other entries are left as they
/// are. Runs under the mmap write lock.
fn collapse(guard: &mut MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let mut block = (start + PMD_SIZE - 1) & !(PMD_SIZE - 1);
    while block + PMD_SIZE <= end {
        let vma = guard.lookup(block).expect("range checked as mapped");
        if !vma.is_anonymous() || vma.flags.contains(VmFlags::NOHUGEPAGE) {
            return Err(MmError::Invalid("MADV_COLLAPSE needs THP-capable private anonymous memory"));
        }
        if !vma.covers(block, block + PMD_SIZE) {
            block += PMD_SIZE;
            continue;
        }
        let writable = vma.flags.contains(VmFlags::WRITE);
        let accessible = vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
        let pmd = match mm.pgtable().ensure(block, Level::Pmd) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(MmError::NoMem),
            Err(EnsureError::Leaf(_)) => {
                unreachable!("no leaf sits above a PMD in anonymous memory")
            }
        };
        let table = pmd.load();
        if !table.is_table(Level::Pmd) {
            // Already a huge leaf, or nothing there at all.
            block += PMD_SIZE;
            continue;
        }
        let collapsible = mm
            .pgtable()
            .walk(block, block + PMD_SIZE, |visit| match visit {
                Visit::Slot { entry, .. } if !entry.is_none() && !entry.is_accessible() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
            .is_continue();
        if !collapsible {
            block += PMD_SIZE;
            continue;
        }
        let folio = phys.alloc_folio(9, true)?;
        phys.meta(folio)
            .set_flags(PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE);
        crate::rmap::folio_add_new_anon_rmap(mm, vma, folio, block);
        let invalidation = mm.notifiers().start(mm.id(), block, block + PMD_SIZE, Event::Clear);
        let mut gather = Gather::new();
        let _ = mm.pgtable().walk(block, block + PMD_SIZE, |visit| {
            if let Visit::Slot { slot, entry } = visit {
                if entry.is_present() {
                    if !phys.is_zero_pfn(entry.pfn()) {
                        phys.copy_frames(folio.add((slot.va() - block) / PAGE_SIZE), entry.pfn(), 1);
                    }
                    slot.store(Entry::NONE);
                    release_entry(phys, entry, &mut gather);
                }
            }
            ControlFlow::<()>::Continue(())
        });
        let flags = LeafFlags { write: writable, dirty: true, accessed: true, special: false };
        phys.map_add(folio, 1);
        let mut leaf = Entry::present(folio, flags, true);
        if !accessible {
            // The new leaf keeps the VMA's protection (`vm_page_prot`).
            leaf = leaf.mkprotnone();
        }
        pmd.store(leaf);
        invalidation.end();
        hmm_pagetable::TableStore::free_table(mm.pgtable().store(), table.pfn().0);
        gather.free_now(phys);
        block += PMD_SIZE;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

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
    fn populate_write_and_errors() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4 * 4096, Prot::RW, ANON).unwrap();
        mm.madvise(va, 4 * 4096, MadviseAdvice::PopulateWrite).unwrap();
        assert!((0..4).all(|i| leaf(&mm, va + i * 4096).1.is_write()));
        let ro = mm.mmap(0, 4096, Prot::READ, ANON).unwrap();
        assert_eq!(mm.madvise(ro, 4096, MadviseAdvice::PopulateWrite).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.madvise(va + 1, 4096, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.madvise(va, 8 << 20, MadviseAdvice::DontNeed).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(mm.read_u64(va).unwrap(), 0, "the failed DONTNEED changed nothing");
        assert_eq!(mm.madvise(va, 0, MadviseAdvice::DontNeed), Ok(()));
    }

    #[test]
    fn collapse_builds_a_thp_with_the_same_data() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        for i in (0..512).step_by(3) {
            mm.write_u64(va + i * 4096, i).unwrap();
        }
        assert_eq!(leaf(&mm, va).0, Level::Pte);
        let baseline_tables = k.phys().page_table_frames();
        let rec = record(&mm);
        mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
        assert_eq!(leaf(&mm, va).0, Level::Pmd);
        assert_eq!(k.phys().page_table_frames(), baseline_tables - 1, "the PTE table is freed");
        for i in 0..512 {
            assert_eq!(mm.read_u64(va + i * 4096).unwrap(), if i % 3 == 0 { i } else { 0 });
        }
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
