//! `fallocate(FALLOC_FL_KEEP_SIZE)` on a page-cache file, and the
//! `PG_uptodate` rules it brings to the page cache.
//!
//! shmem allocates a page for every index of the range that has none and
//! leaves it *not uptodate* (its contents count as a hole: a `pread` reads
//! zeros without touching it), marked dirty so reclaim keeps it. A page
//! becomes uptodate when something gives it contents: a fault of any kind
//! on it (`shmem_fault` clears it), a `pwrite` (`shmem_write_end`), or a
//! second `fallocate` over it (`SGP_FALLOC` on a fallocated folio clears it
//! "lest undo on failure cancel our earlier guarantee"). Fault-around maps
//! only uptodate pages (`filemap_map_pages`), so a fallocated page stays
//! unmapped until its own fault. The pages may lie past the end of the
//! file; a truncation to the same or a smaller size drops them.
//!
//! On failure the pages this call allocated that are still not uptodate
//! go again (`shmem_undo_range` with `unfalloc`).
//!
//! DAX files keep no page cache: their `fallocate` is not modelled here.
//!
//! Linux: `shmem_fallocate`, `shmem_get_folio_gfp` (`SGP_FALLOC`,
//! `SGP_READ`, `SGP_CACHE`, `SGP_WRITE`), `shmem_write_end`,
//! `next_uptodate_folio`.

use core::sync::atomic::Ordering;

use hmm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::phys::PageFlags;

use super::{Inode, InodeKind};

impl Inode {
    /// Allocates the pages of bytes `[offset, offset + len)` without
    /// changing the size (the caller checked the arguments).
    pub(crate) fn fallocate_keep_size(&self, offset: u64, len: u64) -> Result<(), MmError> {
        let (first, last) = (offset >> PAGE_SHIFT, (offset + len).div_ceil(PAGE_SIZE));
        if let InodeKind::Dax(fs) = self.kind() {
            return fs.fallocate_unwritten(self, first, last);
        }
        let phys = self.phys();
        let mut state = self.state.lock();
        let mut allocated: Vec<(u64, Pfn)> = Vec::new();
        for index in first..last {
            if let Some(&pfn) = state.pages.get(&index) {
                // Its contents are zeros already: nothing in the model
                // writes to a page that is not uptodate.
                phys.meta(pfn).set_flags(PageFlags::UPTODATE | PageFlags::DIRTY);
                continue;
            }
            let pfn = match phys.alloc_folio(0, true) {
                Ok(pfn) => pfn,
                Err(error) => {
                    for (index, pfn) in allocated {
                        state.pages.remove(&index);
                        phys.put(pfn);
                    }
                    return Err(error.into());
                }
            };
            let meta = phys.meta(pfn);
            meta.set_flags(PageFlags::SHMEM | PageFlags::SWAPBACKED | PageFlags::DIRTY);
            meta.index.store(index, Ordering::Relaxed);
            meta.mapping.store(self.id(), Ordering::Relaxed);
            state.pages.insert(index, pfn);
            allocated.push((index, pfn));
        }
        Ok(())
    }

