//! The driver-facing HMM API: what an SVM driver uses to mirror a process
//! address space on a device.
//!
//! * Subscribe to invalidations of an interval: [`Mm::interval_notifier_insert`]
//!   (re-exported types [`IntervalNotifier`], [`IntervalNotifierOps`]).
//! * Fill a device page table on demand: [`range_fault`] over a [`Range`],
//!   inside the collision-retry protocol ([`range_fault_loop`] does it for
//!   you with the customary 1000 ms budget).
//! * Or let HMM take the mmap lock itself and wait for userfaultfd
//!   handlers: [`range_fault_unlocked_timeout`] (Linux 7.3's normal
//!   interface; `notifier_seq` is its output).
//! * Read the results with the `HMM_PFN_*` constants and helpers in [`pfn`].
//! * DMA-map what you mirror with the helpers in [`dma`]
//!   (`hmm_dma_map_alloc`, `hmm_dma_map_pfn`, `hmm_dma_unmap_pfn`,
//!   `hmm_dma_map_free`) over a [`dma::DmaDevice`].
//! * Move anonymous memory to device memory and back with [`MigrateVma`]
//!   (setup, copy, pages, finalize), evict it with [`MigrateDevice`], take
//!   a page for device atomics with [`make_device_exclusive`].
//!
//! The walk takes no page reference. A mirror is correct because the
//! driver's `invalidate` callback removes its entries before the CPU side
//! frees or changes anything, and because a walk that raced with an
//! invalidation is detected (`read_retry`) and repeated.
//!
//! A minimal mirroring driver (`examples/mirror.rs` is the same, with
//! commentary: `cargo run -p hmm --example mirror`):
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//!
//! use hmm::pfn::{HMM_PFN_REQ_FAULT, HMM_PFN_VALID};
//! use hmm::{range_fault, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
//! use hmm_mm::{Kernel, KernelConfig};
//! use hmm_types::{MapFlags, NotifierRange, Prot, PAGE_SIZE};
//!
//! /// The device page table (page -> hmm pfn word) behind the driver lock.
//! #[derive(Default)]
//! struct Device(Mutex<BTreeMap<u64, u64>>);
//!
//! impl IntervalNotifierOps for Device {
//!     fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
//!         let mut table = self.0.lock().unwrap();
//!         sub.set_seq(cur_seq); // under the driver lock
//!         table.retain(|&va, _| va < range.start || va >= range.end);
//!         true
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = Kernel::new(KernelConfig { ram_bytes: 64 << 20, ..KernelConfig::default() })?;
//! let mm = kernel.create_mm()?;
//! let len = 4 * PAGE_SIZE;
//! let va = mm.mmap(0, len, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS)?;
//! let device = Arc::new(Device::default());
//! let notifier = mm.interval_notifier_insert(va, len, device.clone())?;
//!
//! let mut pfns = vec![0u64; (len / PAGE_SIZE) as usize];
//! loop {
//!     let seq = notifier.read_begin(); // may wait for an invalidation
//!     let mut range = Range {
//!         notifier: &notifier,
//!         notifier_seq: seq,
//!         start: va,
//!         end: va + len,
//!         hmm_pfns: &mut pfns,
//!         default_flags: HMM_PFN_REQ_FAULT,
//!         pfn_flags_mask: 0,
//!         dev_private_owner: None,
//!     };
//!     match range_fault(&mm.mmap_read(), &mut range) {
//!         Err(HmmError::Busy) => continue, // collided with an invalidation
//!         result => result?,
//!     }
//!     let mut table = device.0.lock().unwrap();
//!     if notifier.read_retry(seq) {
//!         continue; // an invalidation ran since read_begin: walk again
//!     }
//!     for (i, &word) in pfns.iter().enumerate().filter(|(_, &w)| w & HMM_PFN_VALID != 0) {
//!         table.insert(va + i as u64 * PAGE_SIZE, word); // program the device
//!     }
//!     break;
//! }
//! assert_eq!(device.0.lock().unwrap().len(), 4);
//!
//! mm.munmap(va, len)?; // the callback removes the device's entries first
//! assert!(device.0.lock().unwrap().is_empty());
//! notifier.remove();
//! # Ok(())
//! # }
//! ```
//!
//! Linux 7.3: `include/linux/hmm.h`, `mm/hmm.c`, `Documentation/mm/hmm.rst`.

pub mod dma;
pub mod pfn;

mod error;
mod fault;
mod plain;
mod range;
mod retry;
mod unlocked;
mod walk;

#[cfg(test)]
mod record_tests;

pub use error::HmmError;
pub use hmm_mm::device::{
    make_device_exclusive, migrate_pfn, migrate_pfn_to_pfn, DeviceFault, ExclusivePage, MigrateDevice, MigrateSelect,
    MigrateVma,
};
pub use hmm_mm::Mm;
pub use hmm_notifier::{IntervalNotifier, IntervalNotifierOps, Subscriptions};
pub use range::Range;
pub use retry::{range_fault_loop, HMM_RANGE_DEFAULT_TIMEOUT};
pub use unlocked::range_fault_unlocked_timeout;
pub use walk::range_fault;
