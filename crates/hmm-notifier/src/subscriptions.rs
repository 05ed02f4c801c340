//! The registry and the sequence protocol (Linux §3.2–3.4 of the spec).

use core::fmt;

use hmm_types::{Errno, Event, MmId, NotifierRange};

use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Condvar, Mutex, Ordering};
use crate::tree::IntervalSet;

mod ops;

pub use ops::{IntervalNotifierOps, InvalidateFinish, InvalidateStart};

/// One subscription (`struct mmu_interval_notifier`).
pub struct IntervalNotifier {
    id: u64,
    start: u64,
    last: u64,
    ops: Arc<dyn IntervalNotifierOps>,
    invalidate_seq: AtomicU64,
    registry: Arc<Subscriptions>,
}

impl fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntervalNotifier#{}[{:#x}, {:#x}]", self.id, self.start, self.last)
    }
}

/// Proof that [`Subscriptions::invalidate_start`] ran; hand it to the
/// matching [`Subscriptions::invalidate_end`]. (An invalidation that began
/// before the first insert was not counted and must not be uncounted.)
#[derive(Clone, Copy, Debug)]
#[must_use = "pass it to invalidate_end"]
pub struct Ticket {
    counted: bool,
}

enum Deferred {
    Insert(Arc<IntervalNotifier>),
    Remove(Arc<IntervalNotifier>),
}

struct State {
    /// Even: no interval is being invalidated. Odd: the set is frozen.
    seq: u64,
    active: u32,
    set: IntervalSet<Arc<IntervalNotifier>>,
    deferred: Vec<Deferred>,
    next_id: u64,
    /// Threads sleeping in `read_begin` or `remove`.
    sleepers: u32,
}

/// The interval subscriptions of one address space
/// (`struct mmu_notifier_subscriptions`, interval-tree half).
pub struct Subscriptions {
    mm: MmId,
    state: Mutex<State>,
    seq_changed: Condvar,
    has_itree: AtomicBool,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Subscriptions")
            .field("mm", &self.mm)
            .field("seq", &state.seq)
            .field("active", &state.active)
            .field("intervals", &state.set.len())
            .finish()
    }
}

impl IntervalNotifier {
    /// First address of the interval.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// Last address of the interval (inclusive, as Linux stores it).
    pub fn last(&self) -> u64 {
        self.last
    }
    /// The address space it watches.
    pub fn mm(&self) -> MmId {
        self.registry.mm
    }
    /// The registry it belongs to.
    pub fn registry(&self) -> &Arc<Subscriptions> {
        &self.registry
    }

    /// Starts a read-side critical section (`mmu_interval_read_begin`):
    /// waits while an invalidation covering this interval is in progress,
    /// then returns the sequence to pass to [`Self::read_retry`]. It does
    /// not loop: `read_retry` may already be true when it returns.
    pub fn read_begin(&self) -> u64 {
        let registry = &self.registry;
        let mut state = lock(&registry.state);
        let seq = self.invalidate_seq.load(Ordering::Acquire);
        while seq == state.seq {
            state.sleepers += 1;
            state = registry.seq_changed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.sleepers -= 1;
        }
        seq
    }

    /// True if an invalidation hit this interval since `read_begin`
    /// returned `seq` (`mmu_interval_read_retry`). Reliable only under the
    /// driver lock that the callback holds around `set_seq`.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.invalidate_seq.load(Ordering::Acquire) != seq
    }

    /// The same test without the driver lock (`mmu_interval_check_retry`):
    /// true is reliable, false is a hint. `range_fault` uses it.
    pub fn check_retry(&self, seq: u64) -> bool {
        self.invalidate_seq.load(Ordering::Relaxed) != seq
    }

    /// Records the invalidation's sequence (`mmu_interval_set_seq`); the
    /// callback calls it unconditionally, under the driver lock.
    pub fn set_seq(&self, cur_seq: u64) {
        self.invalidate_seq.store(cur_seq, Ordering::Release);
    }

    /// Removes the subscription (`mmu_interval_notifier_remove`). Returns
    /// only once its callback can no longer run; it may wait for an
    /// in-flight invalidation to end, so it must not be called from a
    /// callback.
    pub fn remove(self: &Arc<Self>) {
        self.registry.remove(self);
    }
}

impl Subscriptions {
    /// The registry of address space `mm`.
    pub fn new(mm: MmId) -> Arc<Self> {
        Arc::new(Self {
            mm,
            state: Mutex::new(State {
                seq: 2,
                active: 0,
                set: IntervalSet::default(),
                deferred: Vec::new(),
                next_id: 1,
                sleepers: 0,
            }),
            seq_changed: Condvar::new(),
            has_itree: AtomicBool::new(false),
        })
    }

    /// True once any interval was inserted: until then invalidations skip
    /// the registry entirely.
    pub fn has_itree(&self) -> bool {
        self.has_itree.load(Ordering::Acquire)
    }

    /// The current global sequence (for tests and tracing).
    pub fn seq(&self) -> u64 {
        lock(&self.state).seq
    }

    /// Number of intervals in the set (deferred inserts not counted).
    pub fn len(&self) -> usize {
        lock(&self.state).set.len()
    }

