//! A tree of tables: find, build, split, free.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::entry::Entry;
use crate::level::Level;
use crate::store::{TableId, TableStore, TableStoreFull, ENTRIES_PER_TABLE};

/// One entry slot in a table, with the level and base address it maps.
#[derive(Clone, Copy)]
pub struct Slot<'a> {
    cell: &'a AtomicU64,
    level: Level,
    va: u64,
}

impl<'a> Slot<'a> {
    /// The slot `cell` of a table at `level`, mapping `va`'s entry.
    #[inline]
    pub fn new(cell: &'a AtomicU64, level: Level, va: u64) -> Self {
        Self { cell, level, va: va & !(level.entry_bytes() - 1) }
    }
    /// The level of the table holding this slot.
    #[inline]
    pub fn level(&self) -> Level {
        self.level
    }
    /// First virtual address the slot maps.
    #[inline]
    pub fn va(&self) -> u64 {
        self.va
    }
    /// Current entry (acquire, so a table it points to is visible).
    #[inline]
    pub fn load(&self) -> Entry {
        Entry::from_raw(self.cell.load(Ordering::Acquire))
    }
    /// Unconditional store.
    #[inline]
    pub fn store(&self, entry: Entry) {
        self.cell.store(entry.raw(), Ordering::Release);
    }
    /// Replaces `current` with `new`; on failure returns what is there.
    #[inline]
    pub fn compare_exchange(&self, current: Entry, new: Entry) -> Result<Entry, Entry> {
        self.cell
            .compare_exchange(current.raw(), new.raw(), Ordering::AcqRel, Ordering::Acquire)
            .map(Entry::from_raw)
            .map_err(Entry::from_raw)
    }
    /// Stores `new` and returns the previous entry (`ptep_get_and_clear`
    /// when `new` is none).
    #[inline]
    pub fn swap(&self, new: Entry) -> Entry {
        Entry::from_raw(self.cell.swap(new.raw(), Ordering::AcqRel))
    }
    /// Sets bits in place (hardware accessed/dirty updates).
    #[inline]
    pub fn set_bits(&self, bits: u64) -> Entry {
        Entry::from_raw(self.cell.fetch_or(bits, Ordering::AcqRel))
    }
}

impl fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot({:?} @ {:#x} = {:?})", self.level, self.va, self.load())
    }
}

/// Why a path to a slot could not be built.
#[derive(Clone, Copy, Debug)]
pub enum EnsureError<'a> {
    /// A leaf sits above the requested level; here is its slot.
    Leaf(Slot<'a>),
    /// No table could be allocated.
    NoMem(TableStoreFull),
}

/// A 4-level tree over a [`TableStore`].
pub struct PageTable<S: TableStore> {
    store: S,
    root: TableId,
}

impl<S: TableStore> fmt::Debug for PageTable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable").field("root", &self.root).finish_non_exhaustive()
    }
}

impl<S: TableStore> PageTable<S> {
    /// An empty tree (one root table).
    pub fn new(store: S) -> Result<Self, TableStoreFull> {
        let root = store.alloc_table()?;
        Ok(Self { store, root })
    }
    /// The table store.
    pub fn store(&self) -> &S {
        &self.store
    }
    /// The root table id.
    pub fn root(&self) -> TableId {
        self.root
    }
    #[inline]
    pub(crate) fn cells(&self, id: TableId) -> &[AtomicU64; ENTRIES_PER_TABLE] {
        self.store.table(id)
    }

