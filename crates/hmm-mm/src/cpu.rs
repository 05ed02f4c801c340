//! The CPU: reads, writes and atomic read-modify-writes at virtual
//! addresses of a process, through its page table, faulting as the MMU and
//! the kernel would.
//!
//! Each access holds the mmap read lock (standing in for the TLB shootdown
//! that keeps real CPUs off freed tables) and, per page, a speculative
//! reference on the frame taken the way GUP-fast does: the frame cannot be
//! freed while bytes are copied, and an entry that changed underneath is
//! looked up again. Accessed and dirty bits are set as hardware sets them.
//! An access that meets a migration entry waits in the fault path until the
//! migrator replaced it (`crate::migrate`), then retries.
//!
//! Linux: the MMU, `do_user_addr_fault`, `gup_fast` (for the reference).

use core::sync::atomic::{fence, AtomicU64, Ordering};

use hmm_pagetable::Entry;
use hmm_types::{Pfn, PAGE_SIZE};

use crate::error::MmError;
use crate::fault::{handle_fault, FaultFlags};
use crate::mm::{Mm, MmapReadGuard};
use crate::phys::PhysMem;

/// A frame held for the duration of one access.
pub(crate) struct Held<'a> {
    phys: &'a PhysMem,
    pfn: Pfn,
    counted: bool,
    /// End of the leaf that maps the frame: the frames up to it are one
    /// folio, contiguous, and covered by the same reference.
    leaf_end: u64,
}

impl Held<'_> {
    /// The frame held.
    pub(crate) fn pfn(&self) -> Pfn {
        self.pfn
    }
    /// Keeps the reference beyond the access (GUP): returns the frame,
    /// whose reference the caller now owns.
    pub(crate) fn keep(mut self) -> Pfn {
        if !self.counted {
            self.phys.get(self.pfn);
        }
        self.counted = false;
        self.pfn
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.phys.put(self.pfn);
        }
    }
}

impl Mm {
    /// Reads `buf.len()` bytes at `va`.
    pub fn read_bytes(&self, va: u64, buf: &mut [u8]) -> Result<(), MmError> {
        let mut guard = self.mmap_read();
        for_each_page(&mut guard, va, buf.len(), false, true, |held, offset, range| {
            held.phys.read(held.pfn, offset, &mut buf[range]);
        })
    }

    /// Reads `buf.len()` bytes at `va` as the kernel copies from user
    /// memory (`copy_from_user`, `process_vm_readv`): a fault there is not
    /// a user fault, so a `UFFD_USER_MODE_ONLY` userfaultfd answers it with
    /// `EFAULT` where a CPU load would wait (host 6.18: write(2) from a
    /// registered buffer, process_vm_readv).
    pub fn read_bytes_remote(&self, va: u64, buf: &mut [u8]) -> Result<(), MmError> {
        let mut guard = self.mmap_read();
        for_each_page(&mut guard, va, buf.len(), false, false, |held, offset, range| {
            held.phys.read(held.pfn, offset, &mut buf[range]);
        })
    }

    /// Writes `data` at `va`.
    pub fn write_bytes(&self, va: u64, data: &[u8]) -> Result<(), MmError> {
        let mut guard = self.mmap_read();
        for_each_page(&mut guard, va, data.len(), true, true, |held, offset, range| {
            held.phys.write(held.pfn, offset, &data[range]);
        })
    }

    /// Writes `data` at `va` as the kernel copies to user memory
    /// (`copy_to_user`, `process_vm_writev`): not a user fault (see
    /// [`Self::read_bytes_remote`]).
    pub fn write_bytes_remote(&self, va: u64, data: &[u8]) -> Result<(), MmError> {
        let mut guard = self.mmap_read();
        for_each_page(&mut guard, va, data.len(), true, false, |held, offset, range| {
            held.phys.write(held.pfn, offset, &data[range]);
        })
    }

