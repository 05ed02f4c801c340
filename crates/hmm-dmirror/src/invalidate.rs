//! A file's interval-notifier callback: what the device does when the CPU
//! side changes a range it mirrors (clear the device entries, record the
//! sequence), with the notifier holding its mirror weakly so a closed file
//! frees it.
//!
//! Linux: `dmirror_interval_invalidate`, `dmirror_min_ops`
//! (`lib/test_hmm.c`).

use core::sync::atomic::Ordering;
use std::sync::Weak;

use hmm::{IntervalNotifier, IntervalNotifierOps};
use hmm_types::{Event, NotifierRange, PAGE_SIZE, TASK_SIZE};

use crate::file::Mirror;

/// The notifier callback's view of a mirror: weak, see [`Mirror::new`].
#[derive(Debug)]
pub(crate) struct MirrorOps(pub(crate) Weak<Mirror>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        match self.0.upgrade() {
            Some(mirror) => mirror.invalidate(subscription, range, cur_seq),
            // The file is closing: its table is being dropped with it.
            None => {
                subscription.set_seq(cur_seq);
                true
            }
        }
    }
}

impl Mirror {
    /// `dmirror_interval_invalidate`, with two deliberate differences:
    /// * on its own MIGRATE event the file keeps its table (it maintains it
    ///   during the migration) but still records the sequence, so that a
    ///   device fault of this file that read a page being migrated away
    ///   retries; Linux's test device returns at once and has that window;
    /// * only the file running the migration skips: another file of the
    ///   same device clears, since its entries may name pages that are
    ///   about to move (Linux skips in every file of the device).
    ///
    /// Kept from Linux: the cleared range ends one page after the event's
    /// (the xarray walk there is inclusive), so the page after an
    /// invalidated range faults again.
    pub(crate) fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let own_migrate = range.event == Event::Migrate
            && range.owner == Some(self.device.owner())
            && self.migrating.load(Ordering::Acquire) > 0;
        let Some(mut table) = self.lock_for(range) else { return false };
        subscription.set_seq(cur_seq);
        if own_migrate {
            return true;
        }
        // Linux's inclusive end, except on this device's own MIGRATE: Linux
        // skips those events entirely, so the page after a migrated range
        // keeps its entry there.
        let own_device = range.event == Event::Migrate && range.owner == Some(self.device.owner());
        let end = if own_device { range.end } else { range.end.saturating_add(PAGE_SIZE).min(TASK_SIZE) };
        table.clear(range.start, end);
        true
    }
}
