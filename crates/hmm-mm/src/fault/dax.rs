//! Faults on fs-dax file mappings: the file's blocks are device frames,
//! mapped directly. A shared mapping whose 2 MiB block is (or can become) a
//! PMD entry gets a PMD leaf; everything else goes through the 4K file path
//! (`file.rs`), which for DAX maps device frames instead of cached pages.
//! A fault on a device whose pagemap was killed is SIGBUS.
//!
//! Linux: `fs/dax.c` (`dax_iomap_pmd_fault`, `dax_iomap_pte_fault`).

use hmm_pagetable::{Entry, LeafFlags, Level};
use hmm_types::{Event, PAGE_SIZE, PMD_SIZE};

use crate::error::FaultError;
use crate::fs::dax::DaxShared;
use crate::fs::Inode;
use crate::mm::{Mm, MmapLocked};
use crate::vma::Vma;
use crate::zap::{release_entry, Gather};

use super::file;

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
    if vma.flags.is_shared() && pmd_possible(vma, va) && try_pmd(mm, vma, inode, fs, va, write)? {
        return Ok(());
    }
    file::fault(locked, vma, inode, va, write)
}

/// A PMD leaf fits: the VMA covers the aligned 2 MiB around `va` and that
/// block starts on a 2 MiB boundary of the file.
fn pmd_possible(vma: &Vma, va: u64) -> bool {
    let start = va & !(PMD_SIZE - 1);
    vma.covers(start, start + PMD_SIZE) && vma.page_index(start) % 512 == 0
}

/// Installs (or upgrades) a PMD leaf. `Ok(false)` means "use 4K entries".
fn try_pmd(mm: &Mm, vma: &Vma, inode: &Inode, fs: &DaxShared, va: u64, write: bool) -> Result<bool, FaultError> {
    let phys = mm.phys();
    let start = va & !(PMD_SIZE - 1);
    let block = vma.page_index(start) / 512;
    loop {
        let pmd = mm.pgtable().ensure(va, Level::Pmd).map_err(|_| FaultError::Oom)?;
        let entry = pmd.load();
        if entry.is_leaf(Level::Pmd) {
            if !write || entry.is_write() {
                return Ok(true);
            }
            // A shared mapping: the block itself becomes writable.
            if pmd.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok() {
                return Ok(true);
            }
            continue;
        }
        if !entry.is_none() {
            return Ok(false);
        }
        let Some(head) = fs.pmd_entry(inode, block).map_err(|_| FaultError::Sigbus("DAX block allocation failed"))?
        else {
            return Ok(false);
        };
        let new = Entry::present(head, LeafFlags { write, dirty: write, accessed: true, special: false }, true);
        phys.get(head);
        phys.map_add(head, 1);
        if pmd.compare_exchange(Entry::NONE, new).is_err() {
            phys.map_sub(head, 1);
            phys.put(head);
            continue;
        }
        if (block + 1) * 512 <= inode.size().div_ceil(PAGE_SIZE) {
            return Ok(true);
        }
        // Truncated meanwhile: take the leaf back unless truncation did.
        let invalidation = mm.notifiers().start(mm.id(), start, start + PMD_SIZE, Event::Clear);
        let mut gather = Gather::new();
        if pmd.compare_exchange(new, Entry::NONE).is_ok() {
            release_entry(phys, new, &mut gather);
        }
        gather.free_after(phys, invalidation);
        return Err(FaultError::Sigbus("access beyond end of file"));
    }
}
