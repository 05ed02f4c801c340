//! Where a new mapping goes without `MAP_FIXED`: the hint, THP
//! alignment, or the first free range from the top.
//!
//! Linux: `mm/mmap.c` (`__get_unmapped_area`), `mm/huge_memory.c`
//! (`__thp_get_unmapped_area`), `mm/shmem.c` (`shmem_get_unmapped_area`).

use hmm_types::{PAGE_SHIFT, PMD_SIZE};

use crate::fs::InodeKind;
use crate::vma::{VmaBacking, VmaTree};

/// `get_unmapped_area` without MAP_FIXED: where a new mapping of `len`
/// bytes of `backing` from page `pgoff` goes, `hint` first; starts are
/// multiples of `granule` (the huge page of hugetlbfs, a device-DAX
/// device's alignment). mmap and mremap's moves ask it.
///
/// THP placement (`__thp_get_unmapped_area`, `VmaTree::find_free_thp`)
/// applies to private anonymous memory without a hint whose length is a
/// multiple of 2 MiB (Linux 6.12's d4148aeab412 "mm, mmap: limit THP
/// alignment of anonymous mappings to PMD-aligned sizes" and 6.13's
/// 249608ee4713 "mm: respect mmap hint address when aligning for THP",
/// both in 6.18; its file offset counts as 0), and to fs-dax files, whose
/// filesystem (ext4) places every mapping with `thp_get_unmapped_area`, by
/// file offset. Shared anonymous memory and tmpfs files go through
/// `shmem_get_unmapped_area`, which aligns only where shmem may use huge
/// pages (never in the model; `shmem_enabled=never` on the host).
pub(crate) fn get_unmapped_area(
    tree: &VmaTree,
    len: u64,
    hint: Option<u64>,
    backing: &VmaBacking,
    pgoff: u64,
    granule: u64,
) -> Option<u64> {
    let hint = hint.filter(|&hint| hint != 0);
    let thp = match backing {
        VmaBacking::Anon if hint.is_none() && len % PMD_SIZE == 0 => tree.find_free_thp(len, None, 0),
        VmaBacking::File(inode) if matches!(inode.kind(), InodeKind::Dax(_)) => {
            tree.find_free_thp(len, hint, pgoff << PAGE_SHIFT)
        }
        _ => None,
    };
    thp.or_else(|| tree.find_free_aligned(len, hint, granule))
}

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot, PMD_SIZE};

    use crate::testing::kernel;
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn large_mappings_are_pmd_aligned_and_hints_are_honoured() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let big = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
        assert_eq!(big % PMD_SIZE, 0);
        let hinted = mm.mmap(0x4000_0000, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(hinted, 0x4000_0000);
    }

    #[test]
    fn only_private_anonymous_multiples_of_2m_without_a_hint_are_thp_aligned() {
        // As Linux 6.18 on the host (eight tries each after an unaligned
        // small mapping; scenarios cannot see placements outside their
        // window).
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let small = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap() % PMD_SIZE, 0);
        mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        for len in [PMD_SIZE + 4096, 2 * PMD_SIZE + 4096] {
            assert_ne!(mm.mmap(0, len, Prot::RW, ANON).unwrap() % PMD_SIZE, 0, "{len:#x}");
        }
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
        assert_ne!(mm.mmap(0, 2 * PMD_SIZE, Prot::RW, shared).unwrap() % PMD_SIZE, 0);
        let file = k.tmpfs().create("big").unwrap();
        file.ftruncate(2 * PMD_SIZE).unwrap();
        assert_ne!(mm.mmap_file(0, 2 * PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, 0).unwrap() % PMD_SIZE, 0);
        // A hint that is taken: no THP placement (the next free range).
        let taken = 0x1000_0000;
        mm.mmap(taken, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let placed = mm.mmap(taken, PMD_SIZE, Prot::RW, ANON).unwrap();
        assert!(placed != taken && placed % PMD_SIZE != 0 && placed < small);
    }
}
