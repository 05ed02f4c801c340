//! MADV_COLLAPSE of one shmem block (memfd, tmpfs, shared anonymous memory,
//! and private mappings of them): the file's pages of the 2 MiB block
//! become one PMD-order page-cache folio, which the caller then maps with
//! a PMD leaf. Shmem's THP mode does not matter (the collapse is forced).
//!
//! `collapse_file`, as the kernels decide it (6.18 on the host, 7.3.4 in
//! the guest):
//! 1. the scan: a block whose pages all are holes is EINVAL and ends the
//!    call (`SCAN_TRUNCATED`); a page held by anything but the cache and
//!    its mappings (a pin, a reference in flight) or locked lets the next
//!    block be tried (`SCAN_PAGE_COUNT`, `SCAN_PAGE_LOCK`); a block that
//!    already is a PMD-order folio only needs its PMD (step 4);
//! 2. the block is locked in the cache (faults and writes wait, fault-
//!    around skips it), then every process's mapping of the old pages is
//!    zapped (a CLEAR per VMA range), and where the VMA can hold the PMD
//!    and has no anon_vma the emptied page table goes too
//!    (`retract_page_tables`), so the next fault there maps the PMD;
//! 3. a zeroed PMD-order folio takes the old pages' data, holes stay zero,
//!    and replaces them in the cache at every index of the block, past the
//!    end of the file too (shmem maps a THP across `i_size`);
//! 4. the caller's block gets the PMD leaf (`collapse_pte_mapped_thp` with
//!    `install_pmd`): its page table, holding at most entries of the new
//!    folio, is emptied (a CLEAR of the 2 MiB) and freed.
//!
//! Other address spaces' page tables are retracted only if their mmap
//! lock can be taken at once for writing, as Linux's `retract_page_tables`
//! once did with `mmap_write_trylock`; otherwise their emptied table stays
//! and they refault the pages with PTEs.
//!
//! Linux: `mm/khugepaged.c` (`hpage_collapse_scan_file`, `collapse_file`,
//! `retract_page_tables`, `collapse_pte_mapped_thp`, `set_huge_pmd`).

use core::ops::ControlFlow;
use std::sync::Arc;

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, SwapKind, Visit};
use hmm_types::{Event, Pfn, VmFlags, PAGE_SHIFT, PMD_SIZE};

use crate::error::MmError;
use crate::fs::Inode;
use crate::mm::{Mm, MmapWriteGuard};
use crate::phys::{PageFlags, PhysMem};
use crate::vma::{Vma, VmaBacking, VmaTree};
use crate::zap::{release_entry, zap_range_if, Gather};

use super::Block;

/// Pages of a PMD-order folio.
const HPAGE_PMD_NR: u64 = PMD_SIZE >> PAGE_SHIFT;

/// What the scan of the cache found.
enum Scan {
    /// The block is one PMD-order folio already.
    Huge,
    /// Order-0 pages to collapse: `(index, pfn)`.
    Pages(Vec<(u64, Pfn)>),
    /// Not collapsible now; the next block is tried.
    Failed,
    /// No page at all: `SCAN_TRUNCATED`.
    Empty,
}

