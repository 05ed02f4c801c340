//! Page faults: make a virtual address accessible as the MMU and the kernel
//! would, for the CPU or for a device (a remote fault).
//!
//! Dispatch lives here; each kind of fault has its own file:
//! `anon.rs` (first touch of private anonymous memory, THP and zero pages),
//! `wp.rs` (write to a read-only present page: reuse or copy-on-write),
//! `shared.rs` (shared anonymous memory). All run under the mmap read lock
//! and install entries by compare-and-swap, so concurrent faults on the same
//! address are safe: the loser frees what it allocated and finds the
//! winner's entry.
//!
//! Linux: `mm/memory.c` (`handle_mm_fault`, `__handle_mm_fault`,
//! `handle_pte_fault`).

mod anon;
mod shared;
mod wp;

use bitflags::bitflags;

use hmm_types::VmFlags;

use crate::error::{FaultError, SegvReason};
use crate::mm::{Mm, MmapReadGuard};
use crate::vma::{Vma, VmaBacking};

bitflags! {
    /// `FAULT_FLAG_*`.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct FaultFlags: u32 {
        /// A write access (`FAULT_FLAG_WRITE`).
        const WRITE = 1 << 0;
        /// On behalf of another agent (`FAULT_FLAG_REMOTE`): a device, GUP.
        const REMOTE = 1 << 7;
    }
}

impl MmapReadGuard<'_> {
    /// Resolves a fault at `va` (`handle_mm_fault`). Access rights are
    /// checked against the VMA first: a write to a read-only mapping, or any
    /// access to PROT_NONE, is SIGSEGV.
    pub fn handle_mm_fault(&self, va: u64, flags: FaultFlags) -> Result<(), FaultError> {
        let vma = self
            .vma(va)
            .ok_or(FaultError::Segv(SegvReason::NotMapped))?;
        handle_fault(self.mm(), vma, va, flags)
    }
}

/// Fault handling once the VMA is known; the caller holds the mmap lock.
pub(crate) fn handle_fault(
    mm: &Mm,
    vma: &Vma,
    va: u64,
    flags: FaultFlags,
) -> Result<(), FaultError> {
    let write = flags.contains(FaultFlags::WRITE);
    // As on x86, write and exec permission imply read.
    let allowed = if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags
            .intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    };
    if !allowed {
        return Err(FaultError::Segv(SegvReason::Protection));
    }
    let va = va & !(hmm_types::PAGE_SIZE - 1);
    match &vma.backing {
        VmaBacking::Anon => anon::fault(mm, vma, va, write),
        VmaBacking::Shmem(object) => shared::fault(mm, vma, object, va, write),
    }
}
