//! Exhaustive model checks of the sequence protocol under loom:
//! `RUSTFLAGS="--cfg loom" cargo test -p hmm-notifier --test loom --release`.
//!
//! The property (spec §11.4 and §11.6): a device entry committed under the
//! driver lock after a successful `read_retry` is never stale once the
//! invalidation that changed the CPU side has returned; and a removed
//! subscription's callback never runs after `remove` returns.

#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread;
use std::sync::Arc;

use hmm_notifier::{IntervalNotifier, IntervalNotifierOps, Subscriptions};
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
