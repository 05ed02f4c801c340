//! WP mode and POISON on hugetlb memory: what the 6.18 host answered
//! with huge pages reserved (scenarios/device/uffd_hugetlb_wp.hmm and
//! uffd_hugetlb_poison.hmm run the same on the 7.3.4 guest).

use hmm_types::{Errno, MadviseAdvice, Prot, PAGE_SIZE, PMD_SIZE};

use super::*;
use crate::proc_pagemap::{PM_PRESENT, PM_SWAP, PM_UFFD_WP};
use crate::{FaultError, MmError};

use super::hugetlb::tests::{mm, PRIVATE, SHARED};
use super::tests::uffd;

fn sigbus(result: Result<(), MmError>) -> bool {
    matches!(result, Err(MmError::Fault { error: FaultError::Sigbus(_) | FaultError::Hwpoison, .. }))
}

#[test]
fn writeprotect_goes_in_huge_pages_and_marks_none_entries() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, PRIVATE).unwrap();
    mm.write_u64(va + 8, 0x11).unwrap();
    assert_eq!(uffd.register(va, 3 * PMD_SIZE, UFFDIO_REGISTER_MODE_WP), Ok(0x14c));
    let errno = |r: Result<(), UffdError>| r.unwrap_err().errno();
    assert_eq!(errno(uffd.writeprotect(va, PAGE_SIZE, UFFDIO_WRITEPROTECT_MODE_WP)), Errno::Inval);
    assert_eq!(errno(uffd.writeprotect(va + PAGE_SIZE, PMD_SIZE, UFFDIO_WRITEPROTECT_MODE_WP)), Errno::Inval);
    uffd.writeprotect(va, 2 * PMD_SIZE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let word = |at: u64| mm.pagemap_entry(at).unwrap();
    assert_eq!(word(va + PAGE_SIZE) & (PM_PRESENT | PM_UFFD_WP), PM_PRESENT | PM_UFFD_WP);
    // The none huge entry holds a huge marker: uffd-wp and nothing else.
    assert_eq!(word(va + PMD_SIZE), PM_UFFD_WP);
    assert_eq!(word(va + 2 * PMD_SIZE), 0, "outside the protected range");
    assert_eq!(mm.read_u64(va + 8), Ok(0x11));
    assert!(sigbus(mm.write_u64(va + PAGE_SIZE, 5)), "a WP fault, SIGBUS feature");
    // A read of the marker maps a new page, protected.
    assert_eq!(mm.read_u64(va + PMD_SIZE), Ok(0));
    assert_eq!(word(va + PMD_SIZE) & (PM_PRESENT | PM_UFFD_WP), PM_PRESENT | PM_UFFD_WP);
    assert!(sigbus(mm.write_u64(va + PMD_SIZE, 5)));
    uffd.writeprotect(va, PMD_SIZE, 0).unwrap();
    mm.write_u64(va + PAGE_SIZE, 5).unwrap();
    assert_eq!(word(va) & PM_UFFD_WP, 0);
}

#[test]
fn dontneed_keeps_huge_markers_and_unregister_drops_them() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, SHARED).unwrap();
    mm.write_u64(va + 8, 0x11).unwrap();
    uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, 2 * PMD_SIZE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    // A protected page zapped leaves a marker behind (`__unmap_hugepage_range`).
    mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(mm.pagemap_entry(va).unwrap(), PM_UFFD_WP);
    mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(mm.pagemap_entry(va + PMD_SIZE).unwrap(), PM_UFFD_WP);
    // The cached page comes back protected.
    assert_eq!(mm.read_u64(va + 8), Ok(0x11));
    assert_ne!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    uffd.unregister(va, 2 * PMD_SIZE).unwrap();
    assert_eq!(mm.pagemap_entry(va + PMD_SIZE).unwrap(), 0);
    assert_eq!(mm.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    mm.write_u64(va + 8, 0x12).unwrap();
}

