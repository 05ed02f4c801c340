//! `range_fault`: the page-table walk that fills a driver's pfn array, with
//! Linux's per-entry rules (spec §2.4–2.7). No page reference is taken:
//! correctness rests on the interval notifier, and a walk that raced with an
//! invalidation is simply repeated by the driver.
//!
//! As in Linux 7.3 the walk never faults: a callback that needs a fault
//! records `[addr, end)` and its needs ([`Stop::Fault`]) and unwinds; the
//! engine performs it outside the walk (`fault.rs`) and walks again from
//! `addr` within the same locked session. Migration entries are still
//! waited for inside the walk.
//!
//! Linux 7.3: `mm/hmm.c` (`hmm_range_fault`, `hmm_range_fault_locked`, `hmm_vma_walk_test`,
//! `hmm_vma_walk_hole`, `hmm_vma_walk_pmd`, `hmm_vma_handle_pte`,
//! `hmm_vma_walk_pud`, `hmm_vma_walk_hugetlb_entry`).

use core::ops::ControlFlow;

use core::sync::atomic::{AtomicU64, Ordering};
use hmm_mm::vma::Vma;
use hmm_mm::MmapReadGuard;

use hmm_pagetable::{BatchVisit, Entry, Level, Slot, SwapKind};
use hmm_types::{VmFlags, PMD_SIZE};

use crate::error::HmmError;
use crate::fault::{do_fault_locked, Recorded};
use crate::pfn::{order_bits, HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE};
use crate::plain::Plain;
use crate::range::{Need, Range};

/// Why a walk stopped early.
pub(crate) enum Stop {
    /// A migration entry was waited out: walk again from here.
    Again(u64),
    /// A fault is needed (`HMM_FAULT_PENDING`): perform it, then walk
    /// again from its `addr`.
    Fault(Recorded),
    /// A hard error, returned to the caller.
    Error(HmmError),
}

/// Fills `range.hmm_pfns` for `[range.start, range.end)` of the address
/// space locked by `guard` (`hmm_range_fault`). The lock is never released:
/// a fault that would have to sleep without it (a userfaultfd range) fails
/// with `Fault`; use [`crate::range_fault_unlocked_timeout`] for those.
///
/// Returns `Ok` with every entry written; `Busy` if an invalidation of the
/// notifier's interval collided (take a new `read_begin` and retry);
/// `Fault` if a requested fault is impossible; `Perm` if a write fault was
/// requested on a mapping without write permission; `NoMem` if the fault
/// ran out of memory; `Invalid` for a malformed range. After an error the
/// entries before the failing address hold outputs and the rest still hold
/// their inputs.
pub fn range_fault(guard: &MmapReadGuard<'_>, range: &mut Range<'_>) -> Result<(), HmmError> {
    range.validate()?;
    if guard.mm().id() != range.notifier.mm() {
        return Err(HmmError::Invalid("the notifier watches another address space"));
    }
    let mut last = range.start;
    loop {
        if range.notifier.check_retry(range.notifier_seq) {
            return Err(HmmError::Busy);
        }
        match walk(guard, range, last) {
            Ok(()) => return Ok(()),
            Err(Stop::Again(addr)) => last = addr,
            Err(Stop::Fault(recorded)) => {
                do_fault_locked(guard, recorded)?;
                last = recorded.addr;
            }
            Err(Stop::Error(error)) => return Err(error),
        }
    }
}

/// One walk from `from` to `range.end` (`walk_page_range` with the HMM
/// callbacks).
pub(crate) fn walk(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, from: u64) -> Result<(), Stop> {
    let mut addr = from;
    while addr < range.end {
        let next = guard.overlapping(addr, range.end).next();
        match next {
            Some(vma) if vma.start <= addr => {
                let end = vma.end.min(range.end);
                walk_vma(guard, range, vma, addr, end)?;
                addr = end;
            }
            _ => {
                let end = next.map_or(range.end, |vma| vma.start);
                no_vma(range, addr, end)?;
                addr = end;
            }
        }
    }
    Ok(())
}

