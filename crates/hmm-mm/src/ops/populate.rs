//! Prefaulting a range (MAP_POPULATE, MADV_POPULATE_READ/WRITE).
//!
//! Linux: `mm/gup.c` (`populate_vma_page_range`, `faultin_page_range`).

use hmm_types::PAGE_SIZE;

use crate::error::{FaultError, MmError};
use crate::fault::{handle_fault, FaultFlags};
use crate::mm::Mm;
use crate::vma::VmaTree;

/// Faults in every page of `[start, end)` (for writing if `write`), with
/// the mmap lock held (read or write; `vmas` is the locked tree).
pub(crate) fn populate_locked(mm: &Mm, vmas: &VmaTree, start: u64, end: u64, write: bool) -> Result<(), MmError> {
    let flags = if write { FaultFlags::WRITE } else { FaultFlags::empty() };
    let mut va = start;
    while va < end {
        let vma = vmas
            .lookup(va)
            .ok_or(MmError::NotMapped(hmm_types::VaRange::from_bounds(va, end).map_err(MmError::from_range)?))?;
        let stop = vma.end.min(end);
        while va < stop {
            handle_fault(mm, vmas, vma, va, flags).map_err(|error| match error {
                FaultError::Oom => MmError::NoMem,
                error => MmError::Fault { addr: va, error },
            })?;
            va += next_step(mm, va);
        }
    }
    Ok(())
}

/// After a fault at `va`, the next address worth faulting: past a huge leaf
/// if one now maps `va`.
fn next_step(mm: &Mm, va: u64) -> u64 {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    // A table linked since `find` is no leaf to skip.
    if entry.is_present() && !entry.is_table(slot.level()) {
        let size = slot.level().entry_bytes();
        size - (va & (size - 1))
    } else {
        PAGE_SIZE
    }
}
