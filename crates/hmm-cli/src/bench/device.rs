//! The devices the benchmark mirrors with: a flat device page table (one
//! u64 hmm pfn word per 4 KiB page of a fixed window) behind the driver's
//! update lock, filled by `range_fault` and cleared by its interval
//! notifiers. Flat, so the cost of an invalidation can be set against the
//! bare cost of clearing the same entries. (The full reference device is
//! `dmirror`; the demos' device is `demo/mirror.rs`.)

use std::sync::Arc;

use parking_lot::Mutex;

use hmm::pfn::HMM_PFN_VALID;
use hmm::{range_fault, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::Mm;
use hmm_types::{Errno, NotifierRange, PAGE_SHIFT};

/// One `range_fault` as a driver takes it: `read_begin`, the mmap read
/// lock, the walk; again on `EBUSY`. `flags` are the request bits for
/// every page (0 for a snapshot). No device is programmed. Returns the
/// sequence the walk ran under, for `read_retry`.
pub fn walk(mm: &Mm, notifier: &IntervalNotifier, start: u64, pfns: &mut [u64], flags: u64) -> Result<u64, HmmError> {
    let end = start + ((pfns.len() as u64) << PAGE_SHIFT);
    loop {
        let seq = notifier.read_begin();
        let mut range = Range {
            notifier,
            notifier_seq: seq,
            start,
            end,
            hmm_pfns: pfns,
            default_flags: flags,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        let guard = mm.mmap_read();
        match range_fault(&guard, &mut range) {
            Err(HmmError::Busy) => continue,
            result => return result.map(|()| seq),
        }
    }
}

/// A subscriber that only keeps the sequence (what every driver must do).
#[derive(Debug, Default)]
pub struct NoDevice;

impl IntervalNotifierOps for NoDevice {
    fn invalidate(&self, subscription: &IntervalNotifier, _: &NotifierRange, cur_seq: u64) -> bool {
        subscription.set_seq(cur_seq);
        true
    }
}

/// A device page table over `[base, base + len)`.
#[derive(Debug)]
struct Table {
    base: u64,
    entries: Mutex<Vec<u64>>,
}

impl IntervalNotifierOps for Table {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let mut entries = self.entries.lock();
        subscription.set_seq(cur_seq);
        let end = self.base + ((entries.len() as u64) << PAGE_SHIFT);
        let from = range.start.max(subscription.start()).max(self.base);
        let to = range.end.min(subscription.last().saturating_add(1)).min(end);
        if from < to {
            let slots = ((from - self.base) >> PAGE_SHIFT) as usize..((to - self.base) >> PAGE_SHIFT) as usize;
            entries[slots].fill(0);
        }
        true
    }
}

/// A device mirroring `[base, base + len)` through `subscriptions` interval
/// notifiers of equal size.
#[derive(Debug)]
pub struct Device {
    table: Arc<Table>,
    notifiers: Vec<Arc<IntervalNotifier>>,
}

impl Device {
    /// Subscribes; the table starts empty.
    pub fn bind(mm: &Mm, base: u64, len: u64, subscriptions: u64) -> Result<Self, Errno> {
        let table = Arc::new(Table { base, entries: Mutex::new(vec![0; (len >> PAGE_SHIFT) as usize]) });
        let chunk = len / subscriptions;
        let notifiers = (0..subscriptions)
            .map(|i| mm.interval_notifier_insert(base + i * chunk, chunk, table.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Self { table, notifiers })
    }

    /// Mirrors the whole window (no fault), subscription by subscription,
    /// programming the table under its lock if no invalidation raced.
    pub fn fill(&self, mm: &Mm) -> Result<(), HmmError> {
        for notifier in &self.notifiers {
            let first = ((notifier.start() - self.table.base) >> PAGE_SHIFT) as usize;
            let mut pfns = vec![0; ((notifier.last() + 1 - notifier.start()) >> PAGE_SHIFT) as usize];
            loop {
                let seq = walk(mm, notifier, notifier.start(), &mut pfns, 0)?;
                let mut entries = self.table.entries.lock();
                if !notifier.read_retry(seq) {
                    entries[first..first + pfns.len()].copy_from_slice(&pfns);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Valid entries in the table.
    pub fn valid_entries(&self) -> usize {
        self.table.entries.lock().iter().filter(|&&w| w & HMM_PFN_VALID != 0).count()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for notifier in &self.notifiers {
            notifier.remove();
        }
    }
}
