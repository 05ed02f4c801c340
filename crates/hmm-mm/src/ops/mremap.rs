//! mremap: shrink, grow in place, or move (MAYMOVE, FIXED, DONTUNMAP).
//! Moving carries the page-table entries to the new place without copying
//! data, announced as UNMAP of the old range.
//!
//! Linux: `mm/mremap.c` (`do_mremap`, `move_vma`, `move_page_tables`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, Level, Visit};
use hmm_types::{Event, MremapFlags, PageSize, VmFlags, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, TASK_SIZE};

use crate::error::{FaultError, MmError, SegvReason};
use crate::huge::split_huge_at;
use crate::mm::{Mm, MmapWriteGuard};
use crate::rmap::AnonVmaSlot;
use crate::vma::{Vma, VmaBacking, VmaTree};

use super::unmap_locked;

fn page_round(len: u64) -> u64 {
    // `PAGE_ALIGN` wraps: a length within a page of 2^64 becomes 0.
    len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl Mm {
    /// Resizes or moves the mapping at `old_addr` (`mremap`); returns its
    /// address afterwards. `new_addr` is used only with `MREMAP_FIXED` (or
    /// `MREMAP_DONTUNMAP`, where it is a hint that is not modelled).
    /// `MREMAP_FIXED` with equal lengths moves every VMA of the range,
    /// gaps kept (Linux 6.17+, `remap_move`).
    pub fn mremap(
        &self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
        new_addr: u64,
    ) -> Result<u64, MmError> {
        let result = self.mremap_locking(old_addr, old_len, new_len, flags, new_addr);
        // `mremap_userfaultfd_complete`, `userfaultfd_unmap_complete`.
        crate::uffd::complete_events();
        result
    }

    fn mremap_locking(
        &self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
        new_addr: u64,
    ) -> Result<u64, MmError> {
        self.check_alive()?;
        check_params(old_addr, old_len, new_len, flags, new_addr)?;
        let (old_len, new_len) = (page_round(old_len), page_round(new_len));
        if old_addr >= TASK_SIZE {
            // Nothing is mapped there.
            return Err(not_mapped(old_addr));
        }
        let fixed = flags.contains(MremapFlags::FIXED);

        // Moving a migration entry would hide it from the migrator.
        let mut guard = self.mmap_write_settled(old_addr, old_addr.saturating_add(old_len).min(TASK_SIZE));
        self.check_alive()?;
        let (old_len, new_len) = match guard.lookup(old_addr).map(|vma| &vma.backing) {
            Some(VmaBacking::Hugetlb(file)) => align_hugetlb(file.page_size(), old_addr, old_len, new_len, new_addr)?,
            _ => (old_len, new_len),
        };
        if fixed && old_len == new_len {
            return remap_move(&mut guard, old_addr, old_len, new_addr, flags);
        }
        let vma = guard.lookup(old_addr).cloned().ok_or_else(|| not_mapped(old_addr))?;
        super::mseal::check_sealed(&vma, "mremap of a sealed VMA")?;
        if old_len == 0 {
            return duplicate_shared(&mut guard, &vma, old_addr, new_len, flags, new_addr);
        }
        // The old length is unchecked so far: a shrink whose tail wraps or
        // passes the address space is EINVAL when the tail is unmapped
        // (`do_vmi_munmap`), before any VMA boundary is looked at; a move
        // or growth of it is EFAULT (not one VMA).
        let Some(old_end) = old_addr.checked_add(old_len).filter(|&e| e <= TASK_SIZE) else {
            // A move looks at the VMA first: a kept part leaving it is
            // EFAULT (Linux 6.18 on the host, found by hmm fuzz --seed 2).
            if fixed && old_addr.saturating_add(new_len.min(old_len)) > vma.end {
                return Err(not_mapped(old_addr));
            }
            if fixed && new_len < old_len {
                // `mremap_to` unmaps the destination first, looks the VMA
                // up again (EFAULT if that unmapped it), and only then
                // fails to cut the tail (Linux 6.18 on the host, found by
                // hmm fuzz).
                unmap_locked(&mut guard, new_addr, new_addr + new_len)?;
                if guard.lookup(old_addr).is_none() {
                    return Err(not_mapped(old_addr));
                }
            }
            if new_len < old_len {
                return Err(MmError::Invalid("mremap shrink of a range past the address space"));
            }
            return Err(not_mapped(old_addr));
        };
        // Only the part that survives must lie in one VMA: a shrink first
        // cuts the tail off, wherever it reaches (`vma_to_resize`). Linux
        // 6.18 checks this before unmapping anything.
        let kept_end = old_addr + old_len.min(new_len);
        let moves_or_grows = fixed || new_len > old_len || flags.contains(MremapFlags::DONTUNMAP);
        if moves_or_grows && kept_end > vma.end {
            return Err(not_mapped(old_addr));
        }
        check_vma(&vma, old_addr, new_len > old_len, flags)?;

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
        // Growing in place past the address space is ENOMEM, as on Linux.
        let grow_end = old_addr.checked_add(new_len).filter(|&e| e <= TASK_SIZE);
        let in_place = grow_end.filter(|&grow_end| {
            !flags.contains(MremapFlags::DONTUNMAP)
                && old_end == vma.end
                && guard.overlapping(old_end, grow_end).next().is_none()
        });
        if let Some(grow_end) = in_place {
            let mut grown = vma.clone();
            grown.start = old_end;
            grown.end = grow_end;
            grown.pgoff = vma.page_index(old_end);
            guard.vmas_mut().insert(grown);
            guard.vmas_mut().merge_range(vma.start, grow_end);
            return Ok(old_addr);
        }
        if !flags.contains(MremapFlags::MAYMOVE) {
            return Err(MmError::NoSpace(new_len));
        }
        // With MREMAP_DONTUNMAP (and no MREMAP_FIXED) `new_addr` is a hint
        // to get_unmapped_area, as mmap's (`mremap_to`; Linux 6.18 on the
        // host places the copy there when it is free).
        let hint = flags.contains(MremapFlags::DONTUNMAP).then_some(new_addr);
        let target = place(&guard, &vma, old_addr, new_len, hint)?;
        move_mapping(&mut guard, &vma, old_addr, old_len, target, new_len, flags)
    }
}

/// Where a moved (or duplicated) piece of `vma` from `old_addr` goes
/// without MREMAP_FIXED: `get_unmapped_area` for the VMA's object at the
/// piece's file offset (`vrm_set_new_addr`).
fn place(tree: &VmaTree, vma: &Vma, old_addr: u64, new_len: u64, hint: Option<u64>) -> Result<u64, MmError> {
    let granule = match &vma.backing {
        VmaBacking::Hugetlb(file) => file.page_size().bytes(),
        VmaBacking::DevDax(dev) => dev.align().bytes(),
        _ => PAGE_SIZE,
    };
    super::mmap::get_unmapped_area(tree, new_len, hint, &vma.backing, vma.page_index(old_addr), granule)
        .ok_or(MmError::NoSpace(new_len))
}

/// A hugetlb VMA (`align_hugetlb`): both lengths round up to the huge
/// page, both addresses must be aligned to it (`new_addr` even without
/// MREMAP_FIXED) and growing is refused (the reservation cannot be split);
/// each is `EINVAL`. A length rounded past the address space is `EINVAL`
/// too, as no huge page fits there.
fn align_hugetlb(
    size: PageSize,
    old_addr: u64,
    old_len: u64,
    new_len: u64,
    new_addr: u64,
) -> Result<(u64, u64), MmError> {
    let huge = size.bytes();
    let round = |len: u64| len.checked_next_multiple_of(huge).filter(|&len| len <= TASK_SIZE);
    let (Some(old_len), Some(new_len)) = (round(old_len), round(new_len)) else {
        return Err(MmError::Invalid("mremap length past the address space"));
    };
    if old_addr % huge != 0 || new_addr % huge != 0 {
        return Err(MmError::Invalid("mremap of hugetlb memory at an address not huge-page aligned"));
    }
    if new_len > old_len {
        return Err(MmError::Invalid("mremap cannot grow hugetlb memory"));
    }
    Ok((old_len, new_len))
}

/// The argument checks before any lookup, in Linux's order
/// (`check_mremap_params`); all are `EINVAL`. Linux 6.18 on the host: an
/// unknown flag bit, a new length rounding to zero or past `TASK_SIZE`
/// (lengths near 2^64 included), and an old range ending past
/// `TASK_SIZE` are each EINVAL.
fn check_params(old_addr: u64, old_len: u64, new_len: u64, flags: MremapFlags, new_addr: u64) -> Result<(), MmError> {
    if MremapFlags::from_bits(flags.bits()).is_none() {
        return Err(MmError::Invalid("unknown MREMAP_* flag"));
    }
    if old_addr % PAGE_SIZE != 0 {
        return Err(MmError::Invalid("mremap address not page aligned"));
    }
    let (old_len, new_len) = (page_round(old_len), page_round(new_len));
    if new_len == 0 {
        return Err(MmError::Invalid("mremap to zero length"));
    }
    if new_len > TASK_SIZE {
        return Err(MmError::Invalid("mremap new length past the address space"));
    }
    if flags.intersects(MremapFlags::FIXED | MremapFlags::DONTUNMAP) {
        if new_addr > TASK_SIZE - new_len {
            return Err(MmError::Invalid("mremap new range past the address space"));
        }
        if new_addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mremap new address not page aligned"));
        }
        if !flags.contains(MremapFlags::MAYMOVE) {
            return Err(MmError::Invalid("MREMAP_FIXED and MREMAP_DONTUNMAP need MREMAP_MAYMOVE"));
        }
        if flags.contains(MremapFlags::DONTUNMAP) && old_len != new_len {
            return Err(MmError::Invalid("MREMAP_DONTUNMAP needs equal old and new lengths"));
        }
        // The ranges must not overlap, with DONTUNMAP alone too (it names
        // the new address; Linux 6.18 on the host: EINVAL). Linux compares
        // the ends as they are: an old range that wraps past 2^64 ends
        // "before" the new one (no overlap; then EFAULT where nothing is
        // mapped, EINVAL when a shrink unmaps the tail).
        if new_addr < old_addr.wrapping_add(old_len) && old_addr < new_addr + new_len {
            return Err(MmError::Invalid("mremap old and new ranges overlap"));
        }
    }
    Ok(())
}

