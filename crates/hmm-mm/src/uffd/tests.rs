//! userfaultfd as Linux documents it (`userfaultfd(2)`, `ioctl_userfaultfd(2)`,
//! delta §1.7.4 and §5.4). Waits are made deterministic by a blocking
//! `read` on the handler side: a message exists only once the fault sleeps.

use std::sync::Arc;

use hmm_pagetable::Level;
use hmm_types::{Errno, MapFlags, Prot, VmFlags, PAGE_SIZE};

use super::*;
use crate::testing::{kernel, leaf, record, userfaultfd};
use crate::{FaultError, FaultFlags, FaultOutcome, Mm, MmError, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: usize = PAGE_SIZE as usize;

fn mm() -> Arc<Mm> {
    kernel(64, ThpMode::Never).create_mm().unwrap()
}

/// A blocking userfaultfd past the API handshake.
pub(super) fn uffd(mm: &Arc<Mm>, features: u64) -> Userfaultfd {
    userfaultfd(mm, O_CLOEXEC, features)
}

#[test]
fn api_handshake_checks_the_version_the_features_and_happens_once() {
    let mm = mm();
    assert_eq!(Userfaultfd::new(&mm, 0x8).unwrap_err().errno(), Errno::Inval, "unknown open flag");
    let uffd = Userfaultfd::new(&mm, O_NONBLOCK).unwrap();
    assert_eq!(uffd.read().unwrap_err().errno(), Errno::Inval, "read before UFFDIO_API");
    assert!(uffd.poll().error, "POLLERR before UFFDIO_API");
    assert_eq!(uffd.register(0x10000, 0x1000, UFFDIO_REGISTER_MODE_MISSING).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.api(0xAB, 0).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.api(UFFD_API, 1 << 20).unwrap_err().errno(), Errno::Inval, "no such feature");
    let (features, ioctls) = uffd.api(UFFD_API, 0).unwrap();
    assert_eq!(features, (1 << 19) - 1, "every feature of 7.3, WP_HUGETLBFS_SHMEM included");
    assert_eq!(ioctls, (1 << 0x00) | (1 << 0x01) | (1 << 0x0A) | (1 << 0x3F), "7.3 adds SET_MODE (0x0A)");
    assert_eq!(uffd.api(UFFD_API, 0).unwrap_err().errno(), Errno::Inval, "only once per file");
    assert_eq!(uffd.read().unwrap_err().errno(), Errno::Again, "non-blocking, nothing pending");
}

#[test]
fn register_validates_mode_range_and_vmas_and_splits_at_the_ends() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let missing = UFFDIO_REGISTER_MODE_MISSING;
    assert_eq!(uffd.register(va, PAGE_SIZE, 0).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.register(va, PAGE_SIZE, 16).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.register(va + 1, PAGE_SIZE, missing).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.register(va, 0, missing).unwrap_err().errno(), Errno::Inval);
    assert_eq!(uffd.register(0x10000, PAGE_SIZE, missing).unwrap_err().errno(), Errno::Inval, "no VMA");
    assert_eq!(uffd.register(va, PAGE_SIZE, 8).unwrap_err().errno(), Errno::Inval, "RWP, not negotiated");
    let ioctls = uffd.register(va + PAGE_SIZE, 2 * PAGE_SIZE, missing).unwrap();
    assert_eq!(
        ioctls,
        (1 << 0x02) | (1 << 0x03) | (1 << 0x04) | (1 << 0x05) | (1 << 0x08),
        "WAKE COPY ZEROPAGE MOVE POISON"
    );
    let guard = mm.mmap_read();
    let vmas: Vec<_> = guard.iter().map(|v| (v.start, v.end, v.flags.contains(VmFlags::UFFD_MISSING))).collect();
    drop(guard);
    assert_eq!(
        vmas,
        [
            (va, va + PAGE_SIZE, false),
            (va + PAGE_SIZE, va + 3 * PAGE_SIZE, true),
            (va + 3 * PAGE_SIZE, va + 4 * PAGE_SIZE, false)
        ]
    );
    let other = self::uffd(&mm, 0);
    assert_eq!(other.register(va, 2 * PAGE_SIZE, missing).unwrap_err().errno(), Errno::Busy);
    uffd.unregister(va, 4 * PAGE_SIZE).unwrap();
    assert_eq!(mm.mmap_read().iter().count(), 1, "unregistered VMAs merge back");
}

