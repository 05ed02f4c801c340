//! mremap's moves: the page-table entries of a range carried to a free
//! destination under one UNMAP invalidation (`move_vma`,
//! `move_page_tables`), and the move of every VMA of a range that
//! `MREMAP_FIXED` with equal lengths makes (`remap_move`, Linux 6.17+).
//!
//! Linux: `mm/mremap.c`.

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, Level, SwapKind, Visit};
use hmm_types::{Event, MremapFlags, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_edge;
use crate::mm::{Mm, MmapWriteGuard};
use crate::rmap::AnonVmaSlot;
use crate::vma::{Vma, VmaBacking};

use super::{check_vma, not_mapped};
use crate::ops::unmap_locked;

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
pub(super) fn remap_move(
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
pub(super) fn move_mapping(
    guard: &mut MmapWriteGuard<'_>,
    vma: &Vma,
    old: u64,
    len: u64,
    new: u64,
    new_len: u64,
    flags: MremapFlags,
) -> Result<u64, MmError> {
    // `move_vma`: a driver that refuses the cuts (device-DAX off its
    // alignment) refuses the move before anything moves.
    guard.check_split(old)?;
    guard.check_split(old + len)?;
    let mm = guard.mm();
    // A DAX huge zero PMD cut here goes whole, as in munmap and mprotect.
    split_huge_edge(mm, guard, old)?;
    split_huge_edge(mm, guard, old + len)?;
    // Huge leaves can keep their level only if the shift keeps them aligned.
    let shift = new.wrapping_sub(old);
    let mut leaves = collect_leaves(mm, old, old + len);
    for (va, level) in &mut leaves {
        if *level > Level::Pte && shift % level.entry_bytes() != 0 {
            // Splitting at the second page of each 2 MiB block takes it all
            // the way down to PTEs (a PUD leaf first becomes PMD leaves).
            let mut block = *va;
            while block < *va + level.entry_bytes() {
                split_huge_edge(mm, guard, block + PAGE_SIZE)?;
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
        // A range that is no longer registered loses the uffd bits, of
        // swap entries too (`move_ptes`: `pte_swp_clear_uffd_wp`).
        // Its uffd-wp markers are dropped.
        if keeps_uffd || !entry.is_uffd_wp_marker() {
            let cleared = if entry.swap_kind() == Some(SwapKind::Swap) {
                entry.swp_clear_uffd_wp()
            } else {
                entry.clear_uffd_wp()
            };
            to.store(if keeps_uffd { entry } else { cleared });
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
    use hmm_types::{Errno, MapFlags, MremapFlags, Prot, VmFlags, PMD_SIZE};

    use crate::testing::{kernel, leaf};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

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