    /// A page gets contents (a fault or a write on it): it is uptodate from
    /// now on, and fault-around may map it.
    pub(crate) fn mark_uptodate(&self, pfn: Pfn) {
        if matches!(self.kind(), InodeKind::PageCache) {
            self.phys().meta(pfn).set_flags(PageFlags::UPTODATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot, PAGE_SIZE};

    use crate::fs::File;
    use crate::phys::PageFlags;
    use crate::testing::{kernel, leaf};
    use crate::{Kernel, Mm, ThpMode};

    const BASE: u64 = 0x4000_0000;
    const SHARED: MapFlags = MapFlags::SHARED.union(MapFlags::FIXED);

    fn page(n: u64) -> u64 {
        BASE + n * PAGE_SIZE
    }

    fn present(mm: &Mm, from: u64, to: u64) -> Vec<u64> {
        (from..to).filter(|&n| leaf(mm, page(n)).1.is_present()).collect()
    }

    fn file(k: &Kernel, pages: u64) -> File {
        let file = k.tmpfs().create("falloc").unwrap();
        file.ftruncate(pages * PAGE_SIZE).unwrap();
        file
    }

    fn uptodate(file: &File, index: u64) -> bool {
        let pfn = file.inode().state.lock().pages[&index];
        file.inode().phys().meta(pfn).flags().contains(PageFlags::UPTODATE)
    }

    #[test]
    fn fallocated_pages_are_cached_dirty_and_not_uptodate_until_allocated_again() {
        let k = kernel(64, ThpMode::Never);
        let file = file(&k, 16);
        file.fallocate_keep_size(PAGE_SIZE + 1, 2 * PAGE_SIZE).unwrap();
        assert_eq!(file.inode().nr_cached_pages(), 3, "pages 1 to 3: the partial ones too");
        assert!((1..4).all(|n| !uptodate(&file, n) && file.inode().is_page_dirty(n)));
        file.fallocate_keep_size(2 * PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!((1..4).map(|n| uptodate(&file, n)).collect::<Vec<_>>(), [false, true, false]);
        assert_eq!(file.size(), 16 * PAGE_SIZE);
    }

    #[test]
    fn fault_around_skips_fallocated_pages_until_a_fault_or_write_fills_them() {
        // As Linux 6.18 on the host: scenarios/corpus/fallocate_uptodate.hmm.
        let k = kernel(64, ThpMode::Never);
        let file = file(&k, 64);
        file.fallocate_keep_size(0, 9 * PAGE_SIZE).unwrap();
        file.fallocate_keep_size(0, 2 * PAGE_SIZE).unwrap();
        let mut buf = [0; 8];
        file.pread(7 * PAGE_SIZE, &mut buf).unwrap();
        file.pwrite(8 * PAGE_SIZE, &5u64.to_le_bytes()).unwrap();
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 32 * PAGE_SIZE, Prot::RW, SHARED, &file, 0).unwrap();
        mm.read_u64(page(3)).unwrap();
        mm.write_u64(page(5), 1).unwrap();
        assert_eq!(present(&mm, 0, 16), [0, 1, 3, 5, 8], "pread left page 7 as it was");
        mm.munmap(BASE, 32 * PAGE_SIZE).unwrap();
        mm.mmap_file(BASE, 32 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        mm.read_u64(page(10)).unwrap();
        assert_eq!(present(&mm, 0, 16), [0, 1, 3, 5, 8, 10]);
    }

    #[test]
    fn pages_past_the_end_wait_for_a_grow_and_go_with_a_truncation_to_the_same_size() {
        let k = kernel(64, ThpMode::Never);
        let file = file(&k, 8);
        file.fallocate_keep_size(0, 20 * PAGE_SIZE).unwrap();
        file.fallocate_keep_size(0, 20 * PAGE_SIZE).unwrap();
        assert_eq!(file.inode().nr_cached_pages(), 20);
        file.ftruncate(8 * PAGE_SIZE).unwrap();
        assert_eq!(file.inode().nr_cached_pages(), 8, "shmem_setattr: newsize <= oldsize truncates");
        file.fallocate_keep_size(8 * PAGE_SIZE, 4 * PAGE_SIZE).unwrap();
        file.fallocate_keep_size(8 * PAGE_SIZE, 4 * PAGE_SIZE).unwrap();
        file.ftruncate(32 * PAGE_SIZE).unwrap();
        let mm = k.create_mm().unwrap();
        mm.mmap_file(BASE, 32 * PAGE_SIZE, Prot::READ, SHARED, &file, 0).unwrap();
        mm.read_u64(page(1)).unwrap();
        assert_eq!(present(&mm, 0, 32), (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_fallocate_frees_what_it_allocated_and_keeps_older_pages() {
        let k = kernel(4, ThpMode::Never);
        let file = file(&k, 8);
        file.fallocate_keep_size(0, 2 * PAGE_SIZE).unwrap();
        let free = k.phys().free_frames();
        let err = file.fallocate_keep_size(0, 8 << 20).unwrap_err();
        assert_eq!(err.errno(), hmm_types::Errno::NoMem);
        assert_eq!(k.phys().free_frames(), free);
        assert_eq!(file.inode().nr_cached_pages(), 2);
        assert!(uptodate(&file, 0) && uptodate(&file, 1), "allocated again before the failure");
    }
}
