//! MADV_COLLAPSE: a synchronous THP collapse of every 2 MiB-aligned block
//! of a VMA piece. Owns the per-VMA rules and the per-block verdicts of
//! `madvise_collapse`; the block itself is collapsed by `anon.rs` (private
//! anonymous memory: a new PMD-mapped THP holding a copy of the pages) or
//! `file.rs` (shmem: a PMD-order page-cache folio, `collapse_file`).
//!
//! As `madvise_collapse` the VMA must be able to hold a PMD THP before
//! anything else (`thp_vma_allowable_order` with the collapse forced):
//! private anonymous memory or shmem (memfd, tmpfs, shared anonymous
//! memory, private mappings of them too), whatever the THP sysfs modes
//! say, not VM_NOHUGEPAGE, its page offset congruent with its address
//! modulo 2 MiB, and at least one whole aligned 2 MiB block inside it.
//! Otherwise the piece is EINVAL, even when it covers no aligned block.
//!
//! A block that cannot be collapsed either ends the call with its error
//! or, for Linux's "whitelisted" scan results, lets the next block be
//! tried and makes the call EINVAL at the end (`madvise_collapse_errno`).
//! These are Linux 7.3's decisions (checked in the 7.3.4 guest); where
//! 6.18 decides otherwise (a piece covering no block, a block without a
//! page table), docs/version-differences.md says how.
//!
//! Linux: `mm/khugepaged.c` (`madvise_collapse`, `hpage_collapse_scan_pmd`,
//! `hpage_collapse_scan_file`, `collapse_file`, `collapse_pte_mapped_thp`).

mod anon;
mod file;

pub(crate) use file::cache_pmd_leaf;

use hmm_types::{VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::fs::InodeKind;
use crate::mm::MmapWriteGuard;

/// What became of one 2 MiB block (Linux's `enum scan_result`, grouped by
/// what `madvise_collapse` does with it).
#[derive(Debug)]
enum Block {
    /// Collapsed now, or already PMD-mapped (`SCAN_SUCCEED`,
    /// `SCAN_PMD_MAPPED`).
    Collapsed,
    /// Not collapsed; the next block is tried and the call is EINVAL at
    /// the end (`SCAN_NO_PTE_TABLE`, `SCAN_PTE_NON_PRESENT`,
    /// `SCAN_PAGE_COUNT`, ... `last_fail`).
    Failed,
    /// Not collapsed; the call ends with this error (any other result).
    Stop(MmError),
}

/// MADV_COLLAPSE of `[start, end)`, one VMA piece, under the mmap write
/// lock.
pub(super) fn collapse_piece(guard: &mut MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let shmem = {
        let vma = guard.lookup(start).expect("a piece lies in a VMA");
        let pmd_pages = PMD_SIZE / PAGE_SIZE;
        let congruent = (vma.start / PAGE_SIZE).wrapping_sub(vma.pgoff) % pmd_pages == 0;
        let last_block = vma.end.saturating_sub(PMD_SIZE) & !(PMD_SIZE - 1);
        let holds_block = vma.end - vma.start >= PMD_SIZE && last_block >= vma.start;
        // Shmem (memfd, tmpfs, shared anonymous memory) may hold a THP
        // when collapsing is forced, whatever shmem_enabled says.
        let shmem = matches!(vma.file().map(|inode| inode.kind()), Some(InodeKind::PageCache));
        let capable = vma.is_anonymous() || shmem;
        if !capable || vma.flags.contains(VmFlags::NOHUGEPAGE) || !congruent || !holds_block {
            return Err(MmError::Invalid("MADV_COLLAPSE on a VMA that cannot hold a PMD THP"));
        }
        // An anonymous VMA that has no anon_vma yet (nothing was ever
        // written to it, a 4 KiB zero page needs none) may not hold a THP
        // outside a fault (`__thp_vma_allowable_orders`).
        if vma.is_anonymous() && vma.anon_vma.get().is_none() {
            return Err(MmError::Invalid("MADV_COLLAPSE in a VMA without an anon_vma"));
        }
        shmem
    };
    // The blocks from the first boundary at or after the start to the last
    // at or before the end. A piece covering none (inside one block, or
    // ending on the boundary its start rounds up to) succeeds, as in Linux
    // 7.3 (the 7.3.4 guest); 6.18 counted "negative" blocks for a piece
    // crossing no boundary and answered EINVAL (docs/version-differences.md).
    let (hstart, hend) = ((start + PMD_SIZE - 1) & !(PMD_SIZE - 1), end & !(PMD_SIZE - 1));
    let mut failed = false;
    for block in (hstart..hend.max(hstart)).step_by(PMD_SIZE as usize) {
        let vma = guard.lookup(block).expect("range checked as mapped");
        debug_assert!(vma.covers(block, block + PMD_SIZE), "a piece lies in one VMA");
        let verdict = if shmem { file::collapse_block(guard, block)? } else { anon::collapse_block(guard, block)? };
        match verdict {
            Block::Collapsed => {}
            Block::Failed => failed = true,
            Block::Stop(error) => return Err(error),
        }
    }
    if failed {
        return Err(MmError::Invalid("MADV_COLLAPSE left a block uncollapsed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
