//! The driver's side of an invalidation: the callbacks a subscriber
//! implements (`struct mmu_interval_notifier_ops`, one- and two-pass) and
//! what a start pass returns. The registry that calls them lives in
//! [`super`].

use core::fmt;

use hmm_types::NotifierRange;

use super::IntervalNotifier;

/// What a driver does when its interval is invalidated
/// (`struct mmu_interval_notifier_ops`).
pub trait IntervalNotifierOps: Send + Sync {
    /// Called before the CPU mapping of `range ∩ interval` changes. The
    /// driver takes the lock it uses for `read_retry`, calls
    /// [`IntervalNotifier::set_seq`] with `cur_seq`, removes its device
    /// entries for the range, and returns true. Only a non-blockable range
    /// may be refused (return false, with no side effect). Must not take
    /// the mmap lock, and must not insert or remove subscriptions.
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool;

    /// The first pass of a two-pass subscriber
    /// (`mmu_interval_notifier_ops::invalidate_start`). The core calls it
    /// instead of [`Self::invalidate`]; the default delegates to it, so a
    /// one-pass subscriber implements `invalidate` only.
    ///
    /// A two-pass subscriber sets the sequence and *issues* its device
    /// invalidation under its driver lock, then returns
    /// [`InvalidateStart::Queued`] with the work that *waits* for it. The
    /// core runs every queued finish, in start order, after all starts and
    /// before `invalidate_start` returns, so device latencies overlap.
    /// Returning [`InvalidateStart::Done`] means this pass did the whole
    /// job, as `invalidate` would have.
    fn invalidate_start(
        &self,
        subscription: &IntervalNotifier,
        range: &NotifierRange,
        cur_seq: u64,
    ) -> InvalidateStart {
        if self.invalidate(subscription, range, cur_seq) {
            InvalidateStart::Done
        } else {
            InvalidateStart::Refused
        }
    }
}

/// The second pass of a two-pass invalidation
/// (`struct mmu_interval_notifier_finish` with `ops->invalidate_finish`).
/// Linux WARNs at insert when a subscriber has a start without a finish;
/// here a queued start always carries its finish, so that state cannot
/// be written.
pub trait InvalidateFinish: Send {
    /// Waits for the device invalidation that the start pass issued. Must
    /// not fail, take the mmap lock, or insert or remove subscriptions.
    fn invalidate_finish(self: Box<Self>, subscription: &IntervalNotifier);
}

/// What a start pass did ([`IntervalNotifierOps::invalidate_start`]).
pub enum InvalidateStart {
    /// Refused a non-blockable range, with no side effect (`false`).
    Refused,
    /// The whole job is done (`true` with `*finish` left NULL).
    Done,
    /// Issued; the finish must run before the invalidation may proceed
    /// (`true` with `*finish` set).
    Queued(Box<dyn InvalidateFinish>),
}

impl fmt::Debug for InvalidateStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refused => "Refused",
            Self::Done => "Done",
            Self::Queued(_) => "Queued",
        })
    }
}
