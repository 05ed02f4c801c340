//! Helpers for tests of this crate and of crates built on it: small
//! machines, throw-away file paths, a recording invalidation subscriber, a
//! seeded generator, a watchdog. Not part of the public API: compiled for
//! this crate's unit tests and, with the `testing` cargo feature, for the
//! tests and benchmarks of other crates (enable it only in
//! `[dev-dependencies]`).

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

/// A userfaultfd of `mm` opened with `flags`, past the `UFFDIO_API`
/// handshake for `features`.
pub fn userfaultfd(mm: &Arc<Mm>, flags: u32, features: u64) -> crate::uffd::Userfaultfd {
    let uffd = crate::uffd::Userfaultfd::new(mm, flags).expect("valid open flags");
    uffd.api(crate::uffd::UFFD_API, features).expect("features this kernel offers");
    uffd
}

/// A recorder subscribed to `mm`.
pub fn record(mm: &Mm) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    mm.register_notifier(recorder.clone());
    recorder
}

/// The level and entry that map `va` in `mm`'s CPU page table now.
pub fn leaf(mm: &Mm, va: u64) -> (Level, Entry) {
    mm.leaf_at(va)
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

/// splitmix64: a small deterministic generator for tests that pick pages
/// and operations at random (reproducible from the seed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True once in `n` times.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// A random run of pages inside `[0, pages)`: `(first, count)`, at most
    /// `max` long.
    pub fn pages(&mut self, pages: u64, max: u64) -> (u64, u64) {
        let count = 1 + self.below(max.min(pages));
        (self.below(pages - count + 1), count)
    }
}

/// Sets the flag when dropped, also while unwinding: racing threads that
/// wait for it stop even when the test fails.
#[derive(Debug)]
pub struct SetOnDrop<'a>(pub &'a core::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, core::sync::atomic::Ordering::SeqCst);
    }
}

/// Aborts the process if dropped later than `limit` after creation: a race
/// test that deadlocks or livelocks ends with a message, not a hang.
#[derive(Debug)]
pub struct Watchdog {
    alive: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching; `name` is printed if the limit passes.
    pub fn new(name: &str, limit: std::time::Duration) -> Self {
        let (alive, watched) = std::sync::mpsc::channel::<()>();
        let name = name.to_owned();
        let thread = std::thread::spawn(move || {
            if watched.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("{name}: not done after {limit:?}: deadlock or livelock; aborting");
                std::process::abort();
            }
        });
        Self { alive: Some(alive), thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.alive.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
