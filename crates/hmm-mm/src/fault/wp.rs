//! Write faults on present read-only pages: reuse the page if this mapping
//! is its only user, else copy it (COW), announcing the replacement as a
//! CLEAR invalidation of the page.
//!
//! Linux: `do_wp_page`, `wp_page_reuse`, `wp_page_copy`,
//! `do_huge_pmd_wp_page` (which splits and falls back to 4K).

use hmm_pagetable::{Entry, LeafFlags, Slot};
use hmm_types::{Event, PAGE_SIZE};

use crate::error::FaultError;
use crate::huge::split_huge_leaf;
use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::vma::Vma;
use crate::zap::Gather;

/// Handles a write to the read-only PTE `entry`. Returns `Ok(false)` when
/// the entry changed meanwhile and the fault must be retried.
pub(super) fn pte(mm: &Mm, vma: &Vma, slot: Slot<'_>, entry: Entry) -> Result<bool, FaultError> {
    wp_pte(mm, vma, slot, entry, false)
}

/// An unshare fault on the present PTE `entry` (`FAULT_FLAG_UNSHARE`, for
/// a read-only pin): the page becomes an exclusive anonymous one, reused
/// or copied as for a write, but the entry stays read-only and clean.
pub(super) fn unshare_pte(mm: &Mm, vma: &Vma, slot: Slot<'_>, entry: Entry) -> Result<bool, FaultError> {
    wp_pte(mm, vma, slot, entry, true)
}

fn wp_pte(mm: &Mm, vma: &Vma, slot: Slot<'_>, entry: Entry, unshare: bool) -> Result<bool, FaultError> {
    let phys = mm.phys();
    let pfn = entry.pfn();
    let is_zero = phys.is_zero_pfn(pfn);
    if !is_zero && !vma.is_cow_mapping() {
        // Shared mapping: the page itself becomes writable.
        return Ok(unshare || slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok());
    }
    if !is_zero && can_reuse(mm, pfn) {
        // Only anonymous pages are reused; a private file page is copied.
        // The reused page is exclusive again (`wp_can_reuse_anon_folio`).
        phys.meta(pfn).set_flags(PageFlags::ANON_EXCLUSIVE);
        return Ok(unshare || slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok());
    }
    let copy = phys.alloc_folio(0, is_zero).map_err(|_| FaultError::Oom)?;
    if !is_zero {
        phys.copy_frames(copy, pfn, 1);
    }
    phys.meta(copy)
        .set_flags(PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE);
    let va = slot.va();
    crate::rmap::folio_add_new_anon_rmap(mm, vma, copy, va);
    phys.map_add(copy, 1);
    let invalidation = mm.notifiers().start(mm.id(), va, va + PAGE_SIZE, Event::Clear);
    // An unshared copy stays read-only and clean and keeps the old
    // entry's uffd-wp bit (`wp_page_copy`).
    let new =
        Entry::present(copy, LeafFlags { write: !unshare, dirty: !unshare, accessed: true, special: false }, false);
    let new = if unshare && entry.is_uffd_wp() { new.mkuffd_wp() } else { new };
    let mut gather = Gather::new();
    let replaced = slot.compare_exchange(entry, new).is_ok();
    if replaced {
        crate::zap::release_entry(phys, entry, &mut gather);
    } else {
        phys.map_sub(copy, 1);
        gather.push(copy);
    }
    gather.free_after(phys, invalidation);
    Ok(replaced)
}

/// An anonymous order-0 page mapped only here, with no other reference, may
/// simply become writable.
/// `do_wp_page`'s reuse test for a small anonymous page mapped once: an
/// exclusive page is reused whatever else holds it (a pin above all: the
/// pinned page must stay the mapped one), any other only when this
/// mapping holds the one reference (`wp_can_reuse_anon_folio`).
fn can_reuse(mm: &Mm, pfn: hmm_types::Pfn) -> bool {
    let phys = mm.phys();
    let meta = phys.meta(phys.folio_head(pfn));
    let (refs, maps) = phys.folio_counts(pfn);
    meta.flags().contains(PageFlags::ANON)
        && meta.order() == 0
        && maps == 1
        && (meta.flags().contains(PageFlags::ANON_EXCLUSIVE) || refs == 1)
}

/// Handles a write to a read-only huge PMD: an exclusively owned THP becomes
/// writable; anything else (the huge zero page, a THP shared after fork) is
/// split so the 4K path copies just the written page. Returns `Ok(true)`
/// when the fault is resolved, `Ok(false)` to retry.
pub(super) fn huge_pmd(mm: &Mm, slot: Slot<'_>, entry: Entry) -> Result<bool, FaultError> {
    let phys = mm.phys();
    let pfn = entry.pfn();
    if !phys.is_zero_pfn(pfn) && phys.folio_counts(pfn) == (1, 1) {
        return Ok(slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok());
    }
    split_huge_leaf(mm, slot, entry).map_err(|_| FaultError::Oom)?;
    Ok(false)
}