/// Collapses the shmem block at `block` (2 MiB-aligned, inside one VMA
/// whose page offset is congruent with its address).
pub(super) fn collapse_block(guard: &mut MmapWriteGuard<'_>, block: u64) -> Result<Block, MmError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let vma = guard.lookup(block).expect("range checked as mapped");
    let inode = Arc::clone(vma.file().expect("a shmem VMA has a file"));
    let first = vma.page_index(block);
    debug_assert_eq!(first % HPAGE_PMD_NR, 0, "the VMA is congruent");
    match scan(&inode, first) {
        Scan::Huge => {}
        Scan::Failed => return Ok(Block::Failed),
        Scan::Empty => return Ok(Block::Stop(MmError::Invalid("MADV_COLLAPSE of a shmem block with no page"))),
        Scan::Pages(old) => {
            let folio = phys.alloc_folio(9, true)?;
            // Lock the block: a fault or write() waits, so no one maps or
            // writes an old page again while it is copied.
            {
                let mut state = inode.state.lock();
                if !state.dax_locked.insert(first / HPAGE_PMD_NR) {
                    drop(state);
                    phys.put(folio);
                    return Ok(Block::Failed);
                }
            }
            unmap_everywhere(guard, &inode, first);
            let replaced = replace_in_cache(phys, &inode, first, &old, folio);
            inode.state.lock().dax_locked.remove(&(first / HPAGE_PMD_NR));
            if !replaced {
                phys.put(folio);
                return Ok(Block::Failed);
            }
            for (_, pfn) in old {
                phys.put(pfn);
            }
        }
    }
    install_pmd(guard, block, &inode, first)
}

/// `hpage_collapse_scan_file`: the cache's pages of the block, if they
/// can be collapsed.
fn scan(inode: &Inode, first: u64) -> Scan {
    let phys = inode.phys();
    let state = inode.state.lock();
    if state.dax_locked.contains(&(first / HPAGE_PMD_NR)) {
        return Scan::Failed;
    }
    let mut pages = Vec::new();
    for (&index, &pfn) in state.pages.range(first..first + HPAGE_PMD_NR) {
        let head = phys.folio_head(pfn);
        if phys.folio_order(head) == 9 {
            // A PMD-order folio at its own index is mapped, not collapsed
            // (`SCAN_PTE_MAPPED_HUGEPAGE`); a part of one left by a failed
            // split is not collapsible.
            let whole = head == pfn && index == first;
            return if whole { Scan::Huge } else { Scan::Failed };
        }
        // `folio_expected_ref_count`: the cache's (one per page) and each
        // mapping's. A smaller large folio, left by the split of a
        // truncation (`folio_split`), is copied like order-0 pages.
        let (refs, maps) = phys.folio_counts(pfn);
        let nr = 1i64 << phys.folio_order(head);
        let locked = phys.meta(head).flags().contains(PageFlags::LOCKED);
        if locked || phys.maybe_pinned(pfn) || i64::from(refs) != nr + i64::from(maps) {
            return Scan::Failed;
        }
        pages.push((index, pfn));
    }
    if pages.is_empty() {
        Scan::Empty
    } else {
        Scan::Pages(pages)
    }
}

/// The addresses `[start, end)` where `vma` maps file pages
/// `[first, first + HPAGE_PMD_NR)` of `inode`, if any.
fn mapped_range(vma: &Vma, inode: &Inode, first: u64) -> Option<(u64, u64)> {
    let VmaBacking::File(file) = &vma.backing else { return None };
    if !core::ptr::eq(&**file, inode) {
        return None;
    }
    let vma_last = vma.pgoff + ((vma.end - vma.start) >> PAGE_SHIFT);
    let (from, to) = (first.max(vma.pgoff), (first + HPAGE_PMD_NR).min(vma_last));
    (from < to).then(|| (vma.start + ((from - vma.pgoff) << PAGE_SHIFT), vma.start + ((to - vma.pgoff) << PAGE_SHIFT)))
}

/// True if `vma`'s table for `[start, start + 2 MiB)` may be retracted: the
/// block is whole and aligned in it, and nothing private or write-protected
/// by userfaultfd can be in the table (`retract_page_tables`).
fn retractable(vma: &Vma, start: u64, end: u64) -> bool {
    start % PMD_SIZE == 0
        && end == start + PMD_SIZE
        && vma.anon_vma.get().is_none()
        && !vma.flags.contains(VmFlags::UFFD_WP)
}

