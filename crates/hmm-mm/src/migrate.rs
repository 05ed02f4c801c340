//! Page migration between system frames: the compaction/NUMA-style move of
//! private anonymous memory to newly allocated frames, and the migration
//! entries every other accessor of the page table may meet meanwhile.
//!
//! Owns [`Mm::migrate_pages`], the migration wait
//! ([`MmapReadGuard::wait_for_migration`]), the machine-wide wait queue and
//! the test hook ([`crate::Kernel::set_migration_hook`]). The per-folio
//! steps live in `migrate/folio.rs`, the wait queue in `migrate/wait.rs`.
//!
//! # The operation
//!
//! `migrate_pages(start, len)` validates like madvise: `start` page
//! aligned, `len` rounded up to a page and not zero, no overflow and inside
//! the user address space (all `EINVAL`), every page inside some VMA
//! (`ENOMEM`, as madvise and mprotect report a hole; `mbind` would say
//! `EFAULT`). It then collects, under the mmap read lock, a reference on
//! every movable folio in the range (`queue_pages_range`, isolation):
//!
//! * private anonymous VMAs only (not `VM_IO`/`VM_PFNMAP`); file and shared
//!   mappings, holes, zero pages and non-present entries are neither moved
//!   nor counted;
//! * an order-0 page mapped by a PTE;
//! * a PMD-mapped THP, migrated **whole** (one PMD migration entry, one
//!   2 MiB copy, one new order-9 folio), even if the range covers only part
//!   of it, as `move_pages` moves the folio containing an address. There is
//!   no folio split in this model, so the PTE-mapped parts of a THP (after
//!   a partial munmap or mprotect) are skipped.
//!
//! Each folio is then moved in Linux's order (`migrate_folio_unmap`,
//! `try_to_migrate_one`, `migrate_folio_move`, `remove_migration_ptes`):
//! lock it (skip if locked); skip it if it may be pinned, is mapped more
//! than once, or has references beyond its mapping and ours; announce
//! `Event::Clear` over the mapping — `try_to_migrate_one` uses
//! `MMU_NOTIFY_CLEAR`; `Event::Migrate` belongs to device migration
//! (`migrate_vma`) — and replace the entry by compare-and-swap with a
//! migration entry (`MigrationWrite` if it was writable, else
//! `MigrationReadExclusive` for an exclusively owned anonymous page, else
//! `MigrationRead`; the dirty bit goes to the folio's `DIRTY` flag); end the
//! invalidation; freeze the old folio's count at our single reference
//! (`folio_ref_freeze`: an access or GUP that grabbed the page meanwhile
//! makes the migration back out, restoring the old entries); copy the data
//! and flags; replace every migration entry left by a present entry to the
//! new frame (same rights, taken from the entry kind and the VMA; accessed
//! cleared; dirty from the flag; mapcount and reference moved); wake the
//! waiters; unlock; drop the old folio.
//!
//! Pages mapped by several processes (after fork) are skipped, as
//! `move_pages` and `mbind` do without `MPOL_MF_MOVE_ALL` (a privileged
//! flag this model does not offer; the reverse map, `crate::rmap`, would
//! find the other mappings). Counts are in base pages (a THP counts 512);
//! "skipped" also covers pages unmapped while their copy ran.
//!
//! # Locking and who meets a migration entry
//!
//! The migrator holds the mmap read lock to collect and to unmap, **no**
//! mmap lock while copying (as Linux's migration runs without `mmap_lock`,
//! finding mappings through rmap), and takes it again to restore, with
//! `read_recursive`: a reader waiting for this very migration may hold the
//! lock while a writer queues behind it, and a plain read would queue behind
//! the writer. Since the lock is not held across the copy:
//!
//! * faults (`fault/anon.rs`, `fault/file.rs`), and so the CPU and GUP,
//!   wait in [`migration_entry_wait`] and retry, holding the read lock;
//! * munmap, exit and MADV_DONTNEED zap the entry (it holds nothing, see
//!   `zap.rs`); the migrator then finds nothing to restore and frees the
//!   new frame; a partial zap of a THP first splits its PMD migration entry
//!   into 512 PTE migration entries, each restored on its own;
//! * mprotect turns `MigrationWrite` into `MigrationReadExclusive` when it
//!   removes write permission (`change_pte_range`);
//! * fork and mremap, which would copy or move the entry where the migrator
//!   cannot find it, first wait until no migration entry is left in their
//!   range ([`Mm::mmap_write_settled`]); a per-mm counter of migrations in
//!   flight makes that free when none is running.
//!
//! Linux: `mm/migrate.c` (`migrate_pages`, `migrate_folio_unmap`,
//! `migrate_folio_move`, `remove_migration_ptes`, `migration_entry_wait`),
//! `mm/rmap.c` (`try_to_migrate_one`), `mm/mempolicy.c` (`do_mbind`,
//! `queue_pages_range`), `move_pages(2)`.

