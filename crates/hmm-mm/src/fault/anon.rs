//! Faults on private anonymous memory: first touch (zero page on read, a
//! fresh page on write, 2 MiB at a time where THP allows), dispatch of
//! write-protect faults to `wp.rs` and of swap entries to `swap.rs`, and
//! waiting on migration entries (PTE or PMD) until the migrator replaced
//! them, then retrying.
//!
//! Linux: `do_anonymous_page`, `do_huge_pmd_anonymous_page`,
//! `thp_vma_allowable_order`, `do_swap_page` and `pmd_migration_entry_wait`
//! (for migration entries).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};
use hmm_types::{VmFlags, PMD_SIZE};

use crate::error::FaultError;
use crate::kernel::ThpMode;
use crate::migrate::{is_migration_entry, migration_entry_wait};
use crate::mm::{Mm, MmapLocked};
use crate::phys::PageFlags;
use crate::rmap::folio_add_new_anon_rmap;
use crate::vma::Vma;

use super::{existing_pte, wp, Existing};

/// True when a PMD-sized anonymous THP may back `va` in `vma`.
pub(crate) fn thp_allowed(mm: &Mm, vma: &Vma, va: u64) -> bool {
    let mode_allows = match mm.kernel().config().thp {
        ThpMode::Always => true,
        ThpMode::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
        ThpMode::Never => false,
    };
    let start = va & !(PMD_SIZE - 1);
    mode_allows && !vma.flags.contains(VmFlags::NOHUGEPAGE) && vma.covers(start, start + PMD_SIZE)
}

fn new_anon_entry(pfn: hmm_types::Pfn, huge: bool) -> Entry {
    Entry::present(pfn, LeafFlags { write: true, dirty: true, accessed: true, special: false }, huge)
}

pub(super) fn fault(locked: MmapLocked<'_>, vma: &Vma, va: u64, write: bool) -> Result<(), FaultError> {
    let mm = locked.mm();
    let phys = mm.phys();
    let pt = mm.pgtable();
    loop {
        if thp_allowed(mm, vma, va) {
            let pmd = pt.ensure(va, Level::Pmd).map_err(|_| FaultError::Oom)?;
            let entry = pmd.load();
            if entry.is_none() {
                // do_huge_pmd_anonymous_page prepares the anon_vma before
                // choosing between a THP and the huge zero page, so a read
                // gives the VMA one too (and fork then copies its entries).
                crate::anon_vma::anon_vma_prepare(locked.mm, locked.vmas, vma);
                if write {
                    // A failed 2 MiB allocation falls back to 4K pages, as
                    // Linux counts `thp_fault_fallback`.
                    if let Ok(folio) = phys.alloc_folio(9, true) {
                        phys.meta(folio).set_flags(
                            PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE,
                        );
                        folio_add_new_anon_rmap(mm, vma, folio, va & !(PMD_SIZE - 1));
                        phys.map_add(folio, 1);
                        if pmd.compare_exchange(Entry::NONE, new_anon_entry(folio, true)).is_ok() {
                            return Ok(());
                        }
                        phys.map_sub(folio, 1);
                        phys.put(folio);
                        continue;
                    }
                } else if mm.kernel().config().use_huge_zero_page {
                    let flags = LeafFlags { special: true, accessed: true, ..LeafFlags::default() };
                    let zero = Entry::present(phys.huge_zero_pfn(), flags, true);
                    if pmd.compare_exchange(Entry::NONE, zero).is_ok() {
                        return Ok(());
                    }
                    continue;
                }
            } else if entry.is_leaf(Level::Pmd) {
                if is_migration_entry(entry) {
                    migration_entry_wait(mm, va);
                    continue;
                }
                if entry.swap_kind().is_some_and(|k| k.is_device_private()) {
                    crate::device::to_ram::fault(locked, vma, va, pmd, entry)?;
                    continue;
                }
                if !entry.is_present() {
                    return Err(FaultError::Sigbus("unsupported non-present PMD entry"));
                }
                if !write || entry.is_write() {
                    return Ok(());
                }
                if wp::huge_pmd(mm, pmd, entry)? {
                    return Ok(());
                }
                continue;
            }
        }
        let pte = match pt.ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            // A huge leaf was installed (or is being split) meanwhile.
            Err(EnsureError::Leaf(slot)) => {
                let entry = slot.load();
                if entry.is_present() && (!write || entry.is_write()) {
                    return Ok(());
                }
                if entry.is_present() && slot.level() == Level::Pmd {
                    if wp::huge_pmd(mm, slot, entry)? {
                        return Ok(());
                    }
                    continue;
                }
                if is_migration_entry(entry) {
                    migration_entry_wait(mm, va);
                    continue;
                }
                if entry.swap_kind().is_some_and(|k| k.is_device_private()) {
                    crate::device::to_ram::fault(locked, vma, va, slot, entry)?;
                    continue;
                }
                return Err(FaultError::Sigbus("unexpected huge entry in anonymous memory"));
            }
        };
        let entry = pte.load();
        if entry.is_none() {
            let new = if write {
                let page = phys.alloc_folio(0, true).map_err(|_| FaultError::Oom)?;
                phys.meta(page).set_flags(
                    PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE,
                );
                folio_add_new_anon_rmap(mm, vma, page, va);
                phys.map_add(page, 1);
                new_anon_entry(page, false)
            } else {
                let flags = LeafFlags { special: true, accessed: true, ..LeafFlags::default() };
                Entry::present(phys.zero_pfn(), flags, false)
            };
            if pte.compare_exchange(Entry::NONE, new).is_ok() {
                return Ok(());
            }
            if write {
                phys.map_sub(new.pfn(), 1);
                phys.put(new.pfn());
            }
            continue;
        }
        match existing_pte(locked, vma, pte, entry, write)? {
            Existing::Done => return Ok(()),
            Existing::Retry => continue,
        }
    }
}
