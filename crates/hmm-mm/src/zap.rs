//! Clearing page-table entries and releasing what they held, with the frees
//! deferred until the invalidation has ended.
//!
//! Owns [`Gather`] (Linux's `mmu_gather`): references collected while
//! entries are cleared, dropped only by [`Gather::free_after`], which ends
//! the invalidation first. Callers: munmap, madvise, exit, mremap, COW.
//! A cleared swap entry drops its use of the swap slot at once.
//!
//! Linux: `mm/memory.c` (`zap_pte_range`, `zap_pmd_range`,
//! `unmap_page_range`), `mm/mmu_gather.c`.

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, Level, SwapKind};
use hmm_types::Pfn;

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::Mm;
use crate::notify::Invalidation;
use crate::phys::{PageFlags, PhysMem};

/// Folio references to drop once the invalidation has ended.
#[must_use = "frames are freed only by free_after, after the invalidation ends"]
#[derive(Debug, Default)]
pub struct Gather {
    pages: Vec<Pfn>,
}

impl Gather {
    /// An empty gather.
    pub fn new() -> Self {
        Self::default()
    }
    /// Queues one reference of the folio containing `pfn`.
    pub(crate) fn push(&mut self, pfn: Pfn) {
        self.pages.push(pfn);
    }
    /// Ends the invalidation, then drops the gathered references (which may
    /// free frames): the order HMM's correctness rests on.
    pub fn free_after(self, phys: &PhysMem, invalidation: Invalidation) {
        invalidation.end();
        self.free_now(phys);
    }
    /// Drops the gathered references when no invalidation was needed
    /// (nothing was mapped when they were taken).
    pub(crate) fn free_now(self, phys: &PhysMem) {
        for pfn in self.pages {
            phys.put(pfn);
        }
    }
}

/// Releases what a just-cleared entry of `mm` held: [`release_entry`] for
/// frames, and for a swap entry its use of the slot, at once: a slot is
/// invisible to invalidation subscribers (`free_swap_and_cache`).
pub(crate) fn release_mm_entry(mm: &Mm, entry: Entry, gather: &mut Gather) {
    if entry.swap_kind() == Some(SwapKind::Swap) {
        mm.kernel().swap().put(entry.pfn().0);
    } else {
        release_entry(mm.phys(), entry, gather);
    }
}

/// Releases what a just-cleared entry held: the mapping's share of the
/// folio's mapcount now, its reference later (through `gather`). Swap
/// entries need the swap area: clear them through [`release_mm_entry`].
pub(crate) fn release_entry(phys: &PhysMem, entry: Entry, gather: &mut Gather) {
    if entry.is_present() {
        let pfn = entry.pfn();
        if entry.is_special() || phys.is_zero_pfn(pfn) {
            return;
        }
        if entry.is_dirty() {
            phys.meta(phys.folio_head(pfn)).set_flags(PageFlags::DIRTY);
        }
        phys.map_sub(pfn, 1);
        gather.push(pfn);
        return;
    }
    match entry.swap_kind() {
        Some(kind) if kind.is_device_private() || kind == SwapKind::DeviceExclusive => {
            let pfn = entry.pfn();
            phys.map_sub(pfn, 1);
            gather.push(pfn);
        }
        Some(SwapKind::Swap) => debug_assert!(false, "swap entries are released by release_mm_entry"),
        // A migration entry holds nothing: the migrating thread owns the
        // page and finds no mapping to restore. Poison and markers hold no
        // frame.
        _ => {}
    }
}

enum Stop {
    /// A huge leaf straddles the range edge: split at the edges first.
    Split,
    /// The entry changed under us: look again from here.
    Restart(u64),
}

/// Clears every entry in `[start, end)` (`unmap_page_range`), guard
/// markers included (munmap, exit), splitting huge leaves that straddle
/// an edge. Runs under the mmap lock (read or write)
/// and inside an invalidation the caller started.
pub(crate) fn zap_range(mm: &Mm, start: u64, end: u64, gather: &mut Gather) -> Result<(), MmError> {
    zap_range_if(mm, start, end, gather, |_| true)
}

/// [`zap_range`] as every zap but munmap's and exit's does it: guard
/// markers stay (`zap_nonpresent_ptes` drops them only with
/// `ZAP_FLAG_DROP_MARKER`, which only `unmap_vmas` passes).
pub(crate) fn zap_range_keep_guards(mm: &Mm, start: u64, end: u64, gather: &mut Gather) -> Result<(), MmError> {
    zap_range_if(mm, start, end, gather, |entry| !entry.is_guard_marker())
}

/// Like [`zap_range`], for the entries `wanted` accepts (truncation of a
/// file mapping keeps private COW copies when punching a hole).
pub(crate) fn zap_range_if(
    mm: &Mm,
    start: u64,
    end: u64,
    gather: &mut Gather,
    wanted: impl Fn(Entry) -> bool,
) -> Result<(), MmError> {
    let mut cursor = start;
    loop {
        let flow = mm.pgtable().walk(cursor, end, |visit| {
            let hmm_pagetable::Visit::Slot { slot, entry } = visit else {
                return ControlFlow::Continue(());
            };
            if entry.is_none() || !wanted(entry) {
                return ControlFlow::Continue(());
            }
            let size = slot.level().entry_bytes();
            if slot.level() > Level::Pte && (slot.va() < start || slot.va() + size > end) {
                return ControlFlow::Break(Stop::Split);
            }
            match slot.compare_exchange(entry, Entry::NONE) {
                Ok(_) => {
                    release_mm_entry(mm, entry, gather);
                    ControlFlow::Continue(())
                }
                Err(_) => ControlFlow::Break(Stop::Restart(slot.va().max(start))),
            }
        });
        match flow {
            ControlFlow::Continue(()) => return Ok(()),
            ControlFlow::Break(Stop::Restart(va)) => cursor = va,
            ControlFlow::Break(Stop::Split) => {
                split_huge_at(mm, start)?;
                split_huge_at(mm, end)?;
            }
        }
    }
}

/// True when some entry in `[start, end)` is not none.
pub(crate) fn has_entries(mm: &Mm, start: u64, end: u64) -> bool {
    mm.pgtable()
        .walk(start, end, |visit| match visit {
            hmm_pagetable::Visit::Slot { entry, .. } if !entry.is_none() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
}
