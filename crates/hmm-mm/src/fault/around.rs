//! Fault-around: a read fault on a page-cache mapping also maps the
//! neighbouring pages that are already cached, so a sequential reader takes
//! one fault per 16 pages instead of one per page.
//!
//! The window is `FAULT_AROUND_PAGES` entries of one page table: it starts
//! at the faulting entry's index rounded down to 16, or at the VMA's first
//! entry if that is later, and spans 16 entries from there, cut at the VMA's
//! end, at the page table's end and at the end of the file. Only uptodate
//! pages already in the page cache are mapped (nothing is allocated; pages
//! `fallocate` left not uptodate wait for their own fault, `fs/falloc.rs`), only
//! where the entry is none, and a page someone holds locked is skipped. The
//! entries are read-only, as a read fault's, so a private mapping's later
//! write still copies. New entries replace none entries: no invalidation.
//! Write faults, anonymous memory and DAX files do not fault around.
//!
//! Linux: `do_fault_around`, `should_fault_around`, `fault_around_bytes`
//! (64 KiB by default), `filemap_map_pages`.

use hmm_pagetable::{Entry, LeafFlags, Level};
use hmm_types::{PAGE_SHIFT, PAGE_SIZE, PMD_SIZE};

use crate::fs::Inode;
use crate::mm::MmapLocked;
use crate::phys::PageFlags;
use crate::vma::Vma;

/// `fault_around_bytes / PAGE_SIZE`.
pub(crate) const FAULT_AROUND_PAGES: u64 = 16;
/// Entries of one page table.
const PTRS_PER_PTE: u64 = PMD_SIZE / PAGE_SIZE;

/// The addresses `[start, end)` a read fault at `va` in `vma` maps around.
pub(super) fn window(vma: &Vma, va: u64) -> (u64, u64) {
    let pte_off = (va >> PAGE_SHIFT) % PTRS_PER_PTE;
    let vma_off = (va - vma.start) >> PAGE_SHIFT;
    let vma_pages = (vma.end - vma.start) >> PAGE_SHIFT;
    let from = (pte_off - pte_off % FAULT_AROUND_PAGES).max(pte_off - pte_off.min(vma_off));
    let to = (from + FAULT_AROUND_PAGES).min(PTRS_PER_PTE).min(pte_off + vma_pages - vma_off);
    let table = va & !(PMD_SIZE - 1);
    (table + (from << PAGE_SHIFT), table + (to << PAGE_SHIFT))
}

