use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use hmm_types::{Errno, Event, MmId, NotifierRange};

use super::{IntervalNotifier, IntervalNotifierOps, Subscriptions};

/// A driver that records `cur_seq` through `set_seq`, as drivers must.
#[derive(Default)]
struct Driver {
    calls: AtomicU32,
    refuse_nonblocking: bool,
}

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        if self.refuse_nonblocking && !range.blockable {
            return false;
        }
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        subscription.set_seq(cur_seq);
        true
    }
}

fn range(start: u64, end: u64) -> NotifierRange {
    NotifierRange::new(MmId(1), start, end, Event::Unmap)
}

#[test]
fn idle_insert_reads_without_waiting() {
    let subs = Subscriptions::new(MmId(1));
    let sub = subs.insert(0x1000, 0x1000, Arc::new(Driver::default())).unwrap();
    let seq = sub.read_begin();
    assert_eq!(seq % 2, 1, "subscription sequences are odd");
    assert_eq!(subs.seq() % 2, 0, "idle global sequence is even");
    assert!(!sub.read_retry(seq));
}

#[test]
fn an_overlapping_invalidation_forces_a_retry() {
    let subs = Subscriptions::new(MmId(1));
    let driver = Arc::new(Driver::default());
    let sub = subs.insert(0x1000, 0x1000, driver.clone()).unwrap();
    let seq = sub.read_begin();
    let before = subs.seq();
    let ticket = subs.invalidate_start(&range(0x1800, 0x3000)).unwrap();
    assert_eq!(subs.seq(), before | 1, "the set is frozen");
    assert!(sub.read_retry(seq));
    subs.invalidate_end(ticket);
    assert_eq!(subs.seq(), (before | 1) + 1);
    assert_eq!(driver.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let again = sub.read_begin();
    assert!(!sub.read_retry(again));
}

#[test]
fn a_disjoint_invalidation_changes_nothing() {
    let subs = Subscriptions::new(MmId(1));
    let driver = Arc::new(Driver::default());
    let sub = subs.insert(0x1000, 0x1000, driver.clone()).unwrap();
    let seq = sub.read_begin();
    let ticket = subs.invalidate_start(&range(0x2000, 0x3000)).unwrap();
    assert_eq!(subs.seq() % 2, 0, "end is exclusive: [0x2000, 0x3000) misses [0x1000, 0x1fff]");
    subs.invalidate_end(ticket);
    assert!(!sub.read_retry(seq));
    assert_eq!(driver.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn the_sequence_advances_only_when_the_last_invalidation_ends() {
    let subs = Subscriptions::new(MmId(1));
    let _sub = subs.insert(0, 0x10000, Arc::new(Driver::default())).unwrap();
    let start = subs.seq();
    let a = subs.invalidate_start(&range(0, 0x1000)).unwrap();
    let b = subs.invalidate_start(&range(0x2000, 0x3000)).unwrap();
    subs.invalidate_end(a);
    assert_eq!(subs.seq(), start | 1, "still odd while one is active");
    subs.invalidate_end(b);
    assert_eq!(subs.seq(), start + 2);
}

#[test]
fn insert_during_an_invalidation_is_deferred_and_read_begin_waits() {
    let subs = Subscriptions::new(MmId(1));
    let _first = subs.insert(0, 0x1000, Arc::new(Driver::default())).unwrap();
    let ticket = subs.invalidate_start(&range(0, 0x1000)).unwrap();
    let late = subs.insert(0x5000, 0x1000, Arc::new(Driver::default())).unwrap();
    assert_eq!(subs.len(), 1, "deferred while frozen");
    let reader = {
        let late = late.clone();
        std::thread::spawn(move || late.read_begin())
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(!reader.is_finished(), "read_begin waits for the in-flight invalidation");
    subs.invalidate_end(ticket);
    let seq = reader.join().unwrap();
    assert_eq!(subs.len(), 2);
    assert!(!late.read_retry(seq));
}

#[test]
fn insert_while_partially_excluded_freezes_the_set() {
    let subs = Subscriptions::new(MmId(1));
    let _first = subs.insert(0, 0x1000, Arc::new(Driver::default())).unwrap();
    let ticket = subs.invalidate_start(&range(0x9000, 0xa000)).unwrap();
    assert_eq!(subs.seq() % 2, 0, "partially excluded");
    let late = subs.insert(0x9000, 0x1000, Arc::new(Driver::default())).unwrap();
    assert_eq!(subs.seq() % 2, 1, "now fully excluded");
    assert_eq!(subs.len(), 2, "inserted at once");
    let reader = std::thread::spawn(move || late.read_begin());
    std::thread::sleep(Duration::from_millis(20));
    assert!(!reader.is_finished());
    subs.invalidate_end(ticket);
    reader.join().unwrap();
}

#[test]
fn remove_waits_for_the_invalidation_that_may_call_it() {
    let subs = Subscriptions::new(MmId(1));
    let sub = subs.insert(0, 0x1000, Arc::new(Driver::default())).unwrap();
    let ticket = subs.invalidate_start(&range(0, 0x1000)).unwrap();
    let remover = {
        let sub = sub.clone();
        std::thread::spawn(move || sub.remove())
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(!remover.is_finished(), "remove waits while its callback may still run");
    subs.invalidate_end(ticket);
    remover.join().unwrap();
    assert!(subs.is_empty());
}

#[test]
fn removing_a_deferred_insert_does_not_wait() {
    let subs = Subscriptions::new(MmId(1));
    let _first = subs.insert(0, 0x1000, Arc::new(Driver::default())).unwrap();
    let ticket = subs.invalidate_start(&range(0, 0x1000)).unwrap();
    let late = subs.insert(0x5000, 0x1000, Arc::new(Driver::default())).unwrap();
    late.remove();
    subs.invalidate_end(ticket);
    assert_eq!(subs.len(), 1, "the cancelled insert never lands");
}

#[test]
fn a_refused_non_blocking_invalidation_is_undone() {
    let subs = Subscriptions::new(MmId(1));
    let _sub = subs.insert(0, 0x1000, Arc::new(Driver { refuse_nonblocking: true, ..Default::default() })).unwrap();
    let before = subs.seq();
    let mut r = range(0, 0x1000);
    r.blockable = false;
    assert_eq!(subs.invalidate_start(&r).unwrap_err(), Errno::Again);
    assert_eq!(subs.seq(), before + 2, "the failed epoch was closed");
    let ticket = subs.invalidate_start(&range(0, 0x1000)).unwrap();
    subs.invalidate_end(ticket);
}

#[test]
fn bad_intervals_are_eoverflow() {
    let subs = Subscriptions::new(MmId(1));
    assert_eq!(subs.insert(0x1000, 0, Arc::new(Driver::default())).unwrap_err(), Errno::Overflow);
    assert_eq!(subs.insert(u64::MAX, 2, Arc::new(Driver::default())).unwrap_err(), Errno::Overflow);
    assert!(subs.insert(0, u64::MAX, Arc::new(Driver::default())).is_ok(), "the whole space is fine");
}

#[test]
fn release_calls_every_subscription() {
    let subs = Subscriptions::new(MmId(1));
    let driver = Arc::new(Driver::default());
    for i in 0..10 {
        subs.insert(i << 20, 1 << 20, driver.clone()).unwrap();
    }
    subs.release();
    assert_eq!(driver.calls.load(std::sync::atomic::Ordering::SeqCst), 10);
}
