//! Invalidation points: how the memory manager announces that it is about to
//! remove or downgrade mappings, and that it has finished.
//!
//! Owns the per-address-space interval subscriptions (`hmm-notifier`'s
//! [`Subscriptions`], called first, as Linux calls the interval tree before
//! the list), the list of classic [`MmuNotifier`] subscribers, and the
//! [`Invalidation`] token that brackets a change. The token is `#[must_use]`
//! and is consumed by [`crate::zap::Gather::free_after`], so frames can only
//! be freed once every subscriber has seen the end.
//!
//! Linux: `mm/mmu_notifier.c` (`__mmu_notifier_invalidate_range_start`,
//! `_end`, `__mmu_notifier_release`).

use std::sync::Arc;

use parking_lot::RwLock;

use hmm_notifier::{Subscriptions, Ticket};
use hmm_types::{Errno, Event, MmId, MmuNotifier, NotifierRange, Owner};

/// The subscribers of one address space.
pub struct NotifierChain {
    intervals: Arc<Subscriptions>,
    subscribers: RwLock<Vec<Arc<dyn MmuNotifier>>>,
}

impl core::fmt::Debug for NotifierChain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NotifierChain").field("subscribers", &self.subscribers.read().len()).finish()
    }
}

impl NotifierChain {
    /// The chain of address space `mm`.
    pub fn new(mm: MmId) -> Self {
        Self { intervals: Subscriptions::new(mm), subscribers: RwLock::new(Vec::new()) }
    }

    /// The interval subscriptions (`mm->notifier_subscriptions` itree).
    pub fn intervals(&self) -> &Arc<Subscriptions> {
        &self.intervals
    }

    /// Adds a subscriber (`mmu_notifier_register`).
    pub fn register(&self, subscriber: Arc<dyn MmuNotifier>) {
        self.subscribers.write().push(subscriber);
    }

    /// Removes a subscriber (`mmu_notifier_unregister`); returns whether it
    /// was registered. In-flight callbacks on other threads may still be
    /// running when this returns only if they started before; they hold
    /// their own reference.
    pub fn unregister(&self, subscriber: &Arc<dyn MmuNotifier>) -> bool {
        let mut subs = self.subscribers.write();
        let before = subs.len();
        subs.retain(|s| !Arc::ptr_eq(s, subscriber));
        subs.len() != before
    }

    /// Announces a blockable invalidation of `[start, end)`.
    pub fn start(&self, mm: MmId, start: u64, end: u64, event: Event) -> Invalidation {
        self.start_range(NotifierRange::new(mm, start, end, event)).expect("blockable invalidations cannot be refused")
    }

    /// Announces a blockable invalidation carrying an owner (MIGRATE,
    /// EXCLUSIVE).
    pub fn start_owned(&self, mm: MmId, start: u64, end: u64, event: Event, owner: Owner) -> Invalidation {
        self.start_range(NotifierRange::new(mm, start, end, event).with_owner(owner))
            .expect("blockable invalidations cannot be refused")
    }

    /// Announces an invalidation. A non-blockable one may be refused with
    /// `EAGAIN`; then the subscribers that had accepted get their end, and
    /// nothing else happens.
    pub fn start_range(&self, range: NotifierRange) -> Result<Invalidation, Errno> {
        let ticket = self.intervals.invalidate_start(&range)?;
        let subscribers = self.subscribers.read().clone();
        for (index, sub) in subscribers.iter().enumerate() {
            if let Err(errno) = sub.invalidate_range_start(&range) {
                if range.blockable {
                    // A blockable invalidation cannot be refused: Linux
                    // warns (WARN_ON in mn_hlist_invalidate_range_start)
                    // and the change goes ahead; the subscriber still gets
                    // its end.
                    warn_refused_blockable(errno);
                    continue;
                }
                for accepted in &subscribers[..index] {
                    accepted.invalidate_range_end(&range);
                }
                self.intervals.invalidate_end(ticket);
                return Err(errno);
            }
        }
        Ok(Invalidation { range, intervals: self.intervals.clone(), ticket, subscribers, ended: false })
    }

