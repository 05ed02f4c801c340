//! GUP meeting a userfaultfd-registered page that is missing: the calls
//! that may release the mmap lock (`FOLL_UNLOCKABLE`: the fast calls'
//! slow path, `*_user_pages_remote` with `locked`, the unlocked variants)
//! wait for the handler; the ones run under the caller's mmap lock fail
//! with `EFAULT` and queue nothing (`handle_userfault` without
//! `FAULT_FLAG_ALLOW_RETRY`). `gup_test` exposes both kinds: its fast
//! commands and `PIN_LONGTERM_TEST_FLAG_USE_FAST` run unlocked, the rest
//! under the lock (facts of the 7.3.4 guest,
//! scenarios/device/uffd_gup_waits.hmm). The kernel's copies from and to
//! user memory (read/write of a file, process_vm_readv/writev) wait too,
//! unless the context is `UFFD_USER_MODE_ONLY` (facts of the 6.18 host).

use std::sync::Arc;

use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

use super::*;
use crate::gup::FollFlags;
use crate::gup_test::{GupTestCmd, GupTestFile, FOLL_WRITE, PIN_LONGTERM_FAST};
use crate::testing::{kernel, userfaultfd};
use crate::{Mm, MmError, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: usize = PAGE_SIZE as usize;

/// A process with `pages` registered (MISSING) pages and a blocking
/// userfaultfd with `features`.
fn registered(pages: u64, features: u64) -> (Arc<Mm>, Userfaultfd, u64) {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let uffd = userfaultfd(&mm, O_CLOEXEC, features);
    let va = mm.mmap(0, pages * PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, pages * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    (mm, uffd, va)
}

#[test]
fn an_unlocked_pin_waits_for_the_copy_and_pins_its_page() {
    let (mm, uffd, va) = registered(1, 0);
    let pinner = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.pin_user_pages_unlocked(va, 1, FollFlags::WRITE).map(|p| p.pfns()[0]))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.address(), msg.flags()), (va, UFFD_PAGEFAULT_FLAG_WRITE), "a write fault");
    uffd.copy(va, &[7u8; PAGE], 0).unwrap();
    let pfn = pinner.join().unwrap().unwrap();
    let mut byte = [0u8];
    mm.phys().read(pfn, 0, &mut byte);
    assert_eq!(byte, [7], "the page the handler provided");
}

#[test]
fn a_locked_gup_fails_with_efault_and_queues_nothing() {
    let (mm, uffd, va) = registered(1, 0);
    assert_eq!(mm.pin_user_pages(va, 1, FollFlags::empty()).unwrap_err().errno(), Errno::Fault);
    assert_eq!(mm.get_user_pages(va, 1, FollFlags::WRITE).unwrap_err().errno(), Errno::Fault);
    assert!(!uffd.poll().readable, "no message");
}

#[test]
fn a_sigbus_context_fails_an_unlocked_gup_at_once() {
    let (mm, uffd, va) = registered(1, UFFD_FEATURE_SIGBUS);
    assert_eq!(mm.get_user_pages_unlocked(va, 1, FollFlags::empty()).unwrap_err().errno(), Errno::Fault);
    assert!(!uffd.poll().readable);
}

#[test]
fn a_fatal_signal_ends_an_unlocked_gup_with_eintr() {
    let (mm, uffd, va) = registered(1, 0);
    let getter = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.get_user_pages_unlocked(va, 1, FollFlags::empty()))
    };
    uffd.read().unwrap();
    mm.send_fatal_signal();
    assert!(matches!(getter.join().unwrap(), Err(MmError::Interrupted)));
}

#[test]
fn gup_test_fast_commands_wait_page_by_page_and_basic_ones_stop() {
    let (mm, uffd, va) = registered(2, 0);
    let file = GupTestFile::new();
    assert_eq!(file.run(&mm, GupTestCmd::GupBasic, va, 2 * PAGE_SIZE, 1, 0).unwrap(), 0);
    assert_eq!(file.run(&mm, GupTestCmd::PinLongterm, va, 2 * PAGE_SIZE, 1, 0).unwrap(), 0);
    assert_eq!(file.pin_longterm_start(&mm, va, PAGE_SIZE, 0).unwrap_err().errno(), Errno::Fault);
    assert!(!uffd.poll().readable, "the locked commands queued nothing");
    let runner = {
        let mm = mm.clone();
        std::thread::spawn(move || GupTestFile::new().run(&mm, GupTestCmd::PinFast, va, 2 * PAGE_SIZE, 2, FOLL_WRITE))
    };
    for page in 0..2 {
        let msg = uffd.read().unwrap();
        assert_eq!(msg.address(), va + page * PAGE_SIZE, "one page after the other");
        uffd.zeropage(va + page * PAGE_SIZE, PAGE_SIZE, 0).unwrap();
    }
    assert_eq!(runner.join().unwrap().unwrap(), 2 * PAGE_SIZE);
}

#[test]
fn a_fast_long_term_pin_waits_for_the_handler() {
    let (mm, uffd, va) = registered(1, 0);
    let file = Arc::new(GupTestFile::new());
    let starter = {
        let (mm, file) = (mm.clone(), file.clone());
        std::thread::spawn(move || file.pin_longterm_start(&mm, va, PAGE_SIZE, PIN_LONGTERM_FAST))
    };
    assert_eq!(uffd.read().unwrap().address(), va);
    uffd.copy(va, &[3u8; PAGE], 0).unwrap();
    starter.join().unwrap().unwrap();
    assert_eq!(file.longterm_pages(), 1);
}

/// Host 6.18: write(2) from, read(2) into, and process_vm_readv/writev of
/// a registered missing buffer wait for the handler (the message has the
/// write flag when the kernel stores); with `UFFD_USER_MODE_ONLY` they
/// fail with `EFAULT` and queue nothing.
#[test]
fn kernel_copies_wait_unless_the_context_is_user_mode_only() {
    let (mm, uffd, va) = registered(1, 0);
    let writer = {
        let mm = mm.clone();
        std::thread::spawn(move || mm.write_bytes_remote(va, &[9u8; 8]))
    };
    let msg = uffd.read().unwrap();
    assert_eq!((msg.address(), msg.flags()), (va, UFFD_PAGEFAULT_FLAG_WRITE));
    uffd.zeropage(va, PAGE_SIZE, 0).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(mm.read_u64(va), Ok(0x0909_0909_0909_0909));

    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let uffd = userfaultfd(&mm, O_CLOEXEC | UFFD_USER_MODE_ONLY, 0);
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    uffd.register(va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(mm.read_bytes_remote(va, &mut buf).unwrap_err().errno(), Errno::Fault);
    assert_eq!(mm.write_u64_remote(va, 1).unwrap_err().errno(), Errno::Fault);
    assert!(!uffd.poll().readable, "no message");
}
