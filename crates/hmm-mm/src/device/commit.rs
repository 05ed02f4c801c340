//! `MigrateVma::pages`, the commit point (spec §4.6): decides, entry by
//! entry, which pages really move. Holes and zero pages get their new page
//! installed now (announced as MIGRATE with the owner); real sources move
//! in `finalize`.
//!
//! Linux: `migrate_vma_pages`, `migrate_vma_insert_page`.

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, SwapKind};
use hmm_types::{Event, VmFlags, PAGE_SHIFT};

use crate::mm::{Mm, MmapLocked};
use crate::notify::Invalidation;
use crate::phys::{MemoryType, PageFlags};
use crate::vma::Vma;

use super::migrate_vma::{migrate_pfn_to_pfn, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE};

const ANON_FLAGS: PageFlags =
    PageFlags::ANON.union(PageFlags::SWAPBACKED).union(PageFlags::UPTODATE).union(PageFlags::ANON_EXCLUSIVE);

impl MigrateVma {
    /// Commits the migration (`migrate_vma_pages`). Afterwards
    /// `src[i] & MIGRATE_PFN_MIGRATE` says which pages really move: a
    /// missing destination, a file-backed source going to device memory,
    /// or a hole a CPU fault filled meanwhile clear it.
    pub fn pages(&mut self, locked: MmapLocked<'_>) {
        let mm = locked.mm();
        let Some(vma) = locked.vmas().lookup(self.start).filter(|v| self.end <= v.end) else {
            // The VMA went away (munmap under a write lock cannot happen
            // while the caller holds the read lock): nothing can commit.
            self.src.iter_mut().for_each(|w| *w &= !MIGRATE_PFN_MIGRATE);
            return;
        };
        let phys = mm.phys();
        self.expand_fallbacks(mm);
        let mut invalidation: Option<Invalidation> = None;
        for i in 0..self.src.len() {
            if self.src[i] & MIGRATE_PFN_MIGRATE == 0 {
                continue;
            }
            if self.dst[i] & MIGRATE_PFN_COMPOUND != 0 && self.src[i] & MIGRATE_PFN_COMPOUND == 0 {
                // A large destination for a small source.
                self.src[i] &= !MIGRATE_PFN_MIGRATE;
                continue;
            }
            let Some(dst) = migrate_pfn_to_pfn(self.dst[i]) else {
                self.src[i] &= !MIGRATE_PFN_MIGRATE;
                continue;
            };
            let va = self.start + ((i as u64) << PAGE_SHIFT);
            let to_device = phys.memory_type(dst).is_zone_device();
            match migrate_pfn_to_pfn(self.src[i]) {
                None => {
                    if invalidation.is_none() {
                        invalidation =
                            Some(mm.notifiers().start_owned(mm.id(), va, self.end, Event::Migrate, self.pgmap_owner));
                    }
                    let huge = self.src[i] & MIGRATE_PFN_COMPOUND != 0;
                    if !insert_page(mm, vma, va, dst, huge) {
                        self.src[i] &= !MIGRATE_PFN_MIGRATE;
                    }
                }
                Some(src) => {
                    let anon = phys.meta(src).flags().contains(PageFlags::ANON)
                        || phys.memory_type(src) == MemoryType::DevicePrivate;
                    if to_device && !anon {
                        self.src[i] &= !MIGRATE_PFN_MIGRATE;
                        continue;
                    }
                    let dirty = phys.meta(src).flags() & PageFlags::DIRTY;
                    phys.meta(dst).set_flags(ANON_FLAGS | dirty);
                    crate::rmap::folio_copy_rmap(phys, dst, src);
                }
            }
        }
        drop(invalidation);
    }
}

/// Installs `dst` where a hole or the zero page was
/// (`migrate_vma_insert_page`): anonymous VMAs only; loses to a CPU fault
/// that filled the hole meanwhile.
fn insert_page(mm: &Mm, vma: &Vma, va: u64, dst: hmm_types::Pfn, huge: bool) -> bool {
    let phys = mm.phys();
    if !vma.is_anonymous() {
        return false;
    }
    let level = if huge { Level::Pmd } else { Level::Pte };
    if !huge {
        // A 4K page over the huge zero page splits it first.
        let pmd = mm.pgtable().find(va);
        let entry = pmd.load();
        if pmd.level() == Level::Pmd && entry.is_present() && phys.is_zero_pfn(entry.pfn()) {
            let _ = crate::huge::split_huge_leaf(mm, pmd, entry);
        }
    }
    let slot = match mm.pgtable().ensure(va, level) {
        Ok(slot) => slot,
        Err(EnsureError::NoMem(_) | EnsureError::Leaf(_)) => return false,
    };
    let old = slot.load();
    let replaceable = old.is_none() || (old.is_present() && phys.is_zero_pfn(old.pfn()));
    if !replaceable {
        return false;
    }
    let writable = vma.flags.contains(VmFlags::WRITE);
    crate::rmap::folio_add_new_anon_rmap(mm, vma, dst, va);
    let new = if phys.memory_type(dst) == MemoryType::DevicePrivate {
        phys.meta(dst).set_flags(ANON_FLAGS);
        Entry::swap(if writable { SwapKind::DevicePrivateWrite } else { SwapKind::DevicePrivateRead }, dst.0, huge)
    } else {
        phys.meta(dst).set_flags(ANON_FLAGS);
        Entry::present(dst, LeafFlags { write: writable, dirty: writable, accessed: true, special: false }, huge)
    };
    phys.get(dst);
    phys.map_add(dst, 1);
    if slot.compare_exchange(old, new).is_ok() {
        return true;
    }
    phys.map_sub(dst, 1);
    phys.put(dst);
    false
}
