//! Punching a hole in a shared hugetlbfs object (MADV_REMOVE): the huge
//! pages wholly inside the hole leave every mapping and the object, the
//! parts of huge pages at its edges are zeroed in place (they stay
//! mapped). A private mapping's pages are its own and are not touched.
//!
//! Linux: `hugetlbfs_punch_hole` (`fs/hugetlbfs/inode.c`:
//! `hugetlb_vmdelete_list`, `remove_inode_hugepages`,
//! `hugetlbfs_zero_partial_page`).

use std::sync::Arc;

use hmm_types::{Event, PAGE_SHIFT};

use crate::error::MmError;
use crate::hugetlb::HugetlbFile;
use crate::kernel::Kernel;
use crate::vma::VmaBacking;
use crate::zap::{zap_range_if, Gather};

/// Punches `[offset, offset + len)` (bytes) of `object`.
pub(crate) fn punch(kernel: &Kernel, object: &Arc<HugetlbFile>, offset: u64, len: u64) -> Result<(), MmError> {
    let huge = object.page_size().bytes();
    let end = offset.saturating_add(len);
    let (hole_start, hole_end) = (offset.next_multiple_of(huge), end / huge * huge);
    // The partial huge pages at the edges: zeroed, still mapped.
    for (from, to) in [(offset, end.min(hole_start)), (hole_end.max(offset), end)] {
        if from < to && (from < hole_start || to > hole_end) {
            if let Some(pfn) = object.cached_page(from / huge) {
                let phys = object.phys();
                phys.write(pfn, from % huge, &vec![0; (to - from) as usize]);
                phys.put(pfn);
            }
        }
    }
    if hole_start >= hole_end {
        return Ok(());
    }
    let (first, last) = (hole_start >> PAGE_SHIFT, hole_end >> PAGE_SHIFT);
    for mm in kernel.live_mms() {
        // The caller holds no mmap lock (madvise dropped it).
        let guard = mm.mmap_read_recursive();
        if mm.has_exited() {
            continue;
        }
        let ranges: Vec<(u64, u64)> = guard
            .iter()
            .filter(|vma| matches!(&vma.backing, VmaBacking::Hugetlb(o) if Arc::ptr_eq(o, object)))
            .filter_map(|vma| {
                let vma_last = vma.pgoff + ((vma.end - vma.start) >> PAGE_SHIFT);
                let (from, to) = (first.max(vma.pgoff), last.min(vma_last));
                (from < to).then(|| {
                    (vma.start + ((from - vma.pgoff) << PAGE_SHIFT), vma.start + ((to - vma.pgoff) << PAGE_SHIFT))
                })
            })
            .collect();
        for (start, end) in ranges {
            let invalidation = mm.notifiers().start(mm.id(), start, end, Event::Clear);
            let mut gather = Gather::new();
            zap_range_if(&mm, start, end, &mut gather, |entry| !entry.is_guard_marker())?;
            gather.free_after(mm.phys(), invalidation);
        }
    }
    object.remove_pages(hole_start / huge, hole_end / huge);
    Ok(())
}
