//! Swap-out: taking pages away from an address space, for MADV_PAGEOUT and
//! for [`Kernel::reclaim`].
//!
//! Candidates are pages whose folio is anonymous system RAM, not pinned and
//! held by nothing but its mappings (reference count equals mapcount), and,
//! for MADV_PAGEOUT only ([`Scope::WithFile`]), order-0 page-cache pages
//! (tmpfs, memfd, shared anonymous memory, or the unwritten pages of a
//! private file mapping) held by their one mapping and the page cache.
//! Reclaim unmaps such a page (`try_to_unmap`); a dirty one stays in the
//! page cache (shmem writeout without swap only redirties it), so a later
//! fault maps the same page again, and a clean one (never written: all
//! zeros) leaves the cache (`__remove_mapping`). Linux 6.18 on the host
//! does exactly this.
//!
//! An order-0 page mapped more than once (shared after fork, or mapped
//! twice) is skipped: MADV_PAGEOUT skips shared folios in Linux too; Linux's reclaim
//! would unmap every mapping through the reverse map and share one
//! swap-cache page, but this model has no swap cache, so `Kernel::reclaim`
//! skips them as well (unmapping one mapping would free nothing). An
//! exclusive PMD-mapped THP is split first (a CLEAR over the 2 MiB, as
//! `__split_huge_pmd`); its 4K parts are then paged out one by one and the
//! folio is freed with its last part. Clean MADV_FREE pages are discarded
//! (the entry becomes none, no slot is used); everything else is copied
//! into a swap slot and its entry becomes a swap entry. Each page is one
//! CLEAR invalidation (`try_to_unmap_one` uses `MMU_NOTIFY_CLEAR`), and its
//! reference is dropped only after the invalidation ended.
//!
//! Without a page lock, a page is taken away in two steps so no write is
//! ever lost: the entry is first made clean and old, then, once no reference
//! other than the mappings is seen, the page is copied and the quiet entry
//! is replaced. Any access after the first step must set the accessed (and,
//! for a write, dirty) bit by compare-and-swap, which makes the second step
//! fail and the attempt start over; an access already in flight holds a
//! reference and is seen. The fence after the first step pairs with the one
//! after the speculative reference in `cpu.rs`.
//!
//! Linux: `mm/madvise.c` (`madvise_cold_or_pageout_pte_range`),
//! `mm/vmscan.c` (`shrink_folio_list`, `reclaim_pages`), `mm/rmap.c`
//! (`try_to_unmap_one`).

use core::ops::ControlFlow;
use core::sync::atomic::{fence, Ordering};

use hmm_pagetable::{Entry, Level, Slot, SwapKind, Visit};
use hmm_types::{Event, Pfn, VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::fs::Inode;
use crate::huge::split_huge_leaf;
use crate::kernel::Kernel;
use crate::mm::Mm;
use crate::phys::{PageFlags, PhysMem};
use crate::vma::Vma;
use crate::zap::Gather;

/// Attempts per page before giving up on a page that keeps being touched.
const ATTEMPTS: usize = 8;

/// What taking a page away means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A clean lazily-freeable page: its data may simply be dropped.
    Discard,
    /// Its data goes to a swap slot.
    Swap,
    /// A page-cache page: its mapping goes, the page stays cached.
    Unmap,
}

impl Kind {
    /// References a candidate holds besides its mappings: the page
    /// cache's own for a cached page.
    fn cache_refs(self) -> u32 {
        u32::from(self == Kind::Unmap)
    }
}

/// Which pages a pageout may take.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Scope {
    /// Anonymous pages only ([`Kernel::reclaim`], which counts freed pages).
    AnonOnly,
    /// Anonymous and page-cache pages (MADV_PAGEOUT, `reclaim_pages`).
    WithFile,
}

/// True for VMAs whose anonymous pages may be paged out: private, and not
/// pfn, I/O or hugetlb mappings (`can_madv_lru_vma`).
fn swappable_vma(vma: &Vma) -> bool {
    !vma.flags.is_shared() && !vma.flags.intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::HUGETLB)
}

