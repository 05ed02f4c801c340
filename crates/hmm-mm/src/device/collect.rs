//! `setup`'s collection walk: what each page-table state of the range
//! contributes to `src` (Linux 7.3 rules, delta §3.2), and the splitting
//! of the huge folios Linux splits before collecting their pages one by
//! one.
//!
//! * A hole (an empty entry at any level, as the walker reports it) in an
//!   anonymous VMA: one `MIGRATE` word per page, whatever the selection;
//!   with `COMPOUND` and a hole whose both ends are 2 MiB aligned, one
//!   `MIGRATE | COMPOUND` word and zeros. A hole larger than one PMD (an
//!   empty PUD) gives one compound word for all of it, as Linux does.
//! * The huge zero PMD: a hole (with `SYSTEM`), not split.
//! * A PMD-mapped THP (system or device-coherent memory alike): skipped
//!   whole (zeros, no split) without `SYSTEM` or when its lock is taken; collected whole by `compound.rs` when
//!   `COMPOUND` covers it; otherwise split and collected per page.
//! * A device-private PMD: the same, with `DEVICE_PRIVATE` and the owner.
//! * A PTE: `isolate` (system pages with `SYSTEM`, coherent pages and
//!   device-private entries of the owner with their selection).
//!
//! `cpages` counts words, not pages: a compound word counts one.
//!
//! Linux: `migrate_vma_collect`, `migrate_vma_collect_hole`,
//! `migrate_vma_collect_huge_pmd`, `migrate_vma_collect_pmd`,
//! `migrate_vma_split_folio` (`mm/migrate_device.c`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, Level, SwapKind, Visit};
use hmm_types::{Pfn, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_leaf;
use crate::mm::Mm;
use crate::phys::{MemoryType, PageFlags};
use crate::rmap::split_folio_if_uniform;
use crate::vma::Vma;

use super::migrate_vma::{
    migrate_pfn, MigrateSelect, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE,
};

impl MigrateVma {
    /// `migrate_vma_collect`: one word per page; collected pages get a
    /// reference, the page lock and a migration entry. The blocks in
    /// `whole` were collected (or skipped) by `collect_block`.
    pub(super) fn collect(&mut self, mm: &Mm, vma: &Vma, whole: &[u64]) {
        let anon = vma.is_anonymous();
        let (start, end) = (self.start, self.end);
        let phys = mm.phys();
        let _ = mm.pgtable().walk(start, end, |visit| {
            match visit {
                Visit::Hole { start: a, end: b, .. } => self.collect_hole(a, b, anon),
                Visit::Slot { slot, entry } if slot.level() > Level::Pte => {
                    let a = slot.va().max(start);
                    let b = (slot.va() + slot.level().entry_bytes()).min(end);
                    let zero = entry.is_present() && phys.is_zero_pfn(entry.pfn());
                    // What `split_leaves` left whole is a skip, except the
                    // huge zero page, which is a hole.
                    if !whole.contains(&slot.va()) && zero && self.flags.contains(MigrateSelect::SYSTEM) {
                        self.collect_hole(a, b, anon);
                    }
                }
                Visit::Slot { slot, entry } => {
                    let va = slot.va();
                    if entry.is_none() {
                        self.collect_hole(va, va + PAGE_SIZE, anon);
                    } else if let Some(word) = self.isolate(mm, slot, entry) {
                        let i = self.index(va);
                        self.src[i] = word;
                        self.cpages += 1;
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }

    /// The hole rule (`migrate_vma_collect_hole`) over `[a, b)`: anonymous
    /// VMAs only, with no selection flag needed.
    fn collect_hole(&mut self, a: u64, b: u64, anon: bool) {
        if !anon {
            return;
        }
        let aligned = a % PMD_SIZE == 0 && b % PMD_SIZE == 0;
        if self.flags.contains(MigrateSelect::COMPOUND) && aligned {
            let i = self.index(a);
            self.src[i] = MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND;
            self.cpages += 1;
            return;
        }
        for va in (a..b).step_by(PAGE_SIZE as usize) {
            let i = self.index(va);
            self.src[i] = MIGRATE_PFN_MIGRATE;
            self.cpages += 1;
        }
    }

    pub(super) fn isolate(&self, mm: &Mm, slot: hmm_pagetable::Slot<'_>, entry: Entry) -> Option<u64> {
        let phys = mm.phys();
        let (pfn, write) = if entry.is_present() {
            let pfn = entry.pfn();
            if phys.is_zero_pfn(pfn) {
                return self.flags.contains(MigrateSelect::SYSTEM).then_some(MIGRATE_PFN_MIGRATE);
            }
            if entry.is_special() {
                return None;
            }
            let wanted = match phys.memory_type(pfn) {
                MemoryType::System => self.flags.contains(MigrateSelect::SYSTEM),
                MemoryType::DeviceCoherent => {
                    self.flags.contains(MigrateSelect::DEVICE_COHERENT) && self.owned(mm, pfn)
                }
                _ => false,
            };
            if !wanted || phys.folio_order(pfn) != 0 {
                return None;
            }
            (pfn, entry.is_write())
        } else {
            let kind = entry.swap_kind()?;
            let wanted = kind.is_device_private()
                && self.flags.contains(MigrateSelect::DEVICE_PRIVATE)
                && self.owned(mm, entry.pfn());
            if !wanted {
                return None;
            }
            (entry.pfn(), kind.is_write())
        };
        if !phys.try_get(pfn) {
            return None;
        }
        let is_fault_page = self.fault_page == Some(pfn);
        if !is_fault_page && !phys.meta(pfn).try_lock() {
            phys.put(pfn);
            return None;
        }
        let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
        if slot.compare_exchange(entry, Entry::swap(kind, pfn.0, false)).is_err() {
            if !is_fault_page {
                phys.meta(pfn).unlock();
            }
            phys.put(pfn);
            return None;
        }
        if entry.is_dirty() {
            phys.meta(pfn).set_flags(PageFlags::DIRTY);
        }
        // The mapping's reference now belongs to the migration entry.
        phys.map_sub(pfn, 1);
        Some(migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE | if write { MIGRATE_PFN_WRITE } else { 0 })
    }

    pub(super) fn owned(&self, mm: &Mm, pfn: Pfn) -> bool {
        mm.phys().pagemap(pfn).and_then(|p| p.owner()) == Some(self.pgmap_owner)
    }

    /// Whether the huge leaf `entry` is a candidate of this migration
    /// (`migrate_vma_collect_huge_pmd` before the lock): a present huge PMD
    /// needs `SYSTEM` whatever memory it maps, a device-private PMD needs
    /// `DEVICE_PRIVATE` and the owner; the huge zero page is a hole, not a
    /// candidate. So a device-coherent THP is skipped whole by a migration
    /// selecting `DEVICE_COHERENT` alone (7.3: dmirror's
    /// `dmirror_migrate_to_system` then collects nothing of it).
    pub(super) fn is_pmd_candidate(&self, mm: &Mm, entry: Entry) -> bool {
        let phys = mm.phys();
        if entry.is_present() {
            if phys.is_zero_pfn(entry.pfn()) || entry.is_special() {
                return false;
            }
            self.flags.contains(MigrateSelect::SYSTEM)
        } else {
            entry.swap_kind().is_some_and(|k| k.is_device_private())
                && self.flags.contains(MigrateSelect::DEVICE_PRIVATE)
                && self.owned(mm, entry.pfn())
        }
    }

    /// Whether the folio headed by `head` can be locked now (the fault's
    /// own folio is locked by the fault): Linux skips the whole PMD when
    /// its trylock fails.
    pub(super) fn can_lock(&self, mm: &Mm, head: Pfn) -> bool {
        if self.fault_page.is_some_and(|p| mm.phys().folio_head(p) == head) {
            return true;
        }
        let meta = mm.phys().meta(head);
        let locked = meta.try_lock();
        if locked {
            meta.unlock();
        }
        locked
    }

    /// Splits the huge leaves of `[start, end)` that Linux splits before
    /// collecting per page (a candidate THP or device-private PMD not
    /// collected whole, whose lock is free): a PMD-mapped folio becomes
    /// PTEs and, if nothing else holds it, order-0 pages (a folio that
    /// cannot split is then skipped page by page, as Linux skips it).
    /// Everything else stays whole: skipped PMDs, the huge zero page (a
    /// hole) and the blocks in `whole`. Then the selected large folios
    /// mapped by PTEs are split too.
    pub(super) fn split_leaves(&self, mm: &Mm, whole: &[u64]) -> Result<(), MmError> {
        let mut leaves = Vec::new();
        let _ = mm.pgtable().walk(self.start, self.end, |visit| {
            if let Visit::Slot { slot, entry } = visit {
                if slot.level() == Level::Pmd && !entry.is_none() && !whole.contains(&slot.va()) {
                    leaves.push((slot.va(), entry));
                }
            }
            ControlFlow::<()>::Continue(())
        });
        let phys = mm.phys();
        for (va, entry) in leaves {
            if !self.is_pmd_candidate(mm, entry) || !self.can_lock(mm, phys.folio_head(entry.pfn())) {
                continue;
            }
            let slot = mm.pgtable().find(va);
            if slot.level() != Level::Pmd || slot.load() != entry {
                continue;
            }
            split_huge_leaf(mm, slot, entry)?;
            // Best effort, as Linux's split_folio.
            split_folio_if_uniform(mm.kernel(), phys.folio_head(entry.pfn()));
        }
        self.split_pte_mapped_folios(mm);
        Ok(())
    }

    /// Splits the large folios mapped by PTEs in the range (a THP whose
    /// PMD was split by mprotect, mremap or munmap) whose pages this
    /// migration selects, so they can be collected one by one; best
    /// effort, as Linux's `migrate_vma_split_folio`.
    fn split_pte_mapped_folios(&self, mm: &Mm) {
        let phys = mm.phys();
        let mut heads = Vec::new();
        let _ = mm.pgtable().walk(self.start, self.end, |visit| {
            if let Visit::Slot { slot, entry } = visit {
                let selected = slot.level() == Level::Pte
                    && entry.is_present()
                    && !entry.is_special()
                    && !phys.is_zero_pfn(entry.pfn())
                    && match phys.memory_type(entry.pfn()) {
                        MemoryType::System => self.flags.contains(MigrateSelect::SYSTEM),
                        MemoryType::DeviceCoherent => {
                            self.flags.contains(MigrateSelect::DEVICE_COHERENT) && self.owned(mm, entry.pfn())
                        }
                        _ => false,
                    };
                if selected && phys.folio_order(entry.pfn()) > 0 {
                    let head = phys.folio_head(entry.pfn());
                    if heads.last() != Some(&head) {
                        heads.push(head);
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        for head in heads {
            split_folio_if_uniform(mm.kernel(), head);
        }
    }
}
