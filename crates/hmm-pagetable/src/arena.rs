//! A heap table store, for trees whose tables are not simulated physical
//! memory (device page tables, tests). Tables are allocated in chunks as
//! the tree grows, up to a capacity, and never move: a reference handed out
//! by [`TableStore::table`] stays valid for the store's lifetime.

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::store::{TableId, TableStore, TableStoreFull, ENTRIES_PER_TABLE};

/// Tables per chunk: a chunk is allocated (zeroed) when the first of its
/// tables is needed.
const CHUNK_TABLES: usize = 64;

type Table = [AtomicU64; ENTRIES_PER_TABLE];

/// Up to `capacity` tables; ids are indices.
pub struct ArenaStore {
    chunks: Box<[OnceLock<Box<[Table]>>]>,
    capacity: usize,
    state: Mutex<ArenaState>,
}

struct ArenaState {
    /// Tables given back, reused first.
    free: Vec<TableId>,
    /// Tables never handed out start here.
    next: usize,
}

impl ArenaStore {
    /// A store of at most `capacity` tables (4 KiB each), allocated as the
    /// tree grows.
    pub fn new(capacity: usize) -> Self {
        let chunks = (0..capacity.div_ceil(CHUNK_TABLES)).map(|_| OnceLock::new()).collect();
        Self { chunks, capacity, state: Mutex::new(ArenaState { free: Vec::new(), next: 0 }) }
    }
    /// Tables currently handed out.
    pub fn tables_in_use(&self) -> usize {
        let state = self.state.lock();
        state.next - state.free.len()
    }
    /// Bytes of table memory allocated so far (whole chunks).
    pub fn bytes_allocated(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count() * CHUNK_TABLES * core::mem::size_of::<Table>()
    }
    fn chunk(&self, index: usize) -> &[Table] {
        self.chunks[index]
            .get_or_init(|| (0..CHUNK_TABLES).map(|_| core::array::from_fn(|_| AtomicU64::new(0))).collect())
    }
}

impl core::fmt::Debug for ArenaStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ArenaStore").field("capacity", &self.capacity).field("in_use", &self.tables_in_use()).finish()
    }
}

impl TableStore for ArenaStore {
    fn alloc_table(&self) -> Result<TableId, TableStoreFull> {
        let mut state = self.state.lock();
        let id = match state.free.pop() {
            Some(id) => id,
            None if state.next < self.capacity => {
                state.next += 1;
                (state.next - 1) as TableId
            }
            None => return Err(TableStoreFull),
        };
        drop(state);
        // Freed tables are empty by the engine's contract; zero anyway so a
        // caller's bug cannot leak stale entries into a new tree.
        for entry in self.table(id) {
            entry.store(0, Ordering::Relaxed);
        }
        Ok(id)
    }
    fn table(&self, id: TableId) -> &Table {
        let id = id as usize;
        &self.chunk(id / CHUNK_TABLES)[id % CHUNK_TABLES]
    }
    fn free_table(&self, id: TableId) {
        self.state.lock().free.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_chunks_up_to_its_capacity_and_reuses_freed_tables() {
        let store = ArenaStore::new(CHUNK_TABLES + 1);
        assert_eq!(store.bytes_allocated(), 0, "nothing allocated before the first table");
        let ids: Vec<_> = (0..=CHUNK_TABLES).map(|_| store.alloc_table().unwrap()).collect();
        assert_eq!(store.alloc_table(), Err(TableStoreFull));
        assert_eq!(store.tables_in_use(), CHUNK_TABLES + 1);
        assert_eq!(store.bytes_allocated(), 2 * CHUNK_TABLES * 4096);
        store.table(ids[3])[7].store(42, Ordering::Relaxed);
        store.free_table(ids[3]);
        let again = store.alloc_table().unwrap();
        assert_eq!(again, ids[3]);
        assert_eq!(store.table(again)[7].load(Ordering::Relaxed), 0, "a reused table comes back zeroed");
    }
}
