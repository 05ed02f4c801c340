//! RWP mode as the 7.3.4 guest shows it (the same facts are guest-judged
//! scenarios in scenarios/device/uffd_rwp*.hmm). Waits are made
//! deterministic by a blocking `read`: a message exists only once the
//! fault sleeps.

use std::sync::Arc;

use hmm_types::{Errno, Event, MapFlags, Prot, VmFlags, PAGE_SIZE};

use super::super::{
    Userfaultfd, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_RWP,
    UFFDIO_REGISTER_MODE_WP, UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_FEATURE_SIGBUS, UFFD_PAGEFAULT_FLAG_WRITE,
};
use super::*;
use crate::proc_pagemap::{PM_PRESENT, PM_UFFD_WP};
use crate::testing::{kernel, leaf, record, userfaultfd};
use crate::{Mm, MmError, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const RWP: u64 = UFFDIO_REGISTER_MODE_RWP;
const PROTECT: u64 = UFFDIO_RWPROTECT_MODE_RWP;

fn errno<T: core::fmt::Debug>(r: Result<T, UffdError>) -> Errno {
    r.unwrap_err().errno()
}

/// `npages` of anonymous memory, the first `written` of them written
/// (page i holds i + 1), and a blocking userfaultfd negotiated with
/// `features`.
fn setup(npages: u64, written: u64, features: u64) -> (Arc<Mm>, u64, Arc<Userfaultfd>) {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, npages * PAGE_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..written {
        mm.write_u64(va + i * PAGE_SIZE, i + 1).unwrap();
    }
    let uffd = userfaultfd(&mm, super::super::O_CLOEXEC, features);
    (mm, va, Arc::new(uffd))
}

fn protected(mm: &Mm, va: u64) -> bool {
    let word = mm.pagemap_entry(va).unwrap();
    word & (PM_PRESENT | PM_UFFD_WP) == PM_PRESENT | PM_UFFD_WP
}

#[test]
fn the_handshake_offers_rwp_and_async_needs_it() {
    let (mm, _, _) = setup(1, 0, 0);
    let uffd = Userfaultfd::new(&mm, 0).unwrap();
    assert_eq!(errno(uffd.api(UFFD_API, UFFD_FEATURE_RWP_ASYNC)), Errno::Inval, "RWP_ASYNC alone");
    let (features, ioctls) = uffd.api(UFFD_API, UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC).unwrap();
    assert_eq!(features & (UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC), UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC);
    assert_eq!(ioctls, 0x8000_0000_0000_0403, "API, REGISTER, UNREGISTER and SET_MODE (0x0A)");
}

#[test]
fn registration_rules_of_rwp() {
    let (mm, va, uffd) = setup(8, 0, UFFD_FEATURE_RWP);
    assert_eq!(uffd.register(va, PAGE_SIZE, RWP), Ok(0x33c), "WAKE COPY ZEROPAGE MOVE POISON RWPROTECT");
    assert_eq!(errno(uffd.register(va + PAGE_SIZE, PAGE_SIZE, RWP | UFFDIO_REGISTER_MODE_WP)), Errno::Inval);
    assert_eq!(uffd.register(va + PAGE_SIZE, PAGE_SIZE, RWP | UFFDIO_REGISTER_MODE_MISSING), Ok(0x33c));
    assert_eq!(errno(uffd.register(va + 2 * PAGE_SIZE, PAGE_SIZE, RWP | UFFDIO_REGISTER_MODE_MINOR)), Errno::Inval);
    // Not negotiated: EINVAL.
    let plain = userfaultfd(&mm, 0, 0);
    assert_eq!(errno(plain.register(va + 3 * PAGE_SIZE, PAGE_SIZE, RWP)), Errno::Inval);
    // PROT_NONE: EINVAL; read-only is accessible enough.
    mm.mprotect(va + 4 * PAGE_SIZE, PAGE_SIZE, Prot::NONE).unwrap();
    assert_eq!(errno(uffd.register(va + 4 * PAGE_SIZE, PAGE_SIZE, RWP)), Errno::Inval);
    mm.mprotect(va + 5 * PAGE_SIZE, PAGE_SIZE, Prot::READ).unwrap();
    assert_eq!(uffd.register(va + 5 * PAGE_SIZE, PAGE_SIZE, RWP), Ok(0x33c));
    // Dropping RWP on re-registration is EBUSY; a subset changes nothing.
    assert_eq!(uffd.register(va + PAGE_SIZE, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING), Err(UffdError::Busy));
    assert_eq!(uffd.register(va + PAGE_SIZE, PAGE_SIZE, RWP), Ok(0x33c));
    let flags = mm.mmap_read().vma(va + PAGE_SIZE).unwrap().flags;
    assert!(flags.contains(VmFlags::UFFD_RWP | VmFlags::UFFD_MISSING), "MISSING stays: {flags:?}");
}

#[test]
fn rwprotect_protects_present_pages_and_resolving_wakes_the_reader() {
    let (mm, va, uffd) = setup(3, 2, UFFD_FEATURE_RWP);
    uffd.register(va, 3 * PAGE_SIZE, RWP).unwrap();
    let rec = record(&mm);
    uffd.rwprotect(va, 3 * PAGE_SIZE, PROTECT).unwrap();
    assert_eq!(rec.take_events(), [(Event::ProtectionVma, va, va + 3 * PAGE_SIZE)]);
    assert!(protected(&mm, va) && protected(&mm, va + PAGE_SIZE));
    assert_eq!(mm.pagemap_entry(va + 2 * PAGE_SIZE).unwrap(), 0, "a none entry stays none");
    let (_, entry) = leaf(&mm, va);
    assert!(entry.is_uffd_rwp() && !entry.is_accessible());
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va + 8))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.event, msg.flags(), msg.address()), (UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_RWP, va));
    let writer = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.write_u64(va + PAGE_SIZE, 9))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.flags(), msg.address()), (UFFD_PAGEFAULT_FLAG_RWP | UFFD_PAGEFAULT_FLAG_WRITE, va + PAGE_SIZE));
    // The none page faults normally, with no message.
    assert_eq!(mm.read_u64(va + 2 * PAGE_SIZE), Ok(0));
    uffd.rwprotect(va, PAGE_SIZE, 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0), "the page's first word is 1 at offset 0, 0 at 8");
    assert_eq!(mm.read_u64(va), Ok(1));
    assert!(!protected(&mm, va) && protected(&mm, va + PAGE_SIZE));
    // DONTWAKE resolves without waking; WAKE then lets the write through.
    uffd.rwprotect(va + PAGE_SIZE, PAGE_SIZE, UFFDIO_RWPROTECT_MODE_DONTWAKE).unwrap();
    assert!(!writer.is_finished());
    uffd.wake(va + PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_eq!(writer.join().unwrap(), Ok(()));
    assert_eq!(mm.read_u64(va + PAGE_SIZE), Ok(9));
}