    /// True when no interval is in the set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subscribes `ops` to `[start, start + length)`
    /// (`mmu_interval_notifier_insert`). `EOVERFLOW` for a zero length or an
    /// interval past the end of the address space. During an invalidation
    /// the insert is deferred, and the first `read_begin` waits for it.
    pub fn insert(
        self: &Arc<Self>,
        start: u64,
        length: u64,
        ops: Arc<dyn IntervalNotifierOps>,
    ) -> Result<Arc<IntervalNotifier>, Errno> {
        if length == 0 {
            return Err(Errno::Overflow);
        }
        let last = start.checked_add(length - 1).ok_or(Errno::Overflow)?;
        self.has_itree.store(true, Ordering::Release);
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        let subscription = Arc::new(IntervalNotifier {
            id,
            start,
            last,
            ops,
            invalidate_seq: AtomicU64::new(0),
            registry: self.clone(),
        });
        if state.active > 0 && state.seq & 1 == 1 {
            // Frozen: insert at the final end; read_begin waits until then.
            subscription.invalidate_seq.store(state.seq, Ordering::Release);
            state.deferred.push(Deferred::Insert(subscription.clone()));
        } else if state.active > 0 {
            // Invalidations are in flight but overlap nothing: we cannot
            // know whether they cover the new interval, so freeze the set
            // and make read_begin wait for them.
            state.seq |= 1;
            subscription.invalidate_seq.store(state.seq, Ordering::Release);
            state.set.insert(start, last, id, subscription.clone());
        } else {
            subscription.invalidate_seq.store(state.seq - 1, Ordering::Release);
            state.set.insert(start, last, id, subscription.clone());
        }
        Ok(subscription)
    }

    fn remove(&self, subscription: &Arc<IntervalNotifier>) {
        let mut state = lock(&self.state);
        let (start, last, id) = (subscription.start, subscription.last, subscription.id);
        let wait_for = if state.seq & 1 == 1 {
            if state.set.contains(start, last, id) {
                state.deferred.push(Deferred::Remove(subscription.clone()));
                Some(state.seq)
            } else {
                // Its insert is still deferred: cancel it, nothing to wait for.
                state.deferred.retain(|d| !matches!(d, Deferred::Insert(s) if Arc::ptr_eq(s, subscription)));
                None
            }
        } else {
            state.set.remove(start, last, id);
            None
        };
        if let Some(seq) = wait_for {
            // Tested under the lock: the epoch that may still call us ends
            // when the sequence moves on.
            while state.seq == seq {
                state.sleepers += 1;
                state = self.seq_changed.wait(state).unwrap_or_else(|p| p.into_inner());
                state.sleepers -= 1;
            }
        }
    }

    /// The interval half of `invalidate_range_start`
    /// (`mn_itree_invalidate`): counts the invalidation, freezes the set if
    /// any interval overlaps, runs each overlapping subscription's start
    /// pass in interval order, then every queued finish in start order. A
    /// non-blockable range refused by one subscriber stops the start loop;
    /// the finishes already queued still run, then the epoch is closed and
    /// the refusal reported as `EAGAIN`.
    pub fn invalidate_start(&self, range: &NotifierRange) -> Result<Ticket, Errno> {
        if !self.has_itree() {
            return Ok(Ticket { counted: false });
        }
        let mut hits = Vec::new();
        let cur_seq = {
            let mut state = lock(&self.state);
            state.active += 1;
            let last = range.end.saturating_sub(1).max(range.start);
            state.set.overlapping(range.start, last, &mut hits, |s| s.last);
            if !hits.is_empty() {
                state.seq |= 1;
            }
            state.seq
        };
        let mut finishes = Vec::new();
        let mut refused = false;
        for subscription in hits {
            match subscription.ops.invalidate_start(&subscription, range, cur_seq) {
                InvalidateStart::Done => {}
                InvalidateStart::Queued(finish) => finishes.push((subscription, finish)),
                InvalidateStart::Refused if range.blockable => {
                    debug_assert!(false, "{subscription:?} refused a blockable invalidation");
                }
                InvalidateStart::Refused => {
                    refused = true;
                    break;
                }
            }
        }
        // Still inside the odd epoch: no reader can commit until the
        // waits are over.
        for (subscription, finish) in finishes {
            finish.invalidate_finish(&subscription);
        }
        if refused {
            self.invalidate_end(Ticket { counted: true });
            return Err(Errno::Again);
        }
        Ok(Ticket { counted: true })
    }

    /// The interval half of `invalidate_range_end` (`mn_itree_inv_end`):
    /// the last active invalidation moves the sequence to even, applies the
    /// deferred inserts and removes, and wakes the waiters.
    pub fn invalidate_end(&self, ticket: Ticket) {
        if !ticket.counted {
            return;
        }
        let mut state = lock(&self.state);
        state.active -= 1;
        if state.active > 0 || state.seq & 1 == 0 {
            return;
        }
        state.seq += 1;
        for deferred in core::mem::take(&mut state.deferred) {
            match deferred {
                Deferred::Insert(s) => state.set.insert(s.start, s.last, s.id, s.clone()),
                Deferred::Remove(s) => {
                    state.set.remove(s.start, s.last, s.id);
                }
            }
        }
        // Waking costs a system call: only when someone sleeps (counted
        // under the same lock, so none can be missed).
        let wake = state.sleepers > 0;
        drop(state);
        if wake {
            self.seq_changed.notify_all();
        }
    }

    /// Teardown of the address space (`__mmu_notifier_release`, interval
    /// half): one RELEASE invalidation over everything, every callback
    /// called, with the same two passes as any invalidation. Subscriptions stay registered until their drivers remove
    /// them.
    pub fn release(&self) {
        let range = NotifierRange::new(self.mm, 0, u64::MAX, Event::Release);
        // Blockable: refusals are contract violations and only asserted.
        if let Ok(ticket) = self.invalidate_start(&range) {
            self.invalidate_end(ticket);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, not(loom)))]
mod two_pass_tests;
