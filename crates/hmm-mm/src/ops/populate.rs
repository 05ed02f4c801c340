//! Prefaulting a range (MAP_POPULATE, MADV_POPULATE_READ/WRITE).
//!
//! Linux: `mm/gup.c` (`populate_vma_page_range`, `faultin_page_range`),
//! `mm/madvise.c` (`madvise_populate`).

use hmm_types::{VaRange, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::error::{FaultError, MmError};
use crate::fault::{handle_fault, FaultFlags};
use crate::mm::Mm;
use crate::vma::{Vma, VmaTree};

/// Faults in every page of `[start, end)` (for writing if `write`), with
/// the mmap lock held (read or write; `vmas` is the locked tree). Used by
/// MAP_POPULATE, whose errors Linux ignores.
pub(crate) fn populate_locked(mm: &Mm, vmas: &VmaTree, start: u64, end: u64, write: bool) -> Result<(), MmError> {
    let mut va = start;
    while va < end {
        let vma = vmas.lookup(va).ok_or_else(|| unmapped(va, end))?;
        va = fault_in(mm, vmas, vma, va, vma.end.min(end), write)?;
    }
    Ok(())
}

/// MADV_POPULATE_READ/WRITE: faults `[start, end)` page by page from
/// `start` and stops at the first problem; the pages before it stay
/// populated (`madvise_populate`, `faultin_page_range`). Linux 6.18 on the
/// host: a hole is `ENOMEM`; a VMA the access is not allowed on is
/// `EINVAL`, judged on the VMA flags alone (POPULATE_READ wants
/// `VM_READ`, so PROT_NONE, PROT_EXEC-only and PROT_WRITE-only mappings
/// fail although x86 lets the CPU read the last two; POPULATE_WRITE wants
/// `VM_WRITE`); `VM_IO`/`VM_PFNMAP` is `EINVAL`; a fault ending in SIGBUS
/// or SIGSEGV (past the end of a shmem object) is `EFAULT`.
pub(crate) fn madvise_populate(mm: &Mm, vmas: &VmaTree, start: u64, end: u64, write: bool) -> Result<(), MmError> {
    let mut va = start;
    while va < end {
        let vma = vmas.lookup(va).ok_or_else(|| unmapped(va, end))?;
        if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            return Err(MmError::Invalid("MADV_POPULATE of a VM_IO/VM_PFNMAP mapping"));
        }
        let needed = if write { VmFlags::WRITE } else { VmFlags::READ };
        if !vma.flags.contains(needed) {
            return Err(MmError::Invalid("MADV_POPULATE of a mapping without the access right"));
        }
        va = fault_in(mm, vmas, vma, va, vma.end.min(end), write)?;
    }
    Ok(())
}

/// Faults `[va, stop)` of `vma`; returns `stop`.
fn fault_in(mm: &Mm, vmas: &VmaTree, vma: &Vma, mut va: u64, stop: u64, write: bool) -> Result<u64, MmError> {
    let flags = if write { FaultFlags::WRITE } else { FaultFlags::empty() };
    while va < stop {
        handle_fault(mm, vmas, vma, va, flags).map_err(|error| match error {
            FaultError::Oom => MmError::NoMem,
            error => MmError::Fault { addr: va, error },
        })?;
        va += next_step(mm, va);
    }
    Ok(stop)
}

/// The error for the unmapped `[va, end)`.
fn unmapped(va: u64, end: u64) -> MmError {
    VaRange::from_bounds(va, end.min(TASK_SIZE).max(va + PAGE_SIZE))
        .map_or(MmError::OutOfRange("range past the address space"), MmError::NotMapped)
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
