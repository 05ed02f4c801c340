//! `range_fault`: the page-table walk that fills a driver's pfn array, with
//! Linux's per-entry rules (spec §2.4–2.7). No page reference is taken:
//! correctness rests on the interval notifier, and a walk that raced with an
//! invalidation is simply repeated by the driver.
//!
//! Linux: `mm/hmm.c` (`hmm_range_fault`, `hmm_vma_walk_test`,
//! `hmm_vma_walk_hole`, `hmm_vma_walk_pmd`, `hmm_vma_handle_pte`,
//! `hmm_vma_walk_pud`, `hmm_vma_walk_hugetlb_entry`).

use core::ops::ControlFlow;

use core::sync::atomic::{AtomicU64, Ordering};
use hmm_mm::vma::Vma;
use hmm_mm::MmapReadGuard;

use hmm_pagetable::{BatchVisit, Entry, Level, Slot, SwapKind};
use hmm_types::{VmFlags, PMD_SIZE};

use crate::error::HmmError;
use crate::fault::fault_segment;
use crate::pfn::{
    order_bits, HMM_PFN_ERROR, HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE,
};
use crate::range::{Need, Range};

/// Why a walk stopped early.
enum Stop {
    /// Pages were faulted in (or a migration finished): walk again from here.
    Again(u64),
    /// A hard error, returned to the caller.
    Error(HmmError),
}

/// Fills `range.hmm_pfns` for `[range.start, range.end)` of the address
/// space locked by `guard` (`hmm_range_fault`).
///
/// Returns `Ok` with every entry written; `Busy` if an invalidation of the
/// notifier's interval collided (take a new `read_begin` and retry);
/// `Fault` if a requested fault is impossible; `Perm` if a write fault was
/// requested on a mapping without write permission; `Invalid` for a
/// malformed range. After an error the entries before the failing address
/// hold outputs and the rest still hold their inputs.
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
            Err(Stop::Error(error)) => return Err(error),
        }
    }
}

