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
            let mapcount = if slot.level() == Level::Pte && is_cache_thp(phys, pfn) {
                // One page of a PTE-mapped shmem THP: its own mappings
                // (`folio_precise_page_mapcount`), not the folio's.
                precise_page_mapcount(self, pfn)
            } else {
                phys.folio_counts(pfn).1
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

/// True if `pfn` is a page of a large page-cache (shmem) folio.
fn is_cache_thp(phys: &crate::phys::PhysMem, pfn: hmm_types::Pfn) -> bool {
    let head = phys.folio_head(pfn);
    phys.folio_order(head) > 0 && phys.meta(head).flags().contains(PageFlags::SHMEM)
}

/// How many entries of every address space map the page `pfn` (a PMD
/// mapping its folio counts for each of its pages), through the reverse
/// map. The caller may hold its own mmap read lock.
fn precise_page_mapcount(mm: &Mm, pfn: hmm_types::Pfn) -> i32 {
    let mut count = 0;
    let _ = crate::rmap::rmap_walk(mm.kernel(), pfn, |other, _, va| {
        let slot = other.pgtable().find(va);
        let entry = slot.load();
        if entry.is_present() && entry.is_leaf(slot.level()) {
            let offset = (va - slot.va()) >> PAGE_SHIFT;
            if entry.pfn().add(offset) == pfn {
                count += 1;
            }
        }
        core::ops::ControlFlow::Continue(())
    });
    count
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
}
