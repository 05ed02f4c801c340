//! One 4-level radix page-table engine, configured for the CPU page table of
//! every address space and (later) for device page tables.
//!
//! Owns: the 64-bit entry encoding ([`Entry`], [`EntryKind`], [`SwapKind`]),
//! the levels ([`Level`]), the table storage contract ([`TableStore`], with
//! [`ArenaStore`] for tables that do not live in simulated physical memory),
//! and the operations on a tree ([`PageTable`]): find a slot, build the path
//! to a slot, walk a range, split a huge leaf, free empty tables.
//!
//! It knows nothing of frames, reference counts or VMAs: callers decide what
//! an entry means for the memory it points to. Entries are `AtomicU64`s in
//! flat 512-entry tables, so readers walk lock-free and writers install with
//! compare-and-swap; tables are freed only by a caller that excludes walkers
//! (the CPU side does it under the mmap write lock).
//!
//! Linux: `arch/x86/include/asm/pgtable*.h`, `mm/pagewalk.c`,
//! `mm/memory.c` (`__pte_alloc`, `free_pgtables`).

#![forbid(unsafe_code)]

mod arena;
mod entry;
mod level;
mod store;
mod table;
mod walk;

pub use arena::ArenaStore;
pub use entry::{Entry, EntryKind, LeafFlags, SwapKind, PTE_MARKER_GUARD, PTE_MARKER_UFFD_WP};
pub use level::Level;
pub use store::{TableId, TableStore, TableStoreFull, ENTRIES_PER_TABLE};
pub use table::{EnsureError, PageTable, Slot};
pub use walk::{BatchVisit, Visit};