    /// Reads a little-endian u64 at `va`.
    pub fn read_u64(&self, va: u64) -> Result<u64, MmError> {
        let mut buf = [0u8; 8];
        self.read_bytes(va, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Writes a little-endian u64 at `va`.
    pub fn write_u64(&self, va: u64, value: u64) -> Result<(), MmError> {
        self.write_bytes(va, &value.to_le_bytes())
    }

    /// Writes a little-endian u64 at `va` the way `process_vm_writev` does:
    /// through GUP with FOLL_WRITE, then `unpin_user_pages_dirty_lock`,
    /// which marks the folio dirty besides the entry (a CPU store dirties
    /// only the entry; MADV_FREE of a page shared after fork tells them
    /// apart).
    pub fn write_u64_remote(&self, va: u64, value: u64) -> Result<(), MmError> {
        self.write_bytes_remote(va, &value.to_le_bytes())?;
        let entry = self.pgtable().find(va).load();
        if entry.is_present() && !entry.is_special() {
            let phys = self.phys();
            phys.meta(phys.folio_head(entry.pfn())).set_flags(crate::phys::PageFlags::DIRTY);
        }
        Ok(())
    }

    /// Atomically adds `value` to the u64 at the 8-aligned `va`; returns the
    /// previous value (`lock xadd`).
    pub fn atomic_fetch_add(&self, va: u64, value: u64) -> Result<u64, MmError> {
        self.atomic_rmw(va, |cell| cell.fetch_add(value, Ordering::SeqCst))
    }

    /// Atomically replaces the u64 at the 8-aligned `va` with `new` if it
    /// equals `current` (`lock cmpxchg`); returns what was there.
    pub fn atomic_compare_exchange(&self, va: u64, current: u64, new: u64) -> Result<Result<u64, u64>, MmError> {
        self.atomic_rmw(va, |cell| cell.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }

    fn atomic_rmw<R>(&self, va: u64, op: impl FnOnce(&AtomicU64) -> R) -> Result<R, MmError> {
        if va % 8 != 0 {
            return Err(MmError::Invalid("atomic access must be 8-byte aligned"));
        }
        let mut guard = self.mmap_read();
        let held = user_translate_or_fault(&mut guard, va, true, true)?;
        Ok(op(held.phys.atomic_u64(held.pfn, va % PAGE_SIZE)))
    }
}

/// Calls `access(frame, offset_in_frame, buffer_range)` for each page piece
/// of `[va, va + len)`.
fn for_each_page(
    guard: &mut MmapReadGuard<'_>,
    va: u64,
    len: usize,
    write: bool,
    user: bool,
    mut access: impl FnMut(&Held<'_>, u64, core::ops::Range<usize>),
) -> Result<(), MmError> {
    // An access running past 2^64 runs into the kernel half, which no
    // user mapping reaches: SIGSEGV (EFAULT for a kernel copy).
    let end = va.checked_add(len as u64).ok_or(MmError::Fault {
        addr: va,
        error: crate::error::FaultError::Segv(crate::error::SegvReason::NotMapped),
    })?;
    let mut cursor = va;
    while cursor < end {
        // One translation (and one reference) per leaf: a huge leaf is
        // copied in one piece.
        let held = user_translate_or_fault(guard, cursor, write, user)?;
        let page_end = held.leaf_end.min(end);
        let done = (cursor - va) as usize;
        access(&held, cursor % PAGE_SIZE, done..done + (page_end - cursor) as usize);
        cursor = page_end;
    }
    Ok(())
}

/// The frame behind `va`, held, faulting it in (or upgrading it for a
/// write) as needed.
pub(crate) fn translate_or_fault<'a>(guard: &MmapReadGuard<'a>, va: u64, write: bool) -> Result<Held<'a>, MmError> {
    let mm = guard.mm();
    loop {
        if let Some(held) = translate(mm, va, write) {
            return Ok(held);
        }
        let vma = guard.vma(va).ok_or(MmError::Fault {
            addr: va,
            error: crate::error::FaultError::Segv(crate::error::SegvReason::NotMapped),
        })?;
        let flags = if write { FaultFlags::WRITE } else { FaultFlags::empty() };
        handle_fault(mm, guard, vma, va, flags).map_err(|error| match error {
            crate::error::FaultError::Oom => MmError::NoMem,
            error => MmError::Fault { addr: va, error },
        })?;
    }
}

/// [`translate_or_fault`] for the CPU itself: a user fault
/// (`FAULT_FLAG_USER|ALLOW_RETRY|KILLABLE`), which may sleep without the
/// mmap lock for a userfaultfd handler and then translates again. A fatal
/// signal during that sleep ends the access with SIGBUS.
/// With `user` false it is the kernel's own access to user memory
/// (`copy_from_user`, `process_vm_readv`): the same fault without
/// `FAULT_FLAG_USER`, which a `UFFD_USER_MODE_ONLY` context refuses.
fn user_translate_or_fault<'a>(
    guard: &mut MmapReadGuard<'a>,
    va: u64,
    write: bool,
    user: bool,
) -> Result<Held<'a>, MmError> {
    let mm = guard.mm();
    loop {
        if let Some(held) = translate(mm, va, write) {
            return Ok(held);
        }
        let outcome = fault_unlockable(guard, va, write, user)?;
        if outcome == crate::fault::FaultOutcome::Released && mm.fatal_signal_pending() {
            return Err(MmError::Fault {
                addr: va,
                error: crate::error::FaultError::Sigbus("killed while waiting for the userfaultfd handler"),
            });
        }
    }
}

