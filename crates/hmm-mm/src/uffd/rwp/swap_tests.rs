//! RWP protection across swap (Linux 7.3): the swap entry keeps the uffd
//! bit (`try_to_unmap_one`), pagemap shows it (`pte_swp_uffd`), swap-in in
//! an RWP VMA maps the page protected again (`do_swap_page`:
//! `rwp_restore`), RWPROTECT sets and clears it on swap entries
//! (`change_pte_range`), fork keeps it only with EVENT_FORK
//! (`copy_nonpresent_pte`). Neither the host nor the guest has swap, so
//! these state the 7.3 code, not a run.

use std::sync::Arc;

use hmm_types::{MadviseAdvice, MapFlags, MremapFlags, Prot, PAGE_SIZE};

use super::super::{Userfaultfd, UFFDIO_REGISTER_MODE_RWP, UFFD_EVENT_FORK, UFFD_FEATURE_EVENT_FORK};
use super::super::{UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WRITE};
use super::*;
use crate::proc_pagemap::{PM_PRESENT, PM_SWAP, PM_UFFD_WP};
use crate::testing::{kernel_with_swap, userfaultfd};
use crate::{Mm, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = PAGE_SIZE;
const PROTECT: u64 = UFFDIO_RWPROTECT_MODE_RWP;

/// `npages` of RWP-registered anonymous memory, page i holding i + 1 in
/// its first word, with swap, and a blocking userfaultfd with `features`.
fn setup(npages: u64, features: u64) -> (Arc<Mm>, u64, Arc<Userfaultfd>) {
    let mm = kernel_with_swap(64, ThpMode::Never, 16).create_mm().unwrap();
    let va = mm.mmap(0, npages * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..npages {
        mm.write_u64(va + i * PAGE, i + 1).unwrap();
    }
    let uffd = userfaultfd(&mm, super::super::O_CLOEXEC, features);
    uffd.register(va, npages * PAGE, UFFDIO_REGISTER_MODE_RWP).unwrap();
    (mm, va, Arc::new(uffd))
}

/// The pagemap bits this file is about.
fn word(mm: &Mm, va: u64) -> u64 {
    mm.pagemap_entry(va).unwrap() & (PM_PRESENT | PM_SWAP | PM_UFFD_WP)
}

#[test]
fn a_protected_page_keeps_its_bit_in_swap_and_rwprotect_changes_it_there() {
    let (mm, va, uffd) = setup(3, UFFD_FEATURE_RWP);
    uffd.rwprotect(va, PAGE, PROTECT).unwrap();
    mm.madvise(va, 3 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(
        [word(&mm, va), word(&mm, va + PAGE), word(&mm, va + 2 * PAGE)],
        [PM_SWAP | PM_UFFD_WP, PM_SWAP, PM_SWAP]
    );
    uffd.rwprotect(va + PAGE, 2 * PAGE, PROTECT).unwrap();
    assert_eq!([word(&mm, va + PAGE), word(&mm, va + 2 * PAGE)], [PM_SWAP | PM_UFFD_WP; 2]);
    uffd.rwprotect(va + 2 * PAGE, PAGE, 0).unwrap();
    assert_eq!(word(&mm, va + 2 * PAGE), PM_SWAP, "resolving clears the bit of a swap entry");
    assert_eq!(mm.read_u64(va + 2 * PAGE), Ok(3), "no fault: read at once");
    assert_eq!(word(&mm, va + 2 * PAGE), PM_PRESENT);
}

#[test]
fn swap_in_restores_the_protection_and_each_access_sends_its_message() {
    let (mm, va, uffd) = setup(2, UFFD_FEATURE_RWP);
    uffd.rwprotect(va, 2 * PAGE, PROTECT).unwrap();
    mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.event, msg.flags(), msg.address()), (UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_RWP, va));
    assert_eq!(word(&mm, va), PM_PRESENT | PM_UFFD_WP, "in from swap, protected");
    let writer = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.write_u64(va + PAGE, 9))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.flags(), msg.address()), (UFFD_PAGEFAULT_FLAG_RWP | UFFD_PAGEFAULT_FLAG_WRITE, va + PAGE));
    let (_, entry) = crate::testing::leaf(&mm, va + PAGE);
    assert!(entry.is_uffd_rwp() && !entry.is_write(), "the write did not make it writable");
    uffd.rwprotect(va, 2 * PAGE, 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(1));
    assert_eq!(writer.join().unwrap(), Ok(()));
    assert_eq!(mm.read_u64(va + PAGE), Ok(9));
    assert_eq!(word(&mm, va), PM_PRESENT);
}

#[test]
fn async_mode_resolves_a_swapped_in_page_without_a_message() {
    let (mm, va, uffd) = setup(2, UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC);
    uffd.rwprotect(va, 2 * PAGE, PROTECT).unwrap();
    mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(mm.read_u64(va), Ok(1));
    assert_eq!(word(&mm, va), PM_PRESENT, "resolved by the read");
    assert_eq!(mm.write_u64(va + PAGE, 7), Ok(()));
    assert_eq!(mm.read_u64(va + PAGE), Ok(7));
    assert!(!uffd.poll().readable, "no message");
}

#[test]
fn a_fork_child_keeps_the_bit_only_with_event_fork() {
    let (mm, va, uffd) = setup(1, UFFD_FEATURE_RWP);
    uffd.rwprotect(va, PAGE, PROTECT).unwrap();
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(word(&child, va), PM_SWAP, "no EVENT_FORK: the bit is dropped");
    assert_eq!(child.read_u64(va), Ok(1), "and the page is accessible");
    assert_eq!(word(&mm, va), PM_SWAP | PM_UFFD_WP, "the parent keeps it");

    let (mm, va, uffd) = setup(1, UFFD_FEATURE_RWP | UFFD_FEATURE_EVENT_FORK);
    uffd.rwprotect(va, PAGE, PROTECT).unwrap();
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    let forker = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.fork())
    };
    let (msg, child_uffd) = uffd.read_event().unwrap();
    assert_eq!(msg.event, UFFD_EVENT_FORK);
    let child_uffd = child_uffd.expect("the child's userfaultfd");
    let child = forker.join().unwrap().unwrap();
    assert_eq!(word(&child, va), PM_SWAP | PM_UFFD_WP, "EVENT_FORK: the bit is copied");
    let reader = {
        let child = child.clone();
        std::thread::spawn(move || child.read_u64(va))
    };
    let msg = child_uffd.read().unwrap();
    assert_eq!((msg.flags(), msg.address()), (UFFD_PAGEFAULT_FLAG_RWP, va));
    child_uffd.rwprotect(va, PAGE, 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(1));
}

#[test]
fn unregister_and_mremap_drop_the_bit_of_a_swap_entry() {
    let (mm, va, uffd) = setup(2, UFFD_FEATURE_RWP);
    uffd.rwprotect(va, 2 * PAGE, PROTECT).unwrap();
    mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    uffd.unregister(va, PAGE).unwrap();
    assert_eq!(word(&mm, va), PM_SWAP);
    assert_eq!(mm.read_u64(va), Ok(1), "no fault");
    // No EVENT_REMAP: the destination is not registered, the bit goes.
    let to = va + 64 * PAGE;
    let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
    assert_eq!(mm.mremap(va + PAGE, PAGE, PAGE, flags, to), Ok(to));
    assert_eq!(word(&mm, to), PM_SWAP);
    assert_eq!(mm.read_u64(to), Ok(2), "no fault");
    assert!(!uffd.poll().readable);
}
