//! What must hold after every call and at the end of every sequence.
//!
//! After each call:
//! * Linux's argument rules that decide a result whatever the state (an
//!   unaligned munmap is `EINVAL`, `ftruncate` to a negative `loff_t` is
//!   `EINVAL`, unknown mremap flags are `EINVAL`…), each stated with the
//!   kernel check it mirrors;
//! * every VMA of a live process is page aligned, non-empty, ordered and
//!   below `TASK_SIZE` (MAP_FIXED may go below `mmap_min_addr`: the model
//!   has no privileges and acts as a process with `CAP_SYS_RAWIO`);
//! * every frame a CPU page table maps (or names in a device-private or
//!   device-exclusive entry) has references, and a mapped ordinary page
//!   has a mapcount;
//! * no stale device entry: every page a dmirror file maps is the page the
//!   CPU maps at that address (or the device page its entry names), and a
//!   device write mapping only where the CPU may write;
//! * the model still serves a valid request: a fresh mmap, write, read
//!   (and, if the process has a device file open, a device READ) round
//!   trip works.
//!
//! At the end, after every process exited and every file closed: RAM,
//! page tables, hugetlb pages, swap slots and device memory are all back.

use std::sync::Arc;

use hmm::pfn::{hmm_pfn_to_pfn, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm_dmirror::Access;
use hmm_mm::Mm;
use hmm_pagetable::{EntryKind, SwapKind, Visit};
use hmm_types::{Errno, MapFlags, MremapFlags, Owner, Pfn, Prot, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};

/// `PROT_GROWSDOWN` and `PROT_GROWSUP`: valid only on a stack-like VMA.
const PROT_GROWSDOWN: u32 = 0x0100_0000;
const PROT_GROWSUP: u32 = 0x0200_0000;

use crate::exec::{Outcome, World};
use crate::ops::{DmCmd, MapKind, Op};

/// A violated invariant, described.
pub type Violation = String;

/// What the CPU page table holds for one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cpu {
    None,
    Present { pfn: Pfn, write: bool, special: bool },
    NonPresent { kind: SwapKind, pfn: Option<Pfn> },
}

/// The CPU's entry for the page at `va` (the mmap read lock is taken).
fn cpu_at(mm: &Mm, va: u64) -> Cpu {
    let _guard = mm.mmap_read();
    let slot = mm.pgtable().find(va);
    let sub = (va & (slot.level().entry_bytes() - 1)) / PAGE_SIZE;
    match slot.load().kind(slot.level()) {
        EntryKind::None | EntryKind::Table(_) => Cpu::None,
        EntryKind::Present { pfn, flags } => {
            Cpu::Present { pfn: Pfn(pfn.0 + sub), write: flags.write, special: flags.special }
        }
        EntryKind::NonPresent { kind, offset } => {
            Cpu::NonPresent { kind, pfn: kind.has_pfn().then_some(Pfn(offset + sub)) }
        }
    }
}

/// True when the CPU maps a page at `va` (present, or a device page).
pub fn is_populated(mm: &Mm, va: u64) -> bool {
    va < TASK_SIZE && cpu_at(mm, va) != Cpu::None
}

/// Checks a call's outcome, then the whole world.
pub fn after_call(world: &World, op: &Op, outcome: &Outcome) -> Result<(), Violation> {
    if let Outcome::Violation(message) = outcome {
        return Err(message.clone());
    }
    // A dead process makes no system calls: the rules apply to live ones
    // (and to device files, whose prologue runs first either way).
    let caller_alive = world.procs[world.current].alive || matches!(op, Op::Dm { .. });
    if let Some(expected) = linux_rule(op).filter(|_| caller_alive) {
        let got = match outcome {
            Outcome::Err(errno, _) => Some(*errno),
            Outcome::Ok => None,
            Outcome::Skipped(_) | Outcome::Violation(_) => return Ok(()),
        };
        let fits = match expected {
            Expect::Errno(errno) => got == Some(errno),
            Expect::Ok => got.is_none(),
            Expect::Fails => got.is_some(),
        };
        if !fits {
            return Err(format!("{op:?} returned {outcome:?}; Linux: {expected:?}"));
        }
    }
    for proc in world.procs.iter().filter(|p| p.alive) {
        check_vmas(&proc.mm)?;
        check_mapped_frames(&proc.mm)?;
    }
    for open in &world.files {
        check_device_entries(world, open.proc, &open.file)?;
    }
    check_round_trip(world)
}

