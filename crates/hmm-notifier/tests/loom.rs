//! Exhaustive model checks of the sequence protocol under loom:
//! `RUSTFLAGS="--cfg loom" cargo test -p hmm-notifier --test loom --release`.
//!
//! The property (spec §11.4 and §11.6): a device entry committed under the
//! driver lock after a successful `read_retry` is never stale once the
//! invalidation that changed the CPU side has returned; and a removed
//! subscription's callback never runs after `remove` returns. For a
//! two-pass subscriber (Linux 7.3, delta §6.3): once `invalidate_start`
//! returns, every finish has run, so a device translation cached before the
//! invalidation is gone before the CPU side changes, and a reader that sees
//! `read_retry` false never commits a stale value.

#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread;
use std::sync::Arc;

use hmm_notifier::{IntervalNotifier, IntervalNotifierOps, InvalidateFinish, InvalidateStart, Subscriptions};
use hmm_types::{Event, MmId, NotifierRange};

/// A driver whose device table holds one mirrored value.
struct Mirror {
    device: Mutex<Option<u64>>,
    called_after_remove: AtomicBool,
    removed: AtomicBool,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        if self.removed.load(Ordering::SeqCst) {
            self.called_after_remove.store(true, Ordering::SeqCst);
        }
        let mut device = self.device.lock().unwrap();
        subscription.set_seq(cur_seq);
        *device = None;
        true
    }
}

fn mirror() -> Arc<Mirror> {
    Arc::new(Mirror {
        device: Mutex::new(None),
        called_after_remove: AtomicBool::new(false),
        removed: AtomicBool::new(false),
    })
}

#[test]
fn a_committed_mirror_is_never_stale() {
    loom::model(|| {
        let subs = Subscriptions::new(MmId(1));
        let driver = mirror();
        let sub = subs.insert(0, 4096, driver.clone()).unwrap();
        let cpu_value = Arc::new(AtomicU64::new(1));

        let faulter = {
            let (sub, driver, cpu_value) = (sub.clone(), driver.clone(), cpu_value.clone());
            thread::spawn(move || {
                let seq = sub.read_begin();
                let seen = cpu_value.load(Ordering::SeqCst);
                let mut device = driver.device.lock().unwrap();
                if !sub.read_retry(seq) {
                    *device = Some(seen);
                }
            })
        };

        let ticket = subs.invalidate_start(&NotifierRange::new(MmId(1), 0, 4096, Event::Clear)).unwrap();
        cpu_value.store(2, Ordering::SeqCst);
        subs.invalidate_end(ticket);

        faulter.join().unwrap();
        let device = *driver.device.lock().unwrap();
        assert!(device.is_none() || device == Some(2), "stale mirror {device:?}");
    });
}

#[test]
fn remove_excludes_later_callbacks() {
    loom::model(|| {
        let subs = Subscriptions::new(MmId(1));
        let driver = mirror();
        let sub = subs.insert(0, 4096, driver.clone()).unwrap();

        let invalidator = {
            let subs = subs.clone();
            thread::spawn(move || {
                let ticket = subs.invalidate_start(&NotifierRange::new(MmId(1), 0, 4096, Event::Unmap)).unwrap();
                subs.invalidate_end(ticket);
            })
        };
        sub.remove();
        driver.removed.store(true, Ordering::SeqCst);
        invalidator.join().unwrap();
        assert!(!driver.called_after_remove.load(Ordering::SeqCst));
    });
}

#[test]
fn a_deferred_insert_waits_for_the_epoch() {
    loom::model(|| {
        let subs = Subscriptions::new(MmId(1));
        let _first = subs.insert(0, 4096, mirror()).unwrap();
        let ticket = subs.invalidate_start(&NotifierRange::new(MmId(1), 0, 4096, Event::Unmap)).unwrap();
        let ender = {
            let subs = subs.clone();
            thread::spawn(move || subs.invalidate_end(ticket))
        };
        let late = subs.insert(8192, 4096, mirror()).unwrap();
        let seq = late.read_begin();
        assert_eq!(subs.seq() % 2, 0, "read_begin returned only after the epoch ended");
        assert!(!late.read_retry(seq));
        ender.join().unwrap();
    });
}

/// A two-pass driver: the device table is cleared when the invalidation is
/// issued (start), the device's translation cache only when the issued
/// flush completes (finish).
#[derive(Default)]
struct TwoPassMirror {
    device: Mutex<Device>,
}

#[derive(Default)]
struct Device {
    table: Option<u64>,
    cached: Option<u64>,
}

struct FlushDone(Arc<TwoPassMirror>);

impl InvalidateFinish for FlushDone {
    fn invalidate_finish(self: Box<Self>, _subscription: &IntervalNotifier) {
        self.0.device.lock().unwrap().cached = None;
    }
}

/// The subscriber's ops hold an `Arc` to the driver so the finish can.
struct TwoPassOps(Arc<TwoPassMirror>);

impl IntervalNotifierOps for TwoPassOps {
    fn invalidate(&self, _: &IntervalNotifier, _: &NotifierRange, _: u64) -> bool {
        unreachable!("a two-pass subscriber is only called through invalidate_start")
    }

    fn invalidate_start(
        &self,
        subscription: &IntervalNotifier,
        _range: &NotifierRange,
        cur_seq: u64,
    ) -> InvalidateStart {
        let mut device = self.0.device.lock().unwrap();
        subscription.set_seq(cur_seq);
        device.table = None;
        InvalidateStart::Queued(Box::new(FlushDone(self.0.clone())))
    }
}

#[test]
fn two_pass_finishes_before_the_cpu_side_changes() {
    loom::model(|| {
        let subs = Subscriptions::new(MmId(1));
        let driver = Arc::new(TwoPassMirror::default());
        let sub = subs.insert(0, 4096, Arc::new(TwoPassOps(driver.clone()))).unwrap();
        let cpu_value = Arc::new(AtomicU64::new(1));

        let faulter = {
            let (sub, driver, cpu_value) = (sub.clone(), driver.clone(), cpu_value.clone());
            thread::spawn(move || {
                let seq = sub.read_begin();
                let seen = cpu_value.load(Ordering::SeqCst);
                let mut device = driver.device.lock().unwrap();
                if !sub.read_retry(seq) {
                    device.table = Some(seen);
                    device.cached = Some(seen);
                }
            })
        };

        let ticket = subs.invalidate_start(&NotifierRange::new(MmId(1), 0, 4096, Event::Clear)).unwrap();
        {
            let device = driver.device.lock().unwrap();
            assert_eq!(device.cached, None, "a translation from before the invalidation survived its finish");
        }
        cpu_value.store(2, Ordering::SeqCst);
        subs.invalidate_end(ticket);

        faulter.join().unwrap();
        let device = driver.device.lock().unwrap();
        for entry in [device.table, device.cached] {
            assert!(entry.is_none() || entry == Some(2), "stale mirror {entry:?}");
        }
    });
}