/// Maps the cached pages around `va` into none entries (the faulting page
/// too, if cached); the caller's fault then finds its entry present.
pub(super) fn fault_around(locked: MmapLocked<'_>, vma: &Vma, inode: &Inode, va: u64) {
    let mm = locked.mm();
    let phys = mm.phys();
    let (start, end) = window(vma, va);
    for addr in (start..end).step_by(PAGE_SIZE as usize) {
        // The caller's fault reports a missing table or a huge entry.
        let Ok(pte) = mm.pgtable().ensure(addr, Level::Pte) else { return };
        if !pte.load().is_none() {
            continue;
        }
        let index = vma.page_index(addr);
        // Under the inode lock a truncation cannot cut the page between the
        // size check and the mapping: it sets the size first and unmaps
        // after, so it either is seen here or zaps what was mapped.
        let state = inode.state.lock();
        if index >= state.size.div_ceil(PAGE_SIZE) {
            return;
        }
        // A block being collapsed (MADV_COLLAPSE of shmem) holds its pages
        // locked.
        if state.dax_locked.contains(&(index / PTRS_PER_PTE)) {
            continue;
        }
        let Some(&pfn) = state.pages.get(&index) else { continue };
        // The folio's flags and lock are its head's (a shmem THP's tail).
        let meta = phys.meta(phys.folio_head(pfn));
        if !meta.flags().contains(PageFlags::UPTODATE) || !meta.try_lock() {
            continue;
        }
        phys.get(pfn);
        phys.map_add(pfn, 1);
        // The VMA's page protection, as `set_pte_range` builds it.
        let write = vma.maps_page_cache_writable();
        let entry = Entry::present(pfn, LeafFlags { write, dirty: false, accessed: true, special: false }, false);
        if pte.compare_exchange(Entry::NONE, entry).is_err() {
            // A racing fault mapped it first.
            phys.map_sub(pfn, 1);
            phys.put(pfn);
        }
        meta.unlock();
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

    use super::window;
    use crate::fs::File;
    use crate::testing::{kernel, leaf};
    use crate::{Kernel, Mm, ThpMode};

    /// A page-table-aligned address: entry index = page number from here.
    const BASE: u64 = 0x4000_0000;
    const SHARED: MapFlags = MapFlags::SHARED.union(MapFlags::FIXED);
    const PRIVATE: MapFlags = MapFlags::PRIVATE.union(MapFlags::FIXED);

    fn page(n: u64) -> u64 {
        BASE + n * PAGE_SIZE
    }

    /// The pages of `[page(from), page(to))` mapped now.
    fn present(mm: &Mm, from: u64, to: u64) -> Vec<u64> {
        (from..to).filter(|&n| leaf(mm, page(n)).1.is_present()).collect()
    }

    /// A file of `pages` pages, each written with pwrite (so cached) except
    /// `holes`.
    fn cached_file(k: &Kernel, pages: u64, holes: &[u64]) -> File {
        let file = k.tmpfs().create("around").unwrap();
        file.ftruncate(pages * PAGE_SIZE).unwrap();
        for n in (0..pages).filter(|n| !holes.contains(n)) {
            file.pwrite(n * PAGE_SIZE, &(n + 1).to_le_bytes()).unwrap();
        }
        file
    }

    fn window_of(mm: &Mm, fault: u64) -> (u64, u64) {
        let guard = mm.mmap_read();
        let (start, end) = window(guard.lookup(fault).unwrap(), fault);
        (start, end)
    }

    #[test]
    fn window_is_16_aligned_entries_clipped_to_the_vma_and_the_table() {
        // As observed on Linux 6.18 (memfd, /proc/self/pagemap).
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[]);
        let mm = k.create_mm().unwrap();
        mm.mmap_file(page(5), 40 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        // Entry 7 rounds down to 0, is raised to the VMA's start (5), and
        // the window spans 16 entries from there, not to entry 16.
        assert_eq!(window_of(&mm, page(7)), (page(5), page(21)));
        assert_eq!(window_of(&mm, page(25)), (page(16), page(32)));
        assert_eq!(window_of(&mm, page(44)), (page(32), page(45)), "cut at the VMA's end");
        // A VMA across a page-table boundary: the window stops at the table.
        let near_end = BASE + PMD_SIZE - 8 * PAGE_SIZE;
        mm.mmap_file(near_end, 32 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        assert_eq!(window_of(&mm, near_end + 6 * PAGE_SIZE), (near_end, BASE + PMD_SIZE));
    }

    #[test]
    fn read_fault_maps_the_cached_pages_of_the_window_only() {
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[37]);
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 64 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        assert_eq!(mm.read_u64(page(40)).unwrap(), 41);
        let expected: Vec<u64> = (32..48).filter(|&n| n != 37).collect();
        assert_eq!(present(&mm, 0, 64), expected, "the hole is not allocated");
        assert_eq!(file.inode().nr_cached_pages(), 63);
        // Each mapped page: one mapping, one reference for it beside the
        // page cache's.
        let cache = k.phys();
        for n in &expected {
            let meta = cache.meta(leaf(&mm, page(*n)).1.pfn());
            assert_eq!((meta.mapcount(), meta.refcount()), (1, 2), "page {n}");
        }
        mm.munmap(BASE, 64 * PAGE_SIZE).unwrap();
        let pfn = file.inode().state.lock().pages[&40];
        assert_eq!((cache.meta(pfn).mapcount(), cache.meta(pfn).refcount()), (0, 1));
    }

    #[test]
    fn faulting_a_hole_maps_its_cached_neighbours_and_allocates_it() {
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[37]);
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 64 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        assert_eq!(mm.read_u64(page(37)).unwrap(), 0);
        assert_eq!(present(&mm, 0, 64), (32..48).collect::<Vec<_>>());
    }

    #[test]
    fn window_stops_at_the_end_of_the_file() {
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[]);
        file.ftruncate(42 * PAGE_SIZE).unwrap();
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 64 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        mm.read_u64(page(40)).unwrap();
        assert_eq!(present(&mm, 0, 64), (32..42).collect::<Vec<_>>());
    }

    #[test]
    fn write_faults_and_anonymous_memory_do_not_fault_around() {
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[]);
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 64 * PAGE_SIZE, Prot::RW, SHARED, &file, 0).unwrap();
        mm.write_u64(page(40), 7).unwrap();
        assert_eq!(present(&mm, 0, 64), [40]);
        mm.munmap(BASE, 64 * PAGE_SIZE).unwrap();
        mm.mmap(BASE, 64 * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED).unwrap();
        for n in 32..48 {
            mm.write_u64(page(n), n).unwrap();
        }
        mm.munmap(page(32), 16 * PAGE_SIZE).unwrap();
        mm.mmap(page(32), 16 * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED).unwrap();
        mm.read_u64(page(40)).unwrap();
        assert_eq!(present(&mm, 32, 48), [40]);
    }

    #[test]
    fn private_mapping_maps_the_cache_read_only_so_a_write_copies() {
        let k = kernel(64, ThpMode::Never);
        let file = cached_file(&k, 64, &[]);
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 64 * PAGE_SIZE, Prot::RW, PRIVATE, &file, 0).unwrap();
        mm.read_u64(page(33)).unwrap();
        assert_eq!(present(&mm, 0, 64), (32..48).collect::<Vec<_>>());
        let cached = file.inode().state.lock().pages[&34];
        let (_, entry) = leaf(&mm, page(34));
        assert_eq!((entry.pfn(), entry.is_write()), (cached, false));
        mm.write_u64(page(34), 99).unwrap();
        let (_, entry) = leaf(&mm, page(34));
        assert!(entry.pfn() != cached && entry.is_write(), "the write copied the page");
        assert_eq!(k.phys().meta(cached).mapcount(), 0);
        let mut buf = [0; 8];
        file.pread(34 * PAGE_SIZE, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 35, "the file keeps its data");
    }
}