/// One page of GUP with `FOLL_UNLOCKABLE` (the fast calls' slow path,
/// `get_user_pages_remote` with `locked`): a fault with
/// `FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE` but not a user fault, so
/// a page a userfaultfd handler must provide is waited for with the mmap
/// lock released. `Ok(None)` after such a wait: the caller looks the VMA
/// up afresh (Linux retries the page with `FOLL_TRIED`); a fatal signal
/// during the wait is `EINTR` (`__get_user_pages_locked`).
pub(crate) fn gup_unlockable_translate<'a>(
    guard: &mut MmapReadGuard<'a>,
    va: u64,
    write: bool,
) -> Result<Option<Held<'a>>, MmError> {
    let mm = guard.mm();
    if let Some(held) = translate(mm, va, write) {
        return Ok(Some(held));
    }
    match fault_unlockable(guard, va, write, false)? {
        crate::fault::FaultOutcome::Released if mm.fatal_signal_pending() => Err(MmError::Interrupted),
        crate::fault::FaultOutcome::Released => Ok(None),
        crate::fault::FaultOutcome::Handled => Ok(translate(mm, va, write)),
    }
}

/// A fault that may release the mmap lock to wait for a userfaultfd
/// handler (`FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE`, plus
/// `FAULT_FLAG_USER` for the CPU's own accesses); OOM is ENOMEM.
fn fault_unlockable(
    guard: &mut MmapReadGuard<'_>,
    va: u64,
    write: bool,
    user: bool,
) -> Result<crate::fault::FaultOutcome, MmError> {
    let mut flags = FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    if user {
        flags |= FaultFlags::USER;
    }
    if write {
        flags |= FaultFlags::WRITE;
    }
    guard.handle_mm_fault_unlockable(va, flags).map_err(|error| match error {
        crate::error::FaultError::Oom => MmError::NoMem,
        error => MmError::Fault { addr: va, error },
    })
}

/// The hardware walk: the frame if the entry permits the access, with a
/// reference taken and accessed/dirty bits set; `None` means "fault".
fn translate(mm: &Mm, va: u64, write: bool) -> Option<Held<'_>> {
    translate_racing(mm, va, write, || {})
}

