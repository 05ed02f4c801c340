//! Faulting pages in on a device's behalf (`hmm_vma_fault`): every page of
//! the segment gets a remote fault with one set of flags, decided by the
//! first entry (or the union over the segment) that needed it, as Linux
//! over-faults.

use hmm_mm::{FaultFlags, MmapReadGuard};
use hmm_types::{VmFlags, PAGE_SIZE};

use crate::error::HmmError;
use crate::range::Need;

/// Faults `[addr, end)` inside one VMA. `Ok(())` means "walk again from
/// `addr`"; the caller has recorded it.
pub(crate) fn fault_segment(guard: &MmapReadGuard<'_>, addr: u64, end: u64, need: Need) -> Result<(), HmmError> {
    let vma = guard.vma(addr).ok_or(HmmError::Fault("no mapping at the faulting address"))?;
    let mut flags = FaultFlags::REMOTE;
    if need.write {
        if !vma.flags.contains(VmFlags::WRITE) {
            return Err(HmmError::Perm);
        }
        flags |= FaultFlags::WRITE;
    }
    let mut va = addr;
    while va < end {
        guard.handle_mm_fault(va, flags).map_err(|_| HmmError::Fault("the fault could not be handled"))?;
        va += PAGE_SIZE;
    }
    Ok(())
}
