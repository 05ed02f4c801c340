//! READ and WRITE: the device copies between user memory and a buffer
//! through its page table, and when a page is missing runs one fault round
//! (`range_fault` in 32-page chunks inside the collision-retry loop) and
//! tries again from that page (spec §5.5).
//!
//! Linux: `dmirror_read`, `dmirror_write`, `dmirror_do_read`,
//! `dmirror_do_write`, `dmirror_fault`, `dmirror_range_fault`,
//! `dmirror_do_fault` (`lib/test_hmm.c`).

use core::ops::ControlFlow;

use hmm::pfn::{hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_WRITE};
use hmm::{range_fault_loop, Range, HMM_RANGE_DEFAULT_TIMEOUT};
use hmm_types::{Pfn, PAGE_SIZE};

use crate::error::DmirrorError;
use crate::file::{Counts, Mirror};
use crate::table::{Access, DeviceEntry, DeviceTable};

/// Pages per `range_fault` call of a fault round.
pub(crate) const FAULT_CHUNK_PAGES: u64 = 32;

const PAGE: usize = PAGE_SIZE as usize;

/// Runs of pages that are contiguous both in the range and in one region
/// of frames, so each run is copied with one call (what a device's DMA
/// engine would do with a scatter list): `(first page's offset in the
/// range, first frame, pages)`.
#[derive(Default)]
struct Runs {
    current: Option<(usize, Pfn, u64)>,
}

impl Runs {
    /// Adds the page at range offset `at` in frame `pfn`; returns the run
    /// it closes, if any.
    fn push(&mut self, at: usize, pfn: Pfn) -> Option<(usize, Pfn, u64)> {
        if let Some((first, base, n)) = &mut self.current {
            let follows = *first + *n as usize * PAGE == at && base.0 + *n == pfn.0;
            if follows && base.0 >> REGION_BITS == pfn.0 >> REGION_BITS {
                *n += 1;
                return None;
            }
        }
        self.current.replace((at, pfn, 1))
    }
}

/// Frames of one region share the bits above this (the model's regions).
const REGION_BITS: u32 = 28;

