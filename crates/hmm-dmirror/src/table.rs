//! The device page table: virtual page → the frame the device reads and
//! writes, with its rights (read, write, or atomic after EXCLUSIVE). It runs
//! on the same radix engine as the CPU page tables, with 4K entries only.
//! It holds **no page reference**: an entry is valid only because the
//! mirror's notifier removes it before the CPU side frees or changes the
//! page (spec §5.3).
//!
//! Every access happens under the mirror's mutex (the driver update lock),
//! so the engine's atomics are never contended here.
//!
//! Linux: the `xarray pt` of `struct dmirror`, its `DPT_XA_TAG_*` tags.

use core::ops::ControlFlow;

use hmm_pagetable::{ArenaStore, EnsureError, Entry, LeafFlags, Level, PageTable, SwapKind, Visit};
use hmm_types::{Pfn, PAGE_SIZE, TASK_SIZE};

use crate::dma::DmaWindow;
use crate::error::DmirrorError;

/// Table pages a device table may use: enough for every 4K page of
/// 512 GiB (the arena allocates them as the table grows).
const MAX_TABLES: usize = 1 << 18;

/// The rights of a device mapping (the xarray tag).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Access {
    /// Untagged: read only.
    Read,
    /// `DPT_XA_TAG_WRITE`: read and write.
    Write,
    /// `DPT_XA_TAG_ATOMIC`: installed by EXCLUSIVE; readable, not writable
    /// through WRITE.
    Atomic,
}

/// One device mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DeviceEntry {
    /// The frame holding the data.
    pub pfn: Pfn,
    /// What the device may do.
    pub access: Access,
}

impl DeviceEntry {
    fn encode(self) -> Entry {
        match self.access {
            Access::Atomic => Entry::swap(SwapKind::DeviceExclusive, self.pfn.0, false),
            access => {
                let flags = LeafFlags { write: access == Access::Write, ..LeafFlags::default() };
                Entry::present(self.pfn, flags, false)
            }
        }
    }

    fn decode(entry: Entry) -> Option<Self> {
        if entry.is_present() {
            let access = if entry.is_write() { Access::Write } else { Access::Read };
            Some(Self { pfn: entry.pfn(), access })
        } else if entry.swap_kind() == Some(SwapKind::DeviceExclusive) {
            Some(Self { pfn: entry.pfn(), access: Access::Atomic })
        } else {
            None
        }
    }
}

/// A device page table.
pub(crate) struct DeviceTable {
    tree: PageTable<ArenaStore>,
    entries: u64,
    /// The DMA window, if the file was given a DMA device: every entry
    /// removed or replaced is DMA-unmapped first (`crate::dma`).
    pub(crate) dma: Option<DmaWindow>,
}

impl core::fmt::Debug for DeviceTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceTable").field("entries", &self.entries).finish()
    }
}

impl DeviceTable {
    pub(crate) fn new() -> Result<Self, DmirrorError> {
        let tree = PageTable::new(ArenaStore::new(MAX_TABLES))
            .map_err(|_| DmirrorError::NoMem("the device page table's root"))?;
        Ok(Self { tree, entries: 0, dma: None })
    }

    /// Mapped pages.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    /// The mapping of the page at `va`.
    pub(crate) fn get(&self, va: u64) -> Option<DeviceEntry> {
        let slot = self.tree.find(va);
        if slot.level() != Level::Pte {
            return None;
        }
        DeviceEntry::decode(slot.load())
    }

