//! The reverse map against what the page tables say.

use core::ops::ControlFlow;

use hmm_types::{MapFlags, MremapFlags, Prot, PAGE_SIZE, PMD_SIZE};

use super::rmap_walk;
use crate::mm::Mm;
use crate::testing::{kernel, leaf};
use crate::ThpMode;

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

/// Every (address space, address) the walk yields for the page of `pfn`
/// where the entry really names it.
fn mappings(mm: &Mm, pfn: hmm_types::Pfn) -> Vec<(hmm_types::MmId, u64)> {
    let mut found = Vec::new();
    let _ = rmap_walk(mm.kernel(), pfn, |other, _vma, va| {
        let entry = other.pgtable().find(va).load();
        if entry.is_present() && entry.pfn() == pfn {
            found.push((other.id(), va));
        }
        ControlFlow::Continue(())
    });
    found.sort_unstable();
    found
}

#[test]
fn anonymous_pages_are_found_after_fork_and_mremap() {
    let k = kernel(64, ThpMode::Never);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    parent.write_u64(va + 2 * PAGE_SIZE, 1).unwrap();
    let pfn = leaf(&parent, va + 2 * PAGE_SIZE).1.pfn();
    let child = parent.fork().unwrap();
    let spot = parent.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let moved = parent.mremap(va, 4 * PAGE_SIZE, 4 * PAGE_SIZE, MremapFlags::MAYMOVE | MremapFlags::FIXED, spot);
    let moved = moved.unwrap();
    // The child's VMA split in three by an mprotect keeps the page's index.
    child.mprotect(va + PAGE_SIZE, PAGE_SIZE, Prot::READ).unwrap();
    let mut want = vec![(parent.id(), moved + 2 * PAGE_SIZE), (child.id(), va + 2 * PAGE_SIZE)];
    want.sort_unstable();
    assert_eq!(mappings(&parent, pfn), want);
    // A copy on write leaves each with its own page.
    child.write_u64(va + 2 * PAGE_SIZE, 2).unwrap();
    assert_eq!(mappings(&parent, pfn), [(parent.id(), moved + 2 * PAGE_SIZE)]);
    let copy = leaf(&child, va + 2 * PAGE_SIZE).1.pfn();
    assert_eq!(mappings(&child, copy), [(child.id(), va + 2 * PAGE_SIZE)]);
}

#[test]
fn pages_of_a_split_thp_keep_their_index() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    let block = (va + PMD_SIZE - 1) & !(PMD_SIZE - 1);
    mm.write_u64(block, 1).unwrap();
    let head = leaf(&mm, block).1.pfn();
    assert_eq!(k.phys().folio_order(head), 9);
    // mprotect of one page splits the PMD; migration splits the folio.
    mm.mprotect(block + 7 * PAGE_SIZE, PAGE_SIZE, Prot::READ).unwrap();
    assert!(k.phys().split_folio(head, 512), "one PTE per page, nothing else");
    assert_eq!(k.phys().folio_order(head), 0);
    let page = leaf(&mm, block + 300 * PAGE_SIZE).1.pfn();
    assert_eq!(mappings(&mm, page), [(mm.id(), block + 300 * PAGE_SIZE)]);
}

#[test]
fn file_pages_are_found_through_the_inode() {
    let k = kernel(64, ThpMode::Never);
    let file = k.tmpfs().create("rmap").unwrap();
    file.pwrite(0, &[7u8; 3 * PAGE_SIZE as usize]).unwrap();
    let a = k.create_mm().unwrap();
    let b = k.create_mm().unwrap();
    let at_a = a.mmap_file(0, 3 * PAGE_SIZE, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    // b maps from the second page on: the same page at another offset.
    let at_b = b.mmap_file(0, 2 * PAGE_SIZE, Prot::RW, MapFlags::SHARED, &file, PAGE_SIZE).unwrap();
    a.read_u64(at_a + 2 * PAGE_SIZE).unwrap();
    b.read_u64(at_b + PAGE_SIZE).unwrap();
    let pfn = leaf(&a, at_a + 2 * PAGE_SIZE).1.pfn();
    let mut want = vec![(a.id(), at_a + 2 * PAGE_SIZE), (b.id(), at_b + PAGE_SIZE)];
    want.sort_unstable();
    assert_eq!(mappings(&a, pfn), want);
}
