//! Faults that map a PMD-order page-cache folio (a shmem THP built by
//! MADV_COLLAPSE) with one PMD leaf, as `do_set_pmd` does from
//! `finish_fault` or `filemap_map_pages`: when the page table of the
//! block does not exist yet, the folio covers the block at its own index,
//! and the VMA can hold it (the aligned 2 MiB inside the VMA, the page
//! offset congruent, not VM_NOHUGEPAGE). Shmem's THP mode does not matter,
//! and the folio may reach past the end of the file (shmem maps a THP
//! across `i_size`); the faulting page itself must be inside the file.
//! A private mapping's write fault copies a 4 KiB page instead.
//!
//! Linux: `mm/memory.c` (`do_set_pmd`, `finish_fault`), `mm/filemap.c`
//! (`filemap_map_pmd`).

use hmm_pagetable::{EnsureError, Entry, Level};
use hmm_types::{VmFlags, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE};

use crate::error::FaultError;
use crate::fs::Inode;
use crate::mm::MmapLocked;
use crate::ops::cache_pmd_leaf;
use crate::vma::Vma;

/// Pages of a PMD-order folio.
const HPAGE_PMD_NR: u64 = PMD_SIZE >> PAGE_SHIFT;

/// Maps the PMD-order folio holding `va`'s page with a PMD leaf if it can;
/// `Ok(true)` when it did (or found one already there).
pub(super) fn try_map_pmd(
    locked: MmapLocked<'_>,
    vma: &Vma,
    inode: &Inode,
    va: u64,
    write: bool,
) -> Result<bool, FaultError> {
    let mm = locked.mm();
    let phys = mm.phys();
    let block = va & !(PMD_SIZE - 1);
    let congruent = (vma.start >> PAGE_SHIFT).wrapping_sub(vma.pgoff) % HPAGE_PMD_NR == 0;
    let uffd = vma.flags.intersects(VmFlags::UFFD_WP | VmFlags::UFFD_MINOR | VmFlags::UFFD_MISSING);
    if (write && !vma.flags.is_shared())
        || !congruent
        || !vma.covers(block, block + PMD_SIZE)
        || vma.flags.contains(VmFlags::NOHUGEPAGE)
        || uffd
    {
        return Ok(false);
    }
    let first = vma.page_index(block);
    let folio = {
        let state = inode.state.lock();
        if vma.page_index(va) >= state.size.div_ceil(PAGE_SIZE) || state.dax_locked.contains(&(first / HPAGE_PMD_NR)) {
            return Ok(false);
        }
        let Some(&pfn) = state.pages.get(&first) else { return Ok(false) };
        if phys.folio_order(pfn) != 9 || phys.folio_head(pfn) != pfn {
            return Ok(false);
        }
        // The reference for the mapping, taken while the cache holds the
        // folio.
        phys.get(pfn);
        pfn
    };
    let slot = match mm.pgtable().find(block) {
        s if s.level() == Level::Pmd && s.load().is_none() => s,
        s if s.level() > Level::Pmd => match mm.pgtable().ensure(block, Level::Pmd) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => {
                phys.put(folio);
                return Err(FaultError::Oom);
            }
            Err(EnsureError::Leaf(_)) => {
                phys.put(folio);
                return Ok(false);
            }
        },
        _ => {
            phys.put(folio);
            return Ok(false);
        }
    };
    phys.map_add(folio, 1);
    if slot.compare_exchange(Entry::NONE, cache_pmd_leaf(vma, folio, write)).is_err() {
        // A racing fault filled the slot: let the caller look again.
        phys.map_sub(folio, 1);
        phys.put(folio);
        return Ok(false);
    }
    Ok(true)
}
