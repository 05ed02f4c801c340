//! A minimal mirroring driver, the starting point for a real one: a device
//! page table filled on demand by `range_fault` and kept coherent by an
//! interval notifier, with no page reference held.
//!
//! Run it with `cargo run -p hmm --example mirror`.
//!
//! The driver's half of the protocol, in order:
//! 1. subscribe an interval notifier over the range to mirror;
//! 2. `read_begin` to get a sequence number;
//! 3. `range_fault` under the mmap read lock (`Busy`: back to 2);
//! 4. take the driver lock, `read_retry` (true: an invalidation raced,
//!    back to 2), program the device table, drop the lock;
//! 5. in the notifier callback, under the same driver lock: `set_seq`,
//!    then remove the device entries of the invalidated range.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex};

use hmm::pfn::{
    hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE,
};
use hmm::{range_fault, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::{Kernel, KernelConfig, Mm};
use hmm_types::{MapFlags, NotifierRange, Prot, PAGE_SIZE};

/// The device: its page table (virtual page → hmm pfn word), behind the
/// driver lock that the notifier callback also takes.
#[derive(Default)]
struct Device {
    table: Mutex<BTreeMap<u64, u64>>,
}

impl IntervalNotifierOps for Device {
    /// The CPU side is about to change `range`: drop the device's entries
    /// there before it does. Returning `true` means "done, no need to
    /// retry" (a non-blocking request may be refused with `false`).
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let mut table = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Under the driver lock: a concurrent fault's read_retry now fails.
        subscription.set_seq(cur_seq);
        let end = range.end.min(u64::MAX - PAGE_SIZE);
        let doomed: Vec<u64> = table.range(range.start..end).map(|(&va, _)| va).collect();
        for va in &doomed {
            table.remove(va);
        }
        println!(
            "invalidate {} [{:#x}, {:#x}): {} device entries removed",
            range.event.kernel_name(),
            range.start,
            range.end,
            doomed.len()
        );
        true
    }
}

/// Fills the device table for `[start, end)`, faulting pages in for
/// writing: the retry protocol written out.
fn device_fault(mm: &Mm, notifier: &IntervalNotifier, device: &Device, start: u64, end: u64) -> Result<(), HmmError> {
    let mut pfns = vec![0u64; ((end - start) / PAGE_SIZE) as usize];
    loop {
        let mut range = Range {
            notifier,
            notifier_seq: notifier.read_begin(),
            start,
            end,
            hmm_pfns: &mut pfns,
            default_flags: HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        match range_fault(&mm.mmap_read(), &mut range) {
            Ok(()) => {}
            Err(HmmError::Busy) => continue,
            Err(error) => return Err(error),
        }
        let mut table = device.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if notifier.read_retry(range.notifier_seq) {
            continue; // an invalidation raced with the walk: start again
        }
        for (i, &word) in range.hmm_pfns.iter().enumerate() {
            if word & HMM_PFN_VALID != 0 {
                table.insert(start + i as u64 * PAGE_SIZE, word);
            }
        }
        return Ok(());
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 64 << 20, ..KernelConfig::default() })?;
    let mm = kernel.create_mm()?;
    let len = 16 * PAGE_SIZE;
    let va = mm.mmap(0, len, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS)?;
    mm.write_u64(va, 42)?;

    // 1. Subscribe to invalidations of the buffer.
    let device = Arc::new(Device::default());
    let notifier = mm.interval_notifier_insert(va, len, device.clone())?;

    // 2–4. Mirror it.
    device_fault(&mm, &notifier, &device, va, va + len)?;
    {
        let table = device.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let word = table[&va];
        println!(
            "device maps {} pages; page 0 -> PFN {} (order {}, {})",
            table.len(),
            hmm_pfn_to_pfn(word),
            hmm_pfn_to_map_order(word),
            if word & HMM_PFN_WRITE != 0 { "writable" } else { "read-only" }
        );
        // The device reads the CPU's value through the frame it mapped.
        let mut bytes = [0u8; 8];
        mm.phys().read(hmm_pfn_to_pfn(word), 0, &mut bytes);
        assert_eq!(u64::from_le_bytes(bytes), 42);
    }

    // 5. The CPU unmaps half the buffer: the callback drops those entries
    //    before the frames are freed.
    mm.munmap(va, len / 2)?;
    let left = device.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len();
    println!("after munmap of the first half, the device maps {left} pages");
    assert_eq!(left as u64, len / 2 / PAGE_SIZE);

    notifier.remove();
    Ok(())
}
