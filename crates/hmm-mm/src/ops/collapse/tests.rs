//! MADV_COLLAPSE of anonymous memory and of shmem, as Linux decides it.

use hmm_pagetable::Level;
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

use crate::testing::{kernel, leaf, record};
use crate::ThpMode;

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

#[test]
fn collapse_builds_a_thp_with_the_same_data() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    for i in (0..512).step_by(3) {
        mm.write_u64(va + i * 4096, i).unwrap();
    }
    assert_eq!(leaf(&mm, va).0, Level::Pte);
    let baseline_tables = k.phys().page_table_frames();
    let rec = record(&mm);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    assert_eq!(k.phys().page_table_frames(), baseline_tables - 1, "the PTE table is freed");
    for i in 0..512 {
        assert_eq!(mm.read_u64(va + i * 4096).unwrap(), if i % 3 == 0 { i } else { 0 });
    }
}

#[test]
fn collapse_is_einval_on_a_vma_without_a_whole_aligned_block() {
    // Regressions (scenarios/found), Linux 6.18: a 2 MiB VMA starting
    // 80 KiB past a 2 MiB boundary holds no aligned block, so even a
    // 4 KiB collapse inside it is EINVAL (not a no-op); a small VMA
    // after a hole is EINVAL too, the per-VMA error winning over the
    // hole's ENOMEM.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let w = 0x4000_0000;
    mm.mmap(w + 0x14000, PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    let err = mm.madvise(w + 0x1f8000, 4096, MadviseAdvice::Collapse).unwrap_err();
    assert_eq!(err.errno(), Errno::Inval);
    let v = 0x8000_0000;
    mm.mmap(v + 0x4000, 0xe000, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    assert_eq!(mm.madvise(v, 0x5000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    // A VMA holding an aligned block but no anon_vma yet (nothing
    // written) is EINVAL whatever the piece.
    let u = 0xc000_0000;
    mm.mmap(u, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    assert_eq!(mm.madvise(u + 0x7c000, 0xc000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(mm.madvise(u, 4096, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(mm.madvise(u + 0x1ff000, 0x2000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    // Once it has one: a piece covering no whole block succeeds, inside
    // one block (Linux 7.3, the 7.3.4 guest; 6.18 on the host said EINVAL,
    // docs/version-differences.md) or ending on the boundary its start
    // rounds up to (both).
    mm.write_u64(u + 3 * PMD_SIZE / 2, 1).unwrap();
    mm.madvise(u + 0x7c000, 0xc000, MadviseAdvice::Collapse).unwrap();
    mm.madvise(u, 4096, MadviseAdvice::Collapse).unwrap();
    mm.madvise(u + 0x1ff000, 0x2000, MadviseAdvice::Collapse).unwrap();
}

#[test]
fn a_block_without_a_page_table_fails_but_the_next_block_still_collapses() {
    // Linux 7.3 (the 7.3.4 guest, scenarios/corpus/collapse_rules.hmm):
    // SCAN_NO_PTE_TABLE lets the next block be tried; the call is EINVAL
    // at the end. (6.18 stopped at the first block.)
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    mm.write_u64(va + PMD_SIZE, 7).unwrap();
    assert!(mm.pgtable().find(va).level() > Level::Pte, "precondition: no table for the first block");
    assert_eq!(mm.madvise(va, 2 * PMD_SIZE, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd);
    assert_eq!(mm.read_u64(va + PMD_SIZE).unwrap(), 7);
}

const SHARED: MapFlags = MapFlags::SHARED;

/// A memfd-like file of `size` bytes with `pages` written (value: index
/// plus one), mapped shared at a 2 MiB-aligned address of a new process.
fn shmem_block(
    k: &std::sync::Arc<crate::Kernel>,
    size: u64,
    pages: &[u64],
) -> (std::sync::Arc<crate::Mm>, crate::fs::File, u64) {
    let file = k.tmpfs().create("shm").unwrap();
    file.ftruncate(size).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0x4000_0000, size.max(PMD_SIZE), Prot::RW, SHARED | MapFlags::FIXED, &file, 0).unwrap();
    for &page in pages {
        mm.write_u64(va + page * 4096, page + 1).unwrap();
    }
    (mm, file, va)
}

#[test]
fn shmem_collapse_builds_a_pmd_order_cache_folio_and_maps_it() {
    // Linux 6.18 and 7.3.4 (scenarios/corpus/collapse_shmem*.hmm): a block
    // with pages and holes collapses whatever shmem_enabled says; the
    // holes read zero; the caller maps the THP by PMD.
    let k = kernel(64, ThpMode::Never);
    let (mm, file, va) = shmem_block(&k, PMD_SIZE, &[0, 16, 511]);
    let rec = record(&mm);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)], "the old PTEs go, the PMD needs none");
    let (level, entry) = leaf(&mm, va);
    assert_eq!((level, k.phys().folio_order(entry.pfn())), (Level::Pmd, 9));
    assert_eq!(file.inode().nr_cached_pages(), 512, "every index of the block is the folio's");
    assert_eq!(k.phys().folio_counts(entry.pfn()), (513, 1), "512 cache references and the mapping's");
    for page in [0, 1, 16, 300, 511] {
        let expected = if [0, 16, 511].contains(&page) { page + 1 } else { 0 };
        assert_eq!(mm.read_u64(va + page * 4096).unwrap(), expected);
    }
    mm.write_u64(va + 300 * 4096, 7).unwrap();
    let mut buf = [0u8; 8];
    file.pread(300 * 4096, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 7, "the mapping and the file share the folio");
}

#[test]
fn shmem_collapse_retracts_another_process_table_and_its_next_fault_maps_the_pmd() {
    let k = kernel(64, ThpMode::Never);
    let (mm, _file, va) = shmem_block(&k, PMD_SIZE, &[0, 5]);
    let child = mm.fork().unwrap();
    assert_eq!(child.read_u64(va + 5 * 4096).unwrap(), 6);
    assert_eq!(leaf(&child, va + 5 * 4096).0, Level::Pte);
    let rec = record(&child);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
    assert!(child.pgtable().find(va).level() > Level::Pte, "the child's page table is gone");
    assert_eq!(child.read_u64(va + 5 * 4096).unwrap(), 6);
    let (level, entry) = leaf(&child, va);
    assert_eq!(level, Level::Pmd);
    assert_eq!(entry.pfn(), leaf(&mm, va).1.pfn(), "both map the one folio");
    child.exit();
}

#[test]
fn shmem_collapse_of_an_empty_block_stops_and_a_pinned_page_fails_the_block() {
    let k = kernel(64, ThpMode::Never);
    let (mm, file, va) = shmem_block(&k, 2 * PMD_SIZE, &[512 + 3]);
    // The first block has no page: EINVAL at once, the second is left.
    let err = mm.madvise(va, 2 * PMD_SIZE, MadviseAdvice::Collapse).unwrap_err();
    assert_eq!(err.errno(), Errno::Inval);
    assert_eq!(leaf(&mm, va + PMD_SIZE + 3 * 4096).0, Level::Pte);
    // A page held by a pin (beyond the cache and its mappings) keeps its
    // block as it is: EINVAL, nothing changed.
    let pins = mm.pin_user_pages(va + PMD_SIZE + 3 * 4096, 1, crate::gup::FollFlags::WRITE).unwrap();
    let cached = file.inode().nr_cached_pages();
    assert_eq!(mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(file.inode().nr_cached_pages(), cached);
    assert_eq!(leaf(&mm, va + PMD_SIZE + 3 * 4096).0, Level::Pte);
    pins.unpin();
    mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd);
}

#[test]
fn truncating_into_a_shmem_thp_unmaps_it_and_splits_the_folio() {
    let k = kernel(64, ThpMode::Never);
    let (mm, file, va) = shmem_block(&k, PMD_SIZE, &[0, 300]);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    let head = leaf(&mm, va).1.pfn();
    let free = k.phys().free_frames();
    let rec = record(&mm);
    file.ftruncate(256 * 4096).unwrap();
    assert_eq!(rec.take_events()[0], (Event::Clear, va + 256 * 4096, va + PMD_SIZE), "the cut range first");
    assert!(leaf(&mm, va).1.is_none(), "the PMD is gone whole");
    // folio_split halves around the cut page: pages 0-255 stay one folio.
    assert_eq!(k.phys().folio_order(head), 8, "the folio was split at the cut");
    assert_eq!(file.inode().nr_cached_pages(), 256);
    assert_eq!(k.phys().free_frames(), free + 256, "the cut pages are free");
    assert_eq!(mm.read_u64(va).unwrap(), 1);
    assert_eq!(mm.read_u64(va + 300 * 4096).unwrap_err().errno(), Errno::Fault);
    // Growing again: the cut page reads zero, the block collapses again.
    file.ftruncate(PMD_SIZE).unwrap();
    assert_eq!(mm.read_u64(va + 300 * 4096).unwrap(), 0);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
}

#[test]
fn munmap_of_part_and_pageout_remove_the_pmd_and_keep_the_folio_cached() {
    let k = kernel(64, ThpMode::Never);
    let (mm, file, va) = shmem_block(&k, PMD_SIZE, &[0, 2]);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    let rec = record(&mm);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
    assert!(leaf(&mm, va).1.is_none());
    assert_eq!(file.inode().nr_cached_pages(), 512);
    assert_eq!(mm.read_u64(va + 2 * 4096).unwrap(), 3);
    assert_eq!(leaf(&mm, va).0, Level::Pmd, "the read maps the PMD again");
    mm.munmap(va + 4096, 4096).unwrap();
    let events = rec.take_events();
    assert_eq!(events[0], (Event::Clear, va, va + PMD_SIZE), "the file PMD is removed whole");
    assert!(leaf(&mm, va).1.is_none());
    assert_eq!(mm.read_u64(va + 2 * 4096).unwrap(), 3);
    assert_eq!(leaf(&mm, va).0, Level::Pte, "the VMA no longer holds the block: PTEs");
    assert_eq!(k.phys().folio_order(leaf(&mm, va + 2 * 4096).1.pfn()), 9, "a page of the THP");
}