mod folio;
mod wait;

#[cfg(test)]
mod tests;

use core::ops::ControlFlow;
use core::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use hmm_pagetable::{Entry, Level, Slot, SwapKind, Visit};
use hmm_types::{MmId, Pfn, VaRange, VmFlags, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::{Mm, MmapReadGuard, MmapWriteGuard};
use crate::phys::{MemoryType, PageFlags};

use folio::{migrate_folio, Candidate};
use wait::WaitQueue;

/// What one [`Mm::migrate_pages`] call did, in base pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MigrateStats {
    /// Pages moved to a new frame (a THP counts 512, even if part of it
    /// was unmapped while it moved).
    pub moved: u64,
    /// Movable-looking pages left where they were: locked, maybe pinned,
    /// shared, referenced beyond their mapping, no memory for the copy, a
    /// PTE-mapped part of a THP, or changed or unmapped while migrating.
    pub skipped: u64,
}

/// Where the migrator stands when the hook runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MigrationPoint {
    /// The address space being migrated.
    pub mm: MmId,
    /// First address of the folio's mapping.
    pub va: u64,
    /// The old folio's head.
    pub old: Pfn,
    /// The new folio's head.
    pub new: Pfn,
    /// Base pages in the folio.
    pub nr_pages: u64,
}

/// A test hook run just before each folio's copy (see
/// [`crate::Kernel::set_migration_hook`]).
pub type MigrationHook = Arc<dyn Fn(&MigrationPoint) + Send + Sync>;

/// Machine-wide migration state: the wait queue and the test hook.
#[derive(Default)]
pub(crate) struct MigrationShared {
    waitq: WaitQueue,
    hook: Mutex<Option<MigrationHook>>,
}

impl core::fmt::Debug for MigrationShared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MigrationShared")
            .field("waitq", &self.waitq)
            .field("hook", &self.hook.lock().is_some())
            .finish()
    }
}

impl MigrationShared {
    pub(crate) fn set_hook(&self, hook: Option<MigrationHook>) {
        *self.hook.lock() = hook;
    }
    fn hook(&self) -> Option<MigrationHook> {
        self.hook.lock().clone()
    }
    pub(crate) fn waiters(&self) -> u64 {
        self.waitq.waiters()
    }
    fn wake(&self, pfn: Pfn) {
        self.waitq.wake(pfn);
    }
}

/// True for a migration entry of any kind (`is_migration_entry`).
pub(crate) fn is_migration_entry(entry: Entry) -> bool {
    entry.swap_kind().is_some_and(SwapKind::is_migration)
}

impl Mm {
    /// Moves every movable private anonymous page of `[start, start + len)`
    /// to a newly allocated frame (see the module documentation for what
    /// moves, what is skipped and the errors). The caller must not hold
    /// this address space's mmap lock.
    pub fn migrate_pages(&self, start: u64, len: u64) -> Result<MigrateStats, MmError> {
        self.check_alive()?;
        if start % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("migrate_pages address not page aligned"));
        }
        if len == 0 {
            return Err(MmError::Invalid("migrate_pages of zero length"));
        }
        let range = VaRange::new_round_len(start, len).map_err(MmError::from_range)?;
        let mut stats = MigrateStats::default();
        let candidates = {
            let guard = self.mmap_read();
            if !guard.is_fully_mapped(range.start(), range.end()) {
                return Err(MmError::NotMapped(range));
            }
            collect(&guard, range.start(), range.end(), &mut stats)
        };
        for candidate in candidates {
            if migrate_folio(self, &candidate) {
                stats.moved += candidate.nr;
            } else {
                stats.skipped += candidate.nr;
            }
        }
        Ok(stats)
    }

    /// Takes the mmap write lock once no migration entry is left in
    /// `[start, end)`. Operations that copy or move entries (fork, mremap)
    /// use it: the migrator restores an entry only where it installed it.
    /// Holding the write lock, no new migration entry can appear (the
    /// migrator unmaps under the read lock).
    pub(crate) fn mmap_write_settled(&self, start: u64, end: u64) -> MmapWriteGuard<'_> {
        loop {
            let guard = self.mmap_write();
            if self.migrating().load(Ordering::Acquire) == 0 {
                return guard;
            }
            let found = self.pgtable().walk(start, end, |visit| match visit {
                Visit::Slot { slot, entry } if is_migration_entry(entry) => ControlFlow::Break(slot.va()),
                _ => ControlFlow::Continue(()),
            });
            let ControlFlow::Break(va) = found else {
                return guard;
            };
            drop(guard);
            self.mmap_read().wait_for_migration(va);
        }
    }
}