/// `EFAULT`: no VMA (or not one VMA) where the call needs one.
fn not_mapped(addr: u64) -> MmError {
    MmError::Fault { addr, error: FaultError::Segv(SegvReason::NotMapped) }
}

/// `old_len == 0`: Linux's "duplicate a shared mapping" special case. A
/// private mapping is EINVAL; a shared one gets a second VMA of `new_len`
/// bytes over the same object from the same offset, at `new_addr` with
/// `MREMAP_FIXED` or at a free address with `MREMAP_MAYMOVE` (without
/// either it cannot grow in place: ENOMEM). The original stays as it is.
fn duplicate_shared(
    guard: &mut MmapWriteGuard<'_>,
    vma: &Vma,
    old_addr: u64,
    new_len: u64,
    flags: MremapFlags,
    new_addr: u64,
) -> Result<u64, MmError> {
    if !vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
        return Err(MmError::Invalid("mremap of zero old length of a private mapping"));
    }
    check_vma(vma, old_addr, true, flags)?;
    let target = if flags.contains(MremapFlags::FIXED) {
        unmap_locked(guard, new_addr, new_addr + new_len)?;
        new_addr
    } else if flags.contains(MremapFlags::MAYMOVE) {
        place(guard, vma, old_addr, new_len, None)?
    } else {
        return Err(MmError::NoSpace(new_len));
    };
    let mut copy = vma.clone();
    copy.pgoff = vma.page_index(old_addr);
    copy.start = target;
    copy.end = target + new_len;
    // The copy is a new VMA no userfaultfd registered.
    copy.uffd = None;
    copy.flags.remove(crate::uffd::UFFD_VM_FLAGS);
    copy.anon_vma = Default::default();
    if let VmaBacking::File(inode) = &copy.backing {
        inode.add_mapper(guard.mm().weak());
    }
    guard.vmas_mut().insert(copy);
    guard.vmas_mut().merge_range(target, target + new_len);
    Ok(target)
}

