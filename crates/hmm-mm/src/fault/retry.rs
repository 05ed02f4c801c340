//! Faults allowed to release the mmap lock (`FAULT_FLAG_ALLOW_RETRY`):
//! the handler may sleep without the lock and answer `VM_FAULT_RETRY`. In
//! the model only a userfaultfd wait does; every other fault completes
//! under the lock as [`MmapReadGuard::handle_mm_fault`] does.
//!
//! Linux: `mm/memory.c` (`handle_mm_fault`, `VM_FAULT_RETRY`,
//! `release_fault_lock`).

use crate::error::{FaultError, SegvReason};
use crate::fault::{handle_fault, FaultFlags};
use crate::mm::MmapReadGuard;
use crate::uffd::{verdict, wait_for_handler, Verdict};

/// How a fault that was allowed to release the mmap lock ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Handled under the lock; the access can proceed.
    Handled,
    /// `VM_FAULT_RETRY`: the handler released the mmap lock and slept.
    /// The guard holds the lock again, but nothing seen before is valid:
    /// look the VMA and the entry up afresh (and check for a fatal signal).
    Released,
}

impl MmapReadGuard<'_> {
    /// `handle_mm_fault` with the right to sleep without the mmap lock
    /// when `flags` has [`FaultFlags::ALLOW_RETRY`]; without it this is
    /// [`Self::handle_mm_fault`].
    pub fn handle_mm_fault_unlockable(&mut self, va: u64, flags: FaultFlags) -> Result<FaultOutcome, FaultError> {
        let mm = self.mm();
        let vma = self.vma(va).ok_or(FaultError::Segv(SegvReason::NotMapped))?;
        match verdict(mm, vma, va, flags) {
            Verdict::Proceed => handle_fault(mm, self, vma, va, flags).map(|()| FaultOutcome::Handled),
            Verdict::Sigbus(why) => Err(FaultError::Sigbus(why)),
            Verdict::Wait(ctx, reason) => {
                wait_for_handler(self, ctx, reason, va, flags);
                Ok(FaultOutcome::Released)
            }
        }
    }
}