/// Zaps the file pages of the block from every address space mapping
/// `inode`, and retracts the emptied page tables where it may.
fn unmap_everywhere(guard: &mut MmapWriteGuard<'_>, inode: &Inode, first: u64) {
    let caller = guard.mm();
    for mm in inode.mappers() {
        if core::ptr::eq(&*mm, caller) {
            unmap_in(caller, guard, inode, first, true);
            continue;
        }
        if mm.has_exited() {
            continue;
        }
        // Never wait for another address space's write lock while holding
        // our own (two collapsing processes would deadlock): try it, else
        // zap under the read lock and leave the table.
        match mm.mmap_write_try() {
            Some(other) => unmap_in(&mm, &other, inode, first, true),
            None => {
                let other = mm.mmap_read_recursive();
                if !mm.has_exited() {
                    unmap_in(&mm, &other, inode, first, false);
                }
            }
        }
    }
}

/// Zaps (and with `may_retract`, under the mmap write lock, retracts) the
/// file pages `[first, first + HPAGE_PMD_NR)` of `inode` in `mm`.
fn unmap_in(mm: &Mm, vmas: &VmaTree, inode: &Inode, first: u64, may_retract: bool) {
    let phys = mm.phys();
    for vma in vmas.iter() {
        let Some((start, end)) = mapped_range(vma, inode, first) else { continue };
        let retract = may_retract && retractable(vma, start, end);
        let has_table = mm.pgtable().find(start).level() == Level::Pte;
        if !has_table && !crate::zap::has_entries(mm, start, end) {
            continue;
        }
        let invalidation = mm.notifiers().start(mm.id(), start, end, Event::Clear);
        let mut gather = Gather::new();
        // Private copies (anonymous pages) and guard markers stay.
        let zapped = zap_range_if(mm, start, end, &mut gather, |entry| {
            !entry.is_guard_marker()
                && ((!entry.is_present() && entry.swap_kind() != Some(SwapKind::Swap))
                    || (entry.is_present()
                        && !phys.meta(phys.folio_head(entry.pfn())).flags().contains(PageFlags::ANON)))
        });
        if zapped.is_ok() && retract {
            retract_table(mm, start);
        }
        gather.free_after(phys, invalidation);
    }
}

/// Frees the page table of the 2 MiB block at `block` if it holds no entry
/// (`pmdp_collapse_flush`), leaving the PMD none; the tables above stay.
/// The caller holds the mmap write lock.
fn retract_table(mm: &Mm, block: u64) {
    if mm.pgtable().find(block).level() != Level::Pte || crate::zap::has_entries(mm, block, block + PMD_SIZE) {
        return;
    }
    if let Ok(pmd) = mm.pgtable().ensure(block, Level::Pmd) {
        let table = pmd.load();
        if table.is_table(Level::Pmd) && pmd.compare_exchange(table, Entry::NONE).is_ok() {
            hmm_pagetable::TableStore::free_table(mm.pgtable().store(), table.pfn().0);
        }
    }
}

/// Copies the old pages into `folio` and puts it in the cache at every
/// index of the block, if the old pages are still the cache's and held by
/// nothing else; the cache's references on the old pages are the caller's
/// to drop.
fn replace_in_cache(phys: &PhysMem, inode: &Inode, first: u64, old: &[(u64, Pfn)], folio: Pfn) -> bool {
    let mut state = inode.state.lock();
    let unchanged = state.pages.range(first..first + HPAGE_PMD_NR).map(|(&i, &p)| (i, p)).eq(old.iter().copied());
    let idle = |pfn| phys.folio_counts(pfn) == (1 << phys.folio_order(pfn), 0) && !phys.maybe_pinned(pfn);
    if !unchanged || !old.iter().all(|&(_, pfn)| idle(pfn)) {
        return false;
    }
    for &(index, pfn) in old {
        phys.copy_frames(folio.add(index - first), pfn, 1);
    }
    let meta = phys.meta(folio);
    meta.set_flags(PageFlags::SHMEM | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::DIRTY);
    meta.index.store(first, core::sync::atomic::Ordering::Relaxed);
    meta.mapping.store(inode.id(), core::sync::atomic::Ordering::Relaxed);
    // One cache reference per page, as Linux's `folio_ref_add(nr)`.
    phys.get_many(folio, (HPAGE_PMD_NR - 1) as u32);
    for i in 0..HPAGE_PMD_NR {
        state.pages.insert(first + i, folio.add(i));
    }
    true
}

