//! `/proc/<pid>/pagemap`: one 64-bit word per virtual page saying whether
//! it is present (and where), swapped (or any other non-present entry,
//! device-private and migration entries included), file-backed or mapped
//! only here.
//!
//! Linux: `fs/proc/task_mmu.c` (`pagemap_read`, `pte_to_pagemap_entry`),
//! `Documentation/admin-guide/mm/pagemap.rst`.

use hmm_pagetable::{Level, SwapKind};
use hmm_types::{VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::vma::VmaBacking;

/// The page is present (`PM_PRESENT`, bit 63).
pub const PM_PRESENT: u64 = 1 << 63;
/// The page is swapped, or another non-present entry (`PM_SWAP`, bit 62).
pub const PM_SWAP: u64 = 1 << 62;
/// File page or shared anonymous (`PM_FILE`, bit 61).
pub const PM_FILE: u64 = 1 << 61;
/// Write-protected by userfaultfd (`PM_UFFD_WP`, bit 57).
pub const PM_UFFD_WP: u64 = 1 << 57;
/// A guard page (`PM_GUARD_REGION`, bit 58), reported with `PM_SWAP`.
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// Mapped exclusively by this process (`PM_MMAP_EXCLUSIVE`, bit 56).
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Bits 0–54: the pfn of a present page, or swap type (0–4) and offset.
pub const PM_PFRAME_MASK: u64 = (1 << 55) - 1;

impl Mm {
    /// The pagemap word of the page at `va` (what a read of
    /// `/proc/self/pagemap` at offset `va / 4096 * 8` returns). Unmapped
    /// addresses read as 0.
    pub fn pagemap_entry(&self, va: u64) -> Result<u64, MmError> {
        self.check_alive()?;
        let va = va & !(PAGE_SIZE - 1);
        let guard = self.mmap_read();
        let Some(vma) = guard.vma(va) else { return Ok(0) };
        let slot = self.pgtable().find(va);
        let entry = slot.load();
        let offset = (va - slot.va()) >> PAGE_SHIFT;
        let phys = self.phys();
        // PM_FILE and PM_MMAP_EXCLUSIVE describe the page, not the VMA
        // (`pte_to_pagemap_entry`): a COW copy in a private file mapping is
        // anonymous, and an entry without a normal page (a special or
        // PFNMAP entry, the zero pages, a swap entry) has neither bit: 7.3's
        // `pagemap_pmd_range_thp` asks `vm_normal_page_pmd`, which has no
        // page for the huge zero page (6.18 took `pmd_page`: PM_FILE).
        // A private hugetlb mapping's pages are anonymous folios
        // (`hugetlb_no_page` → `hugetlb_add_new_anon_rmap`, and COW copies);
        // the model's hugetlb pages carry no ANON flag, so the VMA says it.
        let private_hugetlb = matches!(vma.backing, VmaBacking::Hugetlb(_)) && !vma.flags.is_shared();
        let file_page = |pfn| {
            let anon = private_hugetlb || phys.meta(phys.folio_head(pfn)).flags().contains(PageFlags::ANON);
            if anon {
                0
            } else {
                PM_FILE
            }
        };
        if entry.is_present() && entry.is_leaf(slot.level()) {
            let pfn = entry.pfn().add(offset);
            let frame = pfn.0 & PM_PFRAME_MASK;
            let special = vma.flags.intersects(VmFlags::PFNMAP) || entry.leaf_flags().special;
            let uffd_wp = if entry.is_uffd_wp() { PM_UFFD_WP } else { 0 };
            if special || phys.is_zero_pfn(pfn) {
                return Ok(PM_PRESENT | uffd_wp | frame);
            }
            // `__folio_page_mapped_exclusively` with CONFIG_PAGE_MAPCOUNT
            // (the host's and the guest's): the page's own mappings
            // (`folio_precise_page_mapcount`: its PTEs plus the folio's
            // PMD mappings), not the folio's. A PTE asks for its page; a
            // PMD asks for the page it points at (`vm_normal_page_pmd`:
            // the folio's first page) and answers for all 512. A hugetlb
            // folio asks `folio_maybe_mapped_shared` (the folio count).
            // An fs-dax block has no page-cache identity of its own: its
            // mappings are found through the file (the 7.3.4 guest: a page
            // of a block once PMD-mapped, now mapped by one PTE, is
            // exclusive). Device-DAX keeps the folio's count.
            let head = phys.folio_head(pfn);
            let ram = phys.memory_type(head) == crate::phys::MemoryType::System;
            let large = phys.folio_order(head) > 0;
            let dax_file = match &vma.backing {
                VmaBacking::File(inode) if matches!(inode.kind(), crate::fs::InodeKind::Dax(_)) => Some(inode),
                _ => None,
            };
            let (page, index) = match slot.level() {
                Level::Pte => (pfn, vma.page_index(va)),
                _ => (entry.pfn(), vma.page_index(slot.va().max(vma.start))),
            };
            let mapcount = match dax_file {
                _ if !large || matches!(vma.backing, VmaBacking::Hugetlb(_)) => phys.folio_counts(pfn).1,
                Some(inode) if !ram => {
                    let mut count = 0;
                    let _ = crate::rmap::rmap_walk_file(self.kernel(), inode, index, |other, _, at| {
                        count += maps_page(other, at, page);
                        core::ops::ControlFlow::Continue(())
                    });
                    count
                }
                _ if !ram => phys.folio_counts(pfn).1,
                _ => precise_page_mapcount(self, page),
            };
            let exclusive = if mapcount == 1 { PM_MMAP_EXCLUSIVE } else { 0 };
            return Ok(PM_PRESENT | exclusive | uffd_wp | file_page(pfn) | frame);
        }
        if entry.is_guard_marker() {
            // Linux 6.18 on the host reads 0x440000000000009f: SWAP and
            // GUARD_REGION, and the marker as swap type 31, offset 4.
            return Ok(PM_SWAP | PM_GUARD_REGION | (hmm_pagetable::PTE_MARKER_GUARD << 5 | 31));
        }
        if matches!(vma.backing, VmaBacking::Hugetlb(_)) && entry.swap_kind() == Some(SwapKind::Marker) {
            // `pagemap_hugetlb_range` reports a huge marker's uffd-wp bit
            // and nothing else (no PM_SWAP); a poison marker reads as 0
            // (the 6.18 host: scenarios/device/uffd_hugetlb_wp.hmm).
            return Ok(if crate::uffd::is_wp_marker(entry) { PM_UFFD_WP } else { 0 });
        }
        if entry.is_uffd_wp_marker() {
            // `pte_marker_entry_uffd_wp`: a protected none entry.
            return Ok(PM_SWAP | PM_UFFD_WP | (hmm_pagetable::PTE_MARKER_UFFD_WP << 5 | 31));
        }
        match entry.swap_kind() {
            Some(kind) => {
                let swp = ((entry.pfn().0 + offset) << 5 | kind as u64) & PM_PFRAME_MASK;
                // Migration, device and hwpoison entries name a page; a
                // swap entry or a marker does not.
                let file = match kind {
                    SwapKind::Swap | SwapKind::Marker => 0,
                    _ => file_page(entry.pfn().add(offset)),
                };
                let uffd_wp = if entry.is_swp_uffd_wp() { PM_UFFD_WP } else { 0 };
                Ok(PM_SWAP | file | uffd_wp | swp)
            }
            None => Ok(0),
        }
    }
}

/// How many entries of every address space map the page `pfn` (a PMD
/// mapping its folio counts for each of its pages), through the reverse
/// map. The caller may hold its own mmap read lock.
fn precise_page_mapcount(mm: &Mm, pfn: hmm_types::Pfn) -> i32 {
    let mut count = 0;
    let _ = crate::rmap::rmap_walk(mm.kernel(), pfn, |other, _, va| {
        count += maps_page(other, va, pfn);
        core::ops::ControlFlow::Continue(())
    });
    count
}

/// 1 if `mm` maps `pfn` at `va` (by a PTE, or by a leaf covering it).
fn maps_page(mm: &Mm, va: u64, pfn: hmm_types::Pfn) -> i32 {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    let offset = (va - slot.va()) >> PAGE_SHIFT;
    i32::from(entry.is_present() && entry.is_leaf(slot.level()) && entry.pfn().add(offset) == pfn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::kernel;
    use crate::ThpMode;
    use hmm_types::{MapFlags, Prot};

    #[test]
    fn present_pages_report_their_frame_and_holes_report_nothing() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        mm.write_u64(va, 1).unwrap();
        let word = mm.pagemap_entry(va).unwrap();
        let pfn = mm.pgtable().find(va).load().pfn();
        assert_eq!(word, PM_PRESENT | PM_MMAP_EXCLUSIVE | pfn.0);
        assert_eq!(mm.pagemap_entry(va + PAGE_SIZE).unwrap(), 0, "untouched");
        assert_eq!(mm.pagemap_entry(0x1000).unwrap(), 0, "no VMA");
    }

    #[test]
    fn pm_file_comes_from_the_page_not_the_vma() {
        // Linux 6.18 on the host: a private file page reads PM_FILE until
        // written; the COW copy is anonymous (and exclusive). A read of
        // THP-enabled anonymous memory maps the huge zero page, which 7.3
        // (the 7.3.4 guest) reports without PM_FILE (6.18: with it) and not
        // exclusive; the 4 KiB zero page has neither bit.
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("pm").unwrap();
        file.pwrite(0, &7u64.to_le_bytes()).unwrap();
        let va = mm.mmap_file(0, PAGE_SIZE, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
        mm.read_u64(va).unwrap();
        assert_ne!(mm.pagemap_entry(va).unwrap() & PM_FILE, 0, "the page cache page");
        mm.write_u64(va, 8).unwrap();
        let word = mm.pagemap_entry(va).unwrap();
        assert_eq!(word & (PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE), PM_PRESENT | PM_MMAP_EXCLUSIVE, "the COW copy");

        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        let huge = mm.mmap(0, 4 << 20, Prot::RW, anon).unwrap();
        mm.read_u64(huge).unwrap();
        let word = mm.pagemap_entry(huge + PAGE_SIZE).unwrap();
        assert_eq!(word & (PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE), PM_PRESENT, "the huge zero page");

        let small = mm.mmap(0, PAGE_SIZE, Prot::RW, anon).unwrap();
        mm.read_u64(small).unwrap();
        let word = mm.pagemap_entry(small).unwrap();
        assert_eq!(word & (PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE), PM_PRESENT, "the zero page");
    }

    const EXCL: u64 = PM_MMAP_EXCLUSIVE;

    #[test]
    fn a_pte_mapped_anon_thp_page_is_exclusive_while_only_this_process_maps_it() {
        // Linux 6.18 (scenarios/corpus/pagemap_exclusive_anon_pte_thp.hmm):
        // after an mprotect splits the PMD, each page counts its own PTE
        // (4*PX); after fork, 4*P in both; the child's COW copy leaves the
        // parent's page mapped once again (PX) and the rest shared.
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        let va = mm.mmap(0x4000_0000, 2 << 20, Prot::RW, anon | MapFlags::FIXED).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.mprotect(va + PAGE_SIZE, PAGE_SIZE, Prot::READ).unwrap();
        assert_eq!(mm.pgtable().find(va).level(), Level::Pte, "the PMD is split");
        assert!((0..4).all(|i| mm.pagemap_entry(va + i * PAGE_SIZE).unwrap() & EXCL != 0));
        let child = mm.fork().unwrap();
        assert!((0..4).all(|i| mm.pagemap_entry(va + i * PAGE_SIZE).unwrap() & EXCL == 0));
        child.write_u64(va + 2 * PAGE_SIZE, 5).unwrap();
        let excl = |m: &Mm, i: u64| m.pagemap_entry(va + i * PAGE_SIZE).unwrap() & EXCL != 0;
        assert_eq!((0..4).map(|i| excl(&mm, i)).collect::<Vec<_>>(), [false, false, true, false]);
        assert_eq!((0..4).map(|i| excl(&child, i)).collect::<Vec<_>>(), [false, false, true, false]);
    }

    #[test]
    fn a_pmd_mapped_shmem_thp_asks_its_first_page() {
        // Linux 6.18 (scenarios/corpus/pagemap_exclusive_shmem_pmd.hmm): a
        // PMD answers for all its pages with the mappings of the page it
        // points at: a second mapping's PTE on page 1 leaves the PMD
        // exclusive, one on page 0 does not; a second PMD never is.
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("thp").unwrap();
        file.ftruncate(2 << 20).unwrap();
        let w = 0x4000_0000;
        let p = mm.mmap_file(w, 2 << 20, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
        mm.write_u64(p, 1).unwrap();
        mm.madvise(p, 2 << 20, hmm_types::MadviseAdvice::Collapse).unwrap();
        assert_eq!(mm.pgtable().find(p).level(), Level::Pmd);
        let all_excl = |want: bool| (0..3).all(|i| (mm.pagemap_entry(p + i * PAGE_SIZE).unwrap() & EXCL != 0) == want);
        assert!(all_excl(true));
        let fixed = MapFlags::SHARED | MapFlags::FIXED;
        let r = mm.mmap_file(w + (4 << 20), PAGE_SIZE, Prot::RW, fixed, &file, PAGE_SIZE).unwrap();
        mm.read_u64(r).unwrap();
        assert_eq!(mm.pagemap_entry(r).unwrap() & EXCL, 0, "page 1 is mapped twice");
        assert!(all_excl(true), "the PMD's first page is mapped once");
        mm.munmap(r, PAGE_SIZE).unwrap();
        let r = mm.mmap_file(w + (4 << 20), PAGE_SIZE, Prot::RW, fixed, &file, 0).unwrap();
        mm.read_u64(r).unwrap();
        assert!(all_excl(false), "the PMD's first page is mapped twice");
        mm.munmap(r, PAGE_SIZE).unwrap();
        let q = mm.mmap_file(w + (2 << 20), 2 << 20, Prot::RW, fixed, &file, 0).unwrap();
        mm.read_u64(q).unwrap();
        assert_eq!(mm.pgtable().find(q).level(), Level::Pmd);
        assert!(all_excl(false), "two PMDs");
    }
}
