//! The large page-cache folios (shmem THPs and the smaller folios their
//! splits leave) that a truncation or a hole only partly covers: they are
//! split at the range's edges, the way Linux 6.15+ does it (`folio_split`,
//! non-uniform: halves around the cut page), after being unmapped from
//! every process; one that cannot split (pinned) stays whole and mapped,
//! its part of the range zeroed.
//!
//! Linux: `mm/shmem.c` (`shmem_undo_range`), `mm/truncate.c`
//! (`truncate_inode_partial_folio`, `folio_split_or_unmap`),
//! `mm/huge_memory.c` (`__folio_split`, `unmap_folio`).

use hmm_types::{PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;

use super::truncate::{unmap_mapping_pages, zero_cached};
use super::Inode;

/// The large folios at the edges of the bytes `[lstart, lend]` (inclusive)
/// that reach past them are split there first (`shmem_undo_range`,
/// `truncate_inode_partial_folio`); returns the pages `[first, last)` left
/// to drop. A folio that cannot split stays cached whole, with the range
/// zeroed, and its pages are not dropped (shmem's folios are dirty).
pub(super) fn split_partial_folios(inode: &Inode, lstart: u64, lend: u64) -> Result<(u64, u64), MmError> {
    let mut first = lstart.div_ceil(PAGE_SIZE);
    let mut last = if lend == u64::MAX { u64::MAX } else { (lend + 1) >> PAGE_SHIFT };
    let mut same_folio = lstart >> PAGE_SHIFT == lend >> PAGE_SHIFT;
    if let Some((index, nr)) = large_folio_at(inode, lstart >> PAGE_SHIFT) {
        same_folio = lend >> PAGE_SHIFT < index + nr;
        if !truncate_partial_folio(inode, index, nr, lstart, lend)? {
            first = index + nr;
            if same_folio {
                last = index;
            }
        }
    }
    if !same_folio {
        if let Some((index, nr)) = large_folio_at(inode, lend >> PAGE_SHIFT) {
            if !truncate_partial_folio(inode, index, nr, lstart, lend)? {
                last = index;
            }
        }
    }
    Ok((first, last))
}

/// The file index and page count of the large folio caching page `index`.
fn large_folio_at(inode: &Inode, index: u64) -> Option<(u64, u64)> {
    let phys = inode.phys();
    let &pfn = inode.state.lock().pages.get(&index)?;
    let head = phys.folio_head(pfn);
    let order = phys.folio_order(head);
    (order > 0).then(|| (index - (pfn.0 - head.0), 1 << order))
}

/// One large folio (file pages `[index, index + nr)`) partly inside the
/// bytes `[lstart, lend]`: zeroes its part of the range and splits it at
/// the range's first page, then the folio holding the first page past the
/// range at that page, so every folio is inside or outside. False when
/// the first split failed: the folio stays whole.
fn truncate_partial_folio(inode: &Inode, index: u64, nr: u64, lstart: u64, lend: u64) -> Result<bool, MmError> {
    let (pos, size) = (index << PAGE_SHIFT, nr << PAGE_SHIFT);
    let offset = lstart.saturating_sub(pos);
    let length = if pos + size - 1 <= lend { size - offset } else { lend + 1 - pos - offset };
    if length == size {
        return Ok(true);
    }
    for page in (pos + offset) >> PAGE_SHIFT..(pos + offset + length).div_ceil(PAGE_SIZE) {
        let from = (page << PAGE_SHIFT).max(pos + offset);
        zero_cached(inode, from, ((page + 1) << PAGE_SHIFT).min(pos + offset + length));
    }
    if !split_cache_folio(inode, index, nr, index + (offset >> PAGE_SHIFT))? {
        return Ok(false);
    }
    if offset + length < size {
        let end = (pos + offset + length) >> PAGE_SHIFT;
        if let Some((index, nr)) = large_folio_at(inode, end) {
            split_cache_folio(inode, index, nr, end)?;
        }
    }
    Ok(true)
}

/// Splits the cache folio of file pages `[index, index + nr)` around page
/// `at` (`folio_split`). Only a folio held by nothing but the cache and
/// its mappings splits (`can_split_folio`, before anything is unmapped);
/// it is unmapped from every process first (`unmap_folio`: a file folio is
/// not remapped after the split, its pages refault), one CLEAR per VMA
/// over the folio's pages there.
fn split_cache_folio(inode: &Inode, index: u64, nr: u64, at: u64) -> Result<bool, MmError> {
    let phys = inode.phys();
    let Some(&at_pfn) = inode.state.lock().pages.get(&at) else { return Ok(false) };
    let head = phys.folio_head(at_pfn);
    let (refs, maps) = phys.folio_counts(head);
    if phys.maybe_pinned(head) || i64::from(refs) != nr as i64 + i64::from(maps) {
        return Ok(false);
    }
    unmap_mapping_pages(inode, index, index + nr, false)?;
    let _state = inode.state.lock();
    Ok(phys.folio_head(at_pfn) == head && phys.split_cache_folio_at(head, at_pfn))
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::{Kernel, Mm, ThpMode};

    const SHARED_FIXED: MapFlags = MapFlags::SHARED.union(MapFlags::FIXED);

    /// A collapsed 2 MiB memfd THP mapped by a PMD in `a`, and by PTEs in
    /// `b` (a mapping one page off a 2 MiB boundary), pages 0 and 0x100
    /// read there. Pages 0, 0x100 and 0x1ff hold 1, 2, 3.
    fn thp_in_two(k: &std::sync::Arc<Kernel>) -> (std::sync::Arc<Mm>, std::sync::Arc<Mm>, crate::fs::File, u64, u64) {
        let file = k.tmpfs().create("thp").unwrap();
        file.ftruncate(PMD_SIZE).unwrap();
        let (a, b) = (k.create_mm().unwrap(), k.create_mm().unwrap());
        let p = a.mmap_file(0x4000_0000, PMD_SIZE, Prot::RW, SHARED_FIXED, &file, 0).unwrap();
        for (page, value) in [(0, 1), (0x100, 2), (0x1ff, 3)] {
            a.write_u64(p + page * 4096, value).unwrap();
        }
        a.madvise(p, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
        assert_eq!(leaf(&a, p).0, Level::Pmd);
        let q = b.mmap_file(0x5000_1000, PMD_SIZE, Prot::RW, SHARED_FIXED, &file, 0).unwrap();
        assert_eq!((b.read_u64(q).unwrap(), b.read_u64(q + 0x100000).unwrap()), (1, 2));
        (a, b, file, p, q)
    }

    #[test]
    fn a_hole_splits_the_thp_around_its_edge_and_unmaps_it_everywhere() {
        // Linux 6.18 (scenarios/corpus/shmem_thp_punch_split_pte_mapped.hmm).
        let k = kernel(64, ThpMode::Never);
        let (a, b, file, p, q) = thp_in_two(&k);
        let head = leaf(&a, p).1.pfn();
        file.punch_hole(0x1ff000, 0x1000).unwrap();
        assert!(leaf(&a, p).1.is_none() && leaf(&b, q).1.is_none() && leaf(&b, q + 0x100000).1.is_none());
        assert_eq!(k.phys().folio_order(head), 8, "pages 0-0xff stay one folio");
        assert_eq!(k.phys().folio_order(head.add(0x100)), 7);
        assert_eq!(k.phys().folio_order(head.add(0x1fe)), 0);
        assert_eq!(file.inode().nr_cached_pages(), 511);
        assert_eq!((b.read_u64(q).unwrap(), b.read_u64(q + 0x100000).unwrap()), (1, 2));
        // A second hole inside the first 256 pages splits only their folio:
        // page 0 is unmapped, page 0x100 (another folio) stays.
        let rec = record(&b);
        file.punch_hole(0x10000, 0x10000).unwrap();
        let events = rec.take_events();
        assert_eq!(events[0], (Event::Clear, q + 0x10000, q + 0x20000), "the hole first");
        assert!(events.contains(&(Event::Clear, q, q + 0x100000)), "then the split folio: {events:x?}");
        assert!(leaf(&b, q).1.is_none());
        assert!(leaf(&b, q + 0x100000).1.is_present());
        assert_eq!(k.phys().folio_order(head), 4, "pages 0-0xf");
        assert_eq!(b.read_u64(q).unwrap(), 1);
    }

    #[test]
    fn a_pinned_thp_stays_whole_and_mapped_with_the_cut_zeroed() {
        // Linux 7.3.4 (scenarios/device/shmem_thp_truncate_pinned.hmm):
        // `can_split_folio` fails before anything is unmapped, and shmem
        // keeps the dirty folio whole in the cache (`folio_split_or_unmap`).
        let k = kernel(64, ThpMode::Never);
        let (a, b, file, p, q) = thp_in_two(&k);
        let head = leaf(&a, p).1.pfn();
        let pins = a.pin_user_pages(p + 3 * 4096, 1, crate::gup::FollFlags::WRITE).unwrap();
        file.ftruncate(0x180000).unwrap();
        assert!(leaf(&a, p).1.is_none(), "the PMD reached past the end: zapped");
        assert!(leaf(&b, q).1.is_present() && leaf(&b, q + 0x100000).1.is_present(), "b's pages stay");
        assert_eq!(k.phys().folio_order(head), 9);
        assert_eq!(file.inode().nr_cached_pages(), 512, "the folio stays cached whole");
        assert_eq!(b.read_u64(q + 0x1ff000).unwrap_err().errno(), Errno::Fault);
        pins.unpin();
        file.ftruncate(PMD_SIZE).unwrap();
        assert_eq!(b.read_u64(q + 0x1ff000).unwrap(), 0, "the cut part was zeroed");
        assert_eq!(k.phys().folio_head(leaf(&b, q + 0x1ff000).1.pfn()), head);
    }
}
