//! Prefaulting a range (MAP_POPULATE, MADV_POPULATE_READ/WRITE).
//!
//! Linux: `mm/gup.c` (`populate_vma_page_range`, `faultin_page_range`),
//! `mm/madvise.c` (`madvise_populate`).

use hmm_types::{VaRange, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::error::{FaultError, MmError};
use crate::fault::{handle_fault, FaultFlags, FaultOutcome};
use crate::mm::{Mm, MmapReadGuard};
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
///
/// The faults may release the mmap lock (GUP's `FOLL_UNLOCKABLE`:
/// `FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE`, not a user fault), so a
/// page a userfaultfd handler must provide waits for it; after such a wait
/// the VMA is looked up afresh from the page that waited, and a fatal
/// signal ends the call with `EINTR`.
pub(crate) fn madvise_populate(
    mm: &Mm,
    guard: &mut MmapReadGuard<'_>,
    start: u64,
    end: u64,
    write: bool,
) -> Result<(), MmError> {
    let mut flags = FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    if write {
        flags |= FaultFlags::WRITE;
    }
    let mut va = start;
    while va < end {
        let vma = guard.lookup(va).ok_or_else(|| unmapped(va, end))?;
        if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            return Err(MmError::Invalid("MADV_POPULATE of a VM_IO/VM_PFNMAP mapping"));
        }
        let needed = if write { VmFlags::WRITE } else { VmFlags::READ };
        if !vma.flags.contains(needed) {
            return Err(MmError::Invalid("MADV_POPULATE of a mapping without the access right"));
        }
        let stop = vma.end.min(end);
        while va < stop {
            match guard.handle_mm_fault_unlockable(va, flags).map_err(|error| fault_error(va, error))? {
                FaultOutcome::Handled => va += next_step(mm, va),
                FaultOutcome::Released if mm.fatal_signal_pending() => return Err(MmError::Interrupted),
                // The VMA may have changed while the lock was released.
                FaultOutcome::Released => break,
            }
        }
    }
    Ok(())
}

/// Faults `[va, stop)` of `vma`; returns `stop`.
fn fault_in(mm: &Mm, vmas: &VmaTree, vma: &Vma, mut va: u64, stop: u64, write: bool) -> Result<u64, MmError> {
    let flags = if write { FaultFlags::WRITE } else { FaultFlags::empty() };
    while va < stop {
        handle_fault(mm, vmas, vma, va, flags).map_err(|error| fault_error(va, error))?;
        va += next_step(mm, va);
    }
    Ok(stop)
}

fn fault_error(va: u64, error: FaultError) -> MmError {
    match error {
        FaultError::Oom => MmError::NoMem,
        error => MmError::Fault { addr: va, error },
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PAGE_SIZE};

    use crate::testing::{kernel, userfaultfd};
    use crate::uffd::{
        Userfaultfd, O_CLOEXEC, UFFDIO_REGISTER_MODE_MISSING, UFFD_FEATURE_SIGBUS, UFFD_PAGEFAULT_FLAG_WRITE,
        UFFD_USER_MODE_ONLY,
    };
    use crate::{Mm, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    /// A mapping of `pages` pages registered for MISSING faults with a
    /// blocking userfaultfd opened with `flags` and `features`.
    fn registered(pages: u64, flags: u32, features: u64) -> (Arc<Mm>, Userfaultfd, u64) {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let uffd = userfaultfd(&mm, O_CLOEXEC | flags, features);
        let va = mm.mmap(0, pages * PAGE_SIZE, Prot::RW, ANON).unwrap();
        uffd.register(va, pages * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        (mm, uffd, va)
    }

    #[test]
    fn populate_waits_for_the_handler_page_by_page() {
        for (advice, write) in [(MadviseAdvice::PopulateRead, false), (MadviseAdvice::PopulateWrite, true)] {
            let (mm, uffd, va) = registered(3, 0, 0);
            let populate = {
                let mm = mm.clone();
                std::thread::spawn(move || mm.madvise(va, 3 * PAGE_SIZE, advice))
            };
            for page in 0..3 {
                // A message exists only once the populate sleeps on it.
                let msg = uffd.read().unwrap();
                assert_eq!(msg.address(), va + page * PAGE_SIZE, "{advice:?}");
                assert_eq!(msg.flags() & UFFD_PAGEFAULT_FLAG_WRITE != 0, write, "{advice:?}");
                uffd.copy(msg.address(), &[page as u8 + 1; PAGE_SIZE as usize], 0).unwrap();
            }
            assert_eq!(populate.join().unwrap(), Ok(()), "{advice:?}");
            assert_eq!(mm.read_u64(va + 2 * PAGE_SIZE), Ok(0x0303_0303_0303_0303));
        }
    }

    #[test]
    fn populate_is_not_a_user_fault_and_sigbus_contexts_fail_it() {
        // GUP's faults lack FAULT_FLAG_USER: a UFFD_USER_MODE_ONLY context
        // and a UFFD_FEATURE_SIGBUS one answer SIGBUS, which is EFAULT.
        for (flags, features) in [(UFFD_USER_MODE_ONLY, 0), (0, UFFD_FEATURE_SIGBUS)] {
            let (mm, uffd, va) = registered(1, flags, features);
            let error = mm.madvise(va, PAGE_SIZE, MadviseAdvice::PopulateRead).unwrap_err();
            assert_eq!(error.errno(), Errno::Fault);
            assert!(!uffd.poll().readable, "no message is queued");
        }
    }

    #[test]
    fn a_fatal_signal_during_the_wait_is_eintr() {
        let (mm, uffd, va) = registered(2, 0, 0);
        let populate = {
            let mm = mm.clone();
            std::thread::spawn(move || mm.madvise(va, 2 * PAGE_SIZE, MadviseAdvice::PopulateWrite))
        };
        uffd.read().unwrap();
        mm.send_fatal_signal();
        assert_eq!(populate.join().unwrap().unwrap_err().errno(), Errno::Intr);
    }
}