impl MmapReadGuard<'_> {
    /// If `va` is mapped by a migration entry, sleeps until the migration
    /// has replaced it (or it was zapped); returns at once otherwise. The
    /// caller then looks again (`migration_entry_wait`; what
    /// `hmm_range_fault` does before re-walking with `-EBUSY`).
    pub fn wait_for_migration(&self, va: u64) {
        migration_entry_wait(self.mm(), va);
    }
}

/// Sleeps while the entry mapping `va` is the same migration entry. The
/// caller holds the mmap lock **for reading** (never for writing: the
/// migrator needs it to restore), which keeps the table alive.
pub(crate) fn migration_entry_wait(mm: &Mm, va: u64) {
    migration_entry_wait_inner(mm, va)
}

/// Wakes whoever waits on migration entries for `pfn` (after they were
/// replaced): `folio_wake_bit`. Device migration (`MigrateVma`) uses it.
pub(crate) fn migration_entries_replaced(mm: &Mm, pfn: Pfn) {
    mm.kernel().migration().waitq.wake(pfn);
}

fn migration_entry_wait_inner(mm: &Mm, va: u64) {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    if is_migration_entry(entry) {
        mm.kernel().migration().waitq.wait(entry.pfn(), || slot.load() == entry);
    }
}

/// Takes a reference on every movable folio of `[start, end)`; counts the
/// pages that look movable but cannot be taken as skipped.
fn collect(guard: &MmapReadGuard<'_>, start: u64, end: u64, stats: &mut MigrateStats) -> Vec<Candidate> {
    let mm = guard.mm();
    let mut found = Vec::new();
    for vma in guard.overlapping(start, end) {
        if !vma.is_anonymous() || vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            continue;
        }
        let _ = mm.pgtable().walk(start.max(vma.start), end.min(vma.end), |visit| {
            if let Visit::Slot { slot, entry } = visit {
                match isolate(mm, slot, entry) {
                    Some(Ok(candidate)) => found.push(candidate),
                    Some(Err(pages)) => stats.skipped += pages,
                    None => {}
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    found
}

/// The folio behind one entry with a reference taken, `Err(pages)` if it
/// looks movable but cannot be taken, `None` if it is not a candidate.
fn isolate(mm: &Mm, slot: Slot<'_>, entry: Entry) -> Option<Result<Candidate, u64>> {
    let phys = mm.phys();
    if !entry.is_present() || entry.is_special() {
        return None;
    }
    let pfn = entry.pfn();
    if phys.is_zero_pfn(pfn) || phys.memory_type(pfn) != MemoryType::System {
        return None;
    }
    let pages = slot.level().entry_bytes() / PAGE_SIZE;
    // A speculative reference, as GUP-fast: the entry may be zapped
    // concurrently (MADV_DONTNEED runs under the read lock too).
    if !phys.try_get(pfn) {
        return Some(Err(pages));
    }
    let now = slot.load();
    if !now.is_present() || now.pfn() != pfn {
        phys.put(pfn);
        return Some(Err(pages));
    }
    let head = phys.folio_head(pfn);
    let order = phys.folio_order(head);
    let whole = match slot.level() {
        Level::Pte => order == 0,
        Level::Pmd => order == 9 && head == pfn,
        _ => false,
    };
    if !whole || !phys.meta(head).flags().contains(PageFlags::ANON) {
        phys.put(pfn);
        return Some(Err(pages));
    }
    Some(Ok(Candidate { va: slot.va(), level: slot.level(), pfn: head, nr: 1 << order }))
}
