//! mremap: shrink, grow in place, or move (MAYMOVE, FIXED, DONTUNMAP).
//! Moving carries the page-table entries to the new place without copying
//! data, announced as UNMAP of the old range.
//!
//! Linux: `mm/mremap.c` (`do_mremap`, `move_vma`, `move_page_tables`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, Level, Visit};
use hmm_types::{Event, MremapFlags, VmFlags, PAGE_SIZE, PMD_SIZE, TASK_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::{Mm, MmapWriteGuard};
use crate::vma::Vma;

use super::unmap_locked;

fn page_round(len: u64) -> u64 {
    // `PAGE_ALIGN` wraps: a length within a page of 2^64 becomes 0.
    len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl Mm {
    /// Resizes or moves the mapping at `old_addr` (`mremap`); returns its
    /// address afterwards. `new_addr` is used only with `MREMAP_FIXED`.
    pub fn mremap(
        &self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
        new_addr: u64,
    ) -> Result<u64, MmError> {
        self.check_alive()?;
        if old_addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mremap address not page aligned"));
        }
        let may_move = flags.contains(MremapFlags::MAYMOVE);
        if flags.intersects(MremapFlags::FIXED | MremapFlags::DONTUNMAP) && !may_move {
            return Err(MmError::Invalid("MREMAP_FIXED and MREMAP_DONTUNMAP need MREMAP_MAYMOVE"));
        }
        let (old_len, new_len) = (page_round(old_len), page_round(new_len));
        if new_len == 0 {
            return Err(MmError::Invalid("mremap to zero length"));
        }
        if flags.contains(MremapFlags::DONTUNMAP) && old_len != new_len {
            return Err(MmError::Invalid("MREMAP_DONTUNMAP needs equal old and new lengths"));
        }
        let old_end =
            old_addr.checked_add(old_len).filter(|&e| e <= TASK_SIZE).ok_or(MmError::Invalid("range overflows"))?;
        let fixed = flags.contains(MremapFlags::FIXED);
        if fixed {
            let new_end = new_addr.checked_add(new_len).filter(|&e| e <= TASK_SIZE);
            let Some(new_end) = new_end.filter(|_| new_addr % PAGE_SIZE == 0) else {
                return Err(MmError::Invalid("MREMAP_FIXED address unaligned or out of range"));
            };
            if new_addr < old_end && old_addr < new_end {
                return Err(MmError::Invalid("MREMAP_FIXED ranges overlap"));
            }
        }

        // Moving a migration entry would hide it from the migrator.
        let mut guard = self.mmap_write_settled(old_addr, old_end);
        self.check_alive()?;
        let not_mapped = || MmError::Fault {
            addr: old_addr,
            error: crate::error::FaultError::Segv(crate::error::SegvReason::NotMapped),
        };
        let vma = guard.lookup(old_addr).cloned().ok_or_else(not_mapped)?;
        if old_len == 0 {
            // Linux duplicates a shared mapping here; not modelled.
            return Err(MmError::Invalid("mremap of zero old length"));
        }
        // Only the part that survives must lie in one VMA: a shrink first
        // cuts the tail off, wherever it reaches (`vma_to_resize`).
        let kept_end = old_addr + old_len.min(new_len);
        let moves_or_grows = fixed || new_len > old_len || flags.contains(MremapFlags::DONTUNMAP);
        if moves_or_grows && kept_end > vma.end {
            return Err(not_mapped());
        }
        if flags.contains(MremapFlags::DONTUNMAP) && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) {
            return Err(MmError::Invalid("MREMAP_DONTUNMAP of a VM_PFNMAP/VM_DONTEXPAND mapping"));
        }
        if vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) && new_len > old_len {
            return Err(MmError::Fault {
                addr: old_addr,
                error: crate::error::FaultError::Segv(crate::error::SegvReason::Protection),
            });
        }

        if fixed {
            unmap_locked(&mut guard, new_addr, new_addr + new_len)?;
            if new_len < old_len {
                unmap_locked(&mut guard, old_addr + new_len, old_end)?;
            }
            let moved_len = old_len.min(new_len);
            return move_mapping(&mut guard, &vma, old_addr, moved_len, new_addr, new_len, flags);
        }
        if new_len <= old_len && !flags.contains(MremapFlags::DONTUNMAP) {
            if new_len < old_len {
                unmap_locked(&mut guard, old_addr + new_len, old_end)?;
            }
            return Ok(old_addr);
        }
        let grow_end = old_addr + new_len;
        let in_place = !flags.contains(MremapFlags::DONTUNMAP)
            && old_end == vma.end
            && grow_end <= TASK_SIZE
            && guard.overlapping(old_end, grow_end).next().is_none();
        if in_place {
            let mut grown = vma.clone();
            grown.start = old_end;
            grown.end = grow_end;
            grown.pgoff = vma.page_index(old_end);
            guard.vmas_mut().insert(grown);
            guard.vmas_mut().merge_range(vma.start, grow_end);
            return Ok(old_addr);
        }
        if !may_move {
            return Err(MmError::NoSpace(new_len));
        }
        let target = guard.find_free(new_len, None).ok_or(MmError::NoSpace(new_len))?;
        move_mapping(&mut guard, &vma, old_addr, old_len, target, new_len, flags)
    }
}

