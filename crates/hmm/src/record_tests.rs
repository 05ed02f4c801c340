//! The 7.3 walk records faults instead of performing them (delta §1.3):
//! which `[addr, end)` each callback kind records.

use std::sync::Arc;

use hmm_mm::testing::kernel;
use hmm_mm::ThpMode;
use hmm_notifier::{IntervalNotifier, IntervalNotifierOps};
use hmm_types::{MapFlags, NotifierRange, Prot, PAGE_SIZE, PMD_SIZE};

use crate::fault::Recorded;
use crate::pfn::HMM_PFN_REQ_FAULT;
use crate::range::{Need, Range};
use crate::walk::{walk, Stop};

struct Ignore;

impl IntervalNotifierOps for Ignore {
    fn invalidate(&self, s: &IntervalNotifier, _: &NotifierRange, seq: u64) -> bool {
        s.set_seq(seq);
        true
    }
}

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::FIXED);
const BASE: u64 = 0x4000_0000;

/// Walks `[start, end)` once with `pfns` as input; returns what stopped it.
fn first_record(mm: &hmm_mm::Mm, start: u64, end: u64, pfns: &mut [u64]) -> Option<Recorded> {
    let notifier = mm.interval_notifier_insert(start, end - start, Arc::new(Ignore)).unwrap();
    let mut range = Range {
        notifier: &notifier,
        notifier_seq: notifier.read_begin(),
        start,
        end,
        hmm_pfns: pfns,
        default_flags: 0,
        pfn_flags_mask: HMM_PFN_REQ_FAULT,
        dev_private_owner: None,
    };
    let guard = mm.mmap_read();
    let result = match walk(&guard, &mut range, start) {
        Err(Stop::Fault(recorded)) => Some(recorded),
        Ok(()) => None,
        Err(Stop::Again(_)) => panic!("no migration here"),
        Err(Stop::Error(error)) => panic!("unexpected {error}"),
    };
    drop(guard);
    notifier.remove();
    result
}

#[test]
fn a_hole_records_the_whole_hole_even_past_a_pmd() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let len = 2 * PMD_SIZE;
    let va = mm.mmap(BASE, len, Prot::RW, ANON).unwrap();
    let mut pfns = vec![HMM_PFN_REQ_FAULT; (len / PAGE_SIZE) as usize];
    let recorded = first_record(&mm, va, va + len, &mut pfns);
    assert_eq!(recorded, Some(Recorded { addr: va, end: va + len, need: Need { fault: true, write: false } }));
    assert!(pfns.iter().all(|&w| w == HMM_PFN_REQ_FAULT), "nothing was faulted or written by the walk");
}

#[test]
fn a_pte_records_from_the_first_page_needing_a_fault_to_the_segment_end() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let len = 2 * PMD_SIZE;
    let va = mm.mmap(BASE, len, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap(); // a PTE table for the first segment
    let mut pfns = vec![0; (len / PAGE_SIZE) as usize];
    pfns[5] = HMM_PFN_REQ_FAULT;
    pfns[600] = HMM_PFN_REQ_FAULT;
    let recorded = first_record(&mm, va, va + len, &mut pfns);
    assert_eq!(
        recorded,
        Some(Recorded { addr: va + 5 * PAGE_SIZE, end: va + PMD_SIZE, need: Need { fault: true, write: false } }),
        "the rest of the PMD segment, not the whole range"
    );
    assert_eq!(pfns[1..5], [0; 4], "entries before the fault hold this walk's outputs");
    assert_eq!(pfns[5], HMM_PFN_REQ_FAULT, "the faulting entry still holds its input");
}