    /// Tears down: a RELEASE invalidation over the whole address space, then
    /// each subscriber's `release` (`__mmu_notifier_release`).
    pub(crate) fn release(&self, mm: MmId) {
        self.intervals.release();
        let range = NotifierRange::new(mm, 0, u64::MAX, Event::Release);
        let subscribers = self.subscribers.read().clone();
        for sub in &subscribers {
            let _ = sub.invalidate_range_start(&range);
        }
        for sub in &subscribers {
            sub.invalidate_range_end(&range);
        }
        for sub in self.subscribers.read().iter() {
            sub.release(mm);
        }
    }
}

/// An invalidation in progress. End it with [`Invalidation::end`] (or let
/// [`crate::zap::Gather::free_after`] do it); dropping it ends it too, so an
/// early return cannot leave subscribers waiting forever.
#[must_use = "an invalidation must be ended after the page-table change"]
pub struct Invalidation {
    range: NotifierRange,
    intervals: Arc<Subscriptions>,
    ticket: Ticket,
    subscribers: Vec<Arc<dyn MmuNotifier>>,
    ended: bool,
}

impl core::fmt::Debug for Invalidation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Invalidation").field("range", &self.range).field("ended", &self.ended).finish()
    }
}

impl Invalidation {
    /// The announced range.
    pub fn range(&self) -> &NotifierRange {
        &self.range
    }

    /// Announces the end of the change.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            self.intervals.invalidate_end(self.ticket);
            for sub in &self.subscribers {
                sub.invalidate_range_end(&self.range);
            }
        }
    }
}

impl Drop for Invalidation {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The kernel log's warning for a subscriber that refused a blockable
/// invalidation, printed once per process.
fn warn_refused_blockable(errno: Errno) {
    static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        eprintln!(
            "hmm-mm: warning: an MmuNotifier refused a blockable invalidation ({}); it cannot be refused and goes ahead",
            errno.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    struct Refuser(Mutex<Vec<&'static str>>);

    impl MmuNotifier for Refuser {
        fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno> {
            if range.blockable {
                self.0.lock().push("start");
                Ok(())
            } else {
                Err(Errno::Again)
            }
        }
        fn invalidate_range_end(&self, _: &NotifierRange) {
            self.0.lock().push("end");
        }
    }

    #[test]
    fn a_refused_non_blockable_start_ends_the_accepted_ones() {
        let chain = NotifierChain::new(MmId(1));
        let accepting = Arc::new(crate::testing::Recorder::default());
        chain.register(accepting.clone());
        chain.register(Arc::new(Refuser(Mutex::new(Vec::new()))));
        let mut range = NotifierRange::new(MmId(1), 0, 4096, Event::Clear);
        range.blockable = false;
        assert_eq!(chain.start_range(range).err(), Some(Errno::Again));
        let log = accepting.take();
        assert_eq!(log.len(), 2, "start and its matching end: {log:?}");
    }

    /// Regression: a subscriber refusing a blockable invalidation used to
    /// panic the process; Linux warns and the invalidation goes ahead.
    #[test]
    fn a_refused_blockable_start_goes_ahead_and_ends() {
        struct AlwaysRefuses(Mutex<Vec<&'static str>>);
        impl MmuNotifier for AlwaysRefuses {
            fn invalidate_range_start(&self, _: &NotifierRange) -> Result<(), Errno> {
                self.0.lock().push("refused");
                Err(Errno::Busy)
            }
            fn invalidate_range_end(&self, _: &NotifierRange) {
                self.0.lock().push("end");
            }
        }
        let chain = NotifierChain::new(MmId(1));
        let refuser = Arc::new(AlwaysRefuses(Mutex::new(Vec::new())));
        let after = Arc::new(crate::testing::Recorder::default());
        chain.register(refuser.clone());
        chain.register(after.clone());
        let invalidation = chain.start(MmId(1), 0, 4096, Event::Clear);
        drop(invalidation);
        assert_eq!(*refuser.0.lock(), ["refused", "end"]);
        assert_eq!(after.take_events(), [(Event::Clear, 0, 4096)], "the next subscriber is still told");
    }

    #[test]
    fn drop_ends_the_invalidation() {
        let chain = NotifierChain::new(MmId(1));
        let rec = Arc::new(crate::testing::Recorder::default());
        chain.register(rec.clone());
        drop(chain.start(MmId(1), 0, 8192, Event::Unmap));
        assert_eq!(rec.take().len(), 2);
    }
}
