//! munmap: remove mappings, announced as UNMAP.
//!
//! Linux: `mm/vma.c` (`do_vmi_munmap`), `mm/memory.c` (`unmap_vmas`,
//! `free_pgtables`).

use hmm_types::{Event, VaRange};

use crate::error::MmError;
use crate::huge::split_huge_edge;
use crate::mm::{Mm, MmapWriteGuard};
use crate::zap::{zap_range, Gather};

impl Mm {
    /// Unmaps `[addr, addr + len)` (length rounded up to a page). Unmapping
    /// a range with nothing mapped succeeds and announces nothing.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), MmError> {
        self.check_alive()?;
        let range = VaRange::new_round_len(addr, len).map_err(MmError::from_range)?;
        let mut guard = self.mmap_write();
        let result = unmap_locked(&mut guard, range.start(), range.end());
        drop(guard);
        // `userfaultfd_unmap_complete`: UNMAP events, with no lock held.
        crate::uffd::complete_events();
        result
    }
}

/// Unmaps `[start, end)` with the write lock held: splits edge VMAs and
/// huge leaves, zaps under one UNMAP invalidation over the mapped extent,
/// then frees tables and frames after the invalidation ends.
pub(crate) fn unmap_locked(guard: &mut MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let mm = guard.mm();
    super::mseal::check_unmap_sealed(guard, start, end)?;
    guard.check_split(start)?;
    if let Err(error) = guard.check_split(end) {
        // `vms_gather_munmap_vmas` splits the first VMA at `start` before
        // it tries the end; a refused end split (an unaligned hugetlb or
        // device-DAX edge) leaves that first split in place.
        if guard.overlapping(start, end).next().is_some_and(|first| first.start < start) {
            split_huge_edge(mm, guard, start)?;
            guard.vmas_mut().split_at(start);
        }
        return Err(error);
    }
    let (Some(first), Some(last)) = (guard.overlapping(start, end).next(), guard.overlapping(start, end).last()) else {
        return Ok(());
    };
    let (extent_start, extent_end) = (start.max(first.start), end.min(last.end));
    for vma in guard.overlapping(start, end) {
        crate::uffd::defer_unmap(vma, start, end);
    }
    split_huge_edge(mm, guard, extent_start)?;
    split_huge_edge(mm, guard, extent_end)?;
    let invalidation = mm.notifiers().start(mm.id(), extent_start, extent_end, Event::Unmap);
    let mut gather = Gather::new();
    zap_range(mm, extent_start, extent_end, &mut gather)?;
    let removed = guard.vmas_mut().remove_range(start, end);
    invalidation.end();
    mm.pgtable().free_empty_tables(extent_start, extent_end);
    gather.free_now(mm.phys());
    // Backing objects (shmem) may free their pages now that nothing maps them.
    drop(removed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn partial_unmap_splits_the_vma_and_announces_the_range() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 4 * 4096, Prot::RW, ANON | MapFlags::POPULATE).unwrap();
        mm.write_u64(va + 3 * 4096, 9).unwrap();
        let rec = record(&mm);
        mm.munmap(va + 4096, 2 * 4096).unwrap();
        assert_eq!(rec.take_events(), [(Event::Unmap, va + 4096, va + 3 * 4096)]);
        assert_eq!(mm.mmap_read().len(), 2);
        assert_eq!(mm.read_u64(va + 4096).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.read_u64(va + 3 * 4096).unwrap(), 9);
    }

    #[test]
    fn unmapping_nothing_succeeds_silently() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let rec = record(&mm);
        mm.munmap(0x5000_0000, 1 << 20).unwrap();
        assert!(rec.take_events().is_empty());
    }

    #[test]
    fn bad_ranges_are_einval() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        assert_eq!(mm.munmap(0x1001, 4096).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.munmap(0x1000, 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.munmap(u64::MAX - 4095, 8192).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn partial_unmap_of_a_thp_splits_it_first() {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va + PMD_SIZE - 8, 77).unwrap();
        assert_eq!(leaf(&mm, va).0, Level::Pmd);
        let rec = record(&mm);
        mm.munmap(va, 4096).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE), (Event::Unmap, va, va + 4096)]);
        assert_eq!(leaf(&mm, va + 4096).0, Level::Pte);
        assert_eq!(mm.read_u64(va + PMD_SIZE - 8).unwrap(), 77);
    }

    #[test]
    fn a_refused_end_split_keeps_the_start_split() {
        // Linux 7.3 (the guest, `hmm fuzz --kernel vm --seed 2027`): an
        // unmap from inside an anonymous VMA to an unaligned point of the
        // hugetlb VMA after it is EINVAL, unmaps nothing, and leaves the
        // anonymous VMA split where the range began.
        let config = crate::KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 1, ..Default::default() };
        let mm = crate::Kernel::new(config).unwrap().create_mm().unwrap();
        let huge = mm.mmap(0, PMD_SIZE, Prot::RW, ANON | MapFlags::HUGETLB).unwrap();
        let anon = mm.mmap(huge - 8 * 4096, 8 * 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.write_u64(anon, 5).unwrap();
        let err = mm.munmap(anon + 4 * 4096, 5 * 4096).unwrap_err();
        assert_eq!(err.errno(), Errno::Inval);
        let bounds: Vec<(u64, u64)> = mm.mmap_read().iter().map(|v| (v.start, v.end)).collect();
        assert_eq!(bounds, [(anon, anon + 4 * 4096), (anon + 4 * 4096, huge), (huge, huge + PMD_SIZE)]);
        assert_eq!(mm.read_u64(anon).unwrap(), 5);
        // A start split that is itself refused changes nothing.
        assert_eq!(mm.munmap(huge + 4096, 4096).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.mmap_read().len(), 3);
    }

    #[test]
    fn frames_come_back() {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let baseline = k.phys().free_frames();
        let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, ANON | MapFlags::POPULATE).unwrap();
        assert!(k.phys().free_frames() < baseline - 3 * 512);
        mm.munmap(va + 4096, PMD_SIZE).unwrap();
        mm.munmap(va, 3 * PMD_SIZE).unwrap();
        assert_eq!(k.phys().free_frames(), baseline);
    }
}
