//! Where tables live: the contract between the engine and its memory.

use core::sync::atomic::AtomicU64;

/// Entries in one table.
pub const ENTRIES_PER_TABLE: usize = 512;

/// Identifies a table inside its store; for the CPU side it is the frame
/// number of the page-table page. Must fit in 40 bits.
pub type TableId = u64;

/// The store could not provide another table (out of memory).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("no memory left for a page table")]
pub struct TableStoreFull;

/// Storage for tables. Implementations hand out zeroed tables, give shared
/// access to a table by id, and take tables back.
///
/// # Contract
/// A reference returned by [`TableStore::table`] must stay valid for the
/// store's lifetime even after the table is freed (a stale reader then sees
/// another table's entries, a logic error the caller excludes by locking, but
/// never undefined behaviour).
pub trait TableStore {
    /// A zeroed table.
    fn alloc_table(&self) -> Result<TableId, TableStoreFull>;
    /// The table with this id.
    fn table(&self, id: TableId) -> &[AtomicU64; ENTRIES_PER_TABLE];
    /// Returns a table that no entry points to any more.
    fn free_table(&self, id: TableId);
}

impl<T: TableStore + ?Sized> TableStore for std::sync::Arc<T> {
    fn alloc_table(&self) -> Result<TableId, TableStoreFull> {
        (**self).alloc_table()
    }
    fn table(&self, id: TableId) -> &[AtomicU64; ENTRIES_PER_TABLE] {
        (**self).table(id)
    }
    fn free_table(&self, id: TableId) {
        (**self).free_table(id)
    }
}