#[test]
fn fork_without_event_fork_drops_the_bit_in_the_child_only() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, PRIVATE).unwrap();
    mm.write_u64(va, 0x21).unwrap();
    uffd.register(va, PMD_SIZE, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, PMD_SIZE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(child.pagemap_entry(va).unwrap() & (PM_PRESENT | PM_UFFD_WP), PM_PRESENT);
    child.write_u64(va, 0x22).unwrap();
    assert_eq!(mm.read_u64(va), Ok(0x21), "the child copied the huge page");
    assert!(sigbus(mm.write_u64(va, 0x23)), "the parent's page stays protected");
}

#[test]
fn poison_goes_in_huge_pages_and_faults_until_zapped() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_POISON | UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, SHARED).unwrap();
    uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP).unwrap();
    let errno = |r: Result<u64, UffdError>| r.unwrap_err().errno();
    assert_eq!(errno(uffd.poison(va, PAGE_SIZE, 0)), Errno::Inval);
    assert_eq!(errno(uffd.poison(va + PAGE_SIZE, PMD_SIZE, 0)), Errno::Inval);
    assert_eq!(errno(uffd.poison(va + PMD_SIZE, 2 * PMD_SIZE, 0)), Errno::NoEnt, "past the VMA");
    assert_eq!(uffd.poison(va, PMD_SIZE, 0), Ok(PMD_SIZE));
    assert_eq!(mm.pagemap_entry(va).unwrap(), 0, "pagemap shows nothing");
    assert!(sigbus(mm.read_u64(va + PAGE_SIZE).map(|_| ())));
    assert_eq!(errno(uffd.poison(va, PMD_SIZE, 0)), Errno::Exist);
    // A uffd-wp marker is not none to POISON (it is to COPY).
    uffd.writeprotect(va + PMD_SIZE, PMD_SIZE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    assert_eq!(errno(uffd.poison(va + PMD_SIZE, PMD_SIZE, 0)), Errno::Exist);
    let src = vec![3_u8; PMD_SIZE as usize];
    assert_eq!(uffd.copy(va + PMD_SIZE, &src, 0), Ok(PMD_SIZE));
    assert_eq!(mm.pagemap_entry(va + PMD_SIZE).unwrap() & (PM_SWAP | PM_UFFD_WP), 0);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
    assert!(sigbus(mm.read_u64(va).map(|_| ())), "no poison now: a MISSING fault (SIGBUS feature)");
    assert_eq!(uffd.copy(va, &src, 0), Ok(PMD_SIZE));
}

#[test]
fn rwp_on_hugetlb_goes_in_huge_pages() {
    let mm = mm();
    let uffd = uffd(&mm, rwp::UFFD_FEATURE_RWP | UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, PRIVATE).unwrap();
    mm.write_u64(va + 8, 0x11).unwrap();
    // WAKE, COPY, POISON, RWPROTECT (the 7.3.4 guest's answer).
    assert_eq!(uffd.register(va, 2 * PMD_SIZE, UFFDIO_REGISTER_MODE_RWP), Ok(0x30c));
    let protect = rwp::UFFDIO_RWPROTECT_MODE_RWP;
    assert_eq!(uffd.rwprotect(va, PAGE_SIZE, protect).unwrap_err().errno(), Errno::Inval);
    uffd.rwprotect(va, PMD_SIZE, protect).unwrap();
    assert_eq!(mm.pagemap_entry(va + PAGE_SIZE).unwrap() & (PM_PRESENT | PM_UFFD_WP), PM_PRESENT | PM_UFFD_WP);
    assert!(sigbus(mm.read_u64(va + 8).map(|_| ())), "an RWP fault (SIGBUS feature)");
    uffd.rwprotect(va, PMD_SIZE, 0).unwrap();
    assert_eq!(mm.read_u64(va + 8), Ok(0x11));
    mm.write_u64(va + 8, 0x12).unwrap();
}
