//! Faults on file mappings (tmpfs files and shared anonymous memory, which
//! is an unnamed tmpfs file). The page comes from the page cache, allocated
//! zeroed where the file has a hole; a fault beyond end of file is SIGBUS.
//! Shared mappings map the cached page itself: writable on any fault where
//! the VMA wants no write notification (shared memory), read-only on a
//! read fault where it does (fs-dax's dirty tracking, userfaultfd-wp); a
//! write fault on a private mapping copies the page into private
//! anonymous memory.
//!
//! A read fault first maps the cached pages around it (`around.rs`); a
//! shmem THP is mapped whole by a PMD where it can be (`file_huge.rs`).
//!
//! DAX files come here for 4K entries: their frames are the file's blocks;
//! only a shared write allocates one, a read of a hole maps the zero page
//! read-only (`dax_load_hole`) until a write replaces it everywhere.
//!
//! A fault races with truncation: after installing the entry it checks the
//! size again and takes the entry back if the page was cut meanwhile.
//!
//! Linux: `do_read_fault`, `do_shared_fault`, `do_cow_fault`,
//! `filemap_fault`, `shmem_fault`.

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};
use hmm_types::{Event, PAGE_SIZE};

use crate::error::FaultError;
use crate::fs::truncate::unmap_mapping_pages;
use crate::fs::{Inode, InodeKind};
use crate::mm::MmapLocked;
use crate::phys::PageFlags;
use crate::vma::Vma;
use crate::zap::{release_entry, Gather};

use super::{existing_pte, Existing};

pub(super) fn fault(locked: MmapLocked<'_>, vma: &Vma, inode: &Inode, va: u64, write: bool) -> Result<(), FaultError> {
    let mm = locked.mm();
    let phys = mm.phys();
    let shared = vma.flags.is_shared();
    let index = vma.page_index(va);
    // `uffd_disable_fault_around`: WP, MINOR and RWP ranges fault page by page
    // (a cached page mapped around would escape protection or a MINOR
    // fault; in a MISSING range a cached page is not missing).
    let mut around = !write
        && !vma
            .flags
            .intersects(hmm_types::VmFlags::UFFD_WP | hmm_types::VmFlags::UFFD_MINOR | hmm_types::VmFlags::UFFD_RWP);
    if !matches!(inode.kind(), InodeKind::Dax(_)) && super::file_huge::try_map_pmd(locked, vma, inode, va, write)? {
        return Ok(());
    }
    loop {
        let pte = match mm.pgtable().ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(slot)) => {
                // A shmem THP's PMD: a write to a read-only one of a private
                // mapping removes it and copies one page on the retry
                // (`do_huge_pmd_wp_page` splitting a file PMD).
                let entry = slot.load();
                if !entry.is_present() || slot.level() != Level::Pmd {
                    return Err(FaultError::Sigbus("huge entry in a page-cache mapping"));
                }
                if write && !entry.is_write() && shared {
                    // A shared shmem mapping needs no write notification:
                    // Linux's mprotect back to writable upgrades the PMD
                    // (`vma_wants_manual_pte_write_upgrade`), so the write
                    // never faults there; the model upgrades it here.
                    let _ = slot.compare_exchange(entry, entry.mkwrite().mkdirty());
                    continue;
                }
                if write && !entry.is_write() {
                    crate::huge::split_huge_leaf(mm, slot, entry).map_err(|_| FaultError::Oom)?;
                    continue;
                }
                return Ok(());
            }
        };
        let entry = pte.load();
        if write && shared && entry.is_present() && phys.is_zero_pfn(entry.pfn()) {
            // A DAX hole mapped by the zero page: the write allocates the
            // block and unmaps the zero page everywhere (this entry too);
            // the retry maps the block (`dax_iomap_pte_fault` with write).
            let block = inode
                .get_page_for_map(index)
                .map_err(|_| FaultError::Oom)?
                .ok_or(FaultError::Sigbus("access beyond end of file"))?;
            phys.put(block);
            unmap_mapping_pages(inode, index, index + 1, false).map_err(|_| FaultError::Oom)?;
            continue;
        }
        if !entry.is_none() {
            // Private copy-on-write pages may be swapped out or migrated.
            match existing_pte(locked, vma, pte, entry, write)? {
                Existing::Done => return Ok(()),
                Existing::Retry => continue,
            }
        }
        if core::mem::take(&mut around) {
            // do_read_fault: map the cached neighbours (maybe this page
            // too) first, then look at the entry again.
            super::around::fault_around(locked, vma, inode, va);
            continue;
        }
        let dax = matches!(inode.kind(), InodeKind::Dax(_));
        let cached = if dax && !(write && shared) {
            // A DAX read (or private copy) allocates nothing: a hole reads
            // as the zero page.
            match inode.dax_page_or_hole(index).ok_or(FaultError::Sigbus("access beyond end of file"))? {
                Some(pfn) => pfn,
                None => phys.zero_pfn(),
            }
        } else {
            let hole = dax && inode.is_hole(index);
            let cached = inode
                .get_page_for_map(index)
                .map_err(|_| FaultError::Oom)?
                .ok_or(FaultError::Sigbus("access beyond end of file"))?;
            if hole {
                // dax_insert_entry replacing a zero-page entry: the zero
                // page goes from every mapping of the index.
                unmap_mapping_pages(inode, index, index + 1, false).map_err(|_| FaultError::Oom)?;
            }
            cached
        };
        let zero = phys.is_zero_pfn(cached);
        let new = if zero && !write {
            let flags = LeafFlags { special: true, accessed: true, ..LeafFlags::default() };
            Entry::present(cached, flags, false)
        } else if write && !shared {
            // A copy of the zero page (a DAX hole) is a zeroed page.
            let copy = phys.alloc_folio(0, zero).map_err(|_| {
                phys.put(cached);
                FaultError::Oom
            })?;
            if !zero {
                phys.copy_frames(copy, cached, 1);
                phys.put(cached);
            }
            phys.meta(copy)
                .set_flags(PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE);
            crate::rmap::folio_add_new_anon_rmap(mm, vma, copy, va);
            Entry::present(copy, LeafFlags { write: true, dirty: true, accessed: true, special: false }, false)
        } else {
            if write {
                phys.meta(cached).set_flags(PageFlags::DIRTY);
            }
            // Shared memory needs no write notification: a read maps the
            // page writable but clean, as the VMA's page protection is.
            let writable = write || vma.maps_page_cache_writable();
            Entry::present(cached, LeafFlags { write: writable, dirty: write, accessed: true, special: false }, false)
        };
        if new.is_special() {
            // The zero page holds no reference and no map count.
            if pte.compare_exchange(Entry::NONE, new).is_err() {
                continue;
            }
        } else {
            phys.map_add(new.pfn(), 1);
            if pte.compare_exchange(Entry::NONE, new).is_err() {
                phys.map_sub(new.pfn(), 1);
                phys.put(new.pfn());
                continue;
            }
        }
        if index < inode.size().div_ceil(PAGE_SIZE) {
            return Ok(());
        }
        // Truncated while we mapped: take our entry back unless the
        // truncation's own zap already did.
        let invalidation = mm.notifiers().start(mm.id(), va, va + PAGE_SIZE, Event::Clear);
        let mut gather = Gather::new();
        if pte.compare_exchange(new, Entry::NONE).is_ok() {
            release_entry(phys, new, &mut gather);
        }
        gather.free_after(phys, invalidation);
        return Err(FaultError::Sigbus("access beyond end of file"));
    }
}