/// Copies the device-mapped pages of `[start, end)` into `out` (page `i`
/// of the range at `out[i * PAGE..]`, the range starting at `base`).
/// `Err(va)`: the first page the device does not map.
pub(crate) fn do_read(
    mirror: &Mirror,
    table: &DeviceTable,
    base: u64,
    start: u64,
    end: u64,
    out: &mut [u8],
) -> Result<(), u64> {
    let phys = mirror.mm.phys();
    let mut copy = |(at, pfn, n): (usize, Pfn, u64)| phys.read(pfn, 0, &mut out[at..at + n as usize * PAGE]);
    let mut runs = Runs::default();
    let walked = table.for_each(start, end, |va, entry| {
        let Some(entry) = entry else { return ControlFlow::Break(va) };
        if let Some(run) = runs.push(((va - base) / PAGE_SIZE) as usize * PAGE, entry.pfn) {
            copy(run);
        }
        ControlFlow::Continue(())
    });
    if let Some(run) = runs.current {
        copy(run);
    }
    match walked {
        ControlFlow::Break(va) => Err(va),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn do_write(mirror: &Mirror, table: &DeviceTable, base: u64, start: u64, end: u64, data: &[u8]) -> Result<(), u64> {
    let phys = mirror.mm.phys();
    let copy = |(at, pfn, n): (usize, Pfn, u64)| phys.write(pfn, 0, &data[at..at + n as usize * PAGE]);
    let mut runs = Runs::default();
    let walked = table.for_each(start, end, |va, entry| match entry {
        Some(DeviceEntry { pfn, access: Access::Write }) => {
            if let Some(run) = runs.push(((va - base) / PAGE_SIZE) as usize * PAGE, pfn) {
                copy(run);
            }
            ControlFlow::Continue(())
        }
        _ => ControlFlow::Break(va),
    });
    if let Some(run) = runs.current {
        copy(run);
    }
    match walked {
        ControlFlow::Break(va) => Err(va),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// READ.
pub(crate) fn read(mirror: &Mirror, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
    copy_loop(mirror, addr, npages, false, |table, start, end| do_read(mirror, table, addr, start, end, out))
}

/// WRITE.
pub(crate) fn write(mirror: &Mirror, addr: u64, npages: u64, data: &[u8]) -> Result<Counts, DmirrorError> {
    copy_loop(mirror, addr, npages, true, |table, start, end| do_write(mirror, table, addr, start, end, data))
}

/// Copies under the table lock until done; each miss costs one fault round
/// from the missing page to the end.
fn copy_loop(
    mirror: &Mirror,
    addr: u64,
    npages: u64,
    write: bool,
    mut copy: impl FnMut(&DeviceTable, u64, u64) -> Result<(), u64>,
) -> Result<Counts, DmirrorError> {
    let end = addr + npages * PAGE_SIZE;
    let mut start = addr;
    let mut faults = 0;
    loop {
        let copied = copy(&mirror.lock_table(), start, end);
        match copied {
            Ok(()) => return Ok(Counts { cpages: npages, faults }),
            Err(missing) => {
                start = missing;
                fault(mirror, start, end, write)?;
                faults += 1;
            }
        }
    }
}

/// One fault round over `[start, end)` (`dmirror_fault`): 32 pages at a
/// time, each mapped under the table lock after `read_retry` says the walk
/// is still valid.
pub(crate) fn fault(mirror: &Mirror, start: u64, end: u64, write: bool) -> Result<(), DmirrorError> {
    // Linux's test device returns success here once the address space is
    // gone, and READ/WRITE then loop forever; the model says so instead.
    // Linux 7.3: EFAULT here (older kernels returned 0 and READ spun).
    let user = mirror.mm_user().map_err(|_| DmirrorError::MmGoneInFault)?;
    let default_flags = HMM_PFN_REQ_FAULT | if write { HMM_PFN_REQ_WRITE } else { 0 };
    let mut pfns = [0u64; FAULT_CHUNK_PAGES as usize];
    let mut at = start;
    while at < end {
        // `end` may lie within a chunk of 2^64: step by what is left.
        let next = at + (end - at).min(FAULT_CHUNK_PAGES * PAGE_SIZE);
        let pfns = &mut pfns[..((next - at) / PAGE_SIZE) as usize];
        let mut range = Range {
            notifier: mirror.notifier(),
            notifier_seq: 0,
            start: at,
            end: next,
            hmm_pfns: pfns,
            default_flags,
            pfn_flags_mask: 0,
            dev_private_owner: Some(mirror.device.owner()),
        };
        range_fault_loop(&user, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |range| {
            let mut table = mirror.lock_table();
            if range.notifier.read_retry(range.notifier_seq) {
                return None;
            }
            Some(do_fault(&mut table, range, write, mirror.mm.phys()))
        })??;
        at = next;
    }
    Ok(())
}

/// Maps what the walk found (`dmirror_do_fault`): the frame exactly as
/// reported, writable iff `HMM_PFN_WRITE`; inside a DMA window, system
/// pages are DMA-mapped too (`crate::dma`).
pub(crate) fn do_fault(
    table: &mut DeviceTable,
    range: &Range<'_>,
    write: bool,
    phys: &hmm_mm::phys::PhysMem,
) -> Result<(), DmirrorError> {
    for (i, &word) in range.hmm_pfns.iter().enumerate() {
        let va = range.start + i as u64 * PAGE_SIZE;
        let writable = word & HMM_PFN_WRITE != 0;
        // Only an owned read-only device-private page comes back without
        // the write asked for (the walk never faults those).
        if write && !writable {
            return Err(DmirrorError::ReadOnlyForWrite(va));
        }
        let access = if writable { Access::Write } else { Access::Read };
        let pfn = hmm_pfn_to_pfn(word);
        table.set(va, DeviceEntry { pfn, access })?;
        let mapped = table.dma.as_mut().map(|window| window.map(va, word, phys.memory_type(pfn).is_zone_device()));
        if let Some(Err(error)) = mapped {
            // The device must not reach a page it could not DMA-map.
            table.remove(va);
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_pages_contiguous_in_the_range_and_in_one_region_only() {
        let mut runs = Runs::default();
        assert_eq!(runs.push(0, Pfn(10)), None);
        assert_eq!(runs.push(PAGE, Pfn(11)), None);
        // A gap in frames closes the run.
        assert_eq!(runs.push(2 * PAGE, Pfn(20)), Some((0, Pfn(10), 2)));
        // A gap in the range closes it too.
        assert_eq!(runs.push(4 * PAGE, Pfn(21)), Some((2 * PAGE, Pfn(20), 1)));
        // Frames on both sides of a region boundary are not one run.
        let last = (1 << REGION_BITS) - 1;
        assert_eq!(runs.push(5 * PAGE, Pfn(last)), Some((4 * PAGE, Pfn(21), 1)));
        assert_eq!(runs.push(6 * PAGE, Pfn(last + 1)), Some((5 * PAGE, Pfn(last), 1)));
        assert_eq!(runs.current, Some((6 * PAGE, Pfn(last + 1), 1)));
    }
}
