//! `/proc/<pid>/pagemap`: one 64-bit word per virtual page saying whether
//! it is present (and where), swapped (or any other non-present entry,
//! device-private and migration entries included), file-backed or mapped
//! only here.
//!
//! Linux: `fs/proc/task_mmu.c` (`pagemap_read`, `pte_to_pagemap_entry`),
//! `Documentation/admin-guide/mm/pagemap.rst`.

use hmm_types::{VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;

/// The page is present (`PM_PRESENT`, bit 63).
pub const PM_PRESENT: u64 = 1 << 63;
/// The page is swapped, or another non-present entry (`PM_SWAP`, bit 62).
pub const PM_SWAP: u64 = 1 << 62;
/// File page or shared anonymous (`PM_FILE`, bit 61).
pub const PM_FILE: u64 = 1 << 61;
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
        let file = if vma.is_anonymous() { 0 } else { PM_FILE };
        if entry.is_present() && entry.is_leaf(slot.level()) {
            let pfn = entry.pfn().add(offset);
            let exclusive = if self.phys().folio_counts(pfn).1 == 1 { PM_MMAP_EXCLUSIVE } else { 0 };
            let special = vma.flags.intersects(VmFlags::PFNMAP);
            return Ok(PM_PRESENT | exclusive | if special { 0 } else { file } | (pfn.0 & PM_PFRAME_MASK));
        }
        match entry.swap_kind() {
            Some(kind) => {
                let swp = ((entry.pfn().0 + offset) << 5 | kind as u64) & PM_PFRAME_MASK;
                Ok(PM_SWAP | file | swp)
            }
            None => Ok(0),
        }
    }
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
}
