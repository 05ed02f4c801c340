//! Whether a thread sleeps in userfaultfd: in a fault waiting for the
//! handler, or in an operation waiting for the monitor to read its event.
//! A test harness running calls on threads asks this to know a call has
//! blocked, as it would read `/proc/<pid>/task/<tid>/wchan` on Linux
//! (`handle_userfault`, `userfaultfd_event_wait_completion`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One thread's flag; clone it out of the thread with [`current`].
#[derive(Clone, Debug, Default)]
pub struct SleepProbe(Arc<AtomicBool>);

impl SleepProbe {
    /// Whether the thread sleeps in userfaultfd now.
    pub fn is_sleeping(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn set(&self, sleeping: bool) {
        self.0.store(sleeping, Ordering::SeqCst);
    }
}

thread_local! {
    static PROBE: SleepProbe = SleepProbe::default();
}

/// The calling thread's probe.
pub fn current() -> SleepProbe {
    PROBE.with(SleepProbe::clone)
}