#[test]
fn a_fault_that_may_not_drop_the_lock_is_sigbus_with_no_message() {
    let mm = mm();
    let uffd = userfaultfd(&mm, O_NONBLOCK, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let result = mm.mmap_read().handle_mm_fault(va, FaultFlags::REMOTE);
    assert!(matches!(result, Err(FaultError::Sigbus(_))), "{result:?}");
    assert!(!uffd.poll().readable);
    assert_eq!(uffd.read().unwrap_err(), UffdError::Again);
}

#[test]
fn a_cpu_read_waits_for_the_handler_copy() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let rec = record(&mm);
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va + PAGE_SIZE + 8))
    };
    let msg = uffd.read().unwrap();
    assert_eq!(
        (msg.event, msg.flags(), msg.address()),
        (UFFD_EVENT_PAGEFAULT, 0, va + PAGE_SIZE),
        "page-aligned read fault"
    );
    assert_eq!(msg.to_bytes()[0], 0x12);
    assert!(!uffd.poll().readable, "the message was consumed");
    let src = [0xAB_u8; PAGE];
    assert_eq!(uffd.copy(va + PAGE_SIZE, &src, 0), Ok(PAGE_SIZE));
    assert_eq!(reader.join().unwrap(), Ok(0xABAB_ABAB_ABAB_ABAB));
    let (level, entry) = leaf(&mm, va + PAGE_SIZE);
    assert_eq!(level, Level::Pte);
    assert!(entry.is_write(), "writable because the VMA is");
    assert!(rec.take_events().is_empty(), "none → present announces nothing");
    assert_eq!(uffd.copy(va + PAGE_SIZE, &src, 0), Err(UffdError::Exists(va + PAGE_SIZE)));
}

#[test]
fn a_write_fault_is_flagged_and_zeropage_resolves_a_read() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_EXACT_ADDRESS);
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let writer = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.write_u64(va + 16, 7))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.flags(), msg.address()), (UFFD_PAGEFAULT_FLAG_WRITE, va + 16), "exact address negotiated");
    uffd.copy(va, &[0u8; PAGE], 0).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(mm.read_u64(va + 16), Ok(7));

    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va + PAGE_SIZE))
    };
    uffd.read().unwrap();
    assert_eq!(uffd.zeropage(va + PAGE_SIZE, PAGE_SIZE, 0), Ok(PAGE_SIZE));
    assert_eq!(reader.join().unwrap(), Ok(0));
    assert_eq!(leaf(&mm, va + PAGE_SIZE).1.pfn(), mm.phys().zero_pfn());
}

#[test]
fn copy_outside_a_registered_range_is_enoent() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    assert_eq!(uffd.copy(va, &[0u8; PAGE], 0).unwrap_err().errno(), Errno::NoEnt);
    assert_eq!(uffd.copy(va, &[0u8; 100], 0).unwrap_err().errno(), Errno::Inval, "length not page aligned");
    assert_eq!(uffd.copy(va, &[0u8; PAGE], 4).unwrap_err().errno(), Errno::Inval, "unknown mode");
}

#[test]
fn the_sigbus_feature_fails_the_fault_at_once() {
    let mm = mm();
    let uffd = userfaultfd(&mm, O_NONBLOCK, UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    assert!(matches!(mm.read_u64(va), Err(MmError::Fault { error: FaultError::Sigbus(_), .. })));
    assert!(!uffd.poll().readable, "no message");
}

#[test]
fn user_mode_only_refuses_remote_faults_but_serves_user_ones() {
    let mm = mm();
    let uffd = userfaultfd(&mm, UFFD_USER_MODE_ONLY, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let remote = FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    let result = mm.mmap_read().handle_mm_fault_unlockable(va, remote);
    assert!(matches!(result, Err(FaultError::Sigbus(_))), "{result:?}");
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    assert_eq!(uffd.read().unwrap().address(), va, "a user fault is reported");
    uffd.copy(va, &[1u8; PAGE], 0).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0x0101_0101_0101_0101));
}

