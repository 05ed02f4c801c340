//! MMU interval notifiers: how a device driver learns, before it happens,
//! that the CPU mapping of an address interval it mirrors is about to change,
//! and how it detects that a page-table walk raced with such a change.
//!
//! Owns the per-address-space registry ([`Subscriptions`]): the interval set,
//! the global invalidation sequence (even when idle, odd while an
//! invalidation overlapping some interval is in flight), the count of active
//! invalidations, and the list of inserts and removes deferred while the
//! set is frozen. A subscription ([`IntervalNotifier`]) carries its interval,
//! its driver callbacks ([`IntervalNotifierOps`]) and the sequence its driver
//! last stored. The memory manager calls [`Subscriptions::invalidate_start`]
//! and [`Subscriptions::invalidate_end`] around every change; drivers call
//! [`IntervalNotifier::read_begin`], [`IntervalNotifier::read_retry`] and,
//! from their callback, [`IntervalNotifier::set_seq`]. A subscriber may
//! work in two passes ([`IntervalNotifierOps::invalidate_start`] issues,
//! [`InvalidateFinish`] waits), as Linux 7.3 allows.
//!
//! It knows nothing of page tables or devices, and depends only on
//! `hmm-types`. Built with `--cfg loom`, its locks and atomics come from
//! loom, so `tests/loom.rs` model-checks the protocol.
//!
//! Linux 7.3: `mm/mmu_notifier.c` (`mn_itree_invalidate`, `mn_itree_inv_start_range`,
//! `mn_itree_inv_end`, `mmu_interval_read_begin`,
//! `mmu_interval_notifier_insert`, `mmu_interval_notifier_remove`),
//! `include/linux/mmu_notifier.h`.

#![forbid(unsafe_code)]

mod subscriptions;
mod sync;
mod tree;

pub use subscriptions::{
    IntervalNotifier, IntervalNotifierOps, InvalidateFinish, InvalidateStart, Subscriptions, Ticket,
};