/// A gap with no VMA: `EFAULT` if anything there was requested, else ERROR.
fn no_vma(range: &mut Range<'_>, start: u64, end: u64) -> Result<(), Stop> {
    let (first, last) = (range.index(start), range.index(end));
    if range.range_need_fault(first, last, 0).any() {
        return Err(Stop::Error(HmmError::Fault("no mapping in the range")));
    }
    range.fill(first, last, HMM_PFN_ERROR);
    Ok(())
}

fn walk_vma(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, vma: &Vma, start: u64, end: u64) -> Result<(), Stop> {
    // `hmm_vma_walk_test`: pfn maps, I/O and unreadable mappings.
    if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) || !vma.flags.contains(VmFlags::READ) {
        let (first, last) = (range.index(start), range.index(end));
        if range.range_need_fault(first, last, 0).any() {
            return Err(Stop::Error(HmmError::Fault("the mapping is VM_IO/VM_PFNMAP or not readable")));
        }
        range.fill(first, last, HMM_PFN_ERROR);
        return Ok(());
    }
    let hugetlb = vma.flags.contains(VmFlags::HUGETLB);
    let mm = guard.mm();
    let flow = mm.pgtable().walk_batched(start, end, |visit| {
        let result = match visit {
            BatchVisit::Hole { start: a, end: b } => hole(guard, range, a, b),
            BatchVisit::Ptes { va, cells } => ptes(guard, range, va, cells, end),
            BatchVisit::Huge { slot, entry } => {
                let size = slot.level().entry_bytes();
                let (a, b) = (slot.va().max(start), (slot.va() + size).min(end));
                huge(guard, range, slot, entry, a, b, hugetlb)
            }
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(stop) => ControlFlow::Break(stop),
        }
    });
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(stop) => Err(stop),
    }
}

/// Records a fault of `[a, b)` and unwinds the walk (`hmm_record_fault`).
fn fault(_guard: &MmapReadGuard<'_>, a: u64, b: u64, need: Need) -> Result<(), Stop> {
    Err(Stop::Fault(Recorded { addr: a, end: b, need }))
}

/// Empty page-table levels: fill 0, or fault the whole hole.
fn hole(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, a: u64, b: u64) -> Result<(), Stop> {
    let (first, last) = (range.index(a), range.index(b));
    let need = range.range_need_fault(first, last, 0);
    if need.any() {
        return fault(guard, a, b, need);
    }
    range.fill(first, last, 0);
    Ok(())
}

/// A run of PTEs of one table. The common case (a present, accessible
/// page of system RAM whose request is already satisfied) is converted
/// many entries at a time by [`Plain::convert`]; a chunk with anything
/// else is redone entry by entry, and the first entry outside the common
/// case goes through [`pte`].
fn ptes(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, va: u64, cells: &[AtomicU64], end: u64) -> Result<(), Stop> {
    let phys = guard.mm().phys();
    let seg_end = ((va | (PMD_SIZE - 1)) + 1).min(end);
    let plain = Plain::new(phys.ram_frames(), range.pfn_flags_mask, range.default_flags);
    let snapshot = range.is_snapshot();
    let first = range.index(va);
    let mut k = 0;
    while k < cells.len() {
        let out = &mut range.hmm_pfns[first + k..first + cells.len()];
        k += if snapshot { plain.convert::<false>(&cells[k..], out) } else { plain.convert::<true>(&cells[k..], out) };
        if k < cells.len() {
            let entry = Entry::from_raw(cells[k].load(Ordering::Acquire));
            let slot = Slot::new(&cells[k], Level::Pte, va + ((k as u64) << hmm_types::PAGE_SHIFT));
            pte(guard, range, slot, entry, seg_end)?;
            k += 1;
        }
    }
    Ok(())
}