    /// The deepest slot on `va`'s path: where descent stopped at a none
    /// entry or a leaf, or the PTE slot.
    #[inline]
    pub fn find(&self, va: u64) -> Slot<'_> {
        let mut table = self.root;
        let mut level = Level::ROOT;
        loop {
            let slot = Slot::new(&self.cells(table)[level.index(va)], level, va);
            let entry = slot.load();
            match level.child() {
                Some(child) if entry.is_table(level) => {
                    table = entry.pfn().0;
                    level = child;
                }
                _ => return slot,
            }
        }
    }

    /// The slot at `level` on `va`'s path, allocating missing tables above
    /// it. Fails if a leaf sits above `level` or no table is left.
    pub fn ensure(&self, va: u64, level: Level) -> Result<Slot<'_>, EnsureError<'_>> {
        let mut table = self.root;
        let mut at = Level::ROOT;
        loop {
            let slot = Slot::new(&self.cells(table)[at.index(va)], at, va);
            if at == level {
                return Ok(slot);
            }
            let mut entry = slot.load();
            if entry.is_none() {
                let id = self.store.alloc_table().map_err(EnsureError::NoMem)?;
                match slot.compare_exchange(Entry::NONE, Entry::table(id)) {
                    Ok(_) => entry = Entry::table(id),
                    Err(winner) => {
                        // Another thread built this level first; use theirs.
                        self.store.free_table(id);
                        entry = winner;
                    }
                }
            }
            if !entry.is_table(at) {
                return Err(EnsureError::Leaf(slot));
            }
            table = entry.pfn().0;
            at = at.child().expect("the loop returns at the target level before reaching below PTE");
        }
    }

    /// Replaces the huge leaf `expected` in `slot` with a table of the level
    /// below whose entries are its parts ([`Entry::split_part`]). Returns
    /// `Ok(false)` if the slot no longer holds `expected` (nothing changed).
    pub fn split_leaf(&self, slot: Slot<'_>, expected: Entry) -> Result<bool, TableStoreFull> {
        let level = slot.level;
        self.split_leaf_with(slot, expected, |index| expected.split_part(level, index))
    }

    /// Like [`Self::split_leaf`], with the parts given by `part(index)`.
    pub fn split_leaf_with(
        &self,
        slot: Slot<'_>,
        expected: Entry,
        part: impl Fn(usize) -> Entry,
    ) -> Result<bool, TableStoreFull> {
        debug_assert!(slot.level > Level::Pte && expected.is_leaf(slot.level));
        let id = self.store.alloc_table()?;
        for (index, cell) in self.cells(id).iter().enumerate() {
            cell.store(part(index).raw(), Ordering::Relaxed);
        }
        match slot.compare_exchange(expected, Entry::table(id)) {
            Ok(_) => Ok(true),
            Err(_) => {
                self.store.free_table(id);
                Ok(false)
            }
        }
    }

    /// Frees every table under `[start, end)` that holds no entry, and
    /// clears the entries that pointed to them. The caller must exclude all
    /// concurrent walkers (the CPU side holds the mmap write lock).
    pub fn free_empty_tables(&self, start: u64, end: u64) {
        self.free_empty_in(self.root, Level::ROOT, start, end);
    }

    /// Returns true when the table is empty after the pass.
    fn free_empty_in(&self, table: TableId, level: Level, start: u64, end: u64) -> bool {
        let cells = self.cells(table);
        if let Some(child) = level.child() {
            let span = level.entry_bytes();
            let mut va = start;
            while va < end {
                let index = level.index(va);
                let entry_end = (va & !(span - 1)).saturating_add(span);
                let entry = Entry::from_raw(cells[index].load(Ordering::Acquire));
                if entry.is_table(level) && self.free_empty_in(entry.pfn().0, child, va, entry_end.min(end)) {
                    cells[index].store(0, Ordering::Release);
                    self.store.free_table(entry.pfn().0);
                }
                if index == ENTRIES_PER_TABLE - 1 && level == Level::ROOT {
                    break;
                }
                va = entry_end;
            }
        }
        cells.iter().all(|c| c.load(Ordering::Relaxed) == 0)
    }

    /// Number of tables in the tree, root included.
    pub fn count_tables(&self) -> usize {
        self.count_in(self.root, Level::ROOT)
    }

    fn count_in(&self, table: TableId, level: Level) -> usize {
        let mut count = 1;
        if level.child().is_some() {
            for cell in self.cells(table) {
                let entry = Entry::from_raw(cell.load(Ordering::Acquire));
                if entry.is_table(level) {
                    count += self.count_in(entry.pfn().0, level.child().unwrap_or(Level::Pte));
                }
            }
        }
        count
    }

    fn destroy_in(&self, table: TableId, level: Level) {
        for cell in self.cells(table) {
            let entry = Entry::from_raw(cell.load(Ordering::Acquire));
            match level.child() {
                Some(child) if entry.is_table(level) => self.destroy_in(entry.pfn().0, child),
                _ => {}
            }
        }
        self.store.free_table(table);
    }
}

