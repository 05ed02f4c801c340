//! Walking a range of the tree in address order.
//!
//! Linux: `walk_page_range` with `pte_hole`, `pmd_entry` and `pte_entry`.

use core::ops::ControlFlow;

use crate::entry::Entry;
use crate::level::Level;
use crate::store::{TableId, TableStore};
use crate::table::{PageTable, Slot};

/// What a walk reports, in address order.
#[derive(Debug)]
pub enum Visit<'a> {
    /// `[start, end)` has no table at `level` (an empty entry above the PTE
    /// level, clipped to the walked range).
    Hole {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
        /// The level whose entry is empty.
        level: Level,
    },
    /// A PTE slot (none or not), or a leaf above the PTE level.
    Slot {
        /// The slot.
        slot: Slot<'a>,
        /// Its entry when visited.
        entry: Entry,
    },
}

impl<S: TableStore> PageTable<S> {
    /// Visits `[start, end)` in address order; stops early when the visitor
    /// breaks. Readers may run concurrently with writers: each entry is read
    /// once, atomically.
    pub fn walk<B>(&self, start: u64, end: u64, mut visit: impl FnMut(Visit<'_>) -> ControlFlow<B>) -> ControlFlow<B> {
        if start >= end {
            return ControlFlow::Continue(());
        }
        self.walk_in(self.root(), Level::ROOT, start, end, &mut visit)
    }

    fn walk_in<B>(
        &self,
        table: TableId,
        level: Level,
        start: u64,
        end: u64,
        visit: &mut impl FnMut(Visit<'_>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let cells = self.cells(table);
        let span = level.entry_bytes();
        let mut va = start;
        while va < end {
            let index = level.index(va);
            let entry_end = (va & !(span - 1)).saturating_add(span).min(end);
            let cell = &cells[index];
            let entry = Entry::from_raw(cell.load(core::sync::atomic::Ordering::Acquire));
            match level.child() {
                Some(child) if entry.is_table(level) => {
                    self.walk_in(entry.pfn().0, child, va, entry_end, visit)?;
                }
                Some(_) if entry.is_none() => visit(Visit::Hole { start: va, end: entry_end, level })?,
                _ => visit(Visit::Slot { slot: Slot::new(cell, level, va), entry })?,
            }
            if entry_end == end {
                break;
            }
            va = entry_end;
        }
        ControlFlow::Continue(())
    }
}

/// What a batched walk reports: like [`Visit`], but a run of PTEs comes
/// as one slice of its table, for callers that convert entries in a tight
/// loop.
#[derive(Debug)]
pub enum BatchVisit<'a> {
    /// As [`Visit::Hole`].
    Hole {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
    },
    /// A leaf above the PTE level.
    Huge {
        /// The slot.
        slot: Slot<'a>,
        /// Its entry when visited.
        entry: Entry,
    },
    /// The PTEs mapping `[va, va + 4 KiB * cells.len())`, in order.
    Ptes {
        /// Address of the first.
        va: u64,
        /// The table cells.
        cells: &'a [core::sync::atomic::AtomicU64],
    },
}

impl<S: TableStore> PageTable<S> {
    /// Like [`PageTable::walk`], reporting PTEs a table run at a time.
    pub fn walk_batched<B>(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(BatchVisit<'_>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        if start >= end {
            return ControlFlow::Continue(());
        }
        self.walk_batched_in(self.root(), Level::ROOT, start, end, &mut visit)
    }

    fn walk_batched_in<B>(
        &self,
        table: TableId,
        level: Level,
        start: u64,
        end: u64,
        visit: &mut impl FnMut(BatchVisit<'_>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let cells = self.cells(table);
        if level == Level::Pte {
            let first = Level::Pte.index(start);
            let count = ((end - start) >> 12) as usize;
            return visit(BatchVisit::Ptes { va: start, cells: &cells[first..first + count] });
        }
        let span = level.entry_bytes();
        let mut va = start;
        while va < end {
            let index = level.index(va);
            let entry_end = (va & !(span - 1)).saturating_add(span).min(end);
            let cell = &cells[index];
            let entry = Entry::from_raw(cell.load(core::sync::atomic::Ordering::Acquire));
            let child = level.child().expect("above the PTE level");
            if entry.is_table(level) {
                self.walk_batched_in(entry.pfn().0, child, va, entry_end, visit)?;
            } else if entry.is_none() {
                visit(BatchVisit::Hole { start: va, end: entry_end })?;
            } else {
                visit(BatchVisit::Huge { slot: Slot::new(cell, level, va), entry })?;
            }
            if entry_end == end {
                break;
            }
            va = entry_end;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArenaStore, LeafFlags};
    use hmm_types::Pfn;

    #[test]
    fn walk_reports_holes_leaves_and_ptes_in_order() {
        let pt = PageTable::new(ArenaStore::new(32)).unwrap();
        pt.ensure(0x20_0000, Level::Pmd).unwrap().store(Entry::present(Pfn(512), LeafFlags::default(), true));
        pt.ensure(0x40_1000, Level::Pte).unwrap().store(Entry::present(Pfn(9), LeafFlags::default(), false));
        let mut seen = Vec::new();
        let flow: ControlFlow<()> = pt.walk(0x1f_f000, 0x40_3000, |v| {
            seen.push(match v {
                Visit::Hole { start, end, level } => format!("hole {start:#x}-{end:#x} {level:?}"),
                Visit::Slot { slot, entry } => {
                    format!("slot {:#x} {:?} none={}", slot.va(), slot.level(), entry.is_none())
                }
            });
            ControlFlow::Continue(())
        });
        assert!(flow.is_continue());
        assert_eq!(
            seen,
            [
                "hole 0x1ff000-0x200000 Pmd",
                "slot 0x200000 Pmd none=false",
                "slot 0x400000 Pte none=true",
                "slot 0x401000 Pte none=false",
                "slot 0x402000 Pte none=true",
            ]
        );
    }

    #[test]
    fn walk_stops_when_asked() {
        let pt = PageTable::new(ArenaStore::new(8)).unwrap();
        let mut n = 0;
        let flow = pt.walk(0, 1 << 40, |_| {
            n += 1;
            ControlFlow::Break(n)
        });
        assert_eq!(flow, ControlFlow::Break(1));
    }
}
