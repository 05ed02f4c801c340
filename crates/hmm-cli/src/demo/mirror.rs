//! A minimal mirroring device for the demos: a device page table filled by
//! `hmm::range_fault` and torn down by its interval notifier, and device
//! reads and writes through the mirrored frames. It holds no page
//! reference: everything it knows may be invalidated at any time.
//! (The full reference device, with Linux's test-device commands, is
//! `dmirror`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use hmm::pfn::{
    hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE,
};
use hmm::{range_fault_loop, HmmError, IntervalNotifier, IntervalNotifierOps, Range, HMM_RANGE_DEFAULT_TIMEOUT};
use hmm_mm::Mm;
use hmm_types::{NotifierRange, PAGE_SIZE};

/// The device side: its page table (page → hmm pfn word) and a log of the
/// invalidations it received.
#[derive(Default)]
pub struct Device {
    table: Mutex<BTreeMap<u64, u64>>,
    log: Mutex<Vec<String>>,
}

impl IntervalNotifierOps for Device {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let mut table = self.table.lock();
        subscription.set_seq(cur_seq);
        let doomed: Vec<u64> = table.range(range.start..range.end).map(|(&va, _)| va).collect();
        for va in &doomed {
            table.remove(va);
        }
        self.log.lock().push(format!(
            "{} [{:#x}, {:#x}): the device removed {} of its entries (one per 4 KiB page)",
            range.event.kernel_name(),
            range.start,
            range.end.min(1 << 47),
            doomed.len()
        ));
        true
    }
}

/// A device bound to one address space through a notifier.
pub struct Mirror {
    mm: Arc<Mm>,
    device: Arc<Device>,
    notifier: Arc<IntervalNotifier>,
}

impl Mirror {
    /// Mirrors the whole address space of `mm`.
    pub fn bind(mm: &Arc<Mm>) -> Result<Self, hmm_types::Errno> {
        let device = Arc::new(Device::default());
        let notifier = mm.interval_notifier_insert(0, 1 << 47, device.clone())?;
        Ok(Self { mm: mm.clone(), device, notifier })
    }

    /// Fills the device table for `[start, start + len)` (faulting if asked).
    pub fn fault(&self, start: u64, len: u64, fault: bool, write: bool) -> Result<(), HmmError> {
        let mut pfns = vec![0u64; (len / PAGE_SIZE) as usize];
        let default_flags = if fault { HMM_PFN_REQ_FAULT } else { 0 } | if write { HMM_PFN_REQ_WRITE } else { 0 };
        let mut range = Range {
            notifier: &self.notifier,
            notifier_seq: 0,
            start,
            end: start + len,
            hmm_pfns: &mut pfns,
            default_flags,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        range_fault_loop(&self.mm, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |range| {
            let mut table = self.device.table.lock();
            if range.notifier.read_retry(range.notifier_seq) {
                return None;
            }
            for (i, &word) in range.hmm_pfns.iter().enumerate() {
                if word & HMM_PFN_VALID != 0 {
                    table.insert(range.start + i as u64 * PAGE_SIZE, word);
                }
            }
            Some(())
        })
    }

    /// The device's entry for the page at `va`, if any.
    pub fn entry(&self, va: u64) -> Option<u64> {
        self.device.table.lock().get(&(va & !(PAGE_SIZE - 1))).copied()
    }

    /// Orders seen in the device table over `[start, end)`, with counts.
    pub fn orders(&self, start: u64, end: u64) -> BTreeMap<u32, usize> {
        let mut orders = BTreeMap::new();
        for (_, &word) in self.device.table.lock().range(start..end) {
            *orders.entry(hmm_pfn_to_map_order(word)).or_default() += 1;
        }
        orders
    }

    /// A device write: faults the page in for writing if the device table
    /// lacks a writable entry, then stores through the frame.
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), HmmError> {
        if self.entry(va).is_none_or(|w| w & HMM_PFN_WRITE == 0) {
            self.fault(va & !(PAGE_SIZE - 1), PAGE_SIZE, true, true)?;
        }
        let table = self.device.table.lock();
        let word = table.get(&(va & !(PAGE_SIZE - 1))).ok_or(HmmError::Busy)?;
        self.mm.phys().write(hmm_pfn_to_pfn(*word), va % PAGE_SIZE, data);
        Ok(())
    }

    /// A device read, faulting the page in if the device table lacks it.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), HmmError> {
        if self.entry(va).is_none() {
            self.fault(va & !(PAGE_SIZE - 1), PAGE_SIZE, true, false)?;
        }
        let table = self.device.table.lock();
        let word = table.get(&(va & !(PAGE_SIZE - 1))).ok_or(HmmError::Busy)?;
        self.mm.phys().read(hmm_pfn_to_pfn(*word), va % PAGE_SIZE, buf);
        Ok(())
    }

    /// Invalidations received since the last call.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.device.log.lock())
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.notifier.remove();
    }
}
