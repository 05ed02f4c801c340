//! Splitting huge leaves: a PMD (or PUD) leaf becomes a table of smaller
//! leaves that map the same frames, announced as a CLEAR invalidation of the
//! whole leaf, as Linux's `__split_huge_pmd` does.
//!
//! A file-backed leaf (fs-dax, a shmem THP) is removed instead: the rest
//! refaults. The folio itself stays compound: each smaller leaf takes its own
//! reference and mapcount share (`folio_ref_add(folio, HPAGE_PMD_NR - 1)`).
//! The huge zero page splits into 4K zero-page entries (in an anonymous
//! VMA; in a DAX one it goes whole, [`split_huge_edge`]); a PMD migration
//! entry splits into 512 PTE migration entries, which the migrator restores
//! one by one.
//!
//! Linux: `mm/huge_memory.c` (`__split_huge_pmd_locked`,
//! `__split_huge_zero_page_pmd`).

use hmm_pagetable::{Entry, LeafFlags, Level, Slot};
use hmm_types::{Event, PMD_SIZE};

use crate::error::MmError;
use crate::mm::Mm;
use crate::phys::{MemoryType, PageFlags};
use crate::vma::VmaTree;
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
    let page_cache = entry.is_present()
        && !entry.is_special()
        && !phys.is_zero_pfn(entry.pfn())
        && phys.meta(phys.folio_head(entry.pfn())).flags().contains(PageFlags::SHMEM);
    let split = if dax || page_cache {
        // A DAX leaf or a shmem THP's is not split into smaller entries:
        // it is removed whole and the remaining part refaults, as
        // `__split_huge_pmd` does for file-backed leaves (the folio stays
        // whole in the page cache).
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
    } else if (entry.is_present() && !entry.is_special()) || entry.swap_kind().is_some_and(|k| k.is_device_private()) {
        // A THP, or a device-private PMD: each part maps one page of the
        // folio and holds its own reference and mapcount share.
        let done = split_counted(mm, slot, entry)?;
        if done && !entry.is_present() {
            // The device folio splits too when nothing else holds it (as
            // the driver's `folio_split` lets Linux do), so each page can
            // later move, be unmapped or be copied on its own.
            phys.split_folio(entry.pfn(), hmm_pagetable::ENTRIES_PER_TABLE as u32);
        }
        done
    } else {
        pt.split_leaf(slot, entry)?
    };
    invalidation.end();
    Ok(split)
}

