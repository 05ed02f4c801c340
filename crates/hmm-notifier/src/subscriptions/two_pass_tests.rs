//! The two-pass protocol of Linux 7.3 (`invalidate_start` then
//! `invalidate_finish`, delta §6.3): ordering, early stop, release.

use std::sync::{Arc, Mutex};

use hmm_types::{Errno, Event, MmId, NotifierRange};

use super::{IntervalNotifier, IntervalNotifierOps, InvalidateFinish, InvalidateStart, Subscriptions};

type Log = Arc<Mutex<Vec<String>>>;

/// How a test subscriber answers the start pass.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    OnePass,
    TwoPass,
    /// Two-pass whose start does everything and queues nothing.
    StartOnly,
    Refuse,
}

struct Sub {
    name: &'static str,
    mode: Mode,
    log: Log,
    registry: Mutex<Option<Arc<Subscriptions>>>,
}

struct Finish {
    name: &'static str,
    log: Log,
    registry: Option<Arc<Subscriptions>>,
}

impl InvalidateFinish for Finish {
    fn invalidate_finish(self: Box<Self>, _subscription: &IntervalNotifier) {
        let odd = self.registry.as_ref().is_some_and(|r| r.seq() % 2 == 1);
        self.log.lock().unwrap().push(format!("finish {}{}", self.name, if odd { "" } else { " (epoch closed!)" }));
    }
}

impl IntervalNotifierOps for Sub {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        if self.mode == Mode::Refuse {
            self.log.lock().unwrap().push(format!("refuse {}", self.name));
            return false;
        }
        subscription.set_seq(cur_seq);
        self.log.lock().unwrap().push(format!("invalidate {}", self.name));
        true
    }

    fn invalidate_start(
        &self,
        subscription: &IntervalNotifier,
        range: &NotifierRange,
        cur_seq: u64,
    ) -> InvalidateStart {
        match self.mode {
            Mode::OnePass | Mode::Refuse => {
                if self.invalidate(subscription, range, cur_seq) {
                    InvalidateStart::Done
                } else {
                    InvalidateStart::Refused
                }
            }
            Mode::StartOnly => {
                subscription.set_seq(cur_seq);
                self.log.lock().unwrap().push(format!("start {} (done)", self.name));
                InvalidateStart::Done
            }
            Mode::TwoPass => {
                subscription.set_seq(cur_seq);
                self.log.lock().unwrap().push(format!("start {}", self.name));
                InvalidateStart::Queued(Box::new(Finish {
                    name: self.name,
                    log: self.log.clone(),
                    registry: self.registry.lock().unwrap().clone(),
                }))
            }
        }
    }
}

fn insert(subs: &Arc<Subscriptions>, log: &Log, name: &'static str, start: u64, mode: Mode) -> Arc<IntervalNotifier> {
    let ops = Arc::new(Sub { name, mode, log: log.clone(), registry: Mutex::new(Some(subs.clone())) });
    subs.insert(start, 0x1000, ops).unwrap()
}

fn range(blockable: bool) -> NotifierRange {
    let mut range = NotifierRange::new(MmId(1), 0, 0x10000, Event::Unmap);
    range.blockable = blockable;
    range
}

fn taken(log: &Log) -> Vec<String> {
    core::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn all_starts_in_interval_order_then_every_finish_in_start_order() {
    let subs = Subscriptions::new(MmId(1));
    let log = Log::default();
    // Inserted out of address order: the walk is by interval.
    insert(&subs, &log, "c", 0x3000, Mode::TwoPass);
    insert(&subs, &log, "a", 0x1000, Mode::TwoPass);
    insert(&subs, &log, "b", 0x2000, Mode::OnePass);
    let ticket = subs.invalidate_start(&range(true)).unwrap();
    assert_eq!(
        taken(&log),
        ["start a", "invalidate b", "start c", "finish a", "finish c"],
        "finishes ran before invalidate_start returned, inside the odd epoch"
    );
    subs.invalidate_end(ticket);
    assert!(taken(&log).is_empty(), "invalidate_end calls nothing");
}

#[test]
fn a_start_that_queues_nothing_has_done_the_job() {
    let subs = Subscriptions::new(MmId(1));
    let log = Log::default();
    let sub = insert(&subs, &log, "a", 0x1000, Mode::StartOnly);
    let seq = sub.read_begin();
    let ticket = subs.invalidate_start(&range(true)).unwrap();
    assert_eq!(taken(&log), ["start a (done)"]);
    assert!(sub.read_retry(seq), "its start set the sequence");
    subs.invalidate_end(ticket);
}

#[test]
fn a_non_blockable_refusal_stops_the_starts_but_not_the_queued_finishes() {
    let subs = Subscriptions::new(MmId(1));
    let log = Log::default();
    insert(&subs, &log, "a", 0x1000, Mode::TwoPass);
    insert(&subs, &log, "b", 0x2000, Mode::Refuse);
    insert(&subs, &log, "c", 0x3000, Mode::TwoPass);
    let before = subs.seq();
    assert_eq!(subs.invalidate_start(&range(false)).unwrap_err(), Errno::Again);
    assert_eq!(taken(&log), ["start a", "refuse b", "finish a"], "c is never started; a's finish still runs");
    assert_eq!(subs.seq(), before + 2, "the failed epoch was closed after the finish");
}

#[test]
fn the_release_pass_runs_both_passes() {
    let subs = Subscriptions::new(MmId(1));
    let log = Log::default();
    insert(&subs, &log, "a", 0x1000, Mode::TwoPass);
    insert(&subs, &log, "b", 0x2000, Mode::TwoPass);
    subs.release();
    assert_eq!(taken(&log), ["start a", "start b", "finish a", "finish b"]);
}
