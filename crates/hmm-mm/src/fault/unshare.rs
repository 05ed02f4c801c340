//! Unshare faults (`FAULT_FLAG_UNSHARE`): before a read-only pin takes a
//! page that a later write fault would replace (a shared anonymous page,
//! or for a long-term pin the zero page or a page-cache page of a private
//! mapping: `gup_must_unshare`), the page becomes an exclusive anonymous
//! one, reused or copied as a write fault would, while the entry stays
//! read-only and clean. Read-only VMAs are unshared too: the pin must
//! keep seeing what the process would see after an mprotect and a write.
//!
//! Private hugetlb pages are unshared whole (`hugetlb.rs`).
//!
//! Linux: `mm/memory.c` (`do_wp_page` and `wp_page_copy` with
//! `FAULT_FLAG_UNSHARE`), `mm/huge_memory.c` (`do_huge_pmd_wp_page`),
//! `mm/hugetlb.c` (`hugetlb_wp`).

use hmm_pagetable::{EnsureError, Level};
use hmm_types::PAGE_SIZE;

use crate::error::FaultError;
use crate::huge::split_huge_leaf;
use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::vma::{Vma, VmaBacking, VmaTree};

/// Unshares the page mapped at `va` in `vma`, an anonymous, page-cache or
/// hugetlb VMA. A huge leaf is made exclusive whole when it is an
/// anonymous THP mapped only here, else split, and its page unshared by
/// PTE. Nothing happens where `va` maps no present page (the caller faults
/// again).
pub(crate) fn unshare(mm: &Mm, vmas: &VmaTree, vma: &Vma, va: u64) -> Result<(), FaultError> {
    if let VmaBacking::Hugetlb(object) = &vma.backing {
        return super::hugetlb::unshare(mm, vma, object, va);
    }
    crate::anon_vma::anon_vma_prepare(mm, vmas, vma);
    let phys = mm.phys();
    let va = va & !(PAGE_SIZE - 1);
    loop {
        let slot = match mm.pgtable().ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(slot)) => {
                let entry = slot.load();
                if !entry.is_present() {
                    return Ok(());
                }
                let head = phys.folio_head(entry.pfn());
                let anon = phys.meta(head).flags().contains(PageFlags::ANON);
                if anon && !phys.is_zero_pfn(head) && phys.folio_counts(head) == (1, 1) {
                    phys.meta(head).set_flags(PageFlags::ANON_EXCLUSIVE);
                    return Ok(());
                }
                split_huge_leaf(mm, slot, entry).map_err(|_| FaultError::Oom)?;
                continue;
            }
        };
        let entry = slot.load();
        if !entry.is_present() || super::wp::unshare_pte(mm, vma, slot, entry)? {
            return Ok(());
        }
    }
}
