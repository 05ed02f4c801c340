//! Truncation and hole punching. Both first unmap the affected pages from
//! every process that maps the file (a CLEAR invalidation per VMA range,
//! with the exact addresses), then drop the page cache's pages; a frame
//! still mapped or referenced elsewhere lives on until its last reference.
//! A DAX file (ext4's) first breaks its layouts: the whole file is unmapped
//! from every process and every DAX entry dropped, whatever the range.
//!
//! Linux: `mm/truncate.c` (`truncate_pagecache`, `truncate_pagecache_range`),
//! `mm/memory.c` (`unmap_mapping_range`, `zap_page_range_single`).

use std::sync::Arc;

use hmm_pagetable::SwapKind;
use hmm_types::{Event, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::phys::PageFlags;
use crate::vma::VmaBacking;
use crate::zap::{zap_range_if, Gather};

use super::partial::split_partial_folios;
use super::{Inode, InodeKind};

/// Sets the size; a shrink unmaps and frees every page wholly past the new
/// end and zeroes the tail of the last partial page. A page-cache file
/// truncated to its own size too drops the pages `fallocate` put past its
/// end (`shmem_setattr`: `newsize <= oldsize`); it unmaps only when the old
/// size reached past the new end's page.
pub(crate) fn truncate(inode: &Arc<Inode>, size: u64) -> Result<(), MmError> {
    let old = {
        let mut state = inode.state.lock();
        core::mem::replace(&mut state.size, size)
    };
    let first_gone = size.div_ceil(PAGE_SIZE);
    if !is_dax(inode) {
        if size > old {
            return Ok(());
        }
        if old > first_gone << PAGE_SHIFT {
            unmap_mapping_pages(inode, first_gone, u64::MAX, true)?;
        }
        let (first, last) = split_partial_folios(inode, size, u64::MAX)?;
        drop_cached(inode, first, last);
        zero_cached(inode, size, first_gone << PAGE_SHIFT);
        return Ok(());
    }
    // ext4 breaks a DAX file's layouts on every size change, growing too.
    let (first, last) = if size < old { (first_gone, u64::MAX) } else { (0, 0) };
    if let Err(error) = remove_pages(inode, first, last, true) {
        // A busy DAX page: nothing was freed, so the file keeps its size.
        inode.state.lock().size = old;
        return Err(error);
    }
    zero_cached(inode, size, first_gone << PAGE_SHIFT);
    inode.state.lock().es_forget(first_gone, u64::MAX);
    Ok(())
}

/// Frees the whole pages inside `[offset, offset + len)` and zeroes the
/// partial pages at its edges; private copy-on-write copies survive, as
/// Linux's `even_cows = 0` keeps them.
pub(crate) fn punch_hole(inode: &Arc<Inode>, offset: u64, len: u64) -> Result<(), MmError> {
    // vfs_fallocate's order: a negative offset or a non-positive length
    // (as loff_t) is EINVAL, then an end past MAX_LFS_FILESIZE is EFBIG.
    const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;
    if offset > MAX_LFS_FILESIZE || len == 0 || len > MAX_LFS_FILESIZE {
        return Err(MmError::Invalid("hole with a negative offset or a non-positive length"));
    }
    let end = offset + len;
    if end > MAX_LFS_FILESIZE {
        return Err(MmError::FileTooBig("hole past the largest file offset"));
    }
    let end = end.min(inode.size());
    if offset >= end {
        // ext4_fallocate breaks a DAX file's layouts before it looks at
        // the range: even a hole past the end unmaps the file.
        return if is_dax(inode) { remove_pages(inode, 0, 0, false) } else { Ok(()) };
    }
    let (first, last) = (offset.div_ceil(PAGE_SIZE), end >> PAGE_SHIFT);
    if !is_dax(inode) {
        // shmem_fallocate: unmap the whole pages, then shmem_truncate_range
        // over the bytes, whose partial folios split even for a hole
        // inside one page.
        if first < last {
            unmap_mapping_pages(inode, first, last, false)?;
        }
        let (first, last) = split_partial_folios(inode, offset, end - 1)?;
        drop_cached(inode, first, last);
    } else {
        remove_pages(inode, first, last.max(first), false)?;
        inode.state.lock().es_punched(first, last.max(first));
    }
    zero_cached(inode, offset, (first << PAGE_SHIFT).min(end));
    zero_cached(inode, (last << PAGE_SHIFT).max(offset), end);
    Ok(())
}

/// Zaps file pages `[first, last)` from every mapping of `inode`
/// (`unmap_mapping_pages`). With `even_cows`, private copies go too.
pub(crate) fn unmap_mapping_pages(inode: &Inode, first: u64, last: u64, even_cows: bool) -> Result<(), MmError> {
    for mm in inode.mappers() {
        // Recursive: a fault of this very mm may hold the read lock while
        // it waits for a DAX block lock that this truncation holds.
        let guard = mm.mmap_read_recursive();
        if mm.has_exited() {
            continue;
        }
        let ranges: Vec<(u64, u64, Vec<_>)> = guard
            .iter()
            .filter(|vma| matches!(&vma.backing, VmaBacking::File(i) if core::ptr::eq(&**i, inode)))
            .filter_map(|vma| {
                let vma_last = vma.pgoff + ((vma.end - vma.start) >> PAGE_SHIFT);
                let (from, to) = (first.max(vma.pgoff), last.min(vma_last));
                (from < to).then(|| {
                    let start = vma.start + ((from - vma.pgoff) << PAGE_SHIFT);
                    let end = vma.start + ((to - vma.pgoff) << PAGE_SHIFT);
                    // A WP-registered range keeps its protection as uffd-wp
                    // markers (`zap_install_uffd_wp_if_needed`): truncation
                    // and hole punching are not munmap.
                    (start, end, crate::uffd::markers_to_keep(&mm, vma, start, end))
                })
            })
            .collect();
        let phys = mm.phys();
        for (start, end, markers) in ranges {
            let invalidation = mm.notifiers().start(mm.id(), start, end, Event::Clear);
            let mut gather = Gather::new();
            // Without `even_cows` only the file's own pages go
            // (`should_zap_folio`): a private copy stays, present or held
            // by a migration, device-private or device-exclusive entry,
            // and so do a swapped-out page of a file mapping (a private
            // copy too) and a poisoned one. Guard markers stay (truncation
            // is not munmap).
            let file_page = |pfn| !phys.meta(phys.folio_head(pfn)).flags().contains(PageFlags::ANON);
            zap_range_if(&mm, start, end, &mut gather, |entry| {
                if entry.is_guard_marker() {
                    return false;
                }
                even_cows
                    || match entry.swap_kind() {
                        _ if entry.is_present() => file_page(entry.pfn()),
                        Some(SwapKind::Swap | SwapKind::Hwpoison) => false,
                        Some(kind) if kind.has_pfn() => file_page(entry.pfn()),
                        _ => true,
                    }
            })?;
            crate::uffd::restore_markers(&mm, &markers);
            gather.free_after(phys, invalidation);
        }
    }
    Ok(())
}

/// Unmaps file pages `[first, last)` everywhere, then frees them: the page
/// cache drops its references. A DAX file is unmapped whole (its layouts
/// break) and waits for all its blocks to be idle first (failing with
/// `EBUSY` if a pin outlasts the timeout); `[first, last)` may be empty.
fn remove_pages(inode: &Arc<Inode>, first: u64, last: u64, even_cows: bool) -> Result<(), MmError> {
    match inode.kind() {
        InodeKind::PageCache => {
            unmap_mapping_pages(inode, first, last, even_cows)?;
            if first < last {
                let lend = last.checked_mul(PAGE_SIZE).map_or(u64::MAX, |end| end - 1);
                let (from, to) = split_partial_folios(inode, first << PAGE_SHIFT, lend)?;
                drop_cached(inode, from, to);
            }
            Ok(())
        }
        InodeKind::Dax(fs) => {
            // ext4_break_layouts: the whole file's layouts break first, not
            // just the range's (`dax_break_layout(inode, 0, LLONG_MAX)`):
            // every shared mapping of the file goes, private copies stay.
            // Lock the blocks first: a refault may not map them again while
            // the filesystem waits for them to become idle.
            let blocks = fs.lock_blocks(inode, 0, u64::MAX);
            let result = unmap_mapping_pages(inode, 0, u64::MAX, false)
                .and_then(|()| match first < last {
                    // Then truncate_pagecache(_range) unmaps the range as for
                    // any file (past the end private copies go too).
                    true => unmap_mapping_pages(inode, first, last, even_cows),
                    false => Ok(()),
                })
                .and_then(|()| fs.release_pages(inode, first, last));
            fs.unlock_blocks(inode, &blocks);
            result
        }
    }
}

fn is_dax(inode: &Inode) -> bool {
    matches!(inode.kind(), InodeKind::Dax(_))
}

/// Drops the page cache's reference on pages `[first, last)`.
fn drop_cached(inode: &Inode, first: u64, last: u64) {
    let removed: Vec<_> = {
        let mut state = inode.state.lock();
        let keys: Vec<u64> = state.pages.range(first..last).map(|(&k, _)| k).collect();
        keys.into_iter().filter_map(|k| state.pages.remove(&k)).collect()
    };
    for pfn in removed {
        inode.phys().put(pfn);
    }
}

/// Zeroes cached bytes `[from, to)` inside one page (no-op when empty).
pub(super) fn zero_cached(inode: &Inode, from: u64, to: u64) {
    if from >= to {
        return;
    }
    let state = inode.state.lock();
    if let Some(&pfn) = state.pages.get(&(from >> PAGE_SHIFT)) {
        inode.phys().write(pfn, from % PAGE_SIZE, &vec![0; (to - from) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, Event, MapFlags, Prot};

    use crate::testing::{kernel, record};
    use crate::ThpMode;

    #[test]
    fn truncate_unmaps_exact_ranges_in_every_process_then_frees() {
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("t").unwrap();
        file.ftruncate(8 * 4096).unwrap();
        let a = k.create_mm().unwrap();
        let b = k.create_mm().unwrap();
        let va_a = a.mmap_file(0, 8 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let va_b = b.mmap_file(0, 4 * 4096, Prot::READ, MapFlags::SHARED, &file, 4 * 4096).unwrap();
        for page in 0..8 {
            a.write_u64(va_a + page * 4096, page + 1).unwrap();
        }
        assert_eq!(b.read_u64(va_b + 3 * 4096).unwrap(), 8);
        let (rec_a, rec_b) = (record(&a), record(&b));
        let free_before = k.phys().free_frames();
        file.ftruncate(5 * 4096 + 100).unwrap();
        assert_eq!(rec_a.take_events(), [(Event::Clear, va_a + 6 * 4096, va_a + 8 * 4096)]);
        assert_eq!(rec_b.take_events(), [(Event::Clear, va_b + 2 * 4096, va_b + 4 * 4096)]);
        assert_eq!(k.phys().free_frames(), free_before + 2, "the two cut pages are free");
        assert_eq!(a.read_u64(va_a + 5 * 4096).unwrap(), 6, "the partial page stays");
        assert_eq!(a.read_u64(va_a + 5 * 4096 + 100).unwrap(), 0, "its tail reads zero");
        assert_eq!(a.read_u64(va_a + 6 * 4096).unwrap_err().errno(), Errno::Fault);
        assert_eq!(b.read_u64(va_b + 2 * 4096).unwrap_err().errno(), Errno::Fault);
    }

    #[test]
    fn punch_hole_checks_its_arguments_as_loff_t() {
        // Regression (found by the API fuzzer): an offset or length of 2^63
        // or more is a negative loff_t, EINVAL on Linux; it punched nothing
        // and returned success. Values checked against Linux 6.18 on tmpfs.
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("p").unwrap();
        file.ftruncate(64 * 4096).unwrap();
        let max = i64::MAX as u64;
        for (offset, len, errno) in [
            (4096, 1 << 63, Errno::Inval),
            (1 << 63, 4096, Errno::Inval),
            (4096, 0, Errno::Inval),
            (1 << 62, 1 << 62, Errno::FBig),
            (4096, max, Errno::FBig),
        ] {
            assert_eq!(file.punch_hole(offset, len).unwrap_err().errno(), errno, "{offset:#x} + {len:#x}");
        }
        file.punch_hole(0, max).unwrap();
        assert_eq!(file.size(), 64 * 4096);
    }

    #[test]
    fn punch_hole_keeps_the_size_and_private_copies() {
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("p").unwrap();
        file.pwrite(0, &[1u8; 4 * 4096]).unwrap();
        let mm = k.create_mm().unwrap();
        let shared = mm.mmap_file(0, 4 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let private = mm.mmap_file(0, 4 * 4096, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
        mm.write_u64(private + 4096, 0xc0ffee).unwrap();
        mm.read_u64(shared + 4096).unwrap();
        let rec = record(&mm);
        file.punch_hole(4096 - 8, 4096 + 16).unwrap();
        let events = rec.take_events();
        assert!(events.contains(&(Event::Clear, shared + 4096, shared + 2 * 4096)), "{events:?}");
        assert_eq!(file.size(), 4 * 4096);
        assert_eq!(mm.read_u64(shared + 4096).unwrap(), 0, "the hole reads zero");
        assert_eq!(mm.read_u64(shared + 4096 - 8).unwrap(), 0, "partial head zeroed");
        assert_eq!(mm.read_u64(shared + 2 * 4096).unwrap(), 0, "partial tail zeroed");
        assert_eq!(mm.read_u64(shared + 2 * 4096 + 8).unwrap(), 0x0101_0101_0101_0101);
        assert_eq!(mm.read_u64(private + 4096).unwrap(), 0xc0ffee, "private COW copies survive a punch");
        assert_eq!(file.punch_hole(0, 0).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn truncate_to_zero_then_grow_reads_zeros() {
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("z").unwrap();
        file.pwrite(0, b"old data").unwrap();
        file.ftruncate(0).unwrap();
        file.ftruncate(4096).unwrap();
        let mut buf = [1u8; 8];
        file.pread(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn truncate_racing_cpu_access_is_clean() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        use crate::{FaultError, MmError};

        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("race").unwrap();
        file.ftruncate(16 * 4096).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_file(0, 16 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accessor = {
            let (mm, stop, ops) = (mm.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut sigbus = 0u32;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let page = i % 16;
                    i += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                    match mm.write_u64(va + page * 4096, 0xa5a5_0000 + page) {
                        Ok(()) => {}
                        Err(MmError::Fault { error: FaultError::Sigbus(_), .. }) => sigbus += 1,
                        Err(other) => panic!("unexpected error {other:?}"),
                    }
                    match mm.read_u64(va + page * 4096) {
                        Ok(v) => assert!(v == 0 || v == 0xa5a5_0000 + page, "garbage {v:#x} in page {page}"),
                        Err(MmError::Fault { error: FaultError::Sigbus(_), .. }) => sigbus += 1,
                        Err(other) => panic!("unexpected error {other:?}"),
                    }
                }
                sigbus
            })
        };
        let mut round = 0u64;
        while round < 300 || ops.load(Ordering::Relaxed) < 5000 {
            file.ftruncate((round % 16) * 4096).unwrap();
            std::thread::yield_now();
            file.ftruncate(16 * 4096).unwrap();
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let sigbus = accessor.join().unwrap();
        assert!(sigbus > 0, "the accessor should sometimes land past the end");
        mm.munmap(va, 16 * 4096).unwrap();
        drop(file);
    }
}
