//! mremap: shrink, grow in place, or move (MAYMOVE, FIXED, DONTUNMAP).
//! Moving carries the page-table entries to the new place without copying
//! data, announced as UNMAP of the old range.
//!
//! The call's flow (resize in place, or choose a destination) and the
//! zero-length duplication of a shared mapping are here; beside them
//! `checks` the argument and per-VMA refusals, `move_vma` the moves (one
//! VMA, or every VMA of a range with `MREMAP_FIXED` and equal lengths,
//! Linux 6.17+).
//!
//! Linux: `mm/mremap.c` (`do_mremap`, `move_vma`, `move_page_tables`).

use hmm_types::{MremapFlags, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::error::{FaultError, MmError, SegvReason};
use crate::mm::{Mm, MmapWriteGuard};
use crate::vma::{Vma, VmaBacking, VmaTree};

use super::unmap_locked;

mod checks;
mod move_vma;

use checks::{align_hugetlb, check_params, check_vma};
use move_vma::{move_mapping, remap_move};

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
        // `mremap_to` looks the VMA up again: the destination's unmap may
        // have taken the page it duplicates (EFAULT; Linux 6.18 on the
        // host, found by hmm fuzz).
        if guard.lookup(old_addr).is_none() {
            return Err(not_mapped(old_addr));
        }
        new_addr
    } else if flags.contains(MremapFlags::MAYMOVE) {
        place(guard, vma, old_addr, new_len, None)?
    } else {
        return Err(MmError::NoSpace(new_len));
    };
    // `prep_move_vma`: the driver is asked to split at the (empty) source
    // range, so device-DAX refuses an address off its alignment, after
    // the destination was unmapped (7.3.4 guest, found by hmm fuzz).
    guard.check_split(old_addr)?;
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

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, Event, MapFlags, MremapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, record};
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

    #[test]
    fn dontunmap_without_fixed_takes_new_addr_as_a_hint() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let hint = 0x2000_0000;
        let flags = MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP;
        assert_eq!(mm.mremap(va, 4096, 4096, flags, hint), Ok(hint));
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
}