/// Splits a leaf whose parts each hold a reference and a mapcount share.
///
/// `entry` was read without holding its folio: the folio may have been
/// unmapped, freed and reused since. References are therefore only added
/// once the folio is pinned speculatively and the slot is seen to still
/// map it; adding them blindly would resurrect a free frame or land on its
/// next owner, and undoing them would free it (again).
fn split_counted(mm: &Mm, slot: Slot<'_>, entry: Entry) -> Result<bool, MmError> {
    let phys = mm.phys();
    if !phys.try_get(entry.pfn()) {
        return Ok(false);
    }
    if slot.load() != entry {
        phys.put(entry.pfn());
        return Ok(false);
    }
    let extra = hmm_pagetable::ENTRIES_PER_TABLE as u32 - 1;
    // The speculative reference is one of the parts'. Publish the parts'
    // references before the parts themselves, so a concurrent zap of one
    // part can never free the folio.
    phys.get_many(entry.pfn(), extra - 1);
    phys.map_add(entry.pfn(), extra as i32);
    let done = mm.pgtable().split_leaf(slot, entry);
    if !matches!(done, Ok(true)) {
        phys.map_sub(entry.pfn(), extra as i32);
        phys.put_many(entry.pfn(), extra);
    }
    Ok(done?)
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

/// [`split_huge_at`] at an edge inside `vmas`: the huge zero page of a VMA
/// that is not anonymous (an fs-dax hole read by a PMD fault) is not split
/// into 4K zero-page entries but dropped whole, and the rest refaults (a
/// whole 2 MiB block inside one VMA again maps the huge zero page), as
/// `__split_huge_pmd_locked` clears every leaf of a non-anonymous VMA.
/// Measured in the 7.3.4 guest: `scenarios/device/dax_huge_zero_split.hmm`.
///
/// A VMA split at `va` also tells the subscribers the whole 2 MiB block
/// around it is cleared when the VMA covers that block and a PMD table
/// maps it, even with no huge leaf there: `split_huge_pmd_if_needed` calls
/// `__split_huge_pmd`, which starts its CLEAR before it looks at the PMD
/// (measured in the 7.3.4 guest: `scenarios/device/split_vma_clears_pmd_block.hmm`).
pub(crate) fn split_huge_edge(mm: &Mm, vmas: &VmaTree, va: u64) -> Result<(), MmError> {
    let Some(vma) = vmas.lookup(va) else { return split_huge_at(mm, va) };
    if !vma.is_anonymous() {
        drop_huge_zero_at(mm, va);
    }
    let block = va & !(PMD_SIZE - 1);
    let splits = vma.start < va && va % PMD_SIZE != 0 && vma.start <= block && block + PMD_SIZE <= vma.end;
    let slot = mm.pgtable().find(va);
    let huge = slot.level() > Level::Pte && slot.load().is_leaf(slot.level());
    if splits && !huge && slot.level() <= Level::Pmd {
        mm.notifiers().start(mm.id(), block, block + PMD_SIZE, Event::Clear).end();
    }
    split_huge_at(mm, va)
}

/// Removes the huge zero PMD straddling `va`, announced as CLEAR.
pub(crate) fn drop_huge_zero_at(mm: &Mm, va: u64) {
    let phys = mm.phys();
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    let size = slot.level().entry_bytes();
    if slot.level() != Level::Pmd || !entry.is_leaf(Level::Pmd) || va % size == 0 {
        return;
    }
    if !entry.is_present() || !phys.is_zero_pfn(entry.pfn()) {
        return;
    }
    let invalidation = mm.notifiers().start(mm.id(), slot.va(), slot.va() + size, Event::Clear);
    let mut gather = Gather::new();
    if slot.compare_exchange(entry, Entry::NONE).is_ok() {
        release_entry(phys, entry, &mut gather);
    }
    gather.free_after(phys, invalidation);
}

/// Splits every huge leaf mapping `va` until a PTE maps it
/// (`split_huge_pmd` as GUP's `FOLL_SPLIT_PMD` asks for it). A hole or a
/// non-leaf entry is left alone.
pub(crate) fn split_to_pte(mm: &Mm, va: u64) -> Result<(), MmError> {
    loop {
        let slot = mm.pgtable().find(va);
        let entry = slot.load();
        if slot.level() == Level::Pte || !entry.is_leaf(slot.level()) {
            return Ok(());
        }
        split_huge_leaf(mm, slot, entry)?;
    }
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{MadviseAdvice, MapFlags, Prot, PMD_SIZE};

    use super::split_huge_leaf;
    use crate::testing::{kernel, leaf};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    /// A fault or an edge split reads a huge leaf, then another thread's
    /// DONTNEED frees its THP and the frames are reused: splitting the
    /// stale leaf must find the slot changed and touch no folio.
    #[test]
    fn splitting_a_stale_leaf_leaves_its_freed_or_reused_folio_alone() {
        let k = kernel(64, ThpMode::Always);
        let (mm, phys) = (k.create_mm().unwrap(), k.phys());
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        let (level, stale) = leaf(&mm, va);
        assert_eq!((level, phys.folio_order(stale.pfn())), (Level::Pmd, 9));
        let slot = mm.pgtable().find(va);
        mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
        let free = phys.free_frames();
        assert_eq!(split_huge_leaf(&mm, slot, stale), Ok(false));
        assert_eq!(phys.free_frames(), free, "the freed THP was freed again");

        let mut taken = Vec::new();
        while phys.folio_counts(stale.pfn()).0 == 0 {
            taken.push(phys.alloc_folio(0, false).unwrap());
        }
        assert_eq!(split_huge_leaf(&mm, slot, stale), Ok(false));
        assert_eq!(phys.folio_counts(stale.pfn()), (1, 0), "the head frame's new owner lost or gained references");
        taken.into_iter().for_each(|pfn| phys.put(pfn));
        assert_eq!(phys.free_frames(), free);
    }
}
