//! The parts of a process's state that the fault path consults: a pending
//! fatal signal (SIGKILL) and an address space the OOM reaper has started
//! on. The model has no tasks, so both live on the address space that
//! stands for the process.
//!
//! A killable sleep (a fault waiting for a userfaultfd handler) registers a
//! waker here, so [`Mm::send_fatal_signal`] can end it.
//!
//! Linux: `fatal_signal_pending`, `check_stable_address_space`
//! (`MMF_UNSTABLE`, set by `__oom_reap_task_mm`).

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};

use crate::mm::Mm;

/// Something a fatal signal must wake (a userfaultfd context's fault
/// wait queue).
pub(crate) trait SignalWake: Send + Sync {
    /// Wakes every sleeper so it can notice the signal.
    fn wake_for_signal(&self);
}

/// Fatal-signal and OOM-reaper state of one address space.
#[derive(Default)]
pub(crate) struct Signals {
    fatal: AtomicBool,
    unstable: AtomicBool,
    /// Killable sleepers' queues. Lock order: taken before a queue's own
    /// lock, never under it.
    wakers: Mutex<Vec<Weak<dyn SignalWake>>>,
}

impl Signals {
    pub(crate) fn add_waker(&self, waker: Weak<dyn SignalWake>) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(waker);
    }
}

impl Mm {
    /// Delivers SIGKILL to the process (`fatal_signal_pending` becomes
    /// true) and wakes its killable sleepers.
    pub fn send_fatal_signal(&self) {
        self.signals().fatal.store(true, Ordering::Release);
        let wakers: Vec<_> = self.signals().wakers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for waker in wakers.iter().filter_map(Weak::upgrade) {
            waker.wake_for_signal();
        }
    }
    /// True once [`Self::send_fatal_signal`] ran (`fatal_signal_pending`).
    pub fn fatal_signal_pending(&self) -> bool {
        self.signals().fatal.load(Ordering::Acquire)
    }
    /// Marks the address space as being reaped by the OOM killer
    /// (`MMF_UNSTABLE`): from now on faults on it must not be trusted.
    pub fn mark_oom_reaped(&self) {
        self.signals().unstable.store(true, Ordering::Release);
    }
    /// `check_stable_address_space`: false once the OOM reaper started or
    /// the address space exited.
    pub fn is_stable(&self) -> bool {
        !self.signals().unstable.load(Ordering::Acquire) && !self.has_exited()
    }
}