/// What Linux returns for a call whatever the state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Errno(Errno),
    Ok,
    Fails,
}

fn page_align(len: u64) -> u64 {
    len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Linux's state-independent argument checks, in the kernel's order.
fn linux_rule(op: &Op) -> Option<Expect> {
    const LOFF_MAX: u64 = i64::MAX as u64;
    match *op {
        // do_mmap: `if (!len) return -EINVAL`, then PAGE_ALIGN(len) == 0 is
        // -ENOMEM (hugetlb aligns the length to its own page size first).
        Op::Mmap { len, kind, .. } if !matches!(kind, MapKind::Hugetlb { .. } | MapKind::Hugetlb1G) => {
            let len = len.resolve();
            if len == 0 {
                Some(Expect::Errno(Errno::Inval))
            } else if page_align(len) == 0 {
                Some(Expect::Errno(Errno::NoMem))
            } else if let MapKind::File { pgoff, .. } = kind {
                // file_mmap_ok: a regular file maps no byte past
                // MAX_LFS_FILESIZE (-EOVERFLOW after the address is chosen).
                let offset = pgoff.resolve().wrapping_shl(PAGE_SHIFT);
                let end = u128::from(offset) + u128::from(page_align(len));
                (end > u128::from(LOFF_MAX)).then_some(Expect::Fails)
            } else {
                None
            }
        }
        // __vm_munmap / do_vmi_munmap: unaligned, past TASK_SIZE, or empty.
        Op::Munmap { addr, len } => {
            let (start, len) = (addr.resolve(), len.resolve());
            let bad = start % PAGE_SIZE != 0 || start > TASK_SIZE || len > TASK_SIZE - start || page_align(len) == 0;
            bad.then_some(Expect::Errno(Errno::Inval))
        }
        // do_mprotect_pkey: unaligned start, then `!len` is success, then a
        // wrapping end is -ENOMEM, then unknown bits -EINVAL.
        Op::Mprotect { addr, len, prot } => {
            let (start, len) = (addr.resolve(), len.resolve());
            if start % PAGE_SIZE != 0 {
                Some(Expect::Errno(Errno::Inval))
            } else if len == 0 {
                Some(Expect::Ok)
            } else if start.wrapping_add(page_align(len)) <= start {
                Some(Expect::Errno(Errno::NoMem))
            } else {
                // R|W|X and PROT_SEM (0x8, valid on x86; probed on 6.18);
                // one GROWS bit depends on the VMA, both are EINVAL.
                const VALID: u32 = 0xf | PROT_GROWSDOWN | PROT_GROWSUP;
                let both_grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP) == PROT_GROWSDOWN | PROT_GROWSUP;
                (prot & !VALID != 0 || both_grows).then_some(Expect::Errno(Errno::Inval))
            }
        }
        // is_valid_madvise: unaligned, rounded to zero, or wrapping is
        // -EINVAL; an empty range is success.
        Op::Madvise { addr, len, .. } => {
            let (start, len) = (addr.resolve(), len.resolve());
            let aligned = page_align(len);
            if start % PAGE_SIZE != 0 || (len != 0 && aligned == 0) || start.checked_add(aligned).is_none() {
                Some(Expect::Errno(Errno::Inval))
            } else {
                (len == 0).then_some(Expect::Ok)
            }
        }
        // check_mremap_params: unknown flags, FIXED or DONTUNMAP without
        // MAYMOVE, unaligned address, new length rounding to zero.
        Op::Mremap { addr, new_len, flags, .. } => {
            let known = MremapFlags::MAYMOVE | MremapFlags::FIXED | MremapFlags::DONTUNMAP;
            let flags_bad = flags & !known.bits() != 0;
            let needs_move = flags & (MremapFlags::FIXED | MremapFlags::DONTUNMAP).bits() != 0
                && flags & MremapFlags::MAYMOVE.bits() == 0;
            let bad = flags_bad || needs_move || addr.resolve() % PAGE_SIZE != 0 || page_align(new_len.resolve()) == 0;
            bad.then_some(Expect::Errno(Errno::Inval))
        }
        // do_ftruncate: a negative loff_t is -EINVAL before anything else.
        Op::Truncate { size, .. } => (size.resolve() > LOFF_MAX).then_some(Expect::Errno(Errno::Inval)),
        // vfs_fallocate: negative offset or non-positive length -EINVAL;
        // an end past s_maxbytes (or wrapping) -EFBIG.
        Op::Punch { offset, len, .. } => {
            let (offset, len) = (offset.resolve(), len.resolve());
            if offset > LOFF_MAX || len == 0 || len > LOFF_MAX {
                Some(Expect::Errno(Errno::Inval))
            } else {
                (offset + len > LOFF_MAX).then_some(Expect::Errno(Errno::FBig))
            }
        }
        // dmirror_fops_unlocked_ioctl: unaligned address, or
        // `addr >= addr + (npages << PAGE_SHIFT)` (the shift wraps in C).
        Op::Dm { cmd, addr, npages, .. } if cmd != DmCmd::FailAlloc => {
            let (addr, npages) = (addr.resolve(), npages.resolve());
            let end = addr.wrapping_add(npages.wrapping_shl(12));
            (addr % PAGE_SIZE != 0 || addr >= end).then_some(Expect::Errno(Errno::Inval))
        }
        _ => None,
    }
}