/// One PTE (`hmm_vma_handle_pte`).
fn pte(
    guard: &MmapReadGuard<'_>,
    range: &mut Range<'_>,
    slot: Slot<'_>,
    entry: Entry,
    seg_end: u64,
) -> Result<(), Stop> {
    let va = slot.va();
    let i = range.index(va);
    let input = range.hmm_pfns[i];
    let phys = guard.mm().phys();
    if entry.is_none() {
        let need = range.need_fault(input, 0);
        if need.any() {
            return fault(guard, va, seg_end, need);
        }
        range.fill(i, i + 1, 0);
        return Ok(());
    }
    if !entry.is_present() {
        let kind = entry.swap_kind().unwrap_or(SwapKind::Marker);
        if kind.is_device_private() {
            let owner = phys.pagemap(entry.pfn()).and_then(|p| p.owner());
            if owner.is_some() && owner == range.dev_private_owner {
                let write = if kind.is_write() { HMM_PFN_WRITE } else { 0 };
                range.fill_pfns(i, i + 1, entry.pfn().0, HMM_PFN_VALID | write);
                return Ok(());
            }
        }
        let need = range.need_fault(input, 0);
        if !need.any() {
            range.fill(i, i + 1, 0);
            return Ok(());
        }
        return match kind {
            k if k.is_migration() => {
                guard.wait_for_migration(va);
                Err(Stop::Again(va))
            }
            SwapKind::Swap | SwapKind::DeviceExclusive => fault(guard, va, seg_end, need),
            k if k.is_device_private() => fault(guard, va, seg_end, need),
            // A guard page cannot be faulted in (Linux 7.3: EFAULT).
            _ if entry.is_guard_marker() => Err(Stop::Error(HmmError::Fault("a guard page (MADV_GUARD_INSTALL)"))),
            _ => Err(Stop::Error(HmmError::Fault("a poisoned or unknown entry"))),
        };
    }
    if entry.is_protnone() {
        let need = range.need_fault(input, 0);
        if need.any() {
            return fault(guard, va, seg_end, need);
        }
        range.fill(i, i + 1, 0);
        return Ok(());
    }
    let cpu = HMM_PFN_VALID | if entry.is_write() { HMM_PFN_WRITE } else { 0 };
    let need = range.need_fault(input, cpu);
    if need.any() {
        return fault(guard, va, seg_end, need);
    }
    if entry.is_special() && !phys.is_zero_pfn(entry.pfn()) {
        if range.need_fault(input, 0).any() {
            return Err(Stop::Error(HmmError::Fault("a special (pfn-mapped) page")));
        }
        range.fill(i, i + 1, HMM_PFN_ERROR);
        return Ok(());
    }
    check_pagemap(guard, entry)?;
    range.fill_pfns(i, i + 1, entry.pfn().0, cpu);
    Ok(())
}

/// Device memory (DAX) whose pagemap is being torn down is not reported:
/// the walk backs off with `EBUSY`, as the DAX patch's `get_dev_pagemap`
/// check did; the unbind's invalidation follows.
fn check_pagemap(guard: &MmapReadGuard<'_>, entry: Entry) -> Result<(), Stop> {
    let phys = guard.mm().phys();
    if phys.is_ram(entry.pfn()) {
        return Ok(());
    }
    match phys.pagemap(entry.pfn()) {
        Some(pagemap) if !pagemap.is_alive() => Err(Stop::Error(HmmError::Busy)),
        _ => Ok(()),
    }
}