/// Dropping a tree frees all its tables. Leaves are the owner's business:
/// the owner releases what they point to first.
impl<S: TableStore> Drop for PageTable<S> {
    fn drop(&mut self) {
        self.destroy_in(self.root, Level::ROOT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArenaStore, LeafFlags};
    use hmm_types::Pfn;

    fn leaf(pfn: u64) -> Entry {
        Entry::present(Pfn(pfn), LeafFlags { write: true, ..Default::default() }, false)
    }

    #[test]
    fn ensure_builds_the_path_once() {
        let pt = PageTable::new(ArenaStore::new(16)).unwrap();
        let slot = pt.ensure(0x7000_1234_5000, Level::Pte).unwrap();
        slot.store(leaf(42));
        assert_eq!(pt.count_tables(), 4);
        let again = pt.ensure(0x7000_1234_6000, Level::Pte).unwrap();
        assert!(again.load().is_none());
        assert_eq!(pt.count_tables(), 4);
        assert_eq!(pt.find(0x7000_1234_5000).load(), leaf(42));
    }

    #[test]
    fn ensure_reports_a_huge_leaf_above() {
        let pt = PageTable::new(ArenaStore::new(16)).unwrap();
        let pmd = pt.ensure(0x20_0000, Level::Pmd).unwrap();
        pmd.store(Entry::present(Pfn(512), LeafFlags::default(), true));
        match pt.ensure(0x20_1000, Level::Pte) {
            Err(EnsureError::Leaf(slot)) => assert_eq!(slot.level(), Level::Pmd),
            other => panic!("expected a leaf, got {other:?}"),
        }
    }

    #[test]
    fn split_then_find_sees_parts() {
        let pt = PageTable::new(ArenaStore::new(16)).unwrap();
        let pmd = pt.ensure(0x40_0000, Level::Pmd).unwrap();
        let huge = Entry::present(Pfn(0x1000), LeafFlags::default(), true);
        pmd.store(huge);
        assert!(pt.split_leaf(pmd, huge).unwrap());
        let pte = pt.find(0x40_0000 + 7 * 4096);
        assert_eq!(pte.level(), Level::Pte);
        assert_eq!(pte.load().pfn(), Pfn(0x1007));
        // A second split of the now-stale leaf changes nothing.
        assert!(!pt.split_leaf(pmd, huge).unwrap());
    }

    #[test]
    fn out_of_tables_is_an_error() {
        let pt = PageTable::new(ArenaStore::new(2)).unwrap();
        assert!(matches!(pt.ensure(0x1000, Level::Pte), Err(EnsureError::NoMem(_))));
    }

    #[test]
    fn free_empty_tables_returns_everything_but_the_root() {
        let store = std::sync::Arc::new(ArenaStore::new(16));
        let pt = PageTable::new(store.clone()).unwrap();
        pt.ensure(0x1000, Level::Pte).unwrap().store(leaf(1));
        pt.ensure(0x4000_0000, Level::Pte).unwrap();
        assert_eq!(store.tables_in_use(), 6);
        pt.free_empty_tables(0, 1 << 47);
        assert_eq!(store.tables_in_use(), 4, "the path to the live leaf stays");
        pt.find(0x1000).store(Entry::NONE);
        pt.free_empty_tables(0, 1 << 47);
        assert_eq!(store.tables_in_use(), 1);
        drop(pt);
        assert_eq!(store.tables_in_use(), 0);
    }
}
