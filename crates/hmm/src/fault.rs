//! Performing a fault the walk recorded (`hmm_do_fault`, Linux 7.3): the
//! walk only notes "fault `[addr, end)` with these needs" and unwinds; the
//! fault runs here with no page-table lock held, only the mmap lock. The
//! VMA is looked up again, a write need on a VMA without `VM_WRITE` is
//! `EPERM`, and every page of the segment gets a remote fault with one set
//! of flags (Linux over-faults the rest of the segment).
//!
//! With `ALLOW_RETRY` (only `range_fault_unlocked_timeout`) a fault may
//! sleep without the mmap lock (a userfaultfd handler); the segment then
//! stops there and the caller restarts from `range.start`.
//!
//! Linux 7.3: `mm/hmm.c` (`hmm_record_fault`, `hmm_do_fault`),
//! `mm/gup.c` (`vm_fault_to_errno`).

use hmm_mm::{FaultError, FaultFlags, FaultOutcome, MmapReadGuard};
use hmm_types::{VmFlags, PAGE_SIZE};

use crate::error::HmmError;
use crate::range::Need;

/// A fault the walk found necessary: `[addr, end)` with `need`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) addr: u64,
    pub(crate) end: u64,
    pub(crate) need: Need,
}

/// How performing a recorded fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Performed {
    /// Every page was faulted: walk again from `addr` (internal `-EBUSY`).
    All,
    /// A fault released the mmap lock (`HMM_FAULT_UNLOCKED`).
    Released,
}

/// `vm_fault_to_errno(result, 0)`: OOM is `ENOMEM`, SIGBUS, SIGSEGV and
/// HWPOISON are `EFAULT` (no `FOLL_HWPOISON`). A FALLBACK-only result,
/// `EINVAL` in Linux, cannot come out of the model's handlers.
pub(crate) fn vm_fault_to_errno(error: FaultError) -> HmmError {
    match error {
        FaultError::Oom => HmmError::NoMem,
        FaultError::Sigbus(_) => HmmError::Fault("the fault handler reported SIGBUS"),
        FaultError::Segv(_) => HmmError::Fault("the fault handler reported SIGSEGV"),
        FaultError::Hwpoison => HmmError::Fault("the page is hardware-poisoned"),
    }
}

/// Flags for the recorded fault, after re-looking-up the VMA.
fn fault_flags(guard: &MmapReadGuard<'_>, rec: Recorded, allow_retry: bool) -> Result<FaultFlags, HmmError> {
    let vma = guard.vma(rec.addr).ok_or(HmmError::Fault("no mapping at the faulting address"))?;
    let mut flags = FaultFlags::REMOTE;
    if allow_retry {
        flags |= FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    }
    if rec.need.write {
        if !vma.flags.contains(VmFlags::WRITE) {
            return Err(HmmError::Perm);
        }
        flags |= FaultFlags::WRITE;
    }
    Ok(flags)
}

/// Performs `rec` under a lock that must stay held (`hmm_range_fault`).
pub(crate) fn do_fault_locked(guard: &MmapReadGuard<'_>, rec: Recorded) -> Result<(), HmmError> {
    let flags = fault_flags(guard, rec, false)?;
    let mut va = rec.addr;
    while va < rec.end {
        guard.handle_mm_fault(va, flags).map_err(vm_fault_to_errno)?;
        va += PAGE_SIZE;
    }
    Ok(())
}

/// Performs `rec` allowing the handler to release the lock
/// (`range_fault_unlocked_timeout`); pages after a release are left for
/// the next round.
pub(crate) fn do_fault_unlockable(guard: &mut MmapReadGuard<'_>, rec: Recorded) -> Result<Performed, HmmError> {
    let flags = fault_flags(guard, rec, true)?;
    let mut va = rec.addr;
    while va < rec.end {
        match guard.handle_mm_fault_unlockable(va, flags).map_err(vm_fault_to_errno)? {
            FaultOutcome::Handled => va += PAGE_SIZE,
            FaultOutcome::Released => return Ok(Performed::Released),
        }
    }
    Ok(Performed::All)
}

#[cfg(test)]
mod tests {
    use hmm_mm::{FaultError, SegvReason};

    use super::vm_fault_to_errno;
    use hmm_types::Errno;

    /// Delta §1.4: OOM is ENOMEM in 7.3 (it was EFAULT).
    #[test]
    fn fault_results_map_to_linux_errnos() {
        assert_eq!(vm_fault_to_errno(FaultError::Oom).errno(), Errno::NoMem);
        assert_eq!(vm_fault_to_errno(FaultError::Sigbus("x")).errno(), Errno::Fault);
        assert_eq!(vm_fault_to_errno(FaultError::Segv(SegvReason::Protection)).errno(), Errno::Fault);
        assert_eq!(vm_fault_to_errno(FaultError::Hwpoison).errno(), Errno::Fault);
    }
}
