//! Guard regions: MADV_GUARD_INSTALL puts a guard marker (a non-present
//! PTE with no page, [`Entry::guard_marker`]) into every page of a range,
//! MADV_GUARD_REMOVE takes them out again. No VMA is created: the VMA only
//! gets the sticky `VM_MAYBE_GUARD` flag, which makes fork copy its page
//! tables. Any CPU access to a guard page is SIGSEGV
//! (`crate::fault::handle_fault`), GUP and MADV_POPULATE get EFAULT,
//! `hmm::range_fault` reports 0 without a fault request and EFAULT with
//! one. Markers survive DONTNEED, FREE, mprotect and truncation
//! (`crate::zap::zap_range_keep_guards`), move with mremap, are copied at
//! fork (not into a WIPEONFORK VMA) and go with munmap and exit.
//!
//! Both run per VMA piece inside madvise's walk (`super::madvise`), under
//! the mmap write lock, so no fault can race with the markers going in.
//!
//! Linux: `mm/madvise.c` (`madvise_guard_install`, `madvise_guard_remove`,
//! `is_valid_guard_vma`), `mm/memory.c` (`handle_pte_marker`).

use core::ops::ControlFlow;

use hmm_pagetable::{EnsureError, Entry, Level, Visit};
use hmm_types::{Event, VmFlags, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::{Mm, MmapWriteGuard};
use crate::vma::VmaTree;
use crate::zap::{zap_range_keep_guards, Gather};

/// True when a guard marker is the PTE of `va`.
pub(crate) fn is_guard_page(mm: &Mm, va: u64) -> bool {
    let slot = mm.pgtable().find(va);
    slot.level() == Level::Pte && slot.load().is_guard_marker()
}

/// MADV_GUARD_INSTALL on `[start, end)`, all inside one VMA
/// (`madvise_guard_install`). Whatever is mapped there is zapped first
/// (the data of private pages is lost; a shared file keeps its page
/// cache), splitting huge leaves at the edges; markers already there stay.
pub(super) fn install_piece(guard: &mut MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let mm = guard.mm();
    {
        let tree: &VmaTree = guard;
        let vma = tree.lookup(start).expect("a piece lies in a VMA");
        if vma.flags.intersects(VmFlags::SPECIAL | VmFlags::HUGETLB | VmFlags::LOCKED) {
            return Err(MmError::Invalid("MADV_GUARD_INSTALL on a VM_SPECIAL, hugetlb or mlocked mapping"));
        }
        if vma.is_anonymous() {
            // Linux gives the VMA an anon_vma first (fork then copies it).
            crate::anon_vma::anon_vma_prepare(mm, tree, vma);
        }
    }
    guard.vmas_mut().lookup_mut(start).expect("a piece lies in a VMA").flags |= VmFlags::MAYBE_GUARD;
    // With the write lock held nothing refills the range between the zap
    // and the markers; a second round only follows a table allocation race.
    loop {
        if is_populated(mm, start, end) {
            let invalidation = mm.notifiers().start(mm.id(), start, end, Event::Clear);
            let mut gather = Gather::new();
            let zapped = zap_range_keep_guards(mm, start, end, &mut gather);
            gather.free_after(mm.phys(), invalidation);
            zapped?;
        }
        if install_markers(mm, start, end)? {
            return Ok(());
        }
    }
}

/// True when `[start, end)` holds an entry that is neither none nor a
/// guard marker (a page, a huge leaf, a swap or device entry).
fn is_populated(mm: &Mm, start: u64, end: u64) -> bool {
    mm.pgtable()
        .walk(start, end, |visit| match visit {
            Visit::Slot { entry, .. } if !entry.is_none() && !entry.is_guard_marker() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
}

/// Puts a marker into every empty PTE of `[start, end)`; `false` when an
/// entry appeared meanwhile (zap again).
fn install_markers(mm: &Mm, start: u64, end: u64) -> Result<bool, MmError> {
    let mut va = start;
    while va < end {
        let slot = match mm.pgtable().ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(MmError::NoMem),
            Err(EnsureError::Leaf(_)) => return Ok(false),
        };
        let entry = slot.load();
        if !entry.is_guard_marker() && slot.compare_exchange(Entry::NONE, Entry::guard_marker()).is_err() {
            return Ok(false);
        }
        va += PAGE_SIZE;
    }
    Ok(true)
}

/// MADV_GUARD_REMOVE on `[start, end)`, all inside one VMA
/// (`madvise_guard_remove`): every guard marker becomes none; the pages
/// are empty again (anonymous memory reads zero, a file re-reads its
/// page cache). Huge leaves hold no marker and are left alone. An mlocked
/// VMA is allowed.
pub(super) fn remove_piece(guard: &MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let mm = guard.mm();
    let vma = guard.lookup(start).expect("a piece lies in a VMA");
    if vma.flags.intersects(VmFlags::SPECIAL | VmFlags::HUGETLB) {
        return Err(MmError::Invalid("MADV_GUARD_REMOVE on a VM_SPECIAL or hugetlb mapping"));
    }
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            if entry.is_guard_marker() {
                // Nothing else writes a marker slot under the write lock.
                let _ = slot.compare_exchange(entry, Entry::NONE);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

#[cfg(test)]
mod tests;