/// Address and level of every non-none leaf in `[start, end)`.
fn collect_leaves(mm: &Mm, start: u64, end: u64) -> Vec<(u64, Level)> {
    let mut leaves = Vec::new();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if !entry.is_none() {
                leaves.push((slot.va(), slot.level()));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    leaves
}

/// Moves `[old, old + len)` of `vma` to `new` and gives the new mapping
/// `new_len` bytes. The destination is free. Tables are built before the
/// invalidation starts, so a failure changes nothing.
fn move_mapping(
    guard: &mut MmapWriteGuard<'_>,
    vma: &Vma,
    old: u64,
    len: u64,
    new: u64,
    new_len: u64,
    flags: MremapFlags,
) -> Result<u64, MmError> {
    let mm = guard.mm();
    split_huge_at(mm, old)?;
    split_huge_at(mm, old + len)?;
    // Huge leaves can keep their level only if the shift keeps them aligned.
    let shift = new.wrapping_sub(old);
    let mut leaves = collect_leaves(mm, old, old + len);
    for (va, level) in &mut leaves {
        if *level > Level::Pte && shift % level.entry_bytes() != 0 {
            // Splitting at the second page of each 2 MiB block takes it all
            // the way down to PTEs (a PUD leaf first becomes PMD leaves).
            let mut block = *va;
            while block < *va + level.entry_bytes() {
                split_huge_at(mm, block + PAGE_SIZE)?;
                block += PMD_SIZE;
            }
        }
    }
    let leaves = collect_leaves(mm, old, old + len);
    for &(va, level) in &leaves {
        match mm.pgtable().ensure(va.wrapping_add(shift), level) {
            Ok(_) => {}
            Err(EnsureError::NoMem(_)) => return Err(MmError::NoMem),
            Err(EnsureError::Leaf(_)) => unreachable!("the destination range is unmapped"),
        }
    }

    let invalidation = mm.notifiers().start(mm.id(), old, old + len, Event::Unmap);
    for &(va, level) in &leaves {
        let from = mm.pgtable().find(va);
        let entry = from.swap(Entry::NONE);
        let Ok(to) = mm.pgtable().ensure(va.wrapping_add(shift), level) else {
            unreachable!("destination tables were built above");
        };
        to.store(entry);
    }
    let mut moved = vma.clone();
    moved.start = new;
    moved.end = new + new_len;
    moved.pgoff = vma.page_index(old);
    if !flags.contains(MremapFlags::DONTUNMAP) {
        guard.vmas_mut().remove_range(old, old + len);
    }
    guard.vmas_mut().insert(moved);
    guard.vmas_mut().merge_range(new, new + new_len);
    invalidation.end();
    mm.pgtable().free_empty_tables(old, old + len);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MapFlags, MremapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn grow_in_place_and_shrink() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        assert_eq!(mm.mremap(va, 2 * 4096, 4 * 4096, MremapFlags::empty(), 0), Ok(va));
        mm.write_u64(va + 3 * 4096, 2).unwrap();
        let rec = record(&mm);
        assert_eq!(mm.mremap(va, 4 * 4096, 4096, MremapFlags::empty(), 0), Ok(va));
        assert_eq!(rec.take_events(), [(Event::Unmap, va + 4096, va + 4 * 4096)]);
        assert_eq!(mm.read_u64(va).unwrap(), 1);
        assert_eq!(mm.read_u64(va + 4096).unwrap_err().errno(), Errno::Fault);
    }

    #[test]
    fn a_blocked_grow_moves_with_maymove_and_keeps_data() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.mmap(va + 2 * 4096, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.mprotect(va + 2 * 4096, 4096, Prot::READ).unwrap();
        mm.write_u64(va + 4096, 77).unwrap();
        assert_eq!(mm.mremap(va, 2 * 4096, 8 * 4096, MremapFlags::empty(), 0).unwrap_err().errno(), Errno::NoMem);
        let rec = record(&mm);
        let moved = mm.mremap(va, 2 * 4096, 8 * 4096, MremapFlags::MAYMOVE, 0).unwrap();
        assert_ne!(moved, va);
        assert_eq!(rec.take_events(), [(Event::Unmap, va, va + 2 * 4096)]);
        assert_eq!(mm.read_u64(moved + 4096).unwrap(), 77);
        assert_eq!(mm.read_u64(moved + 7 * 4096).unwrap(), 0);
        assert_eq!(mm.read_u64(va).unwrap_err().errno(), Errno::Fault);
    }

    #[test]
    fn fixed_and_dontunmap() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 5).unwrap();
        let target = 0x5000_0000;
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED | MremapFlags::DONTUNMAP;
        assert_eq!(mm.mremap(va, 4096, 4096, flags, target), Ok(target));
        assert_eq!(mm.read_u64(target).unwrap(), 5);
        assert_eq!(mm.read_u64(va).unwrap(), 0, "DONTUNMAP leaves the old range mapped and empty");
    }

    #[test]
    fn thp_moves_whole_when_alignment_allows() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va + 8, 6).unwrap();
        let target = 0x6000_0000;
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(mm.mremap(va, PMD_SIZE, PMD_SIZE, flags, target), Ok(target));
        assert_eq!(leaf(&mm, target).0, Level::Pmd);
        assert_eq!(mm.read_u64(target + 8).unwrap(), 6);
        let odd = 0x7000_1000;
        assert_eq!(mm.mremap(target, PMD_SIZE, PMD_SIZE, flags, odd), Ok(odd));
        assert_eq!(leaf(&mm, odd).0, Level::Pte);
        assert_eq!(mm.read_u64(odd + 8).unwrap(), 6);
    }

    #[test]
    fn bad_arguments() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 2 * 4096, Prot::RW, ANON).unwrap();
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mremap(va + 1, 4096, 4096, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::FIXED, 0x5000_0000)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 0, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 8192, MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP, 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(0x7000_0000, 4096, 8192, MremapFlags::MAYMOVE, 0)), Errno::Fault);
        assert_eq!(errno(mm.mremap(va, 3 * 4096, 4 * 4096, MremapFlags::MAYMOVE, 0)), Errno::Fault);
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(errno(mm.mremap(va, 2 * 4096, 2 * 4096, flags, va + 4096)), Errno::Inval);
        assert_eq!(mm.mmap_read().len(), 1);
    }
}