#[test]
fn rwprotect_checks_its_mode_and_the_registration() {
    let (mm, va, uffd) = setup(4, 4, UFFD_FEATURE_RWP);
    uffd.register(va, 2 * PAGE_SIZE, RWP).unwrap();
    let both = UFFDIO_RWPROTECT_MODE_RWP | UFFDIO_RWPROTECT_MODE_DONTWAKE;
    assert_eq!(errno(uffd.rwprotect(va, PAGE_SIZE, both)), Errno::Inval);
    assert_eq!(errno(uffd.rwprotect(va, PAGE_SIZE, 4)), Errno::Inval);
    assert_eq!(errno(uffd.rwprotect(va + 1, PAGE_SIZE, PROTECT)), Errno::Inval);
    assert_eq!(errno(uffd.rwprotect(va, 0, PROTECT)), Errno::Inval);
    assert_eq!(errno(uffd.rwprotect(va + 8 * PAGE_SIZE, PAGE_SIZE, PROTECT)), Errno::NoEnt, "no VMA");
    // A range reaching an unregistered VMA is ENOENT and changes nothing.
    assert_eq!(errno(uffd.rwprotect(va, 3 * PAGE_SIZE, PROTECT)), Errno::NoEnt);
    assert!(!protected(&mm, va));
    // Another userfaultfd (even one without RWP) may protect the range: the
    // VMA's mode is what counts (7.3.4).
    let other = userfaultfd(&mm, 0, 0);
    other.rwprotect(va, PAGE_SIZE, PROTECT).unwrap();
    assert!(protected(&mm, va));
    other.rwprotect(va, PAGE_SIZE, 0).unwrap();
    // A range beyond the registered VMA's end but without another VMA.
    mm.munmap(va + 2 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    uffd.rwprotect(va, 5 * PAGE_SIZE, PROTECT).unwrap();
    assert!(protected(&mm, va) && protected(&mm, va + PAGE_SIZE));
}

#[test]
fn async_mode_resolves_in_the_fault_and_set_mode_toggles_it() {
    let (mm, va, uffd) = setup(2, 2, UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC);
    uffd.register(va, 2 * PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, 2 * PAGE_SIZE, PROTECT).unwrap();
    let rec = record(&mm);
    assert_eq!(mm.read_u64(va), Ok(1));
    assert!(!protected(&mm, va) && protected(&mm, va + PAGE_SIZE), "only the page touched");
    assert!(rec.take_events().is_empty(), "resolving only grants rights");
    assert!(leaf(&mm, va).1.is_write(), "an exclusive anonymous page gets WRITE back");
    assert!(!uffd.poll().readable);
    // Synchronous again: a read waits, and going async wakes it.
    uffd.set_mode(0, UFFD_FEATURE_RWP_ASYNC).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va + PAGE_SIZE))
    };
    assert_eq!(uffd.read().unwrap().flags(), UFFD_PAGEFAULT_FLAG_RWP);
    uffd.set_mode(UFFD_FEATURE_RWP_ASYNC, 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(2));
    assert!(!uffd.poll().readable, "the retried fault resolved itself");
    // The rules.
    let async_ = UFFD_FEATURE_RWP_ASYNC;
    assert_eq!(errno(uffd.set_mode(async_, async_)), Errno::Inval, "overlap");
    assert_eq!(errno(uffd.set_mode(UFFD_FEATURE_RWP, 0)), Errno::Inval, "not toggleable");
    assert_eq!(errno(uffd.set_mode(0, UFFD_FEATURE_SIGBUS)), Errno::Inval, "not toggleable");
    assert_eq!(uffd.set_mode(0, 0), Ok(()));
    let plain = Userfaultfd::new(&mm, 0).unwrap();
    assert_eq!(errno(plain.set_mode(0, 0)), Errno::Inval, "before UFFDIO_API");
    plain.api(UFFD_API, 0).unwrap();
    assert_eq!(errno(plain.set_mode(async_, 0)), Errno::Inval, "RWP not negotiated");
    assert_eq!(plain.set_mode(0, async_), Ok(()), "disabling needs nothing");
}