    /// Maps the page at `va` (`xa_store`), replacing any mapping (a DMA
    /// mapping of another frame at `va` is undone first).
    pub(crate) fn set(&mut self, va: u64, entry: DeviceEntry) -> Result<(), DmirrorError> {
        if let Some(window) = self.dma.as_mut() {
            window.unmap_if_changed(va, entry.pfn);
        }
        let slot = match self.tree.ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(DmirrorError::NoMem("device page-table pages")),
            Err(EnsureError::Leaf(_)) => unreachable!("the device table has no huge leaves"),
        };
        if slot.swap(entry.encode()).is_none() {
            self.entries += 1;
        }
        Ok(())
    }

    /// Unmaps the page at `va`; returns whether it was mapped.
    pub(crate) fn remove(&mut self, va: u64) -> bool {
        if let Some(window) = self.dma.as_mut() {
            window.unmap_range(va, va + PAGE_SIZE);
        }
        let slot = self.tree.find(va);
        let removed = slot.level() == Level::Pte && !slot.swap(Entry::NONE).is_none();
        self.entries -= u64::from(removed);
        removed
    }

    /// Unmaps every page in `[start, end)`; returns how many were mapped.
    pub(crate) fn clear(&mut self, start: u64, end: u64) -> u64 {
        if let Some(window) = self.dma.as_mut() {
            window.unmap_range(start, end);
        }
        let mut cleared = 0;
        let _ = self.tree.walk(start, end, |visit| {
            if let Visit::Slot { slot, entry } = visit {
                if !entry.is_none() {
                    slot.store(Entry::NONE);
                    cleared += 1;
                }
            }
            ControlFlow::<()>::Continue(())
        });
        self.entries -= cleared;
        if cleared > 0 {
            self.tree.free_empty_tables(start, end);
        }
        cleared
    }

    /// Visits the mapped pages of `[start, end)` in address order, holes
    /// skipped whole (so a huge, sparse range costs what it maps); stops at
    /// the first `Break`.
    pub(crate) fn for_each_mapped<B>(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, DeviceEntry) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        self.tree.walk(start, end.min(TASK_SIZE), |v| match v {
            Visit::Slot { slot, entry } => match DeviceEntry::decode(entry) {
                Some(mapped) => visit(slot.va(), mapped),
                None => ControlFlow::Continue(()),
            },
            Visit::Hole { .. } => ControlFlow::Continue(()),
        })
    }

    /// Every mapped page, in address order.
    pub(crate) fn entries(&self) -> Vec<(u64, DeviceEntry)> {
        let mut out = Vec::new();
        let _ = self.for_each_mapped(0, TASK_SIZE, |va, entry| {
            out.push((va, entry));
            ControlFlow::<()>::Continue(())
        });
        out
    }

    /// Visits the pages of `[start, end)` in order with their mapping;
    /// stops at the first `Break`.
    pub(crate) fn for_each<B>(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, Option<DeviceEntry>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        self.tree.walk(start, end, |v| match v {
            Visit::Hole { start, end, .. } => {
                for va in (start..end).step_by(PAGE_SIZE as usize) {
                    visit(va, None)?;
                }
                ControlFlow::Continue(())
            }
            Visit::Slot { slot, entry } => visit(slot.va(), DeviceEntry::decode(entry)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_frame_and_rights_and_clear_by_range() {
        let mut table = DeviceTable::new().unwrap();
        let at = |i: u64| 0x7f00_0000_0000 + i * PAGE_SIZE;
        for (i, access) in [Access::Read, Access::Write, Access::Atomic].into_iter().enumerate() {
            table.set(at(i as u64), DeviceEntry { pfn: Pfn(100 + i as u64), access }).unwrap();
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(at(1)), Some(DeviceEntry { pfn: Pfn(101), access: Access::Write }));
        assert_eq!(table.get(at(2)).unwrap().access, Access::Atomic);
        assert_eq!(table.get(at(3)), None);
        let mut seen = Vec::new();
        let _ = table.for_each(at(0), at(5), |va, e| {
            seen.push((va, e.map(|e| e.pfn.0)));
            ControlFlow::<()>::Continue(())
        });
        assert_eq!(
            seen,
            vec![(at(0), Some(100)), (at(1), Some(101)), (at(2), Some(102)), (at(3), None), (at(4), None)]
        );
        assert_eq!(table.clear(at(1), at(3)), 2);
        assert_eq!(table.len(), 1);
        assert!(table.remove(at(0)));
        assert!(!table.remove(at(0)));
        assert_eq!(table.len(), 0);
    }
}
