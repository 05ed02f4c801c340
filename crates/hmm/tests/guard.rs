//! `range_fault` over guard pages (Linux 7.3 delta §7.4): a guard marker
//! reads as 0 when no fault is requested and makes a requested fault
//! EFAULT, as `hmm_vma_handle_pte` reports a non-present entry it cannot
//! fault in.

use std::sync::Arc;

use hmm::pfn::{HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID};
use hmm::{range_fault, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::testing::kernel;
use hmm_types::{Errno, MadviseAdvice, MapFlags, NotifierRange, Prot, PAGE_SIZE, TASK_SIZE};

struct Driver;

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        subscription.set_seq(cur_seq);
        true
    }
}

fn walk(mm: &hmm_mm::Mm, notifier: &IntervalNotifier, start: u64, pfns: &mut [u64], req: u64) -> Result<(), HmmError> {
    let guard = mm.mmap_read();
    let mut range = Range {
        notifier,
        notifier_seq: notifier.read_begin(),
        start,
        end: start + pfns.len() as u64 * PAGE_SIZE,
        hmm_pfns: pfns,
        default_flags: req,
        pfn_flags_mask: 0,
        dev_private_owner: None,
    };
    range_fault(&guard, &mut range)
}

#[test]
fn a_guard_page_is_empty_without_a_request_and_efault_with_one() {
    let mm = kernel(64, hmm_mm::ThpMode::Never).create_mm().unwrap();
    let notifier = mm.interval_notifier_insert(0, TASK_SIZE, Arc::new(Driver)).unwrap();
    let va = mm.mmap(0, 3 * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    for i in 0..3 {
        mm.write_u64(va + i * PAGE_SIZE, i).unwrap();
    }
    mm.madvise(va + PAGE_SIZE, PAGE_SIZE, MadviseAdvice::GuardInstall).unwrap();
    let mut pfns = [0u64; 3];
    walk(&mm, &notifier, va, &mut pfns, 0).unwrap();
    assert_ne!(pfns[0] & HMM_PFN_VALID, 0);
    assert_eq!(pfns[1], 0, "no fault requested: 0, not ERROR");
    assert_ne!(pfns[2] & HMM_PFN_VALID, 0);
    for req in [HMM_PFN_REQ_FAULT, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE] {
        let err = walk(&mm, &notifier, va, &mut [0u64; 3], req).unwrap_err();
        assert_eq!(err.errno(), Errno::Fault, "{err}");
        let err = walk(&mm, &notifier, va + PAGE_SIZE, &mut [0u64; 1], req).unwrap_err();
        assert_eq!(err.errno(), Errno::Fault, "{err}");
    }
    // After GUARD_REMOVE the same request faults the page in.
    mm.madvise(va + PAGE_SIZE, PAGE_SIZE, MadviseAdvice::GuardRemove).unwrap();
    let mut pfns = [0u64; 1];
    walk(&mm, &notifier, va + PAGE_SIZE, &mut pfns, HMM_PFN_REQ_FAULT).unwrap();
    assert_ne!(pfns[0] & HMM_PFN_VALID, 0);
}