fn check_vmas(mm: &Arc<Mm>) -> Result<(), Violation> {
    let guard = mm.mmap_read();
    let mut last_end = 0;
    for vma in guard.iter() {
        let sane = vma.start % PAGE_SIZE == 0 && vma.end % PAGE_SIZE == 0 && vma.start < vma.end;
        if !sane || vma.start < last_end || vma.end > TASK_SIZE {
            return Err(format!("VMA [{:#x}, {:#x}) misplaced (previous ends at {last_end:#x})", vma.start, vma.end));
        }
        last_end = vma.end;
    }
    Ok(())
}

/// No frame with no reference is still mapped; ordinary pages have a
/// mapcount while mapped.
fn check_mapped_frames(mm: &Arc<Mm>) -> Result<(), Violation> {
    let phys = mm.phys();
    let _guard = mm.mmap_read();
    let mut problem = None;
    let _ = mm.pgtable().walk(0, TASK_SIZE, |visit| {
        let Visit::Slot { slot, entry } = visit else { return core::ops::ControlFlow::Continue(()) };
        let (pfn, needs_map) = match entry.kind(slot.level()) {
            EntryKind::Present { pfn, flags } if !flags.special => (pfn, true),
            EntryKind::NonPresent { kind, offset } if kind.has_pfn() && !kind.is_migration() => (Pfn(offset), false),
            _ => return core::ops::ControlFlow::Continue(()),
        };
        if !phys.is_valid_pfn(pfn) {
            problem = Some(format!("{:#x} maps {pfn:?}, which is no frame", slot.va()));
        } else {
            let (refs, maps) = phys.folio_counts(pfn);
            if refs == 0 || (needs_map && maps <= 0) {
                problem = Some(format!("{:#x} maps {pfn:?} with refcount {refs}, mapcount {maps}", slot.va()));
            }
        }
        if problem.is_some() {
            core::ops::ControlFlow::Break(())
        } else {
            core::ops::ControlFlow::Continue(())
        }
    });
    problem.map_or(Ok(()), Err)
}

/// Every device mapping names the page the CPU maps there.
fn check_device_entries(world: &World, proc: usize, file: &hmm_dmirror::DmirrorFile) -> Result<(), Violation> {
    let proc = &world.procs[proc];
    let entries = file.device_entries();
    if !proc.alive {
        return match entries.first() {
            Some((va, entry)) => Err(format!("device maps {va:#x} ({entry:?}) of an exited process")),
            None => Ok(()),
        };
    }
    for (va, entry) in entries {
        let cpu = cpu_at(&proc.mm, va);
        let fine = match cpu {
            Cpu::Present { pfn, write, .. } => pfn == entry.pfn && (entry.access != Access::Write || write),
            Cpu::NonPresent { kind: SwapKind::DeviceExclusive, pfn } => pfn == Some(entry.pfn),
            Cpu::NonPresent { kind, pfn } if kind.is_device_private() => {
                pfn == Some(entry.pfn) && (entry.access != Access::Write || kind.is_write())
            }
            _ => false,
        };
        if !fine {
            return Err(format!("stale device entry at {va:#x}: device {entry:?}, CPU {cpu:?}"));
        }
    }
    Ok(())
}

