//! `setup`'s unmap step: mappings of collected pages in other address
//! spaces become migration entries too, and pages pinned beyond what the
//! migration accounts for are put back (`src` 0). `cpages` is then the
//! number of words still `MIGRATE`, holes and compound words counting one.
//!
//! Linux: `migrate_device_unmap`, `migrate_vma_check_page`,
//! `try_to_migrate` (`mm/migrate_device.c`, `mm/rmap.c`).

use core::ops::ControlFlow;
use std::sync::Arc;

use hmm_pagetable::{Entry, SwapKind};
use hmm_types::{Event, Pfn, PAGE_SHIFT};

use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::rmap::{migration_entry_installed, rmap_walk};

use super::migrate_vma::{migrate_pfn_to_pfn, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE};

impl MigrateVma {
    /// `try_to_migrate` for pages mapped elsewhere too (other processes
    /// after fork, at whatever address mremap moved them to): each is
    /// found through the reverse map and replaced by a migration entry.
    pub(super) fn unmap_others(&mut self, mm: &Mm) {
        let phys = mm.phys();
        let kernel = mm.kernel();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            // The collection dropped this range's mapping: any left is elsewhere.
            if phys.folio_counts(pfn).1 == 0 {
                continue;
            }
            let own = (mm.id(), self.start + ((i as u64) << PAGE_SHIFT));
            // A compound word's folio is mapped whole by PMDs elsewhere too.
            let whole_pmd = self.src[i] & MIGRATE_PFN_COMPOUND != 0;
            let others = &mut self.others;
            let _ = rmap_walk(kernel, pfn, |other, _vma, va| {
                kernel.count_device_scan(1);
                if (other.id(), va) != own && unmap_one(other, va, pfn, whole_pmd).is_some() {
                    others.push((i, Arc::downgrade(other), va));
                }
                if phys.folio_counts(pfn).1 == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        }
    }

    /// `migrate_vma_unmap`'s pin check: a page with references beyond the
    /// collection's and its (now migration-entry) mapping's stays put.
    pub(super) fn unmap_pinned(&mut self, mm: &Mm) {
        let phys = mm.phys();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let others = self.others.iter().filter(|(j, _, _)| *j == i).count() as u32;
            let expected = 2 + others + u32::from(self.fault_page == Some(pfn));
            if phys.folio_counts(pfn).0 > expected {
                let va = self.start + ((i as u64) << PAGE_SHIFT);
                super::finalize::restore(mm, va, pfn, pfn);
                self.restore_others(mm, i, pfn, pfn);
                if self.fault_page != Some(pfn) {
                    phys.meta(pfn).unlock();
                }
                phys.put(pfn);
                self.src[i] = 0;
            }
        }
        self.cpages = self.src.iter().filter(|&&w| w & MIGRATE_PFN_MIGRATE != 0).count() as u64;
    }
}

/// Replaces the entry at `va` of `mm` (whose mmap lock the caller holds)
/// by a migration entry if it maps the order-0 page `pfn` (present or
/// device-private) with a PTE or, with `whole_pmd`, maps the 2 MiB folio
/// headed by `pfn` with a PMD; announced as `try_to_migrate_one` does:
/// CLEAR with no owner, so no mirror of that process may skip it. The
/// mapping's share of the page goes; its reference now belongs to the
/// migration entry, which is counted as in flight in `mm`. Returns whether
/// the mapping was writable, or `None` if nothing was replaced.
pub(super) fn unmap_one(mm: &Mm, va: u64, pfn: Pfn, whole_pmd: bool) -> Option<bool> {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    let huge = slot.level() == hmm_pagetable::Level::Pmd;
    // A PTE naming part of a large folio is left alone: moving one part
    // would leave the others mapping a folio about to be freed.
    let small = slot.level() == hmm_pagetable::Level::Pte && mm.phys().folio_order(pfn) == 0;
    let maps = entry.pfn() == pfn
        && (small || (huge && whole_pmd && slot.va() == va))
        && (entry.is_present() || entry.swap_kind().is_some_and(|k| k.is_device_private()));
    if !maps {
        return None;
    }
    let write = entry.is_write() || entry.swap_kind() == Some(SwapKind::DevicePrivateWrite);
    let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
    let invalidation = mm.notifiers().start(mm.id(), va, va + slot.level().entry_bytes(), Event::Clear);
    let swapped = slot.compare_exchange(entry, Entry::swap(kind, pfn.0, huge)).is_ok();
    invalidation.end();
    if !swapped {
        return None;
    }
    if entry.is_dirty() {
        mm.phys().meta(pfn).set_flags(PageFlags::DIRTY);
    }
    mm.phys().map_sub(pfn, 1);
    migration_entry_installed(mm);
    Some(write)
}