#[test]
fn going_async_wakes_a_missing_fault_too_which_asks_again() {
    let (mm, va, uffd) = setup(1, 0, UFFD_FEATURE_RWP);
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    assert_eq!(uffd.read().unwrap().address(), va);
    uffd.set_mode(UFFD_FEATURE_RWP_ASYNC, 0).unwrap();
    assert_eq!(uffd.read().unwrap().address(), va, "the woken MISSING fault queued its message again");
    uffd.zeropage(va, PAGE_SIZE, 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0));
}

#[test]
fn sigbus_feature_and_faults_that_may_not_wait() {
    let (mm, va, uffd) = setup(1, 1, UFFD_FEATURE_RWP | UFFD_FEATURE_SIGBUS);
    uffd.register(va, PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, PAGE_SIZE, PROTECT).unwrap();
    assert!(matches!(mm.read_u64(va), Err(MmError::Fault { .. })));
    assert!(matches!(mm.write_u64(va, 2), Err(MmError::Fault { .. })));
    assert!(!uffd.poll().readable, "SIGBUS, no message");
}

#[test]
fn unregister_and_close_resolve_the_protection() {
    let (mm, va, uffd) = setup(2, 2, UFFD_FEATURE_RWP);
    uffd.register(va, 2 * PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, 2 * PAGE_SIZE, PROTECT).unwrap();
    uffd.unregister(va, PAGE_SIZE).unwrap();
    assert!(!protected(&mm, va) && protected(&mm, va + PAGE_SIZE));
    assert_eq!(mm.read_u64(va), Ok(1));
    drop(Arc::into_inner(uffd).unwrap());
    assert!(!protected(&mm, va + PAGE_SIZE));
    assert_eq!(mm.read_u64(va + PAGE_SIZE), Ok(2));
}

