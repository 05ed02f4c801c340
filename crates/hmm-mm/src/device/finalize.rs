//! `MigrateVma::finalize` (spec §4.7): every migration entry becomes an
//! entry for the destination (moved) or for the source again (restored);
//! waiters are woken; pages are unlocked and references dropped.
//!
//! Linux: `migrate_vma_finalize`, `remove_migration_ptes`.

use core::ops::ControlFlow;
use std::sync::Weak;

use hmm_pagetable::{BatchVisit, Entry, LeafFlags, Level, Slot, SwapKind};
use hmm_types::{Pfn, PAGE_SHIFT};

use crate::mm::{Mm, MmapLocked};
use crate::phys::{FreeBatch, MemoryType, PageFlags, PhysMem};

use super::migrate_vma::{migrate_pfn_to_pfn, MigrateVma, MIGRATE_PFN_MIGRATE};

/// What [`MigrateVma::finalize`] defers to the end of its walk.
struct Deferred {
    /// Sources whose last reference went, freed under one buddy lock.
    frees: FreeBatch,
    /// The 2 MiB blocks (frame >> 9) of the sources whose migration
    /// entries were replaced: one wake-up each (a block shares its wait
    /// queue bucket), after every entry was replaced.
    blocks: Vec<u64>,
}

impl MigrateVma {
    /// Ends the migration (`migrate_vma_finalize`). The range is walked
    /// once: a PTE comes from its table's slice rather than a walk from
    /// the root; a source's two references (ours and its old mapping's)
    /// go in one step; sources are freed in one batch and waiters woken
    /// once per 2 MiB block at the end.
    pub fn finalize(&mut self, locked: MmapLocked<'_>) {
        let mm = locked.mm();
        let mut deferred = Deferred { frees: FreeBatch::with_capacity(self.src.len()), blocks: Vec::new() };
        let (start, end) = (self.start, self.end);
        let _ = mm.pgtable().walk_batched(start, end, |visit| {
            match visit {
                BatchVisit::Ptes { va, cells } => {
                    let first = self.index(va);
                    for (k, cell) in cells.iter().enumerate() {
                        let slot = Slot::new(cell, Level::Pte, va + ((k as u64) << PAGE_SHIFT));
                        self.finalize_one(mm, first + k, Some(slot), &mut deferred);
                    }
                }
                BatchVisit::Hole { start: a, end: b } => {
                    for i in self.index(a)..self.index(b) {
                        self.finalize_one(mm, i, None, &mut deferred);
                    }
                }
                BatchVisit::Huge { slot, .. } => {
                    let (a, b) = (slot.va().max(start), (slot.va() + slot.level().entry_bytes()).min(end));
                    for i in self.index(a)..self.index(b) {
                        self.finalize_one(mm, i, None, &mut deferred);
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        let phys = mm.phys();
        phys.free_batch(&mut deferred.frees);
        deferred.blocks.sort_unstable();
        deferred.blocks.dedup();
        for &block in &deferred.blocks {
            crate::migrate::migration_entries_replaced(mm, Pfn(block << 9));
        }
    }

    /// Entry `i`; `slot` is its PTE when the walk found one (else the
    /// entry is looked up from the root, as [`restore`] does).
    fn finalize_one(&mut self, mm: &Mm, i: usize, slot: Option<Slot<'_>>, deferred: &mut Deferred) {
        let phys = mm.phys();
        let dst = migrate_pfn_to_pfn(self.dst[i]);
        let Some(src) = migrate_pfn_to_pfn(self.src[i]) else {
            // A hole: `pages` inserted the page (with its own reference)
            // or did not; the driver's reference goes.
            if let Some(dst) = dst {
                phys.unlock_put(dst);
            }
            return;
        };
        let va = self.start + ((i as u64) << PAGE_SHIFT);
        let moved = self.src[i] & MIGRATE_PFN_MIGRATE != 0 && dst.is_some();
        let target = if moved { dst.expect("checked") } else { src };
        let slot = slot.unwrap_or_else(|| mm.pgtable().find(va));
        let installed = replace(mm, slot, src, target);
        deferred.blocks.push(src.0 >> 9);
        if !self.others.is_empty() {
            self.restore_others(mm, i, src, target);
        }
        // The driver's reference to the destination is dropped only now:
        // a zap (DONTNEED runs under the read lock) may drop the new
        // mapping's at any time after the swap.
        if let Some(dst) = dst {
            phys.unlock_put(dst);
        }
        if self.fault_page != Some(src) {
            phys.meta(src).unlock();
        }
        // Ours, and the migration entry's when it did not go back to `src`.
        let refs = 1 + u32::from(!installed || target != src);
        phys.put_many_batched(src, refs, &mut deferred.frees);
    }
}

impl MigrateVma {
    /// Ends the migration entries of entry `i` in other address spaces;
    /// the mapping reference of one whose address space is gone is dropped.
    pub(super) fn restore_others(&mut self, mm: &Mm, i: usize, src: Pfn, target: Pfn) {
        let mut others = core::mem::take(&mut self.others);
        others.retain(|(j, weak, va)| {
            if *j != i {
                return true;
            }
            restore_elsewhere(mm.phys(), weak, *va, src, target);
            false
        });
        self.others = others;
    }
}

/// Ends a migration entry installed through the reverse map in another
/// address space (`unmap_one`); the mapping reference of one whose address
/// space is gone is dropped.
pub(super) fn restore_elsewhere(phys: &PhysMem, weak: &Weak<Mm>, va: u64, src: Pfn, target: Pfn) {
    match weak.upgrade() {
        Some(other) => {
            // Recursive: a reader there may wait for this very entry.
            let guard = other.mmap_read_recursive();
            restore(&other, va, src, target);
            crate::rmap::migration_entry_restored(&other);
            drop(guard);
        }
        None => phys.put(src),
    }
}

/// Replaces the migration entry for `src` at `va` with an entry for
/// `target` (`src` itself when restoring), with the rights the migration
/// entry recorded, and wakes the waiters. The migration entry owned the
/// source's mapping reference: it goes back to the mapping, or is dropped
/// when the page moved or the entry was zapped meanwhile.
pub(super) fn restore(mm: &Mm, va: u64, src: Pfn, target: Pfn) {
    let installed = replace(mm, mm.pgtable().find(va), src, target);
    if !installed || target != src {
        mm.phys().put(src);
    }
    crate::migrate::migration_entries_replaced(mm, src);
}

/// The entry swap of [`restore`] at `slot`, without the wake-up and without
/// dropping the source's mapping reference; returns whether `target` was
/// installed (with a reference of its own).
fn replace(mm: &Mm, slot: Slot<'_>, src: Pfn, target: Pfn) -> bool {
    let phys = mm.phys();
    let current = slot.load();
    let ours = current.swap_kind().is_some_and(|k| k.is_migration()) && current.pfn() == src;
    if !ours {
        return false;
    }
    let write = current.swap_kind() == Some(SwapKind::MigrationWrite);
    let new = if phys.memory_type(target) == MemoryType::DevicePrivate {
        Entry::swap(
            if write { SwapKind::DevicePrivateWrite } else { SwapKind::DevicePrivateRead },
            target.0,
            current.is_huge(),
        )
    } else {
        let dirty = phys.meta(target).flags().contains(PageFlags::DIRTY);
        Entry::present(target, LeafFlags { write, dirty, accessed: true, special: false }, current.is_huge())
    };
    let take_ref = target != src;
    if take_ref {
        phys.get(target);
    }
    phys.map_add(target, 1);
    let installed = slot.compare_exchange(current, new).is_ok();
    if !installed {
        phys.map_sub(target, 1);
        if take_ref {
            phys.put(target);
        }
    }
    installed
}
