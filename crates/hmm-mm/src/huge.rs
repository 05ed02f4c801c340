//! Splitting huge leaves: a PMD (or PUD) leaf becomes a table of smaller
//! leaves that map the same frames, announced as a CLEAR invalidation of the
//! whole leaf, as Linux's `__split_huge_pmd` does.
//!
//! The folio itself stays compound: each smaller leaf takes its own
//! reference and mapcount share (`folio_ref_add(folio, HPAGE_PMD_NR - 1)`).
//! The huge zero page splits into 4K zero-page entries; a PMD migration
//! entry splits into 512 PTE migration entries, which the migrator restores
//! one by one.
//!
//! Linux: `mm/huge_memory.c` (`__split_huge_pmd_locked`,
//! `__split_huge_zero_page_pmd`).

use hmm_pagetable::{Entry, LeafFlags, Level, Slot};
use hmm_types::Event;

use crate::error::MmError;
use crate::mm::Mm;
use crate::phys::MemoryType;
use crate::zap::{release_entry, Gather};

/// Splits the huge leaf `entry` held by `slot`. Returns `Ok(false)` if the
/// slot changed meanwhile (nothing done).
pub(crate) fn split_huge_leaf(mm: &Mm, slot: Slot<'_>, entry: Entry) -> Result<bool, MmError> {
    debug_assert!(slot.level() > Level::Pte && entry.is_leaf(slot.level()));
    let phys = mm.phys();
    let va = slot.va();
    let invalidation = mm.notifiers().start(mm.id(), va, va + slot.level().entry_bytes(), Event::Clear);
    let pt = mm.pgtable();
    let dax = entry.is_present() && matches!(phys.memory_type(entry.pfn()), MemoryType::FsDax | MemoryType::Generic);
    let split = if dax {
        // A DAX leaf is not split into smaller entries: it is removed whole
        // and the remaining part refaults, as `__split_huge_pmd` does for
        // file-backed leaves.
        let mut gather = Gather::new();
        let removed = slot.compare_exchange(entry, Entry::NONE).is_ok();
        if removed {
            release_entry(phys, entry, &mut gather);
        }
        gather.free_after(phys, invalidation);
        return Ok(removed);
    } else if entry.is_present() && phys.is_zero_pfn(entry.pfn()) {
        let flags = LeafFlags { special: true, accessed: entry.is_accessed(), ..LeafFlags::default() };
        let mut zero = Entry::present(phys.zero_pfn(), flags, false);
        if entry.is_protnone() {
            zero = zero.mkprotnone();
        }
        pt.split_leaf_with(slot, entry, |_| zero)?
    } else if entry.is_present() && !entry.is_special() {
        let extra = hmm_pagetable::ENTRIES_PER_TABLE as u32 - 1;
        // Publish the parts' references before the parts themselves, so a
        // concurrent zap of one part can never free the folio.
        phys.get_many(entry.pfn(), extra);
        phys.map_add(entry.pfn(), extra as i32);
        let done = pt.split_leaf(slot, entry)?;
        if !done {
            phys.map_sub(entry.pfn(), extra as i32);
            phys.put_many(entry.pfn(), extra);
        }
        done
    } else if entry.swap_kind().is_some_and(|k| k.is_device_private()) {
        // A device-private PMD: each part maps one page of the device folio
        // and holds its own reference, as for a THP.
        let extra = hmm_pagetable::ENTRIES_PER_TABLE as u32 - 1;
        phys.get_many(entry.pfn(), extra);
        phys.map_add(entry.pfn(), extra as i32);
        let done = pt.split_leaf(slot, entry)?;
        if !done {
            phys.map_sub(entry.pfn(), extra as i32);
            phys.put_many(entry.pfn(), extra);
        } else {
            // The device folio splits too when nothing else holds it (as
            // the driver's `folio_split` lets Linux do), so each page can
            // later move, be unmapped or be copied on its own.
            phys.split_folio(entry.pfn());
        }
        done
    } else {
        pt.split_leaf(slot, entry)?
    };
    invalidation.end();
    Ok(split)
}

/// Makes sure no huge leaf straddles `va`: splits the leaf containing it
/// (repeatedly, PUD then PMD) unless `va` is on its edge.
pub(crate) fn split_huge_at(mm: &Mm, va: u64) -> Result<(), MmError> {
    loop {
        let slot = mm.pgtable().find(va);
        let entry = slot.load();
        if slot.level() == Level::Pte || !entry.is_leaf(slot.level()) || va % slot.level().entry_bytes() == 0 {
            return Ok(());
        }
        split_huge_leaf(mm, slot, entry)?;
    }
}
