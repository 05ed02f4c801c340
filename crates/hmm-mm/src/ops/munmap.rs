//! munmap: remove mappings, announced as UNMAP.
//!
//! Linux: `mm/vma.c` (`do_vmi_munmap`), `mm/memory.c` (`unmap_vmas`,
//! `free_pgtables`).

use hmm_types::{Event, VaRange};

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::{Mm, MmapWriteGuard};
use crate::zap::{zap_range, Gather};

impl Mm {
    /// Unmaps `[addr, addr + len)` (length rounded up to a page). Unmapping
    /// a range with nothing mapped succeeds and announces nothing.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), MmError> {
        self.check_alive()?;
        let range = VaRange::new_round_len(addr, len).map_err(MmError::from_range)?;
        let mut guard = self.mmap_write();
        unmap_locked(&mut guard, range.start(), range.end())
    }
}

/// Unmaps `[start, end)` with the write lock held: splits edge VMAs and
/// huge leaves, zaps under one UNMAP invalidation over the mapped extent,
/// then frees tables and frames after the invalidation ends.
pub(crate) fn unmap_locked(
    guard: &mut MmapWriteGuard<'_>,
    start: u64,
    end: u64,
) -> Result<(), MmError> {
    let mm = guard.mm();
    let (Some(first), Some(last)) = (
        guard.overlapping(start, end).next(),
        guard.overlapping(start, end).last(),
    ) else {
        return Ok(());
    };
    let (extent_start, extent_end) = (start.max(first.start), end.min(last.end));
    split_huge_at(mm, extent_start)?;
    split_huge_at(mm, extent_end)?;
    let invalidation = mm
        .notifiers()
        .start(mm.id(), extent_start, extent_end, Event::Unmap);
    let mut gather = Gather::new();
    zap_range(mm, extent_start, extent_end, &mut gather)?;
    let removed = guard.vmas_mut().remove_range(start, end);
    invalidation.end();
    mm.pgtable().free_empty_tables(extent_start, extent_end);
    gather.free_now(mm.phys());
    // Backing objects (shmem) may free their pages now that nothing maps them.
    drop(removed);
    Ok(())
}