/// The folio behind a present entry, if it is anonymous system RAM held
/// only by its mappings and `extra` references of the reclaimer.
fn reclaimable_folio(phys: &PhysMem, entry: Entry, extra: u32) -> Option<Pfn> {
    if !entry.is_present() || entry.is_special() {
        return None;
    }
    let pfn = entry.pfn();
    if phys.is_zero_pfn(pfn) || phys.pagemap(pfn).is_some() {
        return None;
    }
    let head = phys.folio_head(pfn);
    let (refs, maps) = phys.folio_counts(head);
    let anon = phys.meta(head).flags().contains(PageFlags::ANON);
    (anon && !phys.maybe_pinned(head) && maps > 0 && refs == maps as u32 + extra).then_some(head)
}

/// The page-cache page behind a present entry, if it is an order-0 page of
/// system RAM mapped once and held only by that mapping, the page cache
/// and `extra` references of the reclaimer.
fn unmappable_cache_page(phys: &PhysMem, entry: Entry, extra: u32) -> Option<Pfn> {
    if !entry.is_present() || entry.is_special() {
        return None;
    }
    let pfn = entry.pfn();
    if phys.is_zero_pfn(pfn) || phys.pagemap(pfn).is_some() {
        return None;
    }
    let head = phys.folio_head(pfn);
    let flags = phys.meta(head).flags();
    if flags.contains(PageFlags::ANON) || !flags.contains(PageFlags::SHMEM) || phys.folio_order(head) != 0 {
        return None;
    }
    let (refs, maps) = phys.folio_counts(head);
    (!phys.maybe_pinned(head) && maps == 1 && refs == 2 + extra).then_some(head)
}

/// True if the huge leaf `entry` maps a shmem THP (a PMD-order page-cache
/// folio) once, held by nothing but the page cache and that mapping.
fn unmappable_cache_thp(phys: &PhysMem, entry: Entry) -> bool {
    if !entry.is_present() || entry.is_special() || phys.is_zero_pfn(entry.pfn()) || phys.pagemap(entry.pfn()).is_some()
    {
        return false;
    }
    let head = phys.folio_head(entry.pfn());
    let flags = phys.meta(head).flags();
    let nr = 1u32 << phys.folio_order(head);
    flags.contains(PageFlags::SHMEM)
        && !flags.contains(PageFlags::ANON)
        && nr > 1
        && !phys.maybe_pinned(head)
        && phys.folio_counts(head) == (nr + 1, 1)
}

/// How the page mapped by the PTE `entry` would be taken, if it can be.
fn classify(phys: &PhysMem, entry: Entry, extra: u32, scope: Scope) -> Option<Kind> {
    if scope == Scope::WithFile && unmappable_cache_page(phys, entry, extra).is_some() {
        return Some(Kind::Unmap);
    }
    let head = reclaimable_folio(phys, entry, extra)?;
    if phys.folio_order(head) == 0 && phys.folio_counts(head).1 != 1 {
        return None;
    }
    let flags = phys.meta(head).flags();
    let clean = !entry.is_dirty() && !flags.contains(PageFlags::DIRTY);
    Some(if flags.contains(PageFlags::LAZYFREE) && clean { Kind::Discard } else { Kind::Swap })
}

/// True when the huge leaf `entry` is an exclusive anonymous THP worth
/// splitting: something can then be done with its parts.
fn thp_worth_splitting(mm: &Mm, entry: Entry) -> bool {
    let phys = mm.phys();
    let Some(head) = reclaimable_folio(phys, entry, 0) else {
        return false;
    };
    let flags = phys.meta(head).flags();
    let lazyfree = flags.contains(PageFlags::LAZYFREE) && !flags.contains(PageFlags::DIRTY) && !entry.is_dirty();
    phys.folio_counts(head) == (1, 1) && (lazyfree || mm.kernel().swap().free_slots() > 0)
}

