//! mseal(2): seal VMAs against change, and the checks other operations
//! make against a sealed VMA (`VM_SEALED`). A seal is never removed; fork
//! copies it with the VMA. Each operation checks at its own point, with
//! Linux's partial effects:
//! - munmap (and MAP_FIXED, and mremap's destination): EPERM while the
//!   VMAs are gathered, before anything is unmapped, though a first VMA
//!   straddling the start has already been split there
//!   ([`check_unmap_sealed`]);
//! - mprotect: EPERM at the sealed VMA, the VMAs before it changed
//!   (`super::mprotect`);
//! - mremap: EPERM for a sealed source (`super::mremap`);
//! - madvise: EPERM for discarding advice on a sealed, anonymous,
//!   non-writable VMA, per VMA of the walk ([`check_madvise_sealed`]).
//!
//! Linux: `mm/mseal.c` (`do_mseal`, `mseal_apply`), `mm/vma.c`
//! (`vms_gather_munmap_vmas`), `mm/madvise.c` (`can_madvise_modify`).

use hmm_types::{MadviseAdvice, VmFlags, PAGE_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_edge;
use crate::mm::{Mm, MmapWriteGuard};
use crate::vma::Vma;

use super::vma_modify::check_splits;

impl Mm {
    /// Seals `[addr, addr + len)` (length rounded up to a page): every VMA
    /// in it gets `VM_SEALED`, split at the edges and merged with sealed
    /// neighbours, in address order. Linux 6.18 on the host: nonzero
    /// `flags`, an unaligned `addr`, a length rounding to zero from a huge
    /// value or an end that wraps are EINVAL; a zero length is 0; a range
    /// with any unmapped page is ENOMEM with nothing sealed.
    pub fn mseal(&self, addr: u64, len: u64, flags: u64) -> Result<(), MmError> {
        self.check_alive()?;
        if flags != 0 {
            return Err(MmError::Invalid("mseal flags must be 0"));
        }
        if addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mseal address not page aligned"));
        }
        let Some(rounded) = len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1)) else {
            return Err(MmError::Invalid("mseal length rounds to zero"));
        };
        let Some(end) = addr.checked_add(rounded) else {
            return Err(MmError::Invalid("mseal range wraps"));
        };
        if end == addr {
            return Ok(());
        }
        let mut guard = self.mmap_write();
        if !guard.is_fully_mapped(addr, end) {
            return Err(MmError::OutOfRange("mseal range is not fully mapped"));
        }
        // `mseal_apply`, VMA by VMA: one already sealed is left alone,
        // unsplit; a refused split ends the call with EINVAL, the VMAs
        // before it sealed (7.3.4 guest: a device-DAX VMA cut off its
        // 2 MiB alignment).
        let pieces: Vec<(u64, u64)> =
            guard.overlapping(addr, end).map(|vma| (vma.start.max(addr), vma.end.min(end))).collect();
        for (piece_start, piece_end) in pieces {
            let vma = guard.lookup(piece_start).expect("the range is fully mapped");
            if is_sealed(vma) {
                continue;
            }
            if let Err(refused) = check_splits(&guard, vma, piece_start, piece_end, vma.flags | VmFlags::SEALED) {
                return Err(refused.settle(&mut guard));
            }
            // A huge leaf must not straddle the new VMA edges.
            split_huge_edge(self, &guard, piece_start)?;
            split_huge_edge(self, &guard, piece_end)?;
            for vma in guard.vmas_mut().split_range_mut(piece_start, piece_end) {
                vma.flags |= VmFlags::SEALED;
            }
            guard.vmas_mut().merge_range(piece_start, piece_end);
        }
        Ok(())
    }
}

/// True when the VMA is sealed (`vma_is_sealed`).
pub(crate) fn is_sealed(vma: &Vma) -> bool {
    vma.flags.contains(VmFlags::SEALED)
}

/// EPERM for a sealed VMA: mprotect's and mremap's check.
pub(crate) fn check_sealed(vma: &Vma, what: &'static str) -> Result<(), MmError> {
    if is_sealed(vma) {
        return Err(MmError::Sealed(what));
    }
    Ok(())
}

/// munmap's gather phase over `[start, end)` (`vms_gather_munmap_vmas`):
/// a sealed first VMA is EPERM at once; a sealed later one is EPERM after
/// the first VMA was split at `start` (the split stays, as on Linux 6.18:
/// a failed munmap leaves `/proc/self/maps` with one more line).
pub(crate) fn check_unmap_sealed(guard: &mut MmapWriteGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let (splits_first, later_sealed) = {
        let mut vmas = guard.overlapping(start, end);
        let Some(first) = vmas.next() else { return Ok(()) };
        if is_sealed(first) {
            return Err(MmError::Sealed("munmap of a sealed VMA"));
        }
        (first.start < start, vmas.any(is_sealed))
    };
    if !later_sealed {
        return Ok(());
    }
    if splits_first {
        guard.check_split(start)?;
        split_huge_edge(guard.mm(), guard, start)?;
        guard.vmas_mut().split_at(start);
    }
    Err(MmError::Sealed("munmap of a range holding a sealed VMA"))
}

/// madvise's check on one VMA (`can_madvise_modify`): advice that
/// discards data (DONTNEED, FREE, DONTFORK, WIPEONFORK, GUARD_INSTALL)
/// is EPERM on a sealed private anonymous VMA the process cannot write.
/// File mappings, shared anonymous memory (shmem) included, are allowed.
pub(crate) fn check_madvise_sealed(vma: &Vma, advice: MadviseAdvice) -> Result<(), MmError> {
    let discards = matches!(
        advice,
        MadviseAdvice::DontNeed
            | MadviseAdvice::Free
            | MadviseAdvice::Remove
            | MadviseAdvice::DontFork
            | MadviseAdvice::WipeOnFork
            | MadviseAdvice::GuardInstall
    );
    if discards && is_sealed(vma) && vma.is_anonymous() && !vma.flags.contains(VmFlags::WRITE) {
        return Err(MmError::Sealed("discarding madvise on a sealed read-only anonymous VMA"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
