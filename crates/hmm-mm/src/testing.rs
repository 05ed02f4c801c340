//! Helpers for tests of this crate and of crates built on it: a recording
//! invalidation subscriber.

use std::sync::Arc;

use parking_lot::Mutex;

use hmm_pagetable::{Entry, Level};
use hmm_types::{Errno, Event, MmuNotifier, NotifierRange};

use crate::{Kernel, KernelConfig, Mm, ThpMode};

/// A machine with `ram_mib` MiB of RAM and the given THP policy.
pub fn kernel(ram_mib: u64, thp: ThpMode) -> Arc<Kernel> {
    let config = KernelConfig { ram_bytes: ram_mib << 20, thp, ..KernelConfig::default() };
    Kernel::new(config).expect("valid config")
}

/// Like [`kernel`], with a swap area of `swap_pages` slots.
pub fn kernel_with_swap(ram_mib: u64, thp: ThpMode, swap_pages: u64) -> Arc<Kernel> {
    let config = KernelConfig { ram_bytes: ram_mib << 20, thp, swap_pages, ..KernelConfig::default() };
    Kernel::new(config).expect("valid config")
}

/// A path for a throw-away file in the system's temporary directory,
/// unique to this process and call.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    static COUNTER: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("hmm-{}-{n}-{name}", std::process::id()))
}

/// A recorder subscribed to `mm`.
pub fn record(mm: &Mm) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    mm.register_notifier(recorder.clone());
    recorder
}

/// The level and entry that map `va` in `mm`'s CPU page table now.
pub fn leaf(mm: &Mm, va: u64) -> (Level, Entry) {
    let _guard = mm.mmap_read();
    let slot = mm.pgtable().find(va);
    (slot.level(), slot.load())
}

/// One recorded callback.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Recorded {
    /// `invalidate_range_start`.
    Start(NotifierRange),
    /// `invalidate_range_end`.
    End(NotifierRange),
}

/// Records every callback, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    log: Mutex<Vec<Recorded>>,
}

impl Recorder {
    /// Takes and clears the log.
    pub fn take(&self) -> Vec<Recorded> {
        core::mem::take(&mut *self.log.lock())
    }

    /// Takes the log and keeps only the starts, as `(event, start, end)`;
    /// checks that every start has its end.
    pub fn take_events(&self) -> Vec<(Event, u64, u64)> {
        let log = self.take();
        let starts: Vec<_> =
            log.iter().filter_map(|r| if let Recorded::Start(s) = r { Some(*s) } else { None }).collect();
        let ends: Vec<_> = log.iter().filter_map(|r| if let Recorded::End(s) = r { Some(*s) } else { None }).collect();
        assert_eq!(starts.len(), ends.len(), "unbalanced invalidations: {log:?}");
        starts.iter().map(|r| (r.event, r.start, r.end)).collect()
    }
}

impl MmuNotifier for Recorder {
    fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno> {
        self.log.lock().push(Recorded::Start(*range));
        Ok(())
    }
    fn invalidate_range_end(&self, range: &NotifierRange) {
        self.log.lock().push(Recorded::End(*range));
    }
}