#[test]
fn an_unlockable_remote_fault_sleeps_without_the_mmap_lock() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let faulter = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let mut guard = mm.mmap_read();
            let flags = FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
            guard.handle_mm_fault_unlockable(va, flags)
        })
    };
    uffd.read().unwrap();
    // The lock is free while it sleeps: a writer gets it.
    drop(mm.mmap_write());
    uffd.copy(va, &[2u8; PAGE], 0).unwrap();
    assert_eq!(faulter.join().unwrap(), Ok(FaultOutcome::Released), "VM_FAULT_RETRY");
}

#[test]
fn close_and_unregister_release_waiting_faults() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    uffd.read().unwrap();
    uffd.unregister(va, PAGE_SIZE).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0), "retried and faulted normally");
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va + PAGE_SIZE))
    };
    uffd.read().unwrap();
    drop(uffd);
    assert_eq!(reader.join().unwrap(), Ok(0));
    assert!(!mm.mmap_read().iter().any(|v| v.flags.contains(VmFlags::UFFD_MISSING)));
}

#[test]
fn a_fatal_signal_ends_the_wait() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    uffd.read().unwrap();
    mm.send_fatal_signal();
    assert!(matches!(reader.join().unwrap(), Err(MmError::Fault { .. })));
}

#[test]
fn a_fork_child_is_not_registered() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let child = mm.fork().unwrap();
    assert_eq!(child.read_u64(va), Ok(0), "no EVENT_FORK: the child faults normally");
    assert!(!uffd.poll().readable);
}

#[test]
fn poll_wait_returns_on_a_message_or_an_interrupt() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let stop = uffd.poll_interrupt();
    stop.interrupt();
    assert_eq!(uffd.poll_wait(), PollEvents { readable: false, error: false, interrupted: true });
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    assert!(uffd.poll_wait().readable);
    uffd.read().unwrap();
    uffd.wake(va, PAGE_SIZE).unwrap();
    // Woken without a page: the fault retries and asks again.
    uffd.read().unwrap();
    uffd.copy(va, &[3u8; PAGE], UFFDIO_COPY_MODE_DONTWAKE).unwrap();
    uffd.wake(va, PAGE_SIZE).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0x0303_0303_0303_0303));
}

#[test]
fn a_copy_stopped_by_a_mapped_page_reports_the_bytes_it_filled() {
    let mm = mm();
    let uffd = uffd(&mm, 0);
    let va = mm.mmap(0, 3 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, 3 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    uffd.zeropage(va + PAGE_SIZE, PAGE_SIZE, 0).unwrap();
    let reader = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.read_u64(va))
    };
    uffd.read().unwrap();
    let error = uffd.copy(va, &[9u8; 3 * PAGE], 0).unwrap_err();
    assert_eq!(error, UffdError::Partial { copied: PAGE_SIZE });
    assert_eq!(error.errno(), Errno::Again);
    assert_eq!(reader.join().unwrap(), Ok(0x0909_0909_0909_0909), "the filled page was woken");
    assert_eq!(
        uffd.copy(va + PAGE_SIZE, &[9u8; PAGE], 0),
        Err(UffdError::Exists(va + PAGE_SIZE)),
        "no progress: the error itself"
    );
    assert!(leaf(&mm, va + 2 * PAGE_SIZE).1.is_none(), "nothing after the failing page");
}

/// Regression: mremap kept the registration and the uffd-wp bits of a
/// moved range (Linux drops both without UFFD_FEATURE_EVENT_REMAP).
#[test]
fn mremap_moves_a_range_out_of_its_registration() {
    let mm = mm();
    let uffd = uffd(&mm, UFFD_FEATURE_SIGBUS);
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    uffd.register(va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(va, PAGE_SIZE, 1).unwrap();
    let flags = hmm_types::MremapFlags::MAYMOVE | hmm_types::MremapFlags::FIXED;
    let new = mm.mremap(va, 2 * PAGE_SIZE, 2 * PAGE_SIZE, flags, va + 64 * PAGE_SIZE).unwrap();
    assert_eq!(new, va + 64 * PAGE_SIZE);
    assert_eq!(mm.pagemap_entry(new).unwrap() & crate::proc_pagemap::PM_UFFD_WP, 0);
    mm.write_u64(new, 2).unwrap();
    assert_eq!(mm.read_u64(new + PAGE_SIZE).unwrap(), 0, "not MISSING-armed any more");
}
