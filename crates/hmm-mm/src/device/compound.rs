//! Compound (2 MiB) device migration, and its fallback to 4K pages.
//!
//! With `MigrateSelect::COMPOUND`, every 2 MiB block the range covers
//! whole that is a candidate PMD leaf (a THP with `SYSTEM`, a
//! device-private PMD of the owner with `DEVICE_PRIVATE`) is collected as
//! one `COMPOUND` entry followed by 511 zero placeholders, unmapped behind
//! one PMD migration entry (holes and the huge zero page become compound
//! hole entries in `collect.rs`). If the driver gives a compound
//! destination the block moves whole; if it gives 4K pages instead (a
//! large allocation failed) the source is split and each page moves alone;
//! if it gives none, nothing is split and the block stays.
//!
//! Linux (≥ 6.18): `migrate_vma_collect_huge_pmd`,
//! `migrate_vma_insert_huge_pmd_page`, `migrate_vma_split_unmapped_folio`.

use hmm_pagetable::{Entry, Level, SwapKind};
use hmm_types::{Pfn, PAGE_SHIFT, PMD_SIZE};

use crate::mm::Mm;
use crate::phys::PageFlags;

use super::migrate_vma::{
    migrate_pfn, migrate_pfn_to_pfn, MigrateSelect, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_WRITE,
};

const NR: usize = 512;

impl MigrateVma {
    /// First addresses of the 2 MiB blocks collected whole: with
    /// `COMPOUND`, each PMD leaf that the range covers entirely and that is
    /// a candidate ([`MigrateVma::is_pmd_candidate`]). Empty PMDs and the
    /// huge zero page are holes (`collect.rs`).
    pub(super) fn compound_blocks(&self, mm: &Mm) -> Vec<u64> {
        if !self.flags.contains(MigrateSelect::COMPOUND) {
            return Vec::new();
        }
        let phys = mm.phys();
        let first = self.start.next_multiple_of(PMD_SIZE);
        (first..self.end)
            .step_by(PMD_SIZE as usize)
            .filter(|&block| block + PMD_SIZE <= self.end)
            .filter(|&block| {
                let slot = mm.pgtable().find(block);
                let entry = slot.load();
                slot.level() == Level::Pmd
                    && !entry.is_none()
                    && self.is_pmd_candidate(mm, entry)
                    && phys.folio_order(entry.pfn()) == 9
            })
            .collect()
    }

    /// Collects one block whole (`migrate_vma_collect_huge_pmd`): a
    /// COMPOUND word for the folio, behind one PMD migration entry. A
    /// folio whose lock is taken is skipped (zeros), as Linux skips it.
    /// Other mappings and pins are the unmap step's business, as in Linux:
    /// PMDs elsewhere (after fork) become migration entries too, anything
    /// else (a pin, a PTE mapping of part of the folio) puts it back.
    pub(super) fn collect_block(&mut self, mm: &Mm, block: u64) {
        let phys = mm.phys();
        let i = self.index(block);
        let slot = mm.pgtable().find(block);
        let entry = slot.load();
        if slot.level() != Level::Pmd || entry.is_none() || !self.is_pmd_candidate(mm, entry) {
            return;
        }
        let head = entry.pfn();
        if !phys.try_get(head) {
            return;
        }
        let is_fault_page = self.fault_page == Some(head);
        if !is_fault_page && !phys.meta(head).try_lock() {
            phys.put(head);
            return;
        }
        let write = entry.is_write() || entry.swap_kind() == Some(SwapKind::DevicePrivateWrite);
        let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
        if slot.compare_exchange(entry, Entry::swap(kind, head.0, true)).is_err() {
            if !is_fault_page {
                phys.meta(head).unlock();
            }
            phys.put(head);
            return;
        }
        if entry.is_dirty() {
            phys.meta(head).set_flags(PageFlags::DIRTY);
        }
        phys.map_sub(head, 1);
        self.src[i] =
            migrate_pfn(head) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND | if write { MIGRATE_PFN_WRITE } else { 0 };
        self.cpages += 1;
    }

    /// For each compound entry whose destination is not compound (the
    /// driver fell back to 4K pages): splits the source so the entry
    /// becomes 512 ordinary ones (`migrate_vma_split_unmapped_folio`).
    pub(super) fn expand_fallbacks(&mut self, mm: &Mm) {
        for i in 0..self.src.len() {
            let word = self.src[i];
            // No destination: `pages` clears MIGRATE and nothing is split
            // (Linux's first test, before any compound case).
            let has_dst = migrate_pfn_to_pfn(self.dst[i]).is_some();
            if word & MIGRATE_PFN_MIGRATE == 0 || word & MIGRATE_PFN_COMPOUND == 0 || !has_dst {
                continue;
            }
            if self.dst[i] & MIGRATE_PFN_COMPOUND != 0 {
                continue;
            }
            let va = self.start + ((i as u64) << PAGE_SHIFT);
            let Some(head) = migrate_pfn_to_pfn(word) else {
                // A hole: each 4K destination is inserted on its own.
                let zero = mm.pgtable().find(va);
                let entry = zero.load();
                if zero.level() == Level::Pmd && entry.is_present() {
                    let _ = crate::huge::split_huge_leaf(mm, zero, entry);
                }
                for k in 0..NR {
                    self.src[i + k] = MIGRATE_PFN_MIGRATE;
                }
                continue;
            };
            let slot = mm.pgtable().find(va);
            let entry = slot.load();
            let ours = slot.level() == Level::Pmd
                && entry.swap_kind().is_some_and(|k| k.is_migration())
                && entry.pfn() == head;
            let refs = 2 + u32::from(self.fault_page == Some(head));
            // Freeze first so nothing can change while the PMD migration
            // entry becomes 512 PTE ones; the folio is split only then.
            let frozen = ours && mm.phys().ref_freeze(head, refs);
            let split = frozen && mm.pgtable().split_leaf(slot, entry).ok() == Some(true);
            if frozen {
                if split {
                    split_frozen(mm, head);
                }
                mm.phys().ref_unfreeze(head, refs);
            }
            if !split {
                // Cannot split: the block stays where it is.
                self.src[i] &= !MIGRATE_PFN_MIGRATE;
                continue;
            }
            let write = word & MIGRATE_PFN_WRITE;
            for k in 0..NR {
                self.src[i + k] = migrate_pfn(head.add(k as u64)) | MIGRATE_PFN_MIGRATE | write;
            }
        }
    }
}

/// Splits a frozen, isolated folio (one collection reference and its one
/// mapping behind migration entries per page) into order-0 pages with
/// those two references each, every page locked as the 4K path expects;
/// the caller unfreezes the head.
fn split_frozen(mm: &Mm, head: Pfn) {
    let phys = mm.phys();
    let flags = phys.meta(head).flags();
    for k in (1..NR as u64).rev() {
        phys.split_off_page(head.add(k), 2, flags | PageFlags::LOCKED);
    }
    phys.split_off_page(head, 0, flags | PageFlags::LOCKED);
}
