//! HMM over userfaultfd's RWP mode (Linux 7.3, delta §7.6 and §1.7.4): a
//! read-write-protected page is a PROT_NONE leaf, so a snapshot reports 0;
//! a requested fault is an RWP fault, which the locked `range_fault` gets
//! as EFAULT with no message queued, `range_fault_unlocked_timeout` waits
//! for (until UFFDIO_RWPROTECT resolves the page), and async mode resolves
//! inline for both. The 7.3.4 guest shows the locked and the async cases
//! through dmirror (scenarios/device/uffd_rwp_dmirror.hmm).

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hmm::pfn::{hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_VALID};
use hmm::{range_fault, range_fault_unlocked_timeout, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::proc_pagemap::PM_UFFD_WP;
use hmm_mm::testing::kernel;
use hmm_mm::uffd::rwp::{UFFDIO_RWPROTECT_MODE_RWP, UFFD_FEATURE_RWP, UFFD_FEATURE_RWP_ASYNC, UFFD_PAGEFAULT_FLAG_RWP};
use hmm_mm::uffd::{Userfaultfd, O_CLOEXEC, UFFDIO_REGISTER_MODE_RWP, UFFD_API, UFFD_EVENT_PAGEFAULT};
use hmm_mm::{Mm, ThpMode};
use hmm_types::{Errno, MapFlags, NotifierRange, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

struct Driver;

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        subscription.set_seq(cur_seq);
        true
    }
}

struct Setup {
    mm: Arc<Mm>,
    va: u64,
    notifier: Arc<IntervalNotifier>,
    uffd: Arc<Userfaultfd>,
}

/// `npages` written pages (page i holds i + 1), registered for RWP and
/// protected, with a blocking userfaultfd negotiated with `features`.
fn protected(npages: u64, features: u64) -> Setup {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, npages * PAGE_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..npages {
        mm.write_u64(va + i * PAGE_SIZE, i + 1).unwrap();
    }
    let notifier = mm.interval_notifier_insert(va, npages * PAGE_SIZE, Arc::new(Driver)).unwrap();
    let uffd = Userfaultfd::new(&mm, O_CLOEXEC).unwrap();
    uffd.api(UFFD_API, features).unwrap();
    uffd.register(va, npages * PAGE_SIZE, UFFDIO_REGISTER_MODE_RWP).unwrap();
    uffd.rwprotect(va, npages * PAGE_SIZE, UFFDIO_RWPROTECT_MODE_RWP).unwrap();
    Setup { mm, va, notifier, uffd: Arc::new(uffd) }
}

fn range<'a>(s: &'a Setup, pfns: &'a mut [u64], flags: u64) -> Range<'a> {
    Range {
        notifier: &s.notifier,
        notifier_seq: s.notifier.read_begin(),
        start: s.va,
        end: s.va + pfns.len() as u64 * PAGE_SIZE,
        hmm_pfns: pfns,
        default_flags: flags,
        pfn_flags_mask: 0,
        dev_private_owner: None,
    }
}

fn first_word(mm: &Mm, hmm_pfn: u64) -> u64 {
    let mut bytes = [0u8; 8];
    mm.phys().read(hmm_pfn_to_pfn(hmm_pfn), 0, &mut bytes);
    u64::from_le_bytes(bytes)
}

#[test]
fn a_snapshot_sees_nothing_and_the_locked_fault_is_efault_without_a_message() {
    let s = protected(2, UFFD_FEATURE_RWP);
    let mut pfns = vec![0; 2];
    {
        let guard = s.mm.mmap_read();
        let mut r = range(&s, &mut pfns, 0);
        range_fault(&guard, &mut r).unwrap();
    }
    assert_eq!(pfns, [0, 0], "cpu flags 0: a protected page is not reported");
    {
        let guard = s.mm.mmap_read();
        let mut r = range(&s, &mut pfns, HMM_PFN_REQ_FAULT);
        assert_eq!(range_fault(&guard, &mut r).map_err(|e| e.errno()), Err(Errno::Fault));
    }
    assert!(!s.uffd.poll().readable, "the locked fault queued no message");
    assert_ne!(s.mm.pagemap_entry(s.va).unwrap() & PM_UFFD_WP, 0, "still protected");
}

#[test]
fn the_unlocked_fault_waits_until_rwprotect_resolves_each_page() {
    let npages = 3;
    let s = protected(npages, UFFD_FEATURE_RWP);
    let handler = {
        let uffd = s.uffd.clone();
        thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..npages {
                let msg = uffd.read().unwrap();
                assert_eq!(msg.event, UFFD_EVENT_PAGEFAULT);
                seen.push((msg.address(), msg.flags()));
                uffd.rwprotect(msg.address(), PAGE_SIZE, 0).unwrap();
            }
            seen
        })
    };
    let mut pfns = vec![0; npages as usize];
    let mut r = range(&s, &mut pfns, HMM_PFN_REQ_FAULT);
    range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO).unwrap();
    let seen = handler.join().unwrap();
    let expected: Vec<(u64, u64)> = (0..npages).map(|i| (s.va + i * PAGE_SIZE, UFFD_PAGEFAULT_FLAG_RWP)).collect();
    assert_eq!(seen, expected, "one RWP read fault per page, in order");
    for (i, &w) in pfns.iter().enumerate() {
        assert_ne!(w & HMM_PFN_VALID, 0, "entry {i}");
        assert_eq!(first_word(&s.mm, w), i as u64 + 1, "the data survived the protection");
    }
}

#[test]
fn async_mode_resolves_inline_for_the_locked_fault_too() {
    let s = protected(2, UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC);
    let mut pfns = vec![0; 2];
    {
        let guard = s.mm.mmap_read();
        let mut r = range(&s, &mut pfns, HMM_PFN_REQ_FAULT);
        range_fault(&guard, &mut r).unwrap();
    }
    assert!(!s.uffd.poll().readable, "no message in async mode");
    assert_eq!(first_word(&s.mm, pfns[1]), 2);
    assert_eq!(s.mm.pagemap_entry(s.va).unwrap() & PM_UFFD_WP, 0, "the fault resolved the protection");
}
