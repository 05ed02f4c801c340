//! Faults on fs-dax file mappings: the file's blocks are device frames,
//! mapped directly. A fault whose aligned 2 MiB fits the VMA and the file
//! tries a PMD first (`try_pmd`); everything else goes through the 4K file
//! path (`file.rs`), which for DAX maps device frames instead of cached
//! pages. A fault on a device whose pagemap was killed is SIGBUS.
//!
//! A PMD read of a whole hole maps the huge zero page read-only and
//! allocates nothing; a shared write there allocates the block, unmaps the
//! huge zero page from every mapping of the file and maps the block. A
//! private mapping maps holes and blocks by PMD leaves too, read-only; its
//! write faults fall back to 4K copies, the PMD leaf zapped first (a DAX
//! PMD is removed whole, never split). A 4K fault of a block the huge zero
//! page stands for downgrades it: unmapped everywhere, PTEs from then on.
//!
//! Linux: `fs/dax.c` (`dax_iomap_pmd_fault`, `dax_fault_check_fallback`,
//! `dax_pmd_load_hole`, `grab_mapping_entry`, `dax_insert_entry`,
//! `dax_iomap_pte_fault`), `mm/memory.c` (`wp_huge_pmd`).

use hmm_pagetable::{Entry, LeafFlags, Level, Slot};
use hmm_types::{Event, PAGE_SIZE, PMD_SIZE};

use crate::error::FaultError;
use crate::fs::dax::{DaxShared, PmdMapping};
use crate::fs::truncate::unmap_mapping_pages;
use crate::fs::Inode;
use crate::mm::{Mm, MmapLocked};
use crate::vma::Vma;
use crate::zap::{release_entry, Gather};

use super::file;

/// File pages per 2 MiB block.
const BLOCK_PAGES: u64 = PMD_SIZE / PAGE_SIZE;

pub(super) fn fault(
    locked: MmapLocked<'_>,
    vma: &Vma,
    inode: &Inode,
    fs: &DaxShared,
    va: u64,
    write: bool,
) -> Result<(), FaultError> {
    let mm = locked.mm();
    if !fs.pmem().pagemap().is_alive() {
        return Err(FaultError::Sigbus("the DAX device is gone"));
    }
    let block = vma.page_index(va) / BLOCK_PAGES;
    // dax_fault_check_fallback: a private write copies by PTEs.
    let cow = write && !vma.flags.is_shared();
    if !cow && pmd_possible(vma, va) && try_pmd(mm, inode, fs, block, va, write)? {
        return Ok(());
    }
    // 4K entries from here: a PMD leaf over `va` goes first (wp_huge_pmd's
    // __split_huge_pmd removes a DAX leaf whole), and a huge zero page
    // standing for the block goes from every mapping (PMD downgrade).
    zap_pmd_leaf(mm, va);
    if fs.downgrade_zero_pmd(inode, block) {
        unmap_mapping_pages(inode, block * BLOCK_PAGES, (block + 1) * BLOCK_PAGES, false)
            .map_err(|_| FaultError::Oom)?;
    }
    file::fault(locked, vma, inode, va, write)
}

/// A PMD leaf fits: the VMA covers the aligned 2 MiB around `va` and that
/// block starts on a 2 MiB boundary of the file.
fn pmd_possible(vma: &Vma, va: u64) -> bool {
    let start = va & !(PMD_SIZE - 1);
    vma.covers(start, start + PMD_SIZE) && vma.page_index(start) % BLOCK_PAGES == 0
}

/// Installs (or upgrades) a PMD leaf for file block `block`. `Ok(false)`
/// means "use 4K entries".
fn try_pmd(mm: &Mm, inode: &Inode, fs: &DaxShared, block: u64, va: u64, write: bool) -> Result<bool, FaultError> {
    let phys = mm.phys();
    loop {
        let pmd = mm.pgtable().ensure(va, Level::Pmd).map_err(|_| FaultError::Oom)?;
        let entry = pmd.load();
        let is_zero = entry.is_leaf(Level::Pmd) && entry.is_present() && phys.is_zero_pfn(entry.pfn());
        if entry.is_leaf(Level::Pmd) && !is_zero {
            if !write || entry.is_write() {
                return Ok(true);
            }
            // A shared mapping: the block itself becomes writable.
            if pmd.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok() {
                return Ok(true);
            }
            continue;
        }
        if is_zero && !write {
            return Ok(true);
        }
        if !entry.is_none() && !is_zero {
            return Ok(false);
        }
        let mapping =
            fs.pmd_entry(inode, block, write).map_err(|_| FaultError::Sigbus("DAX block allocation failed"))?;
        let head = match mapping {
            PmdMapping::Fallback => return Ok(false),
            PmdMapping::Block { replaced_zero: true, .. } => {
                // dax_insert_entry: the huge zero page goes from every
                // mapping of the block (this one too) before the block
                // is mapped.
                unmap_mapping_pages(inode, block * BLOCK_PAGES, (block + 1) * BLOCK_PAGES, false)
                    .map_err(|_| FaultError::Oom)?;
                continue;
            }
            PmdMapping::Block { .. } | PmdMapping::HugeZero if is_zero => {
                // Another writer replaced the huge zero page after this
                // mapping installed it: ours is stale.
                take_back(mm, pmd, entry);
                continue;
            }
            PmdMapping::HugeZero => {
                let flags = LeafFlags { special: true, accessed: true, ..LeafFlags::default() };
                let zero = Entry::present(phys.huge_zero_pfn(), flags, true);
                if pmd.compare_exchange(Entry::NONE, zero).is_err() {
                    continue;
                }
                if fs.is_zero_pmd(inode, block) {
                    return Ok(true);
                }
                // Replaced (written, downgraded or truncated) meanwhile.
                take_back(mm, pmd, zero);
                continue;
            }
            PmdMapping::Block { head, replaced_zero: false } => head,
        };
        let new = Entry::present(head, LeafFlags { write, dirty: write, accessed: true, special: false }, true);
        phys.get(head);
        phys.map_add(head, 1);
        if pmd.compare_exchange(Entry::NONE, new).is_err() {
            phys.map_sub(head, 1);
            phys.put(head);
            continue;
        }
        if (block + 1) * BLOCK_PAGES <= inode.size().div_ceil(PAGE_SIZE) {
            return Ok(true);
        }
        // Truncated meanwhile: take the leaf back unless truncation did.
        take_back(mm, pmd, new);
        return Err(FaultError::Sigbus("access beyond end of file"));
    }
}

/// Removes the PMD leaf `entry` from `pmd` (if it is still there), inside
/// a CLEAR invalidation of its 2 MiB.
fn take_back(mm: &Mm, pmd: Slot<'_>, entry: Entry) {
    let start = pmd.va() & !(PMD_SIZE - 1);
    let invalidation = mm.notifiers().start(mm.id(), start, start + PMD_SIZE, Event::Clear);
    let mut gather = Gather::new();
    if pmd.compare_exchange(entry, Entry::NONE).is_ok() {
        release_entry(mm.phys(), entry, &mut gather);
    }
    gather.free_after(mm.phys(), invalidation);
}

/// Zaps the PMD leaf mapping `va`, if one does (`__split_huge_pmd` of a
/// DAX VMA: the leaf goes whole, the range refaults by PTEs).
fn zap_pmd_leaf(mm: &Mm, va: u64) {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    if slot.level() == Level::Pmd && entry.is_leaf(Level::Pmd) {
        take_back(mm, slot, entry);
    }
}
