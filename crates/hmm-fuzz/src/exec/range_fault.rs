//! The fuzzer's direct `range_fault` user: raw default flags, masks and
//! input words that no dmirror ioctl can pass, against a subscriber that
//! keeps only the sequence protocol (a lock, `set_seq`, no device table).
//! Every result is checked against the CPU page table
//! ([`crate::invariants::check_range_fault_result`]).

use std::sync::{Arc, Mutex};

use hmm::{range_fault_loop, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_types::{NotifierRange, PAGE_SIZE, TASK_SIZE};

use super::{Outcome, World, MAX_RANGE_PAGES};
use crate::ops::{Addr, Count};

/// The driver side of the fuzzer's own `range_fault` user: a lock and the
/// sequence protocol, no device table.
#[derive(Debug, Default)]
pub(super) struct PlainMirror {
    update: Mutex<()>,
}

impl IntervalNotifierOps for PlainMirror {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let _guard = if range.blockable {
            self.update.lock().unwrap_or_else(|poison| poison.into_inner())
        } else {
            match self.update.try_lock() {
                Ok(guard) => guard,
                Err(_) => return false,
            }
        };
        subscription.set_seq(cur_seq);
        true
    }
}

impl World {
    pub(super) fn range_fault(
        &mut self,
        addr: Addr,
        npages: Count,
        default_flags: u64,
        mask: u64,
        input: u64,
        owner: u8,
    ) -> Outcome {
        let owner = self.dmirror.device(usize::from(owner)).ok().map(|device| device.owner());
        let proc = &mut self.procs[self.current];
        let mm = proc.mm.clone();
        if proc.notifier.is_none() {
            let mirror = Arc::new(PlainMirror::default());
            match mm.interval_notifier_insert(0, TASK_SIZE, mirror.clone()) {
                Ok(notifier) => proc.notifier = Some((mirror, notifier)),
                Err(errno) => return Outcome::Err(errno, "interval_notifier_insert".into()),
            }
        }
        let (mirror, notifier) = proc.notifier.clone().expect("inserted above");
        let start = addr.resolve();
        let pages = npages.resolve();
        let end = start.wrapping_add(pages.wrapping_mul(PAGE_SIZE));
        // A pfn array that cannot be allocated is not asked for: a short one
        // must be refused before anything is walked.
        let words = if pages <= MAX_RANGE_PAGES { pages as usize } else { 1 };
        let mut pfns = vec![input; words];
        let mut range = Range {
            notifier: &notifier,
            notifier_seq: 0,
            start,
            end,
            hmm_pfns: &mut pfns,
            default_flags,
            pfn_flags_mask: mask,
            dev_private_owner: owner,
        };
        let result = range_fault_loop(&mm, &mut range, hmm::HMM_RANGE_DEFAULT_TIMEOUT, |range| {
            let _guard = mirror.update.lock().unwrap_or_else(|poison| poison.into_inner());
            (!range.notifier.read_retry(range.notifier_seq)).then_some(())
        });
        match result {
            Ok(()) => match crate::invariants::check_range_fault_result(&mm, start, &pfns, owner) {
                Ok(()) => Outcome::Ok,
                Err(message) => Outcome::Violation(message),
            },
            Err(error) => Outcome::Err(error.errno(), error.to_string()),
        }
    }
}
