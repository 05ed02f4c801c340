//! The identity of a VMA's anon_vma, as far as VMA merging sees it.
//!
//! Linux gives a private VMA an `anon_vma` when its first anonymous page is
//! created (`anon_vma_prepare`), reusing a neighbour's when the two could
//! have been one VMA but for their protection (`find_mergeable_anon_vma`).
//! Two VMAs with different anon_vmas never merge (`is_mergeable_anon_vma`),
//! and a moved VMA keeps its page offset once it has one (`copy_vma`), so it
//! merges only where offsets line up. This module owns those rules; the
//! anon_vma itself is the reverse map's root (`crate::rmap::AnonVma`).
//!
//! Linux: `mm/rmap.c` (`__anon_vma_prepare`, `anon_vma_fork`), `mm/vma.c`
//! (`find_mergeable_anon_vma`, `anon_vma_compatible`,
//! `is_mergeable_anon_vma`).

use std::sync::Arc;

use hmm_types::{VmFlags, PAGE_SHIFT};

use crate::mm::Mm;
use crate::rmap::AnonVma;
use crate::vma::{Vma, VmaTree};

/// True when `a` and `b` (with `a` just before `b`) differ at most in
/// their access rights, so they may share an anon_vma
/// (`anon_vma_compatible`).
fn compatible(a: &Vma, b: &Vma) -> bool {
    let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
    a.end == b.start
        && a.same_object(b)
        && (a.flags - access) == (b.flags - access)
        && b.pgoff == a.pgoff + ((b.start - a.start) >> PAGE_SHIFT)
}

/// Gives `vma` an anon_vma if it has none: the next or else the previous
/// neighbour's when compatible and reusable, else a new one
/// (`__anon_vma_prepare`). Called before a private page is created.
pub(crate) fn anon_vma_prepare(mm: &Mm, vmas: &VmaTree, vma: &Vma) {
    if vma.anon_vma.get().is_some() {
        return;
    }
    let reusable = |other: &Vma| other.anon_vma.get().filter(|av| av.is_reusable()).cloned();
    let from_next = vmas.lookup(vma.end).filter(|next| compatible(vma, next)).and_then(reusable);
    let from_prev = || {
        let prev = vma.start.checked_sub(1).and_then(|va| vmas.lookup(va));
        prev.filter(|prev| compatible(prev, vma)).and_then(reusable)
    };
    match from_next.or_else(from_prev) {
        Some(shared) => vma.anon_vma.set_if_none(shared),
        None => {
            vma.anon_vma.prepare(mm);
        }
    }
}

