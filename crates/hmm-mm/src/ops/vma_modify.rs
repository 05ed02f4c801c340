//! Giving part of a VMA new flags, as mprotect, mseal and madvise do: the
//! piece merges with the neighbour on its side, or the VMA is split at the
//! piece's edges, the start first. A split the mapping refuses (a hugetlb
//! or device-DAX VMA cut off its page size) ends the change with `EINVAL`,
//! and a start split made before the end one was refused stays.
//!
//! Linux: `mm/vma.c` (`vma_modify`, `vma_merge_existing_range`,
//! `split_vma`).

use hmm_types::VmFlags;

use crate::error::MmError;
use crate::huge::split_huge_edge;
use crate::mm::MmapWriteGuard;
use crate::vma::Vma;

/// A flag change the VMA's splits refused.
#[derive(Debug)]
pub(crate) struct Refused {
    /// A start split that succeeded before the end split failed.
    pub(crate) split_made: Option<u64>,
    pub(crate) error: MmError,
}

impl From<MmError> for Refused {
    fn from(error: MmError) -> Self {
        Self { split_made: None, error }
    }
}

impl Refused {
    /// Makes the split that stays, then hands back the error.
    pub(crate) fn settle(self, guard: &mut MmapWriteGuard<'_>) -> MmError {
        if let Some(at) = self.split_made {
            if let Err(error) = split_huge_edge(guard.mm(), guard, at) {
                return error;
            }
            guard.vmas_mut().split_at(at);
        }
        self.error
    }
}

/// Checks the splits that giving `[piece_start, piece_end)` of `vma` the
/// flags `new_flags` needs. A piece at one end of the VMA that merges with
/// the neighbour there moves the boundary instead
/// (`vma_merge_existing_range`), so the driver is never asked to split
/// (7.3.4 guest: a device-DAX VMA cut off its alignment that way).
pub(crate) fn check_splits(
    guard: &MmapWriteGuard<'_>,
    vma: &Vma,
    piece_start: u64,
    piece_end: u64,
    new_flags: VmFlags,
) -> Result<(), Refused> {
    let cuts_start = vma.start < piece_start;
    let cuts_end = piece_end < vma.end;
    if !cuts_start && !cuts_end {
        return Ok(());
    }
    let mut piece = vma.clone();
    (piece.start, piece.end, piece.pgoff, piece.flags) =
        (piece_start, piece_end, vma.page_index(piece_start), new_flags);
    let merges = if cuts_start {
        // Only a tail can merge, with the next VMA (a middle piece cannot).
        !cuts_end && guard.lookup(vma.end).is_some_and(|next| piece.can_merge_with_next(next))
    } else {
        vma.start.checked_sub(1).and_then(|a| guard.lookup(a)).is_some_and(|prev| prev.can_merge_with_next(&piece))
    };
    if merges {
        return Ok(());
    }
    if cuts_start {
        guard.check_split(piece_start).map_err(|error| Refused { split_made: None, error })?;
    }
    if cuts_end {
        let split_made = cuts_start.then_some(piece_start);
        guard.check_split(piece_end).map_err(|error| Refused { split_made, error })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, VmFlags, PAGE_SIZE, PMD_SIZE};

    use crate::{Kernel, KernelConfig, Mm};

    const P: u64 = PAGE_SIZE;
    const HUGE: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::HUGETLB);

    /// A 4 MiB hugetlb VMA at 1 GiB with an anonymous page before it. A
    /// hugetlb VMA refuses a split off 2 MiB as a device-DAX one does
    /// (`may_split`); the 7.3.4 guest showed each case on device-DAX
    /// (scenarios/device/devdax_partial_changes.hmm).
    fn page_then_huge() -> (std::sync::Arc<Mm>, u64) {
        let config = KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 2, ..Default::default() };
        let mm = Kernel::new(config).unwrap().create_mm().unwrap();
        let huge = mm.mmap(0x4000_0000, 2 * PMD_SIZE, Prot::RW, HUGE | MapFlags::FIXED).unwrap();
        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        mm.mmap(huge - P, P, Prot::RW, anon).unwrap();
        (mm, huge)
    }

    /// `(start, end, sealed)` of each VMA, in pages from `base`.
    fn layout(mm: &Mm, base: u64) -> Vec<(u64, u64, bool)> {
        let page = |a: u64| (a - base) / P;
        mm.mmap_read().iter().map(|v| (page(v.start), page(v.end), v.flags.contains(VmFlags::SEALED))).collect()
    }

    #[test]
    fn mseal_seals_the_vmas_before_a_refused_split() {
        let (mm, huge) = page_then_huge();
        let base = huge - P;
        assert_eq!(mm.mseal(base, 2 * P, 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(layout(&mm, base), [(0, 1, true), (1, 1025, false)]);
        assert_eq!(mm.munmap(base, P).unwrap_err().errno(), Errno::Perm);
    }

    #[test]
    fn a_start_split_made_before_the_refused_end_split_stays() {
        let (mm, huge) = page_then_huge();
        let base = huge - P;
        let split = [(0, 1, false), (1, 513, false), (513, 1025, false)];
        assert_eq!(mm.mprotect(huge + PMD_SIZE, P, Prot::READ).unwrap_err().errno(), Errno::Inval);
        assert_eq!(layout(&mm, base), split);
        let (mm, huge) = page_then_huge();
        assert_eq!(mm.madvise(huge + PMD_SIZE, P, MadviseAdvice::DontFork).unwrap_err().errno(), Errno::Inval);
        assert_eq!(layout(&mm, base), split);
        let (mm, huge) = page_then_huge();
        assert_eq!(mm.mseal(huge + PMD_SIZE, P, 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(layout(&mm, base), split);
        // Nothing was sealed: the kept split is ordinary.
        mm.munmap(huge + PMD_SIZE, PMD_SIZE).unwrap();
    }

    #[test]
    fn a_refused_first_split_changes_nothing() {
        let (mm, huge) = page_then_huge();
        let base = huge - P;
        assert_eq!(mm.mprotect(huge, P, Prot::READ).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.mseal(huge + P, PMD_SIZE, 0).unwrap_err().errno(), Errno::Inval);
        assert_eq!(layout(&mm, base), [(0, 1, false), (1, 1025, false)]);
    }

    #[test]
    fn special_vmas_never_merge() {
        // 7.3.4 guest (scenarios/device/hugetlb_never_merges.hmm): hugetlb
        // is VM_DONTEXPAND, so split by mprotect it stays split.
        let (mm, huge) = page_then_huge();
        mm.mprotect(huge, PMD_SIZE, Prot::READ).unwrap();
        mm.mprotect(huge, PMD_SIZE, Prot::RW).unwrap();
        assert_eq!(layout(&mm, huge - P), [(0, 1, false), (1, 513, false), (513, 1025, false)]);
    }
}
