//! A fixed-capacity table store on the heap, for trees whose tables are not
//! simulated physical memory (device page tables, tests).

use core::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::{TableId, TableStore, TableStoreFull, ENTRIES_PER_TABLE};

/// Up to `capacity` tables allocated up front; ids are indices.
pub struct ArenaStore {
    tables: Box<[[AtomicU64; ENTRIES_PER_TABLE]]>,
    free: Mutex<Vec<TableId>>,
}

impl ArenaStore {
    /// An arena of `capacity` tables (4 KiB each).
    pub fn new(capacity: usize) -> Self {
        let tables = (0..capacity).map(|_| core::array::from_fn(|_| AtomicU64::new(0))).collect();
        let free = (0..capacity as TableId).rev().collect();
        Self { tables, free: Mutex::new(free) }
    }
    /// Tables currently handed out.
    pub fn tables_in_use(&self) -> usize {
        self.tables.len() - self.free.lock().len()
    }
}

impl core::fmt::Debug for ArenaStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ArenaStore")
            .field("capacity", &self.tables.len())
            .field("in_use", &self.tables_in_use())
            .finish()
    }
}

impl TableStore for ArenaStore {
    fn alloc_table(&self) -> Result<TableId, TableStoreFull> {
        let id = self.free.lock().pop().ok_or(TableStoreFull)?;
        // Freed tables are empty by the engine's contract; zero anyway so a
        // caller's bug cannot leak stale entries into a new tree.
        for entry in &self.tables[id as usize] {
            entry.store(0, Ordering::Relaxed);
        }
        Ok(id)
    }
    fn table(&self, id: TableId) -> &[AtomicU64; ENTRIES_PER_TABLE] {
        &self.tables[id as usize]
    }
    fn free_table(&self, id: TableId) {
        self.free.lock().push(id);
    }
}
