//! The non-cooperative events as the host's kernel shows them (6.18;
//! scenarios/corpus/uffd_events_*.hmm): the caller waits until the
//! monitor read the event, the resolving ioctls are EAGAIN meanwhile, and
//! page faults are read before events.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmm_types::{Errno, MadviseAdvice, MapFlags, MremapFlags, Prot, VmFlags, PAGE_SIZE};

use super::*;
use crate::testing::{kernel, userfaultfd};
use crate::{Mm, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const EVENTS: u64 =
    UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;

fn setup(pages: u64) -> (Arc<Mm>, Userfaultfd, u64) {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let uffd = userfaultfd(&mm, O_NONBLOCK, EVENTS);
    let va = mm.mmap(0, pages * PAGE_SIZE, Prot::RW, ANON).unwrap();
    (mm, uffd, va)
}

/// Runs `f` on a thread and waits until it sleeps in userfaultfd.
fn blocked<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        tx.send(probe::current()).unwrap();
        f()
    });
    let probe = rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe.is_sleeping() {
        assert!(!handle.is_finished(), "the call did not wait for the monitor");
        assert!(Instant::now() < deadline, "the call neither finished nor slept");
        std::thread::sleep(Duration::from_millis(1));
    }
    handle
}

/// Reads until a message comes (the sender may still be on its way).
fn next(uffd: &Userfaultfd) -> (UffdMsg, Option<Userfaultfd>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match uffd.read_event() {
            Ok(got) => return got,
            Err(UffdError::Again) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn munmap_waits_for_the_unmap_message_which_names_the_whole_range() {
    let (mm, uffd, va) = setup(8);
    uffd.register(va + 2 * PAGE_SIZE, 4 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let t = blocked({
        let mm = mm.clone();
        move || mm.munmap(va, 4 * PAGE_SIZE)
    });
    assert_eq!(mm.mmap_read().vma(va + 2 * PAGE_SIZE).map(|v| v.start), None, "unmapped before the event");
    assert_eq!(uffd.zeropage(va + 4 * PAGE_SIZE, PAGE_SIZE, 0), Err(UffdError::Changing), "mmap_changing");
    assert!(uffd.poll().readable);
    assert_eq!(uffd.read().unwrap(), UffdMsg::unmap(va, va + 4 * PAGE_SIZE));
    assert_eq!(t.join().unwrap(), Ok(()));
    assert_eq!(uffd.zeropage(va + 4 * PAGE_SIZE, PAGE_SIZE, 0), Ok(PAGE_SIZE));
    assert_eq!(uffd.read(), Err(UffdError::Again));
}

#[test]
fn dontneed_sends_remove_per_registered_vma_before_zapping() {
    let (mm, uffd, va) = setup(6);
    for i in 0..6 {
        mm.write_u64(va + i * PAGE_SIZE, 1).unwrap();
    }
    uffd.register(va + 2 * PAGE_SIZE, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    uffd.register(va + 4 * PAGE_SIZE, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP).unwrap();
    let t = blocked({
        let mm = mm.clone();
        move || mm.madvise(va, 6 * PAGE_SIZE, MadviseAdvice::DontNeed)
    });
    assert_eq!(mm.pagemap_entry(va).unwrap(), 0, "the VMA before, not registered, is zapped at once");
    assert_ne!(mm.pagemap_entry(va + 2 * PAGE_SIZE).unwrap(), 0, "not zapped before the monitor read");
    assert_eq!(next(&uffd).0, UffdMsg::remove(va + 2 * PAGE_SIZE, va + 4 * PAGE_SIZE));
    assert_eq!(next(&uffd).0, UffdMsg::remove(va + 4 * PAGE_SIZE, va + 6 * PAGE_SIZE));
    assert_eq!(t.join().unwrap(), Ok(()));
    assert_eq!(mm.pagemap_entry(va + 2 * PAGE_SIZE).unwrap(), 0);
}

#[test]
fn mremap_sends_remap_then_unmap_and_the_move_stays_registered() {
    let (mm, uffd, va) = setup(16);
    mm.write_u64(va, 3).unwrap();
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, PAGE_SIZE, UFFDIO_WRITEPROTECT_MODE_WP).unwrap();
    let to = va + 8 * PAGE_SIZE;
    let t = blocked({
        let mm = mm.clone();
        move || mm.mremap(va, 2 * PAGE_SIZE, 2 * PAGE_SIZE, MremapFlags::MAYMOVE | MremapFlags::FIXED, to)
    });
    assert_eq!(next(&uffd).0, UffdMsg::remap(va, to, 2 * PAGE_SIZE));
    assert_eq!(next(&uffd).0, UffdMsg::unmap(va, va + 2 * PAGE_SIZE));
    assert_eq!(t.join().unwrap(), Ok(to));
    let guard = mm.mmap_read();
    let moved = guard.vma(to).unwrap();
    assert!(is_mine(&uffd.ctx, moved) && moved.flags.contains(VmFlags::UFFD_WP));
    drop(guard);
    assert_ne!(mm.pagemap_entry(to).unwrap() & crate::proc_pagemap::PM_UFFD_WP, 0, "the uffd-wp bit moved along");
}

#[test]
fn fork_hands_the_monitor_a_new_userfaultfd_serving_the_child() {
    let (mm, uffd, va) = setup(2);
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let t = blocked({
        let mm = mm.clone();
        move || mm.fork()
    });
    let (msg, child_uffd) = next(&uffd);
    assert_eq!(msg.event, UFFD_EVENT_FORK);
    let child_uffd = child_uffd.expect("the child's userfaultfd");
    let child = t.join().unwrap().unwrap();
    assert_eq!(child_uffd.api(UFFD_API, 0).unwrap_err().errno(), Errno::Inval, "already negotiated");
    let reader = blocked({
        let child = child.clone();
        move || child.read_u64(va + 8)
    });
    assert_eq!(uffd.read(), Err(UffdError::Again), "the parent's file hears nothing");
    assert_eq!(child_uffd.read().unwrap(), UffdMsg::pagefault(0, va));
    assert_eq!(child_uffd.copy(va, &[7; PAGE_SIZE as usize], 0), Ok(PAGE_SIZE));
    assert_eq!(reader.join().unwrap().unwrap(), u64::from_le_bytes([7; 8]));
    drop(child_uffd);
    assert_eq!(child.read_u64(va + PAGE_SIZE).unwrap(), 0, "closed: the child's range is no longer registered");
}

#[test]
fn faults_are_read_before_events_and_close_releases_a_waiting_caller() {
    let (mm, uffd, va) = setup(4);
    uffd.register(va, 4 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let unmap = blocked({
        let mm = mm.clone();
        move || mm.munmap(va + 3 * PAGE_SIZE, PAGE_SIZE)
    });
    let reader = blocked({
        let mm = mm.clone();
        move || mm.read_u64(va)
    });
    assert_eq!(uffd.read().unwrap(), UffdMsg::pagefault(0, va), "the later fault first");
    assert_eq!(uffd.read().unwrap(), UffdMsg::unmap(va + 3 * PAGE_SIZE, va + 4 * PAGE_SIZE));
    assert_eq!(unmap.join().unwrap(), Ok(()));
    let unmap = blocked({
        let mm = mm.clone();
        move || mm.munmap(va + 2 * PAGE_SIZE, PAGE_SIZE)
    });
    drop(uffd);
    assert_eq!(unmap.join().unwrap(), Ok(()), "close lets the caller go");
    assert_eq!(reader.join().unwrap().unwrap(), 0);
}

#[test]
fn without_the_event_features_nothing_waits() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let uffd = userfaultfd(&mm, O_NONBLOCK, UFFD_FEATURE_EVENT_REMAP);
    let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, 4 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    mm.madvise(va, PAGE_SIZE, MadviseAdvice::DontNeed).unwrap();
    mm.munmap(va, PAGE_SIZE).unwrap();
    let child = mm.fork().unwrap();
    assert!(child.mmap_read().iter().all(|v| v.uffd.is_none()), "no EVENT_FORK: the child is not registered");
    assert_eq!(uffd.read(), Err(UffdError::Again));
}