/// The per-VMA refusals of a move or resize (`check_prep_vma`).
fn check_vma(vma: &Vma, addr: u64, grows: bool, flags: MremapFlags) -> Result<(), MmError> {
    super::mseal::check_sealed(vma, "mremap of a sealed VMA")?;
    if flags.contains(MremapFlags::DONTUNMAP) && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) {
        return Err(MmError::Invalid("MREMAP_DONTUNMAP of a VM_PFNMAP/VM_DONTEXPAND mapping"));
    }
    if grows && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) {
        return Err(MmError::Fault { addr, error: FaultError::Segv(SegvReason::Protection) });
    }
    Ok(())
}

/// True when a VMA may be one of several moved by one call
/// (`vma_multi_allowed`): not userfaultfd-armed, and no file whose mapping
/// placement is its own (device-DAX aligns its mappings).
fn multi_allowed(vma: &Vma) -> bool {
    !vma.flags.intersects(crate::uffd::UFFD_VM_FLAGS) && !matches!(vma.backing, VmaBacking::DevDax(_))
}

/// `MREMAP_FIXED` with `old_len == new_len`: moves the part of every VMA
/// of `[addr, addr + len)` so that the destination has the source's
/// layout, gaps included (`remap_move`). Linux 6.18 on the host: a gap at
/// the start is EFAULT; destination addresses facing source gaps are not
/// unmapped; pieces moved before an error stay moved.
fn remap_move(
    guard: &mut MmapWriteGuard<'_>,
    addr: u64,
    len: u64,
    new_addr: u64,
    flags: MremapFlags,
) -> Result<u64, MmError> {
    let end = addr + len;
    let vmas: Vec<Vma> = guard.overlapping(addr, end).cloned().collect();
    match vmas.first() {
        Some(first) if first.start <= addr => {}
        _ => return Err(not_mapped(addr)),
    }
    for (i, vma) in vmas.iter().enumerate() {
        let piece_start = vma.start.max(addr);
        let piece_len = vma.end.min(end) - piece_start;
        if !multi_allowed(vma) && (i > 0 || vma.end < end) {
            return Err(not_mapped(piece_start));
        }
        // The source pieces are untouched by earlier moves (the ranges do
        // not overlap), but merging may have changed the VMA around them.
        let current = guard.lookup(piece_start).cloned().expect("source pieces stay mapped");
        check_vma(&current, piece_start, false, flags)?;
        let dest = new_addr + (piece_start - addr);
        unmap_locked(guard, dest, dest + piece_len)?;
        move_mapping(guard, &current, piece_start, piece_len, dest, piece_len, flags)?;
    }
    Ok(new_addr)
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

    // `mremap_userfaultfd_prep`: with EVENT_REMAP the moved range stays
    // registered (a REMAP is prepared); else `userfaultfd_reset_ctx`.
    let keeps_uffd = crate::uffd::prepare_remap(vma, old, new, len);
    let invalidation = mm.notifiers().start(mm.id(), old, old + len, Event::Unmap);
    for &(va, level) in &leaves {
        let from = mm.pgtable().find(va);
        let entry = from.swap(Entry::NONE);
        let Ok(to) = mm.pgtable().ensure(va.wrapping_add(shift), level) else {
            unreachable!("destination tables were built above");
        };
        // A range that is no longer registered loses the uffd-wp bits
        // (`move_ptes`).
        // Its uffd-wp markers are dropped.
        if keeps_uffd || !entry.is_uffd_wp_marker() {
            to.store(if keeps_uffd { entry } else { entry.clear_uffd_wp() });
        }
    }
    let mut moved = vma.clone();
    if !keeps_uffd {
        moved.uffd = None;
        moved.flags.remove(crate::uffd::UFFD_VM_FLAGS);
    }
    moved.start = new;
    moved.end = new + new_len;
    // Anonymous memory that never had a page takes the offset of its new
    // address, so it merges like a fresh mapping; otherwise the offset
    // stays with the pages (`copy_vma`). Linux 6.18 on the host: a written
    // VMA moved next to another stays apart, an unwritten one merges.
    moved.pgoff =
        if vma.is_anonymous() && vma.anon_vma.get().is_none() { new >> PAGE_SHIFT } else { vma.page_index(old) };
    if !flags.contains(MremapFlags::DONTUNMAP) {
        // The old range is unmapped: UNMAP after the REMAP.
        crate::uffd::defer_unmap(vma, old, old + len);
        guard.vmas_mut().remove_range(old, old + len);
    } else if vma.start == old && vma.end == old + len {
        // The emptied source keeps no anon_vma (`dontunmap_complete`).
        for source in guard.vmas_mut().split_range_mut(old, old + len) {
            source.anon_vma = AnonVmaSlot::default();
        }
    }
    crate::uffd::rwp::disarm_unregistered(mm, vma.flags, moved.flags, new, new + len);
    guard.vmas_mut().insert(moved);
    guard.vmas_mut().merge_range(new, new + new_len);
    invalidation.end();
    mm.pgtable().free_empty_tables(old, old + len);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MapFlags, MremapFlags, Prot, VmFlags, PMD_SIZE, TASK_SIZE};

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

    /// Linux 6.18 on the host (found by hmm fuzz --seed 2): MREMAP_DONTUNMAP
    /// without MREMAP_FIXED takes `new_addr` as a hint, and a free hint is
    /// where the copy goes.
    #[test]
    fn dontunmap_without_fixed_takes_new_addr_as_a_hint() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let hint = 0x2000_0000;
        let flags = MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP;
        assert_eq!(mm.mremap(va, 4096, 4096, flags, hint), Ok(hint));
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
    fn a_move_of_private_anonymous_memory_to_a_multiple_of_2m_is_thp_aligned() {
        // As Linux 6.18 on the host: the new place of a 4 KiB-misaligned
        // mapping grown to 4 MiB is 2 MiB aligned (its offset counts as 0),
        // grown to 4 MiB + 4 KiB or shared it is not.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::FIXED;
        for (flags, new_len, aligned) in [
            (ANON | MapFlags::FIXED, 2 * PMD_SIZE, true),
            (ANON | MapFlags::FIXED, 2 * PMD_SIZE + 4096, false),
            (shared, 2 * PMD_SIZE, false),
        ] {
            let va = mm.mmap(0x3000_1000, 2 * 4096, Prot::RW, flags).unwrap();
            mm.mmap(va + 2 * 4096, 4096, Prot::NONE, ANON | MapFlags::FIXED).unwrap();
            let moved = mm.mremap(va, 2 * 4096, new_len, MremapFlags::MAYMOVE, 0).unwrap();
            assert_eq!(moved % PMD_SIZE == 0, aligned, "{flags:?} {new_len:#x}");
            mm.munmap(moved, new_len).unwrap();
        }
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

    #[test]
    fn linux_rejects_unknown_flags_and_huge_lengths_with_einval() {
        // Linux 6.18 on the host: flags 8 or 16|MAYMOVE = EINVAL; new_len
        // -1, -4096 or 2^47 = EINVAL (no panic, nothing changed); new_len
        // TASK_SIZE with MAYMOVE = ENOMEM (no room); growing in place past
        // TASK_SIZE = ENOMEM; an old range ending past TASK_SIZE = EINVAL;
        // an address past TASK_SIZE = EFAULT (no VMA there).
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 4 * 4096, Prot::RW, ANON).unwrap();
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::from_bits_retain(8), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::from_bits_retain(16 | 1), 0)), Errno::Inval);
        for new_len in [u64::MAX, u64::MAX - 4095, u64::MAX - 8191, 1 << 47, TASK_SIZE + 1] {
            for flags in [MremapFlags::empty(), MremapFlags::MAYMOVE] {
                assert_eq!(errno(mm.mremap(va, 4096, new_len, flags, 0)), Errno::Inval, "{new_len:#x}");
            }
        }
        assert_eq!(errno(mm.mremap(va, 4096, TASK_SIZE, MremapFlags::MAYMOVE, 0)), Errno::NoMem);
        assert_eq!(errno(mm.mremap(va, 4 * 4096, TASK_SIZE - va + 4096, MremapFlags::empty(), 0)), Errno::NoMem);
        assert_eq!(errno(mm.mremap(va, TASK_SIZE - va + 4096, 4096, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(u64::MAX - 4095, 4096, 4096, MremapFlags::empty(), 0)), Errno::Fault);
        let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(errno(mm.mremap(va, 4096, 2 * 4096, fixed, TASK_SIZE - 4096)), Errno::Inval);
        assert_eq!(mm.mremap(va, 4096, 2 * 4096, fixed, TASK_SIZE - 2 * 4096), Ok(TASK_SIZE - 2 * 4096));
    }

    #[test]
    fn an_old_length_past_the_address_space_is_efault_where_nothing_is_mapped() {
        // Regression (scenarios/found), Linux 6.18: without a new address
        // the old length is not range-checked up front, so an unmapped
        // address answers EFAULT (no VMA), not EINVAL.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let err = mm.mremap(0x3000_0000, u64::MAX - 4095, 4096, MremapFlags::empty(), 0).unwrap_err();
        assert_eq!(err.errno(), Errno::Fault);
        // With MREMAP_FIXED too: the wrapped old end is "below" the new
        // range, so they do not overlap.
        let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        let err = mm.mremap(0x3000_0000, u64::MAX - 4095, 4096, fixed, 0x3000_0000).unwrap_err();
        assert_eq!(err.errno(), Errno::Fault);
        // MREMAP_DONTUNMAP without FIXED: overlapping ranges are EINVAL
        // before the old address is looked up.
        let dontunmap = MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP;
        let err = mm.mremap(0x301f_d000, 0x9000, 0x9000, dontunmap, 0x301f_8000).unwrap_err();
        assert_eq!(err.errno(), Errno::Inval);
        // A shrink of a mapped address is EINVAL even when the kept part
        // is longer than the VMA.
        let va = mm.mmap(0x3002_8000, 0xa000, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let err = mm.mremap(va, u64::MAX - 4095, 0xb000, MremapFlags::empty(), 0).unwrap_err();
        assert_eq!(err.errno(), Errno::Inval);
    }

    #[test]
    fn zero_old_length_duplicates_a_shared_mapping() {
        // Linux: old_len 0 of a shared mapping makes a second mapping of
        // the same pages (MAYMOVE), ENOMEM without MAYMOVE (it cannot grow
        // in place); a private mapping is EINVAL.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        let shared = mm.mmap(0x3000_0000, 2 * 4096, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
        mm.write_u64(shared + 4096, 77).unwrap();
        assert_eq!(errno(mm.mremap(shared, 0, 4096, MremapFlags::empty(), 0)), Errno::NoMem);
        let copy = mm.mremap(shared + 4096, 0, 4096, MremapFlags::MAYMOVE, 0).unwrap();
        assert_ne!(copy, shared + 4096);
        assert_eq!(mm.read_u64(copy), Ok(77), "the copy maps the same page");
        mm.write_u64(copy + 8, 5).unwrap();
        assert_eq!(mm.read_u64(shared + 4096 + 8), Ok(5), "and writes through to it");
        assert_eq!(mm.read_u64(shared + 4096), Ok(77), "the original stays mapped");
        let private = mm.mmap(0x4000_0000, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(errno(mm.mremap(private, 0, 4096, MremapFlags::MAYMOVE, 0)), Errno::Inval);
    }

    /// `(start, end, writable)` of every VMA, relative to `base` in pages.
    fn layout(mm: &crate::Mm, base: u64) -> Vec<(u64, u64, bool)> {
        let page = |va: u64| (va - base) / 4096;
        mm.mmap_read().iter().map(|v| (page(v.start), page(v.end), v.flags.contains(VmFlags::WRITE))).collect()
    }

    /// The source layout of the host probe: [0,2) RW, [3,5) R, [5,6) RW,
    /// [8,9) RW (pages 0, 5 and 8 written), and at the destination (page
    /// 100) occupants in the source's gaps: [102,103) R and [106,108) RX.
    fn multi_source() -> (std::sync::Arc<crate::Mm>, u64) {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let base = mm.mmap(0x3000_0000, 200 * 4096, Prot::RW, ANON).unwrap();
        mm.munmap(base, 200 * 4096).unwrap();
        let p = |n: u64| base + n * 4096;
        let map = |n: u64, pages: u64, prot: Prot| mm.mmap(p(n), pages * 4096, prot, ANON | MapFlags::FIXED).unwrap();
        map(0, 2, Prot::RW);
        map(3, 2, Prot::READ);
        map(5, 1, Prot::RW);
        map(8, 1, Prot::RW);
        for n in [0, 5, 8] {
            mm.write_u64(p(n), n + 1).unwrap();
        }
        map(102, 1, Prot::READ);
        map(106, 2, Prot::READ | Prot::EXEC);
        (mm, base)
    }

    #[test]
    fn linux_moves_every_vma_of_a_fixed_equal_length_range_keeping_gaps() {
        // Linux 6.18 on the host, mremap([0,9), 9 pages, FIXED) to page
        // 100: [100,102) rw, [102,105) r (the moved never-faulted [3,5)
        // merges with the occupant at 102, which is not unmapped since it
        // faces a source gap), [105,106) rw, [106,108) r-x kept, [108,109)
        // rw; the data moved along.
        let (mm, base) = multi_source();
        let p = |n: u64| base + n * 4096;
        let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(mm.mremap(p(0), 9 * 4096, 9 * 4096, fixed, p(100)), Ok(p(100)));
        let layout_now = layout(&mm, base);
        assert_eq!(&layout_now[..2], [(100, 102, true), (102, 105, false)]);
        assert_eq!(
            layout_now.iter().map(|v| (v.0, v.1)).collect::<Vec<_>>()[2..],
            [(105, 106), (106, 108), (108, 109)]
        );
        assert_eq!([mm.read_u64(p(100)), mm.read_u64(p(105)), mm.read_u64(p(108))], [Ok(1), Ok(6), Ok(9)]);
        // Starting in a gap: EFAULT, nothing moves.
        assert_eq!(mm.mremap(p(99), 9 * 4096, 9 * 4096, fixed, p(150)).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.mmap_read().len(), layout_now.len());
    }

    #[test]
    fn linux_dontunmap_moves_several_vmas_and_leaves_them_empty() {
        // Linux 6.18 on the host: the same move with DONTUNMAP succeeds;
        // the source VMAs stay with their layout and read zero.
        let (mm, base) = multi_source();
        let p = |n: u64| base + n * 4096;
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED | MremapFlags::DONTUNMAP;
        assert_eq!(mm.mremap(p(0), 9 * 4096, 9 * 4096, flags, p(100)), Ok(p(100)));
        let source: Vec<_> = layout(&mm, base).into_iter().filter(|v| v.0 < 100).collect();
        assert_eq!(source, [(0, 2, true), (3, 5, false), (5, 6, true), (8, 9, true)]);
        assert_eq!([mm.read_u64(p(0)), mm.read_u64(p(5))], [Ok(0), Ok(0)]);
        assert_eq!([mm.read_u64(p(100)), mm.read_u64(p(108))], [Ok(1), Ok(9)]);
    }

    #[test]
    fn linux_moves_only_with_fixed_and_equal_lengths() {
        // Linux 6.18 on the host over the multi-VMA source: FIXED growing
        // or shrinking to 5 pages = EFAULT with nothing unmapped; FIXED
        // shrinking to 1 page moves [0,1) and unmaps [1,9) whatever is
        // there; MAYMOVE without FIXED at equal length is a no-op
        // returning the address; a trailing gap is fine for the move.
        let (mm, base) = multi_source();
        let p = |n: u64| base + n * 4096;
        let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        let before = layout(&mm, base);
        for new_pages in [12, 5] {
            let r = mm.mremap(p(0), 9 * 4096, new_pages * 4096, fixed, p(100));
            assert_eq!(r.unwrap_err().errno(), Errno::Fault);
            assert_eq!(layout(&mm, base), before);
        }
        assert_eq!(mm.mremap(p(0), 9 * 4096, 9 * 4096, MremapFlags::MAYMOVE, 0), Ok(p(0)));
        assert_eq!(layout(&mm, base), before);
        assert_eq!(mm.mremap(p(0), 7 * 4096, 7 * 4096, fixed, p(100)), Ok(p(100)));
        assert_eq!(layout(&mm, base)[0], (8, 9, true), "[8,9) lay past the range");
        let (mm, base) = multi_source();
        let p = |n: u64| base + n * 4096;
        assert_eq!(mm.mremap(p(0), 9 * 4096, 4096, fixed, p(100)), Ok(p(100)));
        let pages: Vec<_> = layout(&mm, base).into_iter().map(|v| (v.0, v.1)).collect();
        assert_eq!(pages, [(100, 101), (102, 103), (106, 108)]);
    }
}