fn walk(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, from: u64) -> Result<(), Stop> {
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

/// Faults `[a, b)` and asks for a re-walk from `a`.
fn fault(guard: &MmapReadGuard<'_>, a: u64, b: u64, need: Need) -> Result<(), Stop> {
    match fault_segment(guard, a, b, need) {
        Ok(()) => Err(Stop::Again(a)),
        Err(error) => Err(Stop::Error(error)),
    }
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
/// [`CHUNK`] entries at a time by [`convert_plain`]; a chunk with anything
/// else is redone entry by entry, and the first entry outside the common
/// case goes through [`pte`].
fn ptes(guard: &MmapReadGuard<'_>, range: &mut Range<'_>, va: u64, cells: &[AtomicU64], end: u64) -> Result<(), Stop> {
    let phys = guard.mm().phys();
    let seg_end = ((va | (PMD_SIZE - 1)) + 1).min(end);
    let plain = Plain { ram_frames: phys.ram_frames(), mask: range.pfn_flags_mask, default: range.default_flags };
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

/// Entries converted together by the fast path of [`ptes`].
const CHUNK: usize = 32;

/// What the fast path of [`ptes`] needs to know of the range and memory.
#[derive(Clone, Copy)]
struct Plain {
    ram_frames: u64,
    mask: u64,
    default: u64,
}

impl Plain {
    /// Converts the leading entries of `cells` into `out` (as long) while
    /// they are plain pages of system RAM whose request (if `REQUESTS`) is
    /// satisfied: `(input & INOUT) | VALID | WRITE? | pfn`, exactly what
    /// [`pte`] writes for them. Returns how many it converted; the entry
    /// there (if any) is not such a page, or was not when loaded.
    ///
    /// A chunk of [`CHUNK`] entries is loaded once and checked with one
    /// word: each entry XORed with the first one's flags and ORed
    /// together, which leaves the flags that differ (the chunk must agree
    /// on PRESENT, WRITE, HUGE, PROTNONE and SPECIAL, so its output flags
    /// are the first entry's) above the OR of all frames (below
    /// `ram_frames` if the OR is). The outputs are stored only when the
    /// check passes; otherwise the chunk is redone one entry at a time, up
    /// to its first exception. (The atomic loads stay scalar; the
    /// conversion after them is vectorized. Keep branches that need the
    /// loaded values out of the chunk loop: they make the compiler spill
    /// them and give up the vectors.)
    #[inline(never)]
    fn convert<const REQUESTS: bool>(self, cells: &[AtomicU64], out: &mut [u64]) -> usize {
        let mut done = 0;
        for (c, o) in cells.chunks_exact(CHUNK).zip(out.chunks_exact_mut(CHUNK)) {
            let (Ok(c), Ok(o)) = (<&[AtomicU64; CHUNK]>::try_from(c), <&mut [u64; CHUNK]>::try_from(o)) else {
                unreachable!("chunks_exact")
            };
            let flags = Entry::raw_flags(c[0].load(Ordering::Relaxed));
            let x: [u64; CHUNK] = core::array::from_fn(|i| c[i].load(Ordering::Relaxed) ^ flags);
            let mut lanes = [0u64; 4];
            for quad in x.chunks_exact(4) {
                for (lane, &v) in lanes.iter_mut().zip(quad) {
                    *lane |= v;
                }
            }
            let differ = (lanes[0] | lanes[1]) | (lanes[2] | lanes[3]);
            let write = Entry::raw_write(flags, HMM_PFN_WRITE.trailing_zeros());
            let cpu = HMM_PFN_VALID | write;
            // The XOR left the frame field alone: `x >> 12` is the frame.
            let words: [u64; CHUNK] =
                core::array::from_fn(|i| (o[i] & HMM_PFN_INOUT_FLAGS) | Entry::raw_plain_pfn(x[i]) | cpu);
            // The OR of the frames is only a bound when RAM is not a power
            // of two: a chunk it rejects is checked again one by one.
            let mut odd = Entry::raw_plain_anomaly(flags)
                | Entry::raw_shape(differ)
                | u64::from(Entry::raw_plain_pfn(differ) >= self.ram_frames);
            if REQUESTS {
                // Conservative too: the union of the requests may ask for
                // more than any one did.
                let inputs = o.iter().fold(0, |acc, &w| acc | w);
                odd |= self.unmet(inputs, write);
            }
            if odd == 0 {
                o.copy_from_slice(&words);
            } else {
                let n = self.convert_one_by_one::<REQUESTS>(c, o);
                if n < CHUNK {
                    return done + n;
                }
            }
            done += CHUNK;
        }
        let tail = cells.len() / CHUNK * CHUNK;
        done + self.convert_one_by_one::<REQUESTS>(&cells[tail..], &mut out[tail..])
    }

    /// Nonzero when the request in `input` asks for a write fault a page
    /// whose WRITE output bit is `write` cannot satisfy
    /// (`hmm_pte_need_fault` with a VALID cpu).
    #[inline]
    fn unmet(self, input: u64, write: u64) -> u64 {
        let request = (input & self.mask) | self.default;
        // REQ_FAULT is bit 63, REQ_WRITE (and the output WRITE) bit 62.
        const _: () = assert!(HMM_PFN_REQ_FAULT == 1 << 63 && HMM_PFN_REQ_WRITE == 1 << 62);
        request & (request << 1) & !(write << 1) & HMM_PFN_REQ_FAULT
    }

    /// [`Self::convert`], one entry at a time.
    #[inline]
    fn convert_one_by_one<const REQUESTS: bool>(self, cells: &[AtomicU64], out: &mut [u64]) -> usize {
        for (k, (cell, word)) in cells.iter().zip(out.iter_mut()).enumerate() {
            let raw = cell.load(Ordering::Relaxed);
            let pfn = Entry::raw_plain_pfn(raw);
            let write = Entry::raw_write(raw, HMM_PFN_WRITE.trailing_zeros());
            if Entry::raw_plain_anomaly(raw) != 0
                || pfn >= self.ram_frames
                || (REQUESTS && self.unmet(*word, write) != 0)
            {
                return k;
            }
            *word = (*word & HMM_PFN_INOUT_FLAGS) | HMM_PFN_VALID | write | pfn;
        }
        cells.len()
    }
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

    /// The chunked fast path agrees with the one-by-one conversion on
    /// where it stops and on every word it writes, whatever mix of
    /// entries, frames (RAM not a power of two) and requests it meets.
    #[test]
    fn the_chunked_conversion_matches_the_entry_by_entry_one() {
        use super::{Plain, CHUNK};
        use crate::pfn::{HMM_PFN_DMA_MAPPED, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE};
        use core::sync::atomic::AtomicU64;
        use hmm_pagetable::{Entry, LeafFlags, SwapKind};
        use hmm_types::Pfn;
        use proptest::prelude::*;

        let ram_frames = 24_576;
        let entry = (0u8..12, 0u64..30_000, any::<bool>(), any::<bool>()).prop_map(|(kind, pfn, write, dirty)| {
            let flags = LeafFlags { write, dirty, accessed: true, special: false };
            match kind {
                0 => Entry::NONE,
                1 => Entry::present(Pfn(pfn), LeafFlags { special: true, ..flags }, false),
                2 => Entry::present(Pfn(pfn), flags, false).mkprotnone(),
                3 => Entry::swap(SwapKind::DevicePrivateWrite, pfn, false),
                4 => Entry::present(Pfn(pfn % ram_frames), flags, false),
                _ => Entry::present(Pfn(pfn % ram_frames), LeafFlags { write: true, ..flags }, false),
            }
        });
        let input = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(sticky, fault, write)| {
            (if sticky { HMM_PFN_DMA_MAPPED } else { 0 })
                | if fault { HMM_PFN_REQ_FAULT } else { 0 }
                | if write { HMM_PFN_REQ_WRITE } else { 0 }
        });
        let case = (
            proptest::collection::vec((entry, input), 1..4 * CHUNK),
            any::<bool>(),
            prop_oneof![Just(0), Just(HMM_PFN_REQ_FAULT), Just(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)],
            // Mostly runs of plain writable pages, which reach the fast path.
            any::<bool>(),
        );
        proptest!(ProptestConfig::with_cases(2000), |((slots, masked, default, plain) in case)| {
            let cells: Vec<AtomicU64> = slots
                .iter()
                .enumerate()
                .map(|(i, (e, _))| {
                    let e = if plain && i % 37 != 5 {
                        Entry::present(Pfn(i as u64 * 13 % ram_frames), LeafFlags { write: true, ..Default::default() }, false)
                    } else {
                        *e
                    };
                    AtomicU64::new(e.raw())
                })
                .collect();
            let inputs: Vec<u64> = slots.iter().map(|&(_, w)| w).collect();
            let mask = if masked { u64::MAX } else { 0 };
            let p = Plain { ram_frames, mask, default };
            let (mut fast, mut slow) = (inputs.clone(), inputs.clone());
            let snapshot = (mask | default) & HMM_PFN_REQ_FAULT == 0;
            let n = if snapshot { p.convert::<false>(&cells, &mut fast) } else { p.convert::<true>(&cells, &mut fast) };
            let m = p.convert_one_by_one::<true>(&cells, &mut slow);
            prop_assert_eq!(n, m);
            prop_assert_eq!(fast, slow);
        });
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