/// Pages out what can be paged out in `[start, end)` of `mm`, at most
/// `*budget` pages (the budget shrinks by what was reclaimed), taking
/// page-cache pages too with [`Scope::WithFile`]. The caller holds the mmap
/// lock (read is enough) and passes a range of one VMA: with
/// [`Scope::AnonOnly`], one that [`swappable_vma`] accepts. Returns the
/// pages reclaimed.
pub(crate) fn pageout_range(mm: &Mm, start: u64, end: u64, budget: &mut u64, scope: Scope) -> u64 {
    let mut reclaimed = 0;
    let _ = mm.pgtable().walk(start, end, |visit| {
        if *budget == 0 {
            return ControlFlow::Break(());
        }
        let Visit::Slot { slot, entry } = visit else {
            return ControlFlow::Continue(());
        };
        if slot.level() == Level::Pte {
            if pageout_one(mm, slot, scope) {
                reclaimed += 1;
                *budget -= 1;
            }
        } else if slot.level() == Level::Pmd && scope == Scope::WithFile && unmappable_cache_thp(mm.phys(), entry) {
            // A shmem THP mapped only here: unmapped whole, it stays in the
            // page cache (shmem without swap space keeps it; the model's
            // page cache is never swapped).
            let va = slot.va();
            let invalidation = mm.notifiers().start(mm.id(), va, va + PMD_SIZE, Event::Clear);
            let mut gather = Gather::new();
            if slot.compare_exchange(entry, Entry::NONE).is_ok() {
                crate::zap::release_entry(mm.phys(), entry, &mut gather);
                reclaimed += 1;
                *budget -= 1;
            }
            gather.free_after(mm.phys(), invalidation);
        } else if slot.level() == Level::Pmd && thp_worth_splitting(mm, entry) {
            // A failed split (no table left, or the leaf changed) leaves
            // the THP as it is.
            if let Ok(true) = split_huge_leaf(mm, slot, entry) {
                let block_end = (slot.va() + PMD_SIZE).min(end);
                reclaimed += pageout_range(mm, slot.va().max(start), block_end, budget, scope);
            }
        }
        ControlFlow::Continue(())
    });
    reclaimed
}

/// Takes the page mapped by the PTE `slot` away; true if it was.
fn pageout_one(mm: &Mm, slot: Slot<'_>, scope: Scope) -> bool {
    let phys = mm.phys();
    let entry = slot.load();
    let Some(kind) = classify(phys, entry, 0, scope) else {
        return false;
    };
    // A reference of our own (`folio_isolate_lru` holds one) keeps the
    // folio from being freed and reused while we lock it; whoever holds
    // the folio lock (migration, another reclaimer) owns the folio.
    let pfn = entry.pfn();
    if !phys.try_get(pfn) {
        return false;
    }
    let head = phys.meta(phys.folio_head(pfn));
    if slot.load().pfn() != pfn || !head.try_lock() {
        phys.put(pfn);
        return false;
    }
    let swap = mm.kernel().swap();
    let reserved = match kind {
        Kind::Swap => swap.reserve(),
        Kind::Discard | Kind::Unmap => None,
    };
    let mut done = false;
    if kind != Kind::Swap || reserved.is_some() {
        let va = slot.va();
        let invalidation = mm.notifiers().start(mm.id(), va, va + PAGE_SIZE, Event::Clear);
        let mut gather = Gather::new();
        done = unmap_page(phys, slot, entry, (kind, scope), reserved, mm);
        head.unlock();
        if done {
            phys.map_sub(pfn, 1);
            gather.push(pfn);
        }
        if kind == Kind::Unmap {
            gather.free_after(phys, invalidation);
            if done {
                drop_if_clean(phys, pfn);
            }
            phys.put(pfn);
        } else {
            gather.push(pfn);
            gather.free_after(phys, invalidation);
        }
    } else {
        head.unlock();
        phys.put(pfn);
    }
    match (done, reserved) {
        (true, Some(_)) => swap.count_out(),
        (false, Some(offset)) => swap.put(offset),
        _ => {}
    }
    done
}