/// [`translate`], running `window` between finding the slot and reading
/// it: lets a test put a race there.
#[inline]
fn translate_racing(mm: &Mm, va: u64, write: bool, mut window: impl FnMut()) -> Option<Held<'_>> {
    let phys = mm.phys();
    // `find` stops at a none entry or a leaf, but a concurrent fault
    // (`ensure`) or split may link a table there before the slot is read:
    // a table entry looks present and accessible, yet it is no leaf, and
    // reading it as one accesses the table's own frame and its neighbours.
    // Walk again then; tables only go away under the mmap write lock.
    let (slot, entry) = loop {
        let slot = mm.pgtable().find(va);
        window();
        let entry = slot.load();
        if !entry.is_table(slot.level()) {
            break (slot, entry);
        }
    };
    if !entry.is_accessible() || (write && !entry.is_write()) {
        return None;
    }
    let size = slot.level().entry_bytes();
    let pfn = entry.pfn().add((va & (size - 1)) / PAGE_SIZE);
    // Frames without struct-page semantics (special, the zero pages) are
    // never freed under a mapping; everything else is held by reference.
    let counted = !entry.is_special();
    if counted && !phys.try_get(pfn) {
        return None;
    }
    // Either the check below sees an entry that swap-out changed, or
    // swap-out sees this reference (the fence pairs with the one in
    // `swap/reclaim.rs`).
    fence(Ordering::SeqCst);
    let leaf_end = (va & !(size - 1)) + size;
    let held = Held { phys, pfn, counted, leaf_end };
    let wanted = Entry::access_bits(write);
    let still_mapped = if entry.raw() & wanted == wanted {
        slot.load() == entry
    } else {
        slot.compare_exchange(entry, Entry::from_raw(entry.raw() | wanted)).is_ok()
    };
    still_mapped.then_some(held)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmm_types::{Errno, MapFlags, Prot};

    use crate::testing::kernel;
    use crate::ThpMode;

    #[test]
    fn atomics_need_alignment_and_write_access() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        assert_eq!(mm.atomic_fetch_add(va + 4, 1).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.atomic_fetch_add(va + 8, 5), Ok(0));
        assert_eq!(mm.atomic_compare_exchange(va + 8, 5, 9), Ok(Ok(5)));
        assert_eq!(mm.atomic_compare_exchange(va + 8, 5, 1), Ok(Err(9)));
        mm.mprotect(va, 4096, Prot::READ).unwrap();
        assert_eq!(mm.atomic_fetch_add(va + 8, 1).unwrap_err().errno(), Errno::Fault);
    }

    #[test]
    fn threads_increment_one_counter() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mm = Arc::clone(&mm);
                std::thread::spawn(move || (0..1000).for_each(|_| drop(mm.atomic_fetch_add(va, 1))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(mm.read_u64(va), Ok(4000));
    }

    /// A read's walk stops at an empty upper-level entry; before it reads the slot, another
    /// thread's fault links a PTE table there. The table entry is no leaf:
    /// the read must not access the table's frame as if it were the page.
    #[test]
    fn a_table_linked_after_the_walk_is_not_read_as_a_leaf() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let va = mm.mmap(0x4000_0000, 2 * 4096, Prot::RW, fixed).unwrap();
        let guard = mm.mmap_read();
        let mut linked = false;
        let held = super::translate_racing(&mm, va, false, || {
            if !std::mem::replace(&mut linked, true) {
                assert!(mm.pgtable().find(va).load().is_none(), "no table below the walk's stop yet");
                mm.write_u64(va + 4096, u64::MAX).unwrap();
            }
        });
        assert!(held.is_none(), "nothing is mapped at {va:#x} yet: the access must fault");
        drop(guard);
        assert_eq!(mm.read_u64(va), Ok(0));
        assert_eq!(mm.read_u64(va + 4096), Ok(u64::MAX));
    }

    #[test]
    fn dirty_and_accessed_bits_follow_accesses() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        mm.write_u64(va, 1).unwrap();
        let (_, entry) = crate::testing::leaf(&mm, va);
        assert!(entry.is_dirty() && entry.is_accessed());
        // Past 2^64 is the kernel half: SIGSEGV, EFAULT for a kernel copy.
        assert_eq!(mm.write_bytes(u64::MAX - 3, &[0; 8]).unwrap_err().errno(), Errno::Fault);
    }
}