/// True when VMAs with these anon_vmas may merge (`is_mergeable_anon_vma`):
/// the same one, or one side without and the other not a forked child's.
pub(crate) fn mergeable(a: Option<&Arc<AnonVma>>, b: Option<&Arc<AnonVma>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.id() == b.id(),
        (Some(only), None) | (None, Some(only)) => only.is_reusable(),
        (None, None) => true,
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{MadviseAdvice, MapFlags, MremapFlags, Prot};

    use crate::testing::kernel;
    use crate::{Mm, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
    const FIXED: MremapFlags = MremapFlags::MAYMOVE.union(MremapFlags::FIXED);
    const BASE: u64 = 0x3000_0000;

    fn p(n: u64) -> u64 {
        BASE + n * 4096
    }
    fn map(mm: &Mm, n: u64, pages: u64, prot: Prot) {
        mm.mmap(p(n), pages * 4096, prot, ANON | MapFlags::FIXED).unwrap();
    }
    /// The VMAs as page ranges relative to `BASE`.
    fn layout(mm: &Mm) -> Vec<(u64, u64)> {
        mm.mmap_read().iter().map(|v| ((v.start - BASE) / 4096, (v.end - BASE) / 4096)).collect()
    }
    fn new_mm() -> std::sync::Arc<Mm> {
        kernel(64, ThpMode::Never).create_mm().unwrap()
    }

    #[test]
    fn linux_keeps_a_moved_written_vma_apart_but_merges_an_unwritten_one() {
        // Linux 6.18 on the host: [0,2) written, moved to [8,10) next to
        // an unwritten [10,12): two VMAs. Unwritten: one VMA [8,12), also
        // when [10,12) was written.
        for (write_moved, write_other, merged) in [(true, false, false), (false, false, true), (false, true, true)] {
            let mm = new_mm();
            map(&mm, 0, 2, Prot::RW);
            map(&mm, 10, 2, Prot::RW);
            if write_moved {
                mm.write_u64(p(0), 1).unwrap();
            }
            if write_other {
                mm.write_u64(p(10), 1).unwrap();
            }
            assert_eq!(mm.mremap(p(0), 2 * 4096, 2 * 4096, FIXED, p(8)), Ok(p(8)));
            let expected = if merged { vec![(8, 12)] } else { vec![(8, 10), (10, 12)] };
            assert_eq!(layout(&mm), expected, "moved written {write_moved}, other written {write_other}");
        }
    }

    #[test]
    fn linux_merges_a_written_vma_moved_back_where_its_offsets_line_up() {
        // Linux 6.18 on the host: [0,4) written at page 0; [2,4) moved to
        // page 50 and back: one VMA [0,4) again. Moved elsewhere with a
        // neighbour mapped after it, it stays apart.
        let mm = new_mm();
        map(&mm, 0, 4, Prot::RW);
        mm.write_u64(p(0), 1).unwrap();
        assert_eq!(mm.mremap(p(2), 2 * 4096, 2 * 4096, FIXED, p(50)), Ok(p(50)));
        assert_eq!(layout(&mm), [(0, 2), (50, 52)]);
        assert_eq!(mm.mremap(p(50), 2 * 4096, 2 * 4096, FIXED, p(2)), Ok(p(2)));
        assert_eq!(layout(&mm), [(0, 4)]);
        assert_eq!(mm.mremap(p(0), 2 * 4096, 2 * 4096, FIXED, p(20)), Ok(p(20)));
        map(&mm, 22, 2, Prot::RW);
        map(&mm, 18, 2, Prot::RW);
        assert_eq!(layout(&mm), [(2, 4), (18, 20), (20, 22), (22, 24)]);
        // Growing in place keeps the offsets; the neighbour after does not
        // line up.
        let mm = new_mm();
        map(&mm, 0, 2, Prot::RW);
        mm.write_u64(p(0), 1).unwrap();
        assert_eq!(mm.mremap(p(0), 2 * 4096, 2 * 4096, FIXED, p(20)), Ok(p(20)));
        map(&mm, 24, 2, Prot::RW);
        assert_eq!(mm.mremap(p(20), 2 * 4096, 4 * 4096, MremapFlags::empty(), 0), Ok(p(20)));
        assert_eq!(layout(&mm), [(20, 24), (24, 26)]);
    }

    #[test]
    fn linux_never_merges_vmas_with_different_anon_vmas() {
        // Linux 6.18 on the host: [0,2) and [4,6) written separately, then
        // [2,4) mapped between: it merges with [0,2) only. Read faults give
        // no anon_vma: the same with reads merges all three.
        let mm = new_mm();
        map(&mm, 0, 2, Prot::RW);
        map(&mm, 4, 2, Prot::RW);
        mm.write_u64(p(0), 1).unwrap();
        mm.write_u64(p(4), 1).unwrap();
        map(&mm, 2, 2, Prot::RW);
        assert_eq!(layout(&mm), [(0, 4), (4, 6)]);
        let mm = new_mm();
        map(&mm, 0, 2, Prot::RW);
        map(&mm, 4, 2, Prot::RW);
        mm.read_u64(p(0)).unwrap();
        mm.read_u64(p(4)).unwrap();
        map(&mm, 2, 2, Prot::RW);
        assert_eq!(layout(&mm), [(0, 6)]);
    }

    #[test]
    fn linux_shares_the_anon_vma_of_a_neighbour_differing_only_in_protection() {
        // Linux 6.18 on the host: [2,4) of [0,4) made RWX, each half
        // written, [2,4) back to RW: one VMA (the second half reused the
        // first's anon_vma). With NOHUGEPAGE as the difference instead:
        // two VMAs after undoing it.
        let mm = new_mm();
        map(&mm, 0, 4, Prot::RW);
        mm.mprotect(p(2), 2 * 4096, Prot::RW | Prot::EXEC).unwrap();
        mm.write_u64(p(0), 1).unwrap();
        mm.write_u64(p(2), 1).unwrap();
        mm.mprotect(p(2), 2 * 4096, Prot::RW).unwrap();
        assert_eq!(layout(&mm), [(0, 4)]);
        let mm = new_mm();
        map(&mm, 0, 4, Prot::RW);
        mm.madvise(p(2), 2 * 4096, MadviseAdvice::NoHugePage).unwrap();
        mm.write_u64(p(0), 1).unwrap();
        mm.write_u64(p(2), 1).unwrap();
        mm.madvise(p(2), 2 * 4096, MadviseAdvice::HugePage).unwrap();
        mm.madvise(p(0), 2 * 4096, MadviseAdvice::HugePage).unwrap();
        assert_eq!(layout(&mm), [(0, 2), (2, 4)]);
    }

    #[test]
    fn linux_gives_a_forked_child_one_anon_vma_per_vma() {
        // Linux 6.18 on the host: [0,4) written in both halves, [2,4) made
        // read-only, fork, [2,4) back to RW: the parent has one VMA, the
        // child two.
        let mm = new_mm();
        map(&mm, 0, 4, Prot::RW);
        mm.write_u64(p(0), 1).unwrap();
        mm.write_u64(p(2), 1).unwrap();
        mm.mprotect(p(2), 2 * 4096, Prot::READ).unwrap();
        let child = mm.fork().unwrap();
        child.mprotect(p(2), 2 * 4096, Prot::RW).unwrap();
        mm.mprotect(p(2), 2 * 4096, Prot::RW).unwrap();
        assert_eq!(layout(&mm), [(0, 4)]);
        assert_eq!(layout(&child), [(0, 2), (2, 4)]);
        child.exit();
    }

    #[test]
    fn linux_dontunmap_source_keeps_its_offset() {
        // Linux 6.18 on the host: [0,2) written, moved to [20,22), then
        // moved with DONTUNMAP to [40,42); a fresh [22,24) mapped after the
        // emptied source stays apart (the source kept page offset 0).
        let mm = new_mm();
        map(&mm, 0, 2, Prot::RW);
        mm.write_u64(p(0), 1).unwrap();
        assert_eq!(mm.mremap(p(0), 2 * 4096, 2 * 4096, FIXED, p(20)), Ok(p(20)));
        let dontunmap = FIXED | MremapFlags::DONTUNMAP;
        assert_eq!(mm.mremap(p(20), 2 * 4096, 2 * 4096, dontunmap, p(40)), Ok(p(40)));
        map(&mm, 22, 2, Prot::RW);
        assert_eq!(layout(&mm), [(20, 22), (22, 24), (40, 42)]);
    }
}
