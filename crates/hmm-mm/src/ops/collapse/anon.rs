//! MADV_COLLAPSE of one block of private anonymous memory: a block whose
//! entries are all none or present pages (of any protection, the zero page
//! included) becomes one PMD leaf of a new THP holding a copy of the data,
//! announced as a CLEAR of the 2 MiB. No page need be writable (unlike
//! khugepaged). A block already PMD-mapped counts as collapsed; a block
//! without a page table, or holding swap, migration, device or marker
//! entries, is left as it is.
//!
//! Linux: `mm/khugepaged.c` (`hpage_collapse_scan_pmd`,
//! `collapse_huge_page`, `__collapse_huge_page_copy`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, Visit};
use hmm_types::{Event, VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::mm::MmapWriteGuard;
use crate::phys::PageFlags;
use crate::zap::{release_entry, Gather};

use super::Block;

/// Collapses the anonymous block at `block` (2 MiB-aligned, inside one
/// VMA).
pub(super) fn collapse_block(guard: &mut MmapWriteGuard<'_>, block: u64) -> Result<Block, MmError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let vma = guard.lookup(block).expect("range checked as mapped");
    let writable = vma.flags.contains(VmFlags::WRITE);
    let accessible = vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
    // `find_pmd_or_thp_or_none`, then the scan of the PTE table.
    let deepest = mm.pgtable().find(block);
    if deepest.level() != Level::Pte {
        let entry = deepest.load();
        return Ok(match deepest.level() {
            // Already a huge leaf (a THP or the huge zero page).
            Level::Pmd if entry.is_present() => Block::Collapsed,
            // No page table for the block (`SCAN_NO_PTE_TABLE` in 7.3, the
            // 7.3.4 guest: the next block is tried, the call fails at the
            // end; 6.18's `SCAN_PMD_NONE` ended the call at once), or a PMD
            // migration entry.
            _ => Block::Failed,
        });
    }
    let pmd = match mm.pgtable().ensure(block, Level::Pmd) {
        Ok(slot) => slot,
        Err(EnsureError::NoMem(_)) => return Err(MmError::NoMem),
        Err(EnsureError::Leaf(_)) => unreachable!("no leaf sits above a PMD in anonymous memory"),
    };
    let table = pmd.load();
    // Present entries of any protection and none entries collapse; a swap,
    // migration, device or marker entry makes the block fail
    // (`SCAN_PTE_NON_PRESENT`, the next block is still tried).
    let collapsible = mm
        .pgtable()
        .walk(block, block + PMD_SIZE, |visit| match visit {
            Visit::Slot { entry, .. } if !entry.is_none() && !entry.is_present() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_continue();
    if !collapsible {
        return Ok(Block::Failed);
    }
    let folio = phys.alloc_folio(9, true)?;
    phys.meta(folio)
        .set_flags(PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE);
    crate::rmap::folio_add_new_anon_rmap(mm, vma, folio, block);
    let invalidation = mm.notifiers().start(mm.id(), block, block + PMD_SIZE, Event::Clear);
    let mut gather = Gather::new();
    let _ = mm.pgtable().walk(block, block + PMD_SIZE, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if entry.is_present() {
                if !phys.is_zero_pfn(entry.pfn()) {
                    phys.copy_frames(folio.add((slot.va() - block) / PAGE_SIZE), entry.pfn(), 1);
                }
                slot.store(Entry::NONE);
                release_entry(phys, entry, &mut gather);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let flags = LeafFlags { write: writable, dirty: true, accessed: true, special: false };
    phys.map_add(folio, 1);
    let mut leaf = Entry::present(folio, flags, true);
    if !accessible {
        // The new leaf keeps the VMA's protection (`vm_page_prot`).
        leaf = leaf.mkprotnone();
    }
    pmd.store(leaf);
    invalidation.end();
    hmm_pagetable::TableStore::free_table(mm.pgtable().store(), table.pfn().0);
    gather.free_now(phys);
    Ok(Block::Collapsed)
}
