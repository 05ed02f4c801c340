//! Waiting for a migration entry to go away: a small hashed wait queue,
//! one per machine, keyed by the frame the entry names.
//!
//! A waiter sleeps on the bucket of the old frame and re-checks its
//! condition ("the slot still holds this migration entry") under the
//! bucket's mutex; the migrator changes the slot first and then notifies
//! the bucket under the same mutex. A waiter that checked before the change
//! is therefore already asleep when the notification comes, and one that
//! checks after sees the change: no wake-up is lost. Frames of one 2 MiB
//! block share a bucket, so the parts of a split THP migration entry and
//! the folio's head meet on one queue whatever part a waiter saw.
//! Collisions only cause spurious wake-ups, after which waiters re-check.
//!
//! Linux: `folio_wait_table` and `folio_wake_bit` (hashed folio wait
//! queues), `migration_entry_wait_on_locked`.

use core::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use hmm_types::Pfn;

const BUCKETS: usize = 64;

#[derive(Default)]
struct Bucket {
    lock: Mutex<()>,
    cond: Condvar,
}

/// The machine's migration wait queue.
pub(crate) struct WaitQueue {
    buckets: Box<[Bucket]>,
    waiters: AtomicU64,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self { buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(), waiters: AtomicU64::new(0) }
    }
}

impl core::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WaitQueue").field("waiters", &self.waiters()).finish_non_exhaustive()
    }
}

impl WaitQueue {
    fn bucket(&self, pfn: Pfn) -> &Bucket {
        // Fibonacci hashing of the 2 MiB block number.
        let block = pfn.0 >> 9;
        &self.buckets[(block.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % BUCKETS]
    }

    /// Sleeps while `blocked()` holds; `blocked` is evaluated under the
    /// bucket lock of `pfn`, so a [`Self::wake`] after the condition changed
    /// cannot be missed.
    pub(crate) fn wait(&self, pfn: Pfn, blocked: impl Fn() -> bool) {
        let bucket = self.bucket(pfn);
        let mut guard = bucket.lock.lock();
        if !blocked() {
            return;
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        while blocked() {
            bucket.cond.wait(&mut guard);
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wakes every waiter on `pfn`'s bucket; call after the condition
    /// changed.
    pub(crate) fn wake(&self, pfn: Pfn) {
        let bucket = self.bucket(pfn);
        let _guard = bucket.lock.lock();
        bucket.cond.notify_all();
    }

    /// Threads asleep right now.
    pub(crate) fn waiters(&self) -> u64 {
        self.waiters.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_wake_after_the_change_releases_the_waiter() {
        let queue = Arc::new(WaitQueue::default());
        let blocked = Arc::new(AtomicBool::new(true));
        let waiter = {
            let (queue, blocked) = (queue.clone(), blocked.clone());
            std::thread::spawn(move || queue.wait(Pfn(0x1234), || blocked.load(Ordering::Acquire)))
        };
        while queue.waiters() == 0 {
            std::thread::yield_now();
        }
        // A frame of the same 2 MiB block shares the bucket.
        blocked.store(false, Ordering::Release);
        queue.wake(Pfn(0x1200));
        waiter.join().unwrap();
        assert_eq!(queue.waiters(), 0);
    }

    #[test]
    fn no_wait_when_not_blocked() {
        let queue = WaitQueue::default();
        queue.wait(Pfn(7), || false);
        assert_eq!(queue.waiters(), 0);
    }
}
