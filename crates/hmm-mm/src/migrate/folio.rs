//! Moving one folio: unmap it behind migration entries, copy it, map the
//! copy where the entries still are.
//!
//! Linux: `mm/migrate.c` (`migrate_folio_unmap`, `migrate_folio_move`,
//! `folio_migrate_mapping`, `remove_migration_pte`), `mm/rmap.c`
//! (`try_to_migrate_one`).

use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU32, Ordering};

use hmm_pagetable::{Entry, LeafFlags, Level, SwapKind, Visit};
use hmm_types::{Event, Pfn, VmFlags};

use crate::mm::Mm;
use crate::phys::PageFlags;

use super::MigrationPoint;

const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);

/// A folio chosen for migration; the migrator holds one reference on it.
#[derive(Debug)]
pub(super) struct Candidate {
    /// First address of its mapping.
    pub(super) va: u64,
    /// Level of the entry that maps it (PTE, or PMD for a THP).
    pub(super) level: Level,
    /// The folio's head.
    pub(super) pfn: Pfn,
    /// Base pages in the folio.
    pub(super) nr: u64,
}

/// Counts a migration in flight for [`crate::Mm::mmap_write_settled`].
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Migrates `candidate`; true when a mapping now uses a new frame. Drops
/// the candidate's reference, which frees the old folio after a move.
pub(super) fn migrate_folio(mm: &Mm, candidate: &Candidate) -> bool {
    let phys = mm.phys();
    let meta = phys.meta(candidate.pfn);
    // The page lock is only tried: two migrators never wait on each other.
    let moved = meta.try_lock() && {
        let moved = move_locked(mm, candidate);
        meta.unlock();
        moved
    };
    phys.put(candidate.pfn);
    moved
}

fn move_locked(mm: &Mm, c: &Candidate) -> bool {
    let phys = mm.phys();
    if phys.maybe_pinned(c.pfn) {
        return false;
    }
    // Mapped once (here), referenced by that mapping and by us only.
    let (refs, maps) = phys.folio_counts(c.pfn);
    if maps != 1 || refs != 2 {
        return false;
    }
    let Ok(new) = phys.alloc_folio(phys.folio_order(c.pfn), false) else {
        return false;
    };
    let _in_flight = InFlight::enter(mm.migrating());
    if !unmap(mm, c) {
        phys.put(new);
        return false;
    }
    let shared = mm.kernel().migration();
    // Only our reference may be left. One taken meanwhile (an access or GUP
    // that looked the page up before the unmap) makes us back out.
    if !phys.ref_freeze(c.pfn, 1) {
        restore(mm, c, c.pfn);
        shared.wake(c.pfn);
        phys.put(new);
        return false;
    }
    if let Some(hook) = shared.hook() {
        hook(&MigrationPoint { mm: mm.id(), va: c.va, old: c.pfn, new, nr_pages: c.nr });
    }
    phys.copy_frames(new, c.pfn, c.nr);
    phys.meta(new).copy_state_from(phys.meta(c.pfn));
    phys.ref_unfreeze(c.pfn, 1);
    let restored = restore(mm, c, new);
    shared.wake(c.pfn);
    // The allocation's reference: each restored entry took its own.
    phys.put(new);
    restored
}

/// Replaces the present entry mapping `c` by a migration entry, announced
/// as a CLEAR invalidation; drops the mapping's share and reference. False
/// if the entry no longer maps the folio as collected.
fn unmap(mm: &Mm, c: &Candidate) -> bool {
    let phys = mm.phys();
    let _guard = mm.mmap_read();
    let slot = mm.pgtable().find(c.va);
    let mut entry = slot.load();
    let ours = |entry: Entry| slot.level() == c.level && entry.is_present() && entry.pfn() == c.pfn;
    if !ours(entry) {
        return false;
    }
    let exclusive = phys.meta(c.pfn).flags().contains(PageFlags::ANON_EXCLUSIVE);
    let invalidation = mm.notifiers().start(mm.id(), c.va, c.va + c.level.entry_bytes(), Event::Clear);
    // The CPU sets accessed and dirty bits concurrently: retry on those.
    loop {
        let kind = if entry.is_write() {
            SwapKind::MigrationWrite
        } else if exclusive {
            SwapKind::MigrationReadExclusive
        } else {
            SwapKind::MigrationRead
        };
        let migration = Entry::swap(kind, c.pfn.0, c.level > Level::Pte);
        match slot.compare_exchange(entry, migration) {
            Ok(_) => break,
            Err(now) if ours(now) => entry = now,
            Err(_) => {
                invalidation.end();
                return false;
            }
        }
    }
    if entry.is_dirty() {
        phys.meta(c.pfn).set_flags(PageFlags::DIRTY);
    }
    phys.map_sub(c.pfn, 1);
    phys.put(c.pfn);
    invalidation.end();
    true
}

/// Replaces every migration entry of `c`'s folio left in its range by a
/// present entry to the same part of `dst` (`c.pfn` itself when backing
/// out). Returns whether any was found: none if the range was zapped.
fn restore(mm: &Mm, c: &Candidate, dst: Pfn) -> bool {
    let phys = mm.phys();
    let guard = mm.mmap_read_recursive();
    let dirty = phys.meta(dst).flags().contains(PageFlags::DIRTY);
    let end = c.va + c.level.entry_bytes();
    let mut restored = false;
    let mut cursor = c.va;
    loop {
        let flow = mm.pgtable().walk(cursor, end, |visit| {
            let Visit::Slot { slot, entry } = visit else {
                return ControlFlow::Continue(());
            };
            let Some(kind) = entry.swap_kind().filter(|k| k.is_migration()) else {
                return ControlFlow::Continue(());
            };
            let Some(offset) = entry.pfn().0.checked_sub(c.pfn.0).filter(|&o| o < c.nr) else {
                return ControlFlow::Continue(());
            };
            let target = dst.add(offset);
            let access = guard.vma(slot.va()).map_or(VmFlags::empty(), |vma| vma.flags & ACCESS);
            let flags = LeafFlags {
                write: kind.is_write() && access.contains(VmFlags::WRITE),
                dirty,
                accessed: false,
                special: false,
            };
            let mut present = Entry::present(target, flags, slot.level() > Level::Pte);
            if access.is_empty() {
                present = present.mkprotnone();
            }
            // Publish the mapping's reference before the mapping.
            phys.get(target);
            phys.map_add(target, 1);
            if slot.compare_exchange(entry, present).is_ok() {
                restored = true;
                ControlFlow::Continue(())
            } else {
                phys.map_sub(target, 1);
                phys.put(target);
                ControlFlow::Break(slot.va())
            }
        });
        match flow {
            ControlFlow::Continue(()) => return restored,
            ControlFlow::Break(va) => cursor = va,
        }
    }
}
