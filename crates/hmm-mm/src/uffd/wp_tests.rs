//! Tests of the uffd-wp markers (`wp.rs`) and of UFFDIO_WRITEPROTECT's
//! edges, each as Linux 6.18 behaves on the host (the scenarios
//! `uffd_wp_unpopulated`, `uffd_wp_markers_shmem`, `uffd_writeprotect_edges`).

use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

use super::{
    Userfaultfd, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP, UFFD_API, UFFD_FEATURE_SIGBUS,
    UFFD_FEATURE_WP_UNPOPULATED,
};
use crate::proc_pagemap::{PM_PRESENT, PM_SWAP, PM_UFFD_WP};
use crate::testing::{kernel, userfaultfd};
use crate::{MmError, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = 4096;
const MARKER: u64 = PM_SWAP | PM_UFFD_WP;

fn flags(word: u64) -> u64 {
    word & (PM_PRESENT | PM_SWAP | PM_UFFD_WP)
}

#[test]
fn wp_unpopulated_protects_none_entries_of_anonymous_memory() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_SIGBUS);
    uffd.register(va, 4 * PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, 4 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert!((0..4).all(|n| flags(mm.pagemap_entry(va + n * PAGE).unwrap()) == MARKER));
    // A read maps the zero page, protected; a write is a WP fault.
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    assert_eq!(flags(mm.pagemap_entry(va).unwrap()), PM_PRESENT | PM_UFFD_WP);
    assert!(matches!(mm.write_u64(va + PAGE, 1), Err(MmError::Fault { .. })));
    assert_eq!(flags(mm.pagemap_entry(va + PAGE).unwrap()), PM_PRESENT | PM_UFFD_WP, "allocated protected");
    // Resolving removes a marker; DONTNEED drops anonymous markers.
    uffd.writeprotect(va + 2 * PAGE, PAGE, 0).unwrap();
    assert_eq!(mm.pagemap_entry(va + 2 * PAGE).unwrap(), 0);
    mm.write_u64(va + 2 * PAGE, 2).unwrap();
    mm.madvise(va + 3 * PAGE, PAGE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(mm.pagemap_entry(va + 3 * PAGE).unwrap(), 0);
    // Unregistering removes the bits, and a fork child never sees them.
    uffd.writeprotect(va + 3 * PAGE, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(child.pagemap_entry(va + 3 * PAGE).unwrap(), 0, "no EVENT_FORK: the child is unregistered");
    uffd.unregister(va, 4 * PAGE).unwrap();
    assert_eq!(mm.pagemap_entry(va + 3 * PAGE).unwrap(), 0);
    mm.write_u64(va + PAGE, 3).unwrap();
    assert_eq!(mm.read_u64(va + PAGE).unwrap(), 3);
}

#[test]
fn without_wp_unpopulated_anonymous_none_entries_stay_none() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
    uffd.register(va, 2 * PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, 2 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_eq!(mm.pagemap_entry(va).unwrap(), 0);
    mm.write_u64(va, 1).unwrap();
}

#[test]
fn shmem_gets_markers_and_dontneed_keeps_its_protection() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let file = k.tmpfs().create("wp").unwrap();
    file.ftruncate(3 * PAGE).unwrap();
    file.pwrite(0, &7u64.to_le_bytes()).unwrap();
    let va = mm.mmap_file(0, 3 * PAGE, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va).unwrap(), 7);
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
    uffd.register(va, 3 * PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, 3 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_eq!(flags(mm.pagemap_entry(va + PAGE).unwrap()), MARKER, "file memory: markers without the feature");
    assert_eq!(mm.read_u64(va + PAGE).unwrap(), 0);
    assert_eq!(flags(mm.pagemap_entry(va + PAGE).unwrap()), PM_PRESENT | PM_UFFD_WP);
    assert!(matches!(mm.write_u64(va + 2 * PAGE, 1), Err(MmError::Fault { .. })));
    mm.madvise(va, 2 * PAGE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(flags(mm.pagemap_entry(va).unwrap()), MARKER, "a protected page leaves a marker");
    assert_eq!(flags(mm.pagemap_entry(va + PAGE).unwrap()), MARKER);
    assert!(matches!(mm.write_u64(va, 1), Err(MmError::Fault { .. })), "still protected");
    assert_eq!(mm.read_u64(va).unwrap(), 7, "the page cache kept the data");
}

#[test]
fn mremap_without_event_remap_drops_the_markers() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_WP_UNPOPULATED);
    uffd.register(va, 2 * PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, 2 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let to = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    let moved = mm.mremap(va, 2 * PAGE, 2 * PAGE, hmm_types::MremapFlags::MAYMOVE | hmm_types::MremapFlags::FIXED, to);
    assert_eq!(moved.unwrap(), to);
    assert_eq!(mm.pagemap_entry(to).unwrap(), 0);
}

#[test]
fn writeprotect_splits_a_partly_covered_thp() {
    let mm = kernel(1024, ThpMode::Always).create_mm().unwrap();
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap().next_multiple_of(PMD_SIZE);
    mm.write_u64(va, 1).unwrap();
    assert_eq!(crate::testing::leaf(&mm, va).0, hmm_pagetable::Level::Pmd, "a THP to begin with");
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
    uffd.register(va, PMD_SIZE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va + PAGE, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_eq!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    assert_ne!(mm.pagemap_entry(va + PAGE).unwrap() & PM_UFFD_WP, 0);
    assert_eq!(crate::testing::leaf(&mm, va).0, hmm_pagetable::Level::Pte, "split");
    mm.write_u64(va, 2).unwrap();
    assert!(matches!(mm.write_u64(va + PAGE, 2), Err(MmError::Fault { .. })));
}

#[test]
fn writeprotect_acts_on_a_range_of_another_userfaultfd() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    let (u, v) = (Userfaultfd::new(&mm, 0).unwrap(), Userfaultfd::new(&mm, 0).unwrap());
    u.api(UFFD_API, 0).unwrap();
    v.api(UFFD_API, 0).unwrap();
    v.register(va, PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    u.writeprotect(va, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_ne!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    u.writeprotect(va, PAGE, 0).unwrap();
    assert_eq!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    v.unregister(va, PAGE).unwrap();
    assert_eq!(u.writeprotect(va, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap_err().errno(), Errno::NoEnt);
}

/// Linux keeps the bit in the swap entry (`try_to_unmap_one`,
/// `do_swap_page`, pagemap's `pte_swp_uffd_wp`); neither the host nor the
/// guest has swap, so this states the kernel's code, not a run.
#[test]
fn a_protected_page_keeps_its_bit_through_swap() {
    let k = crate::testing::kernel_with_swap(64, ThpMode::Never, 16);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..3 {
        mm.write_u64(va + i * PAGE, 0x10 + i).unwrap();
    }
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
    uffd.register(va, 3 * PAGE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    mm.madvise(va, 3 * PAGE, MadviseAdvice::PageOut).unwrap();
    let word = |at: u64| flags(mm.pagemap_entry(at).unwrap());
    assert_eq!([word(va), word(va + PAGE)], [PM_SWAP | PM_UFFD_WP, PM_SWAP]);
    // WRITEPROTECT marks a swap entry too.
    uffd.writeprotect(va + PAGE, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_eq!(word(va + PAGE), PM_SWAP | PM_UFFD_WP);
    // Swap-in brings the page back protected.
    assert_eq!(mm.read_u64(va), Ok(0x10));
    assert_eq!(word(va), PM_PRESENT | PM_UFFD_WP);
    assert!(matches!(mm.write_u64(va, 1), Err(MmError::Fault { .. })), "a WP fault (SIGBUS feature)");
    assert!(matches!(mm.write_u64(va + PAGE, 1), Err(MmError::Fault { .. })), "in from swap, then WP");
    // A child without EVENT_FORK gets swap entries without the bit.
    mm.madvise(va + 2 * PAGE, PAGE, MadviseAdvice::PageOut).unwrap();
    uffd.writeprotect(va + 2 * PAGE, PAGE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(flags(child.pagemap_entry(va + 2 * PAGE).unwrap()), PM_SWAP);
    child.write_u64(va + 2 * PAGE, 2).unwrap();
    // Resolving clears the bit of a swap entry.
    assert_eq!(word(va + 2 * PAGE), PM_SWAP | PM_UFFD_WP);
    uffd.writeprotect(va + 2 * PAGE, PAGE, 0).unwrap();
    assert_eq!(word(va + 2 * PAGE), PM_SWAP);
    mm.write_u64(va + 2 * PAGE, 3).unwrap();
    assert_eq!(child.read_u64(va + 2 * PAGE), Ok(2));
}
