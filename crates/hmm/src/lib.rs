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
//! * Move anonymous memory to device memory and back with [`MigrateVma`]
//!   (setup, copy, pages, finalize), evict it with [`MigrateDevice`], take
//!   a page for device atomics with [`make_device_exclusive`].
//!
//! The walk takes no page reference. A mirror is correct because the
//! driver's `invalidate` callback removes its entries before the CPU side
//! frees or changes anything, and because a walk that raced with an
//! invalidation is detected (`read_retry`) and repeated.
//!
//! ```text
//! loop {
//!     seq = notifier.read_begin();          // may wait for an invalidation
//!     range_fault(&mm.mmap_read(), range)?;  // EBUSY: loop again
//!     lock(driver.update);
//!     if notifier.read_retry(seq) { unlock; continue }
//!     program the device page table from range.hmm_pfns;
//!     unlock(driver.update);
//!     break;
//! }
//! ```
//!
//! Linux 7.3: `include/linux/hmm.h`, `mm/hmm.c`, `Documentation/mm/hmm.rst`.

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
