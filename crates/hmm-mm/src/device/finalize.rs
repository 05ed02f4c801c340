//! `MigrateVma::finalize` (spec §4.7): every migration entry becomes an
//! entry for the destination (moved) or for the source again (restored);
//! waiters are woken; pages are unlocked and references dropped.
//!
//! Linux: `migrate_vma_finalize`, `remove_migration_ptes`.

use hmm_pagetable::{Entry, LeafFlags, SwapKind};
use hmm_types::{Pfn, PAGE_SHIFT};

use crate::mm::{Mm, MmapLocked};
use crate::phys::{MemoryType, PageFlags};

use super::migrate_vma::{migrate_pfn_to_pfn, MigrateVma, MIGRATE_PFN_MIGRATE};

impl MigrateVma {
    /// Ends the migration (`migrate_vma_finalize`).
    pub fn finalize(&mut self, locked: MmapLocked<'_>) {
        let mm = locked.mm();
        let phys = mm.phys();
        for i in 0..self.src.len() {
            let dst = migrate_pfn_to_pfn(self.dst[i]);
            let Some(src) = migrate_pfn_to_pfn(self.src[i]) else {
                // A hole: `pages` inserted the page (with its own
                // reference) or did not; the driver's reference goes.
                if let Some(dst) = dst {
                    phys.unlock_put(dst);
                }
                continue;
            };
            let va = self.start + ((i as u64) << PAGE_SHIFT);
            let moved = self.src[i] & MIGRATE_PFN_MIGRATE != 0 && dst.is_some();
            let target = if moved { dst.expect("checked") } else { src };
            restore(mm, va, src, target);
            self.restore_others(mm, i, src, target);
            if let Some(dst) = dst {
                phys.unlock_put(dst);
            }
            if self.fault_page != Some(src) {
                phys.meta(src).unlock();
            }
            phys.put(src);
        }
    }
}

impl MigrateVma {
    /// Ends the migration entries of entry `i` in other address spaces;
    /// the mapping reference of one whose address space is gone is dropped.
    pub(super) fn restore_others(&mut self, mm: &Mm, i: usize, src: Pfn, target: Pfn) {
        let va = self.start + ((i as u64) << PAGE_SHIFT);
        let mut others = core::mem::take(&mut self.others);
        others.retain(|(j, weak)| {
            if *j != i {
                return true;
            }
            match weak.upgrade() {
                Some(other) => {
                    let _guard = other.mmap_read_recursive();
                    restore(&other, va, src, target);
                }
                None => mm.phys().put(src),
            }
            false
        });
        self.others = others;
    }
}

/// Replaces the migration entry for `src` at `va` with an entry for
/// `target` (`src` itself when restoring), with the rights the migration
/// entry recorded, and wakes the waiters. The migration entry owned the
/// source's mapping reference: it goes back to the mapping, or is dropped
/// when the page moved or the entry was zapped meanwhile.
pub(super) fn restore(mm: &Mm, va: u64, src: Pfn, target: Pfn) {
    let phys = mm.phys();
    let slot = mm.pgtable().find(va);
    let current = slot.load();
    let ours = current.swap_kind().is_some_and(|k| k.is_migration()) && current.pfn() == src;
    let mut installed = false;
    if ours {
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
        if target != src {
            phys.get(target);
        }
        phys.map_add(target, 1);
        installed = slot.compare_exchange(current, new).is_ok();
        if !installed {
            phys.map_sub(target, 1);
            if target != src {
                phys.put(target);
            }
        }
    }
    if !installed || target != src {
        phys.put(src);
    }
    crate::migrate::migration_entries_replaced(mm, src);
}