/// A PMD or PUD leaf covering `[a, b)` of the walk (`hmm_vma_walk_pmd`,
/// `hmm_vma_walk_pud`, `hmm_vma_walk_hugetlb_entry`).
#[allow(clippy::too_many_arguments)]
fn huge(
    guard: &MmapReadGuard<'_>,
    range: &mut Range<'_>,
    slot: Slot<'_>,
    entry: Entry,
    a: u64,
    b: u64,
    hugetlb: bool,
) -> Result<(), Stop> {
    let (first, last) = (range.index(a), range.index(b));
    let order = slot.level().shift() - hmm_types::PAGE_SHIFT;
    if !entry.is_present() {
        if let Some(kind) = entry.swap_kind().filter(|k| k.is_device_private()) {
            // [THP] `hmm_vma_handle_absent_pmd`: the owner sees every
            // sub-page; anyone else faults it back or reads ERROR (not 0,
            // unlike the PTE case: a Linux quirk kept as is).
            let owner = guard.mm().phys().pagemap(entry.pfn()).and_then(|p| p.owner());
            if owner.is_some() && owner == range.dev_private_owner {
                let write = if kind.is_write() { HMM_PFN_WRITE } else { 0 };
                let base = entry.pfn().0 + ((a - slot.va()) >> hmm_types::PAGE_SHIFT);
                range.fill_pfns(first, last, base, HMM_PFN_VALID | write | order_bits(order));
                return Ok(());
            }
            let need = range.range_need_fault(first, last, 0);
            if need.any() {
                return fault(guard, a, b, need);
            }
            range.fill(first, last, HMM_PFN_ERROR);
            return Ok(());
        }
        let need = range.range_need_fault(first, last, 0);
        return match entry.swap_kind() {
            Some(kind) if kind.is_migration() && need.any() => {
                guard.wait_for_migration(a);
                Err(Stop::Again(a))
            }
            Some(kind) if kind.is_migration() => {
                range.fill(first, last, 0);
                Ok(())
            }
            _ if need.any() => Err(Stop::Error(HmmError::Fault("an unsupported non-present huge entry"))),
            _ => {
                range.fill(first, last, HMM_PFN_ERROR);
                Ok(())
            }
        };
    }
    let cpu = if entry.is_protnone() { 0 } else { HMM_PFN_VALID | if entry.is_write() { HMM_PFN_WRITE } else { 0 } };
    // hugetlb consults only the first entry's request (a Linux quirk).
    let need =
        if hugetlb { range.need_fault(range.hmm_pfns[first], cpu) } else { range.range_need_fault(first, last, cpu) };
    if need.any() {
        return fault(guard, a, b, need);
    }
    check_pagemap(guard, entry)?;
    let base = entry.pfn().0 + ((a - slot.va()) >> hmm_types::PAGE_SHIFT);
    range.fill_pfns(first, last, base, cpu | order_bits(order));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmm_mm::fs::DaxFs;
    use hmm_mm::testing::{kernel, temp_path};
    use hmm_mm::ThpMode;
    use hmm_notifier::{IntervalNotifier, IntervalNotifierOps};
    use hmm_types::{MapFlags, NotifierRange, Prot, PMD_SIZE};

    use super::range_fault;
    use crate::pfn::{hmm_pfn_to_map_order, HMM_PFN_VALID};
    use crate::{HmmError, Range};

    struct Ignore;

    impl IntervalNotifierOps for Ignore {
        fn invalidate(&self, s: &IntervalNotifier, _: &NotifierRange, seq: u64) -> bool {
            s.set_seq(seq);
            true
        }
    }

    #[test]
    fn a_dying_dax_pagemap_makes_the_walk_back_off() {
        let k = kernel(64, ThpMode::Never);
        let path = temp_path("dying.pmem");
        let fs = DaxFs::format(&k, &path, 16 << 20).unwrap();
        let file = fs.create("f").unwrap();
        file.ftruncate(PMD_SIZE).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_file(0, PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        mm.write_u64(va, 1).unwrap();
        let notifier = mm.interval_notifier_insert(va, PMD_SIZE, Arc::new(Ignore)).unwrap();
        let mut pfns = vec![0u64; 512];
        let mut range = Range {
            notifier: &notifier,
            notifier_seq: notifier.read_begin(),
            start: va,
            end: va + PMD_SIZE,
            hmm_pfns: &mut pfns,
            default_flags: 0,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        range_fault(&mm.mmap_read(), &mut range).unwrap();
        assert!(range.hmm_pfns.iter().all(|&w| w & HMM_PFN_VALID != 0 && hmm_pfn_to_map_order(w) == 9));
        fs.device().pagemap().kill();
        assert_eq!(range_fault(&mm.mmap_read(), &mut range), Err(HmmError::Busy));
        let _ = std::fs::remove_file(path);
    }
}