/// What `range_fault` reported matches the CPU page table.
pub fn check_range_fault_result(mm: &Mm, start: u64, pfns: &[u64], owner: Option<Owner>) -> Result<(), Violation> {
    let _ = owner;
    for (i, &word) in pfns.iter().enumerate() {
        if word & HMM_PFN_VALID == 0 {
            continue;
        }
        let va = start + i as u64 * PAGE_SIZE;
        let pfn = hmm_pfn_to_pfn(word);
        let write = word & HMM_PFN_WRITE != 0;
        let fine = match cpu_at(mm, va) {
            Cpu::Present { pfn: cpu, write: cpu_write, .. } => cpu == pfn && (!write || cpu_write),
            Cpu::NonPresent { kind, pfn: cpu } if kind.is_device_private() => {
                cpu == Some(pfn) && (!write || kind.is_write())
            }
            _ => false,
        };
        if !fine {
            return Err(format!("range_fault reported {word:#x} at {va:#x}; the CPU has {:?}", cpu_at(mm, va)));
        }
    }
    Ok(())
}

/// Free frames below which an out-of-memory page fault is what Linux would
/// do too (a page, its page tables, and the buddy's smallest reserves).
const EXHAUSTED_FRAMES: u64 = 64;

/// A valid request still works: mmap, write, read, device READ, munmap.
fn check_round_trip(world: &World) -> Result<(), Violation> {
    let proc = &world.procs[world.current];
    if !proc.alive {
        return Ok(());
    }
    let mm = &proc.mm;
    let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, flags).map_err(|e| format!("round trip: mmap failed: {e}"))?;
    let pattern = 0x0123_4567_89ab_cdef ^ va;
    if let Err(e) = mm.write_u64(va + 8, pattern) {
        // Memory the sequence filled (a populated mapping of most of RAM)
        // leaves nothing for the page: Linux would be out of memory too.
        let exhausted = e.errno() == Errno::NoMem && world.kernel.phys().free_frames() < EXHAUSTED_FRAMES;
        let _ = mm.munmap(va, PAGE_SIZE);
        return if exhausted { Ok(()) } else { Err(format!("round trip: write failed: {e}")) };
    }
    let back = mm.read_u64(va + 8).map_err(|e| format!("round trip: read failed: {e}"))?;
    if back != pattern {
        return Err(format!("round trip: read {back:#x} after writing {pattern:#x}"));
    }
    let file = world.files.iter().find(|open| open.proc == world.current);
    if let Some(open) = file {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        match open.file.read(va, 1, &mut page) {
            Ok(_) if page[8..16] == pattern.to_le_bytes() => {}
            Ok(_) => return Err("round trip: the device read other bytes than the CPU wrote".into()),
            // The FLAGS word may have asked the next allocation to fail;
            // READ allocates nothing on the device, so nothing may fail.
            Err(e) => return Err(format!("round trip: device READ failed: {e}")),
        }
    }
    mm.munmap(va, PAGE_SIZE).map_err(|e| format!("round trip: munmap failed: {e}"))
}

/// After [`World::teardown`]: everything is back.
pub fn at_end(world: &World) -> Result<(), Violation> {
    let phys = world.kernel.phys();
    if phys.free_frames() != world.baseline_free {
        return Err(format!(
            "{} frames still in use after every process exited and every file closed",
            world.baseline_free as i64 - phys.free_frames() as i64
        ));
    }
    if phys.page_table_frames() != 0 {
        return Err(format!("{} page-table frames left", phys.page_table_frames()));
    }
    let (free, total) = world.hugetlb_free();
    if free != total {
        return Err(format!("{} of {total} hugetlb pages still in use", total - free));
    }
    let swap = world.kernel.swap().used_slots();
    if swap != 0 {
        return Err(format!("{swap} swap slots still in use"));
    }
    // Not `counters()`: like Linux's `cfree`, they ignore pages freed
    // while their chunk is being released (by a close or RELEASE).
    for device in world.dmirror.devices() {
        let in_use = device.pages_in_use();
        if in_use != 0 {
            return Err(format!("device {}: {in_use} pages still in use", device.minor()));
        }
    }
    Ok(())
}