/// `collapse_pte_mapped_thp(install_pmd)`: maps the PMD-order folio at
/// file page `first` with a PMD leaf at `block` in the caller.
fn install_pmd(guard: &mut MmapWriteGuard<'_>, block: u64, inode: &Inode, first: u64) -> Result<Block, MmError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let vma = guard.lookup(block).expect("range checked as mapped");
    let Some(folio) = inode.state.lock().pages.get(&first).copied() else { return Ok(Block::Failed) };
    if phys.folio_order(folio) != 9 || phys.folio_head(folio) != folio {
        return Ok(Block::Failed);
    }
    let deepest = mm.pgtable().find(block);
    match deepest.level() {
        Level::Pmd if deepest.load().is_present() => return Ok(Block::Collapsed),
        Level::Pmd if deepest.load().is_none() => {}
        Level::Pte => {
            // Only entries of this very folio may be in the table
            // (`collapse_pte_mapped_thp` checks every PTE): they go, and
            // the table with them.
            let only_ours = mm
                .pgtable()
                .walk(block, block + PMD_SIZE, |visit| match visit {
                    Visit::Slot { slot, entry } if !entry.is_none() => {
                        let ours = entry.is_present() && entry.pfn() == folio.add((slot.va() - block) >> PAGE_SHIFT);
                        if ours {
                            ControlFlow::Continue(())
                        } else {
                            ControlFlow::Break(())
                        }
                    }
                    _ => ControlFlow::Continue(()),
                })
                .is_continue();
            if !only_ours {
                return Ok(Block::Failed);
            }
            let invalidation = mm.notifiers().start(mm.id(), block, block + PMD_SIZE, Event::Clear);
            let mut gather = Gather::new();
            let _ = mm.pgtable().walk(block, block + PMD_SIZE, |visit| {
                if let Visit::Slot { slot, entry } = visit {
                    if !entry.is_none() && slot.compare_exchange(entry, Entry::NONE).is_ok() {
                        release_entry(phys, entry, &mut gather);
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            retract_table(mm, block);
            gather.free_after(phys, invalidation);
        }
        // No PMD table above the block (`SCAN_PMD_NULL`) or a PMD that is
        // neither none nor a leaf: the next block is tried.
        _ => return Ok(Block::Failed),
    }
    let slot = match mm.pgtable().ensure(block, Level::Pmd) {
        Ok(slot) => slot,
        Err(EnsureError::NoMem(_)) => return Err(MmError::NoMem),
        Err(EnsureError::Leaf(_)) => return Ok(Block::Failed),
    };
    let leaf = cache_pmd_leaf(vma, folio, false);
    phys.get(folio);
    phys.map_add(folio, 1);
    if slot.compare_exchange(Entry::NONE, leaf).is_err() {
        phys.map_sub(folio, 1);
        phys.put(folio);
        return Ok(Block::Failed);
    }
    Ok(Block::Collapsed)
}

/// The PMD leaf mapping page-cache folio `folio` in `vma` with the VMA's
/// protection (`vm_page_prot`: shmem needs no write notification, so a
/// shared writable mapping is writable at once; a private one is
/// read-only, a write copies).
pub(crate) fn cache_pmd_leaf(vma: &Vma, folio: Pfn, dirty: bool) -> Entry {
    // Shared memory wants no write notification: the PMD takes the VMA's write permission.
    let write = vma.maps_page_cache_writable();
    let accessible = vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
    let leaf = Entry::present(folio, LeafFlags { write, dirty: dirty && write, accessed: true, special: false }, true);
    if accessible {
        leaf
    } else {
        leaf.mkprotnone()
    }
}