#[test]
fn mprotect_keeps_the_protection_and_a_fork_child_does_not() {
    let (mm, va, uffd) = setup(1, 1, UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC);
    uffd.register(va, PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, PAGE_SIZE, PROTECT).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(child.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0, "the child is not registered");
    assert!(child.mmap_read().vma(va).unwrap().flags.intersection(super::super::UFFD_VM_FLAGS).is_empty());
    assert_eq!(child.read_u64(va), Ok(1), "accessible in the child without any fault");
    mm.mprotect(va, PAGE_SIZE, Prot::NONE).unwrap();
    mm.mprotect(va, PAGE_SIZE, Prot::RW).unwrap();
    assert!(protected(&mm, va), "the RWP marker survives mprotect");
    assert!(leaf(&mm, va).1.is_protnone());
    assert_eq!(mm.read_u64(va), Ok(1), "and still faults (async: resolved)");
    assert!(!protected(&mm, va));
}

#[test]
fn an_mremap_destination_loses_the_registration_and_the_protection() {
    let (mm, va, uffd) = setup(2, 1, UFFD_FEATURE_RWP);
    uffd.register(va, 2 * PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, 2 * PAGE_SIZE, PROTECT).unwrap();
    let to = va + 64 * PAGE_SIZE;
    let flags = hmm_types::MremapFlags::MAYMOVE | hmm_types::MremapFlags::FIXED;
    assert_eq!(mm.mremap(va, 2 * PAGE_SIZE, 2 * PAGE_SIZE, flags, to), Ok(to));
    assert!(!protected(&mm, to));
    assert_eq!(mm.read_u64(to), Ok(1), "no message: the read completes at once");
    assert!(!uffd.poll().readable);
}

#[test]
fn protecting_part_of_a_thp_splits_it_first() {
    let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
    let pmd = hmm_types::PMD_SIZE;
    let base = mm.mmap(0, 2 * pmd, Prot::RW, ANON).unwrap();
    let va = (base + pmd - 1) & !(pmd - 1);
    mm.write_u64(va, 1).unwrap();
    assert_eq!(leaf(&mm, va).0, hmm_pagetable::Level::Pmd, "a THP");
    let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_RWP | UFFD_FEATURE_SIGBUS);
    uffd.register(va, pmd, RWP).unwrap();
    uffd.rwprotect(va, pmd, PROTECT).unwrap();
    let (level, entry) = leaf(&mm, va + PAGE_SIZE);
    assert!(level == hmm_pagetable::Level::Pmd && entry.is_uffd_rwp(), "the whole PMD, still huge");
    uffd.rwprotect(va + PAGE_SIZE, PAGE_SIZE, 0).unwrap();
    assert_eq!(leaf(&mm, va).0, hmm_pagetable::Level::Pte, "split to resolve one page");
    assert_eq!(mm.read_u64(va + PAGE_SIZE), Ok(0));
    assert!(matches!(mm.read_u64(va), Err(MmError::Fault { .. })), "the rest stays protected");
    assert!(protected(&mm, va + 2 * PAGE_SIZE));
}

#[test]
fn a_pinned_page_copied_at_fork_keeps_trapping_in_a_registered_child() {
    // 7.3.4 `copy_present_page`: the child's copy of a pinned page gets
    // the uffd bit back and PAGE_NONE when the child stays RWP-registered
    // (EVENT_FORK); the parent keeps its own protected page.
    let events = UFFD_FEATURE_RWP | super::super::UFFD_FEATURE_EVENT_FORK;
    let (mm, va, uffd) = setup(1, 1, events);
    let pinned = mm.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
    uffd.register(va, PAGE_SIZE, RWP).unwrap();
    uffd.rwprotect(va, PAGE_SIZE, PROTECT).unwrap();
    let fork = std::thread::spawn({
        let mm = mm.clone();
        move || mm.fork()
    });
    let (msg, child_uffd) = uffd.read_event().unwrap();
    assert_eq!(msg.event, super::super::UFFD_EVENT_FORK);
    let child = fork.join().unwrap().unwrap();
    let (ours, theirs) = (leaf(&mm, va).1, leaf(&child, va).1);
    assert_ne!(ours.pfn(), theirs.pfn(), "copied for the child");
    assert!(theirs.is_uffd_rwp() && !theirs.is_write(), "PROT_NONE with the uffd bit");
    assert!(ours.is_uffd_rwp());
    assert_ne!(child.pagemap_entry(va).unwrap() & PM_UFFD_WP, 0);
    drop((pinned, child_uffd));
}