/// A page-cache page just unmapped by reclaim leaves the cache if it is
/// clean; a dirty one stays (with no swap, shmem writeout only redirties
/// it), so a later fault maps the same page again. The caller still holds
/// its reference.
fn drop_if_clean(phys: &PhysMem, pfn: Pfn) {
    let meta = phys.meta(pfn);
    if let Some(inode) = Inode::lookup(meta.mapping.load(Ordering::Relaxed)) {
        inode.remove_clean_page(meta.index.load(Ordering::Relaxed), pfn, 1);
    }
}

/// The two-step replacement of the PTE `slot`, first seen as `entry`:
/// quiet it (clean and old), check that nothing but mappings holds the
/// folio, copy the page into `reserved` (for a swap), then replace the
/// quiet entry with the swap entry (or none, for a discard or an unmap).
fn unmap_page(
    phys: &PhysMem,
    slot: Slot<'_>,
    entry: Entry,
    (kind, scope): (Kind, Scope),
    reserved: Option<u64>,
    mm: &Mm,
) -> bool {
    let pfn = entry.pfn();
    let head = phys.folio_head(pfn);
    let mut current = entry;
    for _ in 0..ATTEMPTS {
        // A discard candidate that was written to is kept, as Linux puts a
        // redirtied lazyfree folio back.
        if current.pfn() != pfn || classify(phys, current, 1, scope) != Some(kind) {
            return false;
        }
        let quiet = current.mkclean().mkold();
        if quiet != current {
            if let Err(now) = slot.compare_exchange(current, quiet) {
                current = now;
                continue;
            }
            if current.is_dirty() {
                phys.meta(head).set_flags(PageFlags::DIRTY);
            }
        }
        fence(Ordering::SeqCst);
        let (refs, maps) = phys.folio_counts(head);
        if refs != maps as u32 + kind.cache_refs() + 1 {
            // Besides the mappings, the page cache and us, an access or a
            // GUP holds the page right now.
            return false;
        }
        let new = match reserved {
            Some(offset) => {
                let mut data = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
                phys.read(pfn, 0, &mut data);
                mm.kernel().swap().write(offset, data);
                // A write-protected page keeps its uffd bit in the swap
                // entry (`try_to_unmap_one`: `pte_swp_mkuffd_wp`); so does
                // a read-write-protected one (7.3: the same bit).
                let swap = Entry::swap(SwapKind::Swap, offset, false);
                if quiet.is_uffd_wp() {
                    swap.swp_mkuffd_wp()
                } else {
                    swap
                }
            }
            None => Entry::NONE,
        };
        match slot.compare_exchange(quiet, new) {
            Ok(_) => return true,
            Err(now) => current = now,
        }
    }
    false
}

impl Kernel {
    /// Reclaims up to `nr_pages` pages of private anonymous memory from
    /// every live address space, in creation order: clean MADV_FREE pages
    /// are discarded, others written to swap. Returns how many pages were
    /// reclaimed; without swap (or with swap full) only lazily-freeable
    /// pages can be. Each page is announced as a CLEAR invalidation.
    ///
    /// Takes each address space's mmap lock for reading: call it with no
    /// mmap lock held.
    ///
    /// Linux: `try_to_free_pages`/`shrink_folio_list`, here a walk of the
    /// address spaces rather than of LRU lists.
    pub fn reclaim(&self, nr_pages: u64) -> u64 {
        let mut budget = nr_pages;
        for mm in self.live_mms() {
            if budget == 0 {
                break;
            }
            let guard = mm.mmap_read();
            if mm.has_exited() {
                continue;
            }
            for vma in guard.iter().filter(|vma| swappable_vma(vma)) {
                if budget == 0 {
                    break;
                }
                pageout_range(&mm, vma.start, vma.end, &mut budget, Scope::AnonOnly);
            }
        }
        nr_pages - budget
    }
}
