//! Mirror coherence under races (spec §11.6, with §2.8 and §3.6).
//!
//! A minimal mirroring device: a device page table (VA page → hmm pfn word)
//! under one lock, an interval-notifier callback that takes that lock, calls
//! `set_seq` and removes every entry of the invalidated range, and a device
//! "fault" built on [`hmm::range_fault_loop`] whose commit step takes the
//! same lock, checks `read_retry` and programs the table.
//!
//! The coherence checker runs inside every invalidation callback (before
//! anything is cleared), at every commit, and at the end of each test: each
//! device entry must name the frame the CPU maps at that address, may be
//! writable only where the CPU entry is, and its frame must still be
//! allocated (reference count above zero). In other words: the device never
//! holds a mapping the CPU no longer has when an invalidation starts.
//!
//! Each race test runs one thread of device faults (snapshot, read and write
//! requests over random sub-ranges, fixed seeds) against one thread changing
//! the CPU side: munmap + MAP_FIXED remap, mprotect, fork (child and parent
//! writes, child exit), MADV_PAGEOUT to swap, tmpfs truncate/grow under a
//! shared file mapping, MADV_DONTNEED, fs-dax truncate/grow. The two sides
//! pace each other (neither runs far ahead of the other), so the races are
//! dense yet a range is never invalidated so continuously that the device
//! livelocks into `EBUSY`. Where the device sees data at commit time, it
//! must be what the test can have written. Every test then checks that CPU
//! writes are seen through the device's pfns, that exit clears the device,
//! and that every frame and page-table page went back to the allocator. The
//! DAX tests cover the project's starting point: truncating a mirrored
//! fs-dax file completes at once, where a GUP pin makes it fail with
//! `EBUSY` after the filesystem's busy timeout. One test checks the checker
//! itself, with a device that keeps stale entries.
//!
//! The commit-time check takes the mmap read lock before the device lock so
//! it can read the CPU page table; a real driver would not do that (it does
//! not need to), and the order (mmap lock, then device lock) is the one the
//! callbacks already impose.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hmm::pfn::{
    hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID,
    HMM_PFN_WRITE,
};
use hmm::{range_fault_loop, HmmError, IntervalNotifier, IntervalNotifierOps, Range, HMM_RANGE_DEFAULT_TIMEOUT};
use hmm_mm::fs::{DaxFs, File};
use hmm_mm::gup::FollFlags;
use hmm_mm::phys::PhysMem;
use hmm_mm::testing::{kernel, kernel_with_swap, temp_path, Rng, Watchdog};
use hmm_mm::{Kernel, Mm, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{Errno, MadviseAdvice, MapFlags, NotifierRange, Prot, PAGE_SHIFT, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const FIXED: MapFlags = ANON.union(MapFlags::FIXED);
/// Where the tests map: 1 GiB aligned, away from the top-down allocator.
const REGION: u64 = 0x1000_0000_0000;
/// Pages of the mirrored range in the race tests (one 2 MiB block).
const PAGES: u64 = 512;
const LEN: u64 = PAGES * PAGE_SIZE;
/// A whole test (race and checks) must end within this, or the binary
/// aborts: a deadlock or livelock.
const WATCHDOG: Duration = Duration::from_secs(60);
/// The most disturber rounds per device fault (see [`race`]).
const ROUNDS_PER_FAULT: u32 = 4;
/// The most device faults per disturber round (see [`race`]).
const FAULTS_PER_ROUND: u32 = 16;
/// The most a race runs (see [`Goal`]).
const BUDGET: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Infrastructure
// ---------------------------------------------------------------------------

/// The value the tests keep in the first word of the page at `va`.
fn pattern(va: u64) -> u64 {
    va ^ 0x5eed_0000_0000_0001
}

/// A machine and what its allocator looked like right after boot.
struct Machine {
    kernel: Arc<Kernel>,
    free_at_boot: u64,
}

impl Machine {
    fn new(kernel: Arc<Kernel>) -> Self {
        let free_at_boot = kernel.phys().free_frames();
        Self { kernel, free_at_boot }
    }

    fn assert_everything_returned(&self) {
        let phys = self.kernel.phys();
        assert_eq!(phys.page_table_frames(), 0, "page-table pages leaked");
        assert_eq!(phys.free_frames(), self.free_at_boot, "frames leaked");
        assert_eq!(self.kernel.swap().used_slots(), 0, "swap slots leaked");
    }
}

// ---------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------

/// A device page table and its invalidation callback.
struct Device {
    mm: Weak<Mm>,
    phys: Arc<PhysMem>,
    /// VA of a 4 KiB page → the hmm pfn word the device maps it with.
    table: Mutex<BTreeMap<u64, u64>>,
    violations: Mutex<Vec<String>>,
    invalidations: AtomicU64,
    checked: AtomicU64,
    /// Fault injection for the checker's own test: acknowledge
    /// invalidations (`set_seq`) without removing the entries.
    skip_clear: AtomicBool,
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device").field("entries", &self.table.lock().len()).finish_non_exhaustive()
    }
}

impl Device {
    fn violation(&self, what: String) {
        let mut violations = self.violations.lock();
        if violations.len() < 32 {
            violations.push(what);
        }
    }

    /// What is wrong with the device entry `word` at `va`, compared with
    /// the CPU page table of `mm` now; `None` if it is coherent. The caller
    /// guarantees that the tables cannot be freed meanwhile (it holds the
    /// mmap lock, or runs inside a callback whose caller does).
    fn mismatch(&self, mm: &Mm, va: u64, word: u64) -> Option<String> {
        self.checked.fetch_add(1, Relaxed);
        let pfn = hmm_pfn_to_pfn(word);
        if !self.phys.is_valid_pfn(pfn) {
            return Some(format!("{va:#x}: device maps {pfn:?}, which is no frame"));
        }
        let (refs, _) = self.phys.folio_counts(pfn);
        if refs == 0 {
            return Some(format!("{va:#x}: device maps {pfn:?}, which is free (reference count 0)"));
        }
        let slot = mm.pgtable().find(va);
        let entry = slot.load();
        if !entry.is_accessible() || !entry.is_leaf(slot.level()) {
            return Some(format!("{va:#x}: device maps {pfn:?}, the CPU has {entry:?} at {:?}", slot.level()));
        }
        let cpu = entry.pfn().add((va - slot.va()) >> PAGE_SHIFT);
        if cpu != pfn {
            return Some(format!("{va:#x}: device maps {pfn:?}, the CPU maps {cpu:?}"));
        }
        if word & HMM_PFN_WRITE != 0 && !entry.is_write() {
            return Some(format!("{va:#x}: device may write {pfn:?}, the CPU entry is read-only: {entry:?}"));
        }
        None
    }

    /// Checks every entry of `table` against the CPU.
    fn check_all(&self, mm: &Mm, table: &BTreeMap<u64, u64>, when: &str) {
        for (&va, &word) in table {
            if let Some(problem) = self.mismatch(mm, va, word) {
                self.violation(format!("{when}: {problem}"));
            }
        }
    }

    /// The first word of the page the device maps at `word`.
    fn read_first_word(&self, word: u64) -> u64 {
        let mut buf = [0u8; 8];
        self.phys.read(hmm_pfn_to_pfn(word), 0, &mut buf);
        u64::from_le_bytes(buf)
    }
}

impl IntervalNotifierOps for Device {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let mut table = if range.blockable {
            self.table.lock()
        } else {
            match self.table.try_lock() {
                Some(table) => table,
                None => return false,
            }
        };
        self.invalidations.fetch_add(1, Relaxed);
        // The coherence checker, before anything is cleared: the CPU side
        // has not changed `range` yet, and every other change already
        // cleared its entries, so everything must still match.
        if let Some(mm) = self.mm.upgrade() {
            self.check_all(
                &mm,
                &table,
                &format!("invalidate {:?} [{:#x}, {:#x})", range.event, range.start, range.end),
            );
        }
        subscription.set_seq(cur_seq);
        if self.skip_clear.load(SeqCst) {
            return true;
        }
        let start = range.start.max(subscription.start());
        let end = range.end.min(subscription.last().saturating_add(1));
        if start < end {
            let mut tail = table.split_off(&(start & !(PAGE_SIZE - 1)));
            let mut after = tail.split_off(&end);
            table.append(&mut after);
        }
        true
    }
}

/// What the device asks of each page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Req {
    /// Report what is there (`default_flags = 0`).
    Snapshot,
    /// `REQ_FAULT`.
    Read,
    /// `REQ_FAULT | REQ_WRITE`.
    Write,
}

impl Req {
    fn flags(self) -> u64 {
        match self {
            Self::Snapshot => 0,
            Self::Read => HMM_PFN_REQ_FAULT,
            Self::Write => HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE,
        }
    }
}

/// Which first words a page seen through the device may hold.
type Content = dyn Fn(u64, u64) -> bool + Sync;

/// A device mirroring `[start, end)` of one address space.
struct Mirror {
    device: Arc<Device>,
    notifier: Arc<IntervalNotifier>,
    start: u64,
    end: u64,
}

impl Mirror {
    fn new(mm: &Arc<Mm>, start: u64, len: u64) -> Self {
        let device = Arc::new(Device {
            mm: Arc::downgrade(mm),
            phys: mm.phys().clone(),
            table: Mutex::new(BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
            invalidations: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            skip_clear: AtomicBool::new(false),
        });
        let notifier = mm.interval_notifier_insert(start, len, device.clone()).expect("insert the notifier");
        Self { device, notifier, start, end: start + len }
    }

    fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }

    /// A device fault of `count` pages from `va` (`range_fault_loop`, the
    /// commit programming the device table). Returns the valid entries
    /// programmed. `content`, if given, must accept the first word of each
    /// page seen through the device at commit time.
    fn fault(&self, mm: &Arc<Mm>, va: u64, count: u64, req: Req, content: Option<&Content>) -> Result<u64, HmmError> {
        let mut pfns = vec![0u64; count as usize];
        let mut range = Range {
            notifier: &self.notifier,
            notifier_seq: 0,
            start: va,
            end: va + count * PAGE_SIZE,
            hmm_pfns: &mut pfns,
            default_flags: req.flags(),
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        let device = &self.device;
        range_fault_loop(mm, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |r| {
            // Only for the checker: see the module comment.
            let guard = mm.mmap_read();
            let mut table = device.table.lock();
            if r.notifier.read_retry(r.notifier_seq) {
                return None;
            }
            let mut valid = 0;
            for (i, &word) in r.hmm_pfns.iter().enumerate() {
                let at = r.start + ((i as u64) << PAGE_SHIFT);
                let word = word & !HMM_PFN_INOUT_FLAGS;
                let wanted = match req {
                    Req::Snapshot => 0,
                    Req::Read => HMM_PFN_VALID,
                    Req::Write => HMM_PFN_VALID | HMM_PFN_WRITE,
                };
                if word & wanted != wanted {
                    device.violation(format!("commit: {req:?} fault left {at:#x} as {word:#x}"));
                }
                if word & HMM_PFN_VALID == 0 {
                    table.remove(&at);
                    continue;
                }
                if let Some(problem) = device.mismatch(mm, at, word) {
                    device.violation(format!("commit: {problem}"));
                } else if let Some(content) = content {
                    let value = device.read_first_word(word);
                    if !content(at, value) {
                        device.violation(format!("commit: the device sees {value:#x} at {at:#x}"));
                    }
                }
                table.insert(at, word);
                valid += 1;
            }
            drop(table);
            drop(guard);
            Some(valid)
        })
    }

    /// Checks the whole device table against the CPU.
    fn check_now(&self, mm: &Mm, when: &str) {
        let _guard = mm.mmap_read();
        let table = self.device.table.lock();
        self.device.check_all(mm, &table, when);
    }

    fn violations(&self) -> Vec<String> {
        self.device.violations.lock().clone()
    }

    /// Write-faults the whole range, writes through the CPU, and checks
    /// that every page is mirrored and shows the CPU's data through the
    /// device's pfns, then the same after a snapshot.
    fn verify_data(&self, mm: &Arc<Mm>, salt: u64) {
        self.check_now(mm, "before the data check");
        let n = self.fault(mm, self.start, self.pages(), Req::Write, None).expect("write fault of the whole range");
        assert_eq!(n, self.pages());
        for round in 0..2u64 {
            let mut va = self.start;
            while va < self.end {
                mm.write_u64(va, pattern(va) ^ salt ^ round).expect("CPU write");
                va += PAGE_SIZE;
            }
            {
                let _guard = mm.mmap_read();
                let table = self.device.table.lock();
                assert_eq!(table.len() as u64, self.pages(), "CPU writes to writable entries invalidate nothing");
                for (&at, &word) in table.iter() {
                    assert_eq!(word & HMM_PFN_WRITE, HMM_PFN_WRITE);
                    let seen = self.device.read_first_word(word);
                    assert_eq!(seen, pattern(at) ^ salt ^ round, "the device sees other data than the CPU at {at:#x}");
                }
            }
            let n = self.fault(mm, self.start, self.pages(), Req::Snapshot, None).expect("snapshot");
            assert_eq!(n, self.pages());
        }
        self.check_now(mm, "after the data check");
    }

    /// Exit clears the device (RELEASE); the subscription goes; nothing was
    /// ever incoherent.
    fn finish(self, mm: &Arc<Mm>) {
        mm.exit();
        assert!(self.device.table.lock().is_empty(), "exit must clear the device table");
        self.notifier.remove();
        let violations = self.violations();
        assert!(violations.is_empty(), "coherence violations:\n{}", violations.join("\n"));
        assert!(self.device.invalidations.load(Relaxed) > 0);
    }
}

// ---------------------------------------------------------------------------
// The race runner
// ---------------------------------------------------------------------------

/// Outcomes of the device faults of one run.
#[derive(Debug, Default)]
struct Outcomes {
    ok: u64,
    efault: u64,
    eperm: u64,
    ebusy: u64,
    valid: u64,
}

/// What a race test accepts: errors besides success, and the first words
/// the device may see in a page.
#[derive(Clone, Copy)]
struct Expect<'a> {
    efault: bool,
    eperm: bool,
    content: &'a Content,
}

impl<'a> Expect<'a> {
    /// Only successes, with pages holding what `content` accepts.
    fn success(content: &'a Content) -> Self {
        Self { efault: false, eperm: false, content }
    }
}

/// How long a race runs: at least `faults` device faults and `rounds`
/// disturber rounds, unless `budget` runs out first (the machine may be
/// busy: the rounds are a goal, the budget a bound).
#[derive(Clone, Copy, Debug)]
struct Goal {
    faults: u64,
    rounds: u64,
    budget: Duration,
}

/// Runs device faults over random sub-ranges of the mirror while `disturb`
/// loops on another thread, until `goal` is met; returns the outcomes.
fn race(
    name: &str,
    mm: &Arc<Mm>,
    mirror: &Mirror,
    seed: u64,
    goal: Goal,
    expect: Expect<'_>,
    disturb: impl FnMut(&mut Rng) + Send,
) -> Outcomes {
    let began = Instant::now();
    let stop = AtomicBool::new(false);
    let (rounds_done, faults_done) = (AtomicU64::new(0), AtomicU64::new(0));
    let (outcomes, rounds) = thread::scope(|s| {
        let (stop, rounds_done, faults_done) = (&stop, &rounds_done, &faults_done);
        let disturber = thread::Builder::new()
            .name(format!("{name}-disturber"))
            .spawn_scoped(s, move || {
                let mut disturb = disturb;
                let mut rng = Rng::new(seed ^ 0xd157);
                let mut rounds = 0u64;
                let (mut seen, mut ahead) = (faults_done.load(Relaxed), 0);
                while !stop.load(SeqCst) {
                    disturb(&mut rng);
                    rounds += 1;
                    rounds_done.store(rounds, Relaxed);
                    // At most ROUNDS_PER_FAULT rounds per device fault: a
                    // range invalidated without pause would livelock the
                    // device into EBUSY (spec §9), which tests nothing.
                    let now = faults_done.load(Relaxed);
                    if now != seen {
                        (seen, ahead) = (now, 0);
                        continue;
                    }
                    ahead += 1;
                    if ahead >= ROUNDS_PER_FAULT {
                        while faults_done.load(Relaxed) == seen && !stop.load(SeqCst) {
                            thread::yield_now();
                        }
                        (seen, ahead) = (faults_done.load(Relaxed), 0);
                    }
                }
                rounds
            })
            .expect("spawn");
        let device = thread::Builder::new()
            .name(format!("{name}-device"))
            .spawn_scoped(s, move || {
                let mut rng = Rng::new(seed);
                let mut out = Outcomes::default();
                let pages = mirror.pages();
                let mut faults = 0u64;
                let (mut seen, mut ahead) = (rounds_done.load(Relaxed), 0);
                while (faults < goal.faults || rounds_done.load(Relaxed) < goal.rounds) && began.elapsed() < goal.budget
                {
                    // At most FAULTS_PER_ROUND faults per disturber round,
                    // so that a disturber slowed by the mmap write lock
                    // still races often. Each side waits only while the
                    // other makes no progress: both cannot wait at once.
                    let now = rounds_done.load(Relaxed);
                    if now != seen {
                        (seen, ahead) = (now, 0);
                    } else if ahead >= FAULTS_PER_ROUND {
                        while rounds_done.load(Relaxed) == seen && began.elapsed() < goal.budget {
                            thread::yield_now();
                        }
                        (seen, ahead) = (rounds_done.load(Relaxed), 0);
                    }
                    ahead += 1;
                    faults += 1;
                    let (first, count) = if rng.one_in(8) { (0, pages) } else { rng.pages(pages, 64) };
                    let req = match rng.below(3) {
                        0 => Req::Snapshot,
                        1 => Req::Read,
                        _ => Req::Write,
                    };
                    let va = mirror.start + first * PAGE_SIZE;
                    match mirror.fault(mm, va, count, req, Some(expect.content)) {
                        Ok(valid) => {
                            out.ok += 1;
                            out.valid += valid;
                        }
                        Err(e) if e.errno() == Errno::Fault && expect.efault => out.efault += 1,
                        Err(e) if e.errno() == Errno::Perm && expect.eperm => out.eperm += 1,
                        Err(HmmError::Busy) => out.ebusy += 1,
                        Err(e) => panic!("{name}: unexpected {e:?} for a {req:?} fault of {count} pages at {va:#x}"),
                    }
                    faults_done.store(faults, Relaxed);
                }
                out
            })
            .expect("spawn");
        let outcomes = device.join();
        stop.store(true, SeqCst);
        let rounds = disturber.join();
        (outcomes, rounds)
    });
    let outcomes = outcomes.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let rounds = rounds.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    eprintln!(
        "{name}: {:.2?}; {rounds} disturber rounds; {} invalidations; {} entries checked; faults {outcomes:?}",
        began.elapsed(),
        mirror.device.invalidations.load(Relaxed),
        mirror.device.checked.load(Relaxed),
    );
    assert!(rounds > 0, "{name}: the disturber never ran");
    let attempts = outcomes.ok + outcomes.efault + outcomes.eperm + outcomes.ebusy;
    assert!(outcomes.ok > attempts / 4, "{name}: too few faults succeeded: {outcomes:?}");
    let violations = mirror.violations();
    assert!(violations.is_empty(), "{name}: coherence violations:\n{}", violations.join("\n"));
    outcomes
}

/// An anonymous mirrored 2 MiB range at [`REGION`], each page holding its
/// [`pattern`].
fn anon_setup(kernel: &Arc<Kernel>) -> (Arc<Mm>, Mirror) {
    let mm = kernel.create_mm().expect("mm");
    let va = mm.mmap(REGION, LEN, Prot::RW, FIXED).expect("mmap");
    for page in 0..PAGES {
        mm.write_u64(va + page * PAGE_SIZE, pattern(va + page * PAGE_SIZE)).expect("fill");
    }
    let mirror = Mirror::new(&mm, va, LEN);
    (mm, mirror)
}

fn pattern_only(va: u64, value: u64) -> bool {
    value == pattern(va)
}

fn pattern_or_zero(va: u64, value: u64) -> bool {
    value == pattern(va) || value == 0
}

// ---------------------------------------------------------------------------
// Race tests
// ---------------------------------------------------------------------------

/// The checker itself: a device that acknowledges invalidations but keeps
/// its entries is caught at the next invalidation and at the end.
#[test]
fn the_checker_catches_a_device_that_keeps_stale_entries() {
    let _watchdog = Watchdog::new("the_checker_catches_a_device_that_keeps_stale_entries", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Never));
    let (mm, mirror) = anon_setup(&machine.kernel);
    assert_eq!(mirror.fault(&mm, REGION, PAGES, Req::Write, Some(&pattern_only)), Ok(PAGES));
    mirror.device.skip_clear.store(true, SeqCst);
    mm.munmap(REGION + 8 * PAGE_SIZE, 2 * PAGE_SIZE).expect("munmap");
    assert!(mirror.violations().is_empty(), "nothing had changed yet when the munmap's callback ran");
    mm.mprotect(REGION + 100 * PAGE_SIZE, PAGE_SIZE, Prot::READ).expect("mprotect");
    let violations = mirror.violations();
    assert_eq!(violations.len(), 2, "the two unmapped pages: {violations:#?}");
    assert!(violations.iter().all(|v| v.starts_with("invalidate ProtectionVma") && v.contains("which is free")));
    mirror.device.violations.lock().clear();
    mirror.check_now(&mm, "end");
    let violations = mirror.violations();
    assert_eq!(violations.len(), 3, "and the page the mprotect made read-only: {violations:#?}");
    assert!(violations[2].contains("the CPU entry is read-only"), "{violations:#?}");
    // Reset the faulty device; exit then finds nothing wrong.
    mirror.device.skip_clear.store(false, SeqCst);
    mirror.device.table.lock().clear();
    mirror.device.violations.lock().clear();
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_munmap_and_fixed_remap() {
    let _watchdog = Watchdog::new("race_munmap_and_fixed_remap", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Always));
    let (mm, mirror) = anon_setup(&machine.kernel);
    let disturber_mm = mm.clone();
    let outcomes = race(
        "munmap+remap",
        &mm,
        &mirror,
        0x11,
        Goal { faults: 3000, rounds: 5000, budget: BUDGET },
        Expect { efault: true, ..Expect::success(&pattern_or_zero) },
        move |rng| {
            let (first, count) = rng.pages(PAGES, 128);
            let (va, len) = (REGION + first * PAGE_SIZE, count * PAGE_SIZE);
            if rng.one_in(2) {
                disturber_mm.munmap(va, len).expect("munmap");
                thread::yield_now();
            }
            // MAP_FIXED over whatever is there (an implicit munmap).
            disturber_mm.mmap(va, len, Prot::RW, FIXED).expect("remap");
            if rng.one_in(2) {
                disturber_mm.write_u64(va, pattern(va)).expect("refill");
            }
        },
    );
    assert!(outcomes.efault > 0 || outcomes.ok > 0);
    mirror.verify_data(&mm, 1);
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_mprotect_ro_rw() {
    let _watchdog = Watchdog::new("race_mprotect_ro_rw", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Always));
    let (mm, mirror) = anon_setup(&machine.kernel);
    let disturber_mm = mm.clone();
    let outcomes = race(
        "mprotect",
        &mm,
        &mirror,
        0x22,
        Goal { faults: 3000, rounds: 3000, budget: BUDGET },
        Expect { eperm: true, ..Expect::success(&pattern_only) },
        move |rng| {
            let (first, count) = rng.pages(PAGES, 128);
            let (va, len) = (REGION + first * PAGE_SIZE, count * PAGE_SIZE);
            disturber_mm.mprotect(va, len, Prot::READ).expect("mprotect RO");
            // Long enough for the device's write faults to meet the
            // read-only pages now and then, whatever the scheduling (a
            // bare yield let a CI run see none).
            thread::sleep(Duration::from_micros(50));
            disturber_mm.mprotect(va, len, Prot::RW).expect("mprotect RW");
        },
    );
    assert!(outcomes.eperm > 0, "write faults on read-only pages should be refused: {outcomes:?}");
    mirror.verify_data(&mm, 2);
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_fork_child_writes_and_exits() {
    let _watchdog = Watchdog::new("race_fork_child_writes_and_exits", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Always));
    let (mm, mirror) = anon_setup(&machine.kernel);
    let parent = mm.clone();
    // The parent only ever writes its own pattern again (breaking COW on
    // its side), so whatever the device sees must be the parent's pattern:
    // a child write showing through would be a COW break gone wrong.
    let goal = Goal { faults: 1500, rounds: 1000, budget: BUDGET };
    race("fork", &mm, &mirror, 0x33, goal, Expect::success(&pattern_only), move |rng| {
        let child = parent.fork().expect("fork");
        for _ in 0..1 + rng.below(8) {
            let va = REGION + rng.below(PAGES) * PAGE_SIZE;
            if rng.one_in(2) {
                child.write_u64(va, !pattern(va)).expect("child write");
            } else {
                parent.write_u64(va, pattern(va)).expect("parent write");
            }
        }
        if rng.one_in(4) {
            thread::yield_now();
        }
        child.exit();
    });
    mirror.verify_data(&mm, 3);
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_pageout_to_swap() {
    let _watchdog = Watchdog::new("race_pageout_to_swap", WATCHDOG);
    let machine = Machine::new(kernel_with_swap(64, ThpMode::Never, 2 * PAGES));
    let (mm, mirror) = anon_setup(&machine.kernel);
    let disturber_mm = mm.clone();
    let goal = Goal { faults: 2000, rounds: 3000, budget: BUDGET };
    race("pageout", &mm, &mirror, 0x44, goal, Expect::success(&pattern_only), move |rng| {
        let (first, count) = rng.pages(PAGES, 64);
        disturber_mm
            .madvise(REGION + first * PAGE_SIZE, count * PAGE_SIZE, MadviseAdvice::PageOut)
            .expect("MADV_PAGEOUT");
    });
    assert!(machine.kernel.swap().swapped_out() > 0, "nothing went to swap");
    assert!(machine.kernel.swap().swapped_in() > 0, "nothing came back from swap");
    mirror.verify_data(&mm, 4);
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_madvise_dontneed() {
    let _watchdog = Watchdog::new("race_madvise_dontneed", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Always));
    let (mm, mirror) = anon_setup(&machine.kernel);
    let disturber_mm = mm.clone();
    let goal = Goal { faults: 3000, rounds: 5000, budget: BUDGET };
    race("dontneed", &mm, &mirror, 0x55, goal, Expect::success(&pattern_or_zero), move |rng| {
        let (first, count) = rng.pages(PAGES, 128);
        let va = REGION + first * PAGE_SIZE;
        disturber_mm.madvise(va, count * PAGE_SIZE, MadviseAdvice::DontNeed).expect("MADV_DONTNEED");
        if rng.one_in(2) {
            disturber_mm.write_u64(va, pattern(va)).expect("refill");
        }
    });
    mirror.verify_data(&mm, 5);
    mirror.finish(&mm);
    drop(mm);
    machine.assert_everything_returned();
}

#[test]
fn race_tmpfs_truncate_and_grow_under_a_shared_mapping() {
    let _watchdog = Watchdog::new("race_tmpfs_truncate_and_grow_under_a_shared_mapping", WATCHDOG);
    let machine = Machine::new(kernel(64, ThpMode::Never));
    let k = &machine.kernel;
    let file = k.tmpfs().create("mirrored").expect("create");
    file.ftruncate(LEN).expect("size");
    let mm = k.create_mm().expect("mm");
    let va = mm.mmap_file(REGION, LEN, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).expect("mmap");
    for page in 0..PAGES {
        mm.write_u64(va + page * PAGE_SIZE, pattern(va + page * PAGE_SIZE)).expect("fill");
    }
    let mirror = Mirror::new(&mm, va, LEN);
    let (disturber_file, disturber_mm) = (file.clone(), mm.clone());
    let outcomes = race(
        "tmpfs truncate",
        &mm,
        &mirror,
        0x66,
        Goal { faults: 3000, rounds: 5000, budget: BUDGET },
        Expect { efault: true, ..Expect::success(&pattern_or_zero) },
        move |rng| {
            let keep = rng.below(PAGES);
            // A partial last page keeps at least its first word.
            let tail = if rng.one_in(2) { 0 } else { 8 + rng.below(PAGE_SIZE - 8) };
            disturber_file.ftruncate(keep * PAGE_SIZE + tail).expect("shrink");
            thread::yield_now();
            disturber_file.ftruncate(LEN).expect("grow");
            // Put the pattern back in one of the pages that were cut.
            let page = keep + rng.below(PAGES - keep);
            let at = REGION + page * PAGE_SIZE;
            disturber_mm.write_u64(at, pattern(at)).expect("refill");
        },
    );
    assert!(outcomes.efault > 0, "faults past the end of the file should be SIGBUS → EFAULT: {outcomes:?}");
    mirror.verify_data(&mm, 6);
    let mut buf = [0u8; 8];
    file.pread(8 * PAGE_SIZE, &mut buf).expect("pread");
    assert_eq!(u64::from_le_bytes(buf), pattern(va + 8 * PAGE_SIZE) ^ 6 ^ 1, "the file holds the CPU's last write");
    mirror.finish(&mm);
    drop(mm);
    k.tmpfs().unlink("mirrored").expect("unlink");
    drop(file);
    machine.assert_everything_returned();
}

// ---------------------------------------------------------------------------
// fs-dax: the starting point of the project
// ---------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
const BUSY_TIMEOUT: Duration = Duration::from_millis(300);

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A 4 MiB fs-dax file mapped shared at [`REGION`] (two PMD leaves) and
/// mirrored with write access, each page holding its pattern.
struct DaxSetup {
    machine: Machine,
    _path: TempFile,
    fs: DaxFs,
    file: File,
    mm: Arc<Mm>,
    mirror: Mirror,
    free_pages: u64,
}

fn dax_setup(name: &str) -> DaxSetup {
    let machine = Machine::new(kernel(64, ThpMode::Never));
    let path = TempFile(temp_path(name));
    let fs = DaxFs::format(&machine.kernel, &path.0, 16 * MIB).expect("format");
    fs.set_busy_timeout(BUSY_TIMEOUT);
    let free_pages = fs.device().free_pages();
    let file = fs.create("mirrored").expect("create");
    file.ftruncate(4 * MIB).expect("size");
    let mm = machine.kernel.create_mm().expect("mm");
    let va = mm.mmap_file(REGION, 4 * MIB, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).expect("mmap");
    let mirror = Mirror::new(&mm, va, 4 * MIB);
    let n = mirror.fault(&mm, va, 4 * MIB / PAGE_SIZE, Req::Write, None).expect("mirror the file");
    assert_eq!(n, 4 * MIB / PAGE_SIZE);
    {
        let table = mirror.device.table.lock();
        assert!(table.values().all(|&w| hmm_pfn_to_map_order(w) == 9), "fs-dax PMD leaves are reported as order 9");
    }
    assert_eq!(hmm_mm::testing::leaf(&mm, va).0, Level::Pmd);
    let mut at = va;
    while at < va + 4 * MIB {
        mm.write_u64(at, pattern(at)).expect("fill");
        at += PAGE_SIZE;
    }
    {
        let table = mirror.device.table.lock();
        assert_eq!(table.len() as u64, 4 * MIB / PAGE_SIZE, "CPU writes to writable PMDs invalidate nothing");
        for (&at, &word) in table.iter() {
            assert_eq!(mirror.device.read_first_word(word), pattern(at), "device and CPU see the same block");
        }
    }
    DaxSetup { machine, _path: path, fs, file, mm, mirror, free_pages }
}

impl DaxSetup {
    fn entries_in(&self, start: u64, end: u64) -> usize {
        self.mirror.device.table.lock().range(start..end).count()
    }

    fn finish(self) {
        let DaxSetup { machine, _path, fs, file, mm, mirror, free_pages } = self;
        mirror.finish(&mm);
        drop(mm);
        file.ftruncate(0).expect("truncate once nothing maps the file");
        assert_eq!(fs.device().free_pages(), free_pages, "every DAX block is back");
        drop((file, fs));
        machine.assert_everything_returned();
    }
}

#[test]
fn dax_truncate_of_a_mirrored_file_completes_at_once() {
    let _watchdog = Watchdog::new("dax_truncate_of_a_mirrored_file_completes_at_once", WATCHDOG);
    let setup = dax_setup("mirrored-truncate.pmem");
    let (mm, mirror, va) = (&setup.mm, &setup.mirror, setup.mirror.start);
    let cut = va + 2 * MIB;
    let free_before = setup.fs.device().free_pages();
    let began = Instant::now();
    setup.file.ftruncate(2 * MIB).expect("truncate while mirrored: the mirror holds no reference");
    let took = began.elapsed();
    assert!(took < BUSY_TIMEOUT / 2, "truncate waited {took:?}: something held the blocks");
    assert_eq!(setup.fs.device().free_pages(), free_before + 512, "the cut block is free");
    assert_eq!(setup.entries_in(cut, va + 4 * MIB), 0, "the device entries of the cut range are gone");
    // ext4 breaks the layouts of the whole file first (7.3.4 guest,
    // scenarios/device/dax_story.hmm): the kept block is unmapped too.
    assert_eq!(setup.entries_in(va, cut), 0, "the kept block is unmapped from the device too");
    mirror.check_now(mm, "after the truncate");

    // The cut range is still mapped (the VMA stays) but past end of file:
    // a snapshot sees nothing, a fault is SIGBUS, which range_fault
    // reports as EFAULT.
    let n = mirror.fault(mm, cut, 16, Req::Snapshot, None).expect("snapshot of the cut range");
    assert_eq!(n, 0);
    let err = mirror.fault(mm, cut, 16, Req::Read, None).unwrap_err();
    assert_eq!(err.errno(), Errno::Fault, "{err:?}");
    let err = mirror.fault(mm, cut + MIB, 1, Req::Write, None).unwrap_err();
    assert_eq!(err.errno(), Errno::Fault, "{err:?}");
    // The kept block still shows the CPU's data through the device.
    let n = mirror.fault(mm, va, 512, Req::Read, Some(&pattern_only)).expect("the kept block");
    assert_eq!(n, 512);
    // Growing the file again makes the range faultable (fresh zeroed blocks).
    setup.file.ftruncate(4 * MIB).expect("grow");
    let n = mirror.fault(mm, cut, 512, Req::Write, Some(&|_: u64, v: u64| v == 0)).expect("refault after grow");
    assert_eq!(n, 512);
    mirror.check_now(mm, "after the regrow");
    let violations = mirror.violations();
    assert!(violations.is_empty(), "coherence violations:\n{}", violations.join("\n"));
    setup.finish();
}

#[test]
fn dax_truncate_with_a_gup_pin_fails_with_ebusy() {
    let _watchdog = Watchdog::new("dax_truncate_with_a_gup_pin_fails_with_ebusy", WATCHDOG);
    let setup = dax_setup("pinned-truncate.pmem");
    let (mm, mirror, va) = (&setup.mm, &setup.mirror, setup.mirror.start);
    let pin = mm.pin_user_pages(va + 2 * MIB + PAGE_SIZE, 1, FollFlags::WRITE).expect("pin");
    assert!(setup.machine.kernel.phys().maybe_pinned(pin.pfns()[0]));
    let free_before = setup.fs.device().free_pages();
    let began = Instant::now();
    let err = setup.file.ftruncate(2 * MIB).unwrap_err();
    let took = began.elapsed();
    assert_eq!(err.errno(), Errno::Busy, "{err:?}");
    assert!(took >= BUSY_TIMEOUT, "EBUSY only after the filesystem's busy timeout, not after {took:?}");
    assert_eq!(setup.file.size(), 4 * MIB, "a failed truncate keeps the size");
    assert_eq!(setup.fs.device().free_pages(), free_before, "nothing was freed");
    // The mappings were zapped before the wait: the device was told too.
    assert_eq!(setup.entries_in(va + 2 * MIB, va + 4 * MIB), 0, "the device entries of the range are gone");
    mirror.check_now(mm, "after the failed truncate");
    // The data is intact, and the device can mirror the range again.
    let n = mirror.fault(mm, va + 2 * MIB, 512, Req::Read, Some(&pattern_only)).expect("refault");
    assert_eq!(n, 512);
    pin.unpin();
    let began = Instant::now();
    setup.file.ftruncate(2 * MIB).expect("truncate once unpinned");
    assert!(began.elapsed() < BUSY_TIMEOUT / 2);
    assert_eq!(setup.entries_in(va + 2 * MIB, va + 4 * MIB), 0);
    assert_eq!(setup.fs.device().free_pages(), free_before + 512);
    let violations = mirror.violations();
    assert!(violations.is_empty(), "coherence violations:\n{}", violations.join("\n"));
    setup.finish();
}

#[test]
fn race_fsdax_truncate_and_grow_under_a_mirrored_mapping() {
    let _watchdog = Watchdog::new("race_fsdax_truncate_and_grow_under_a_mirrored_mapping", WATCHDOG);
    let setup = dax_setup("race-truncate.pmem");
    let pages = 4 * MIB / PAGE_SIZE;
    let (file, mm) = (setup.file.clone(), setup.mm.clone());
    let busy = AtomicU64::new(0);
    let first_busy = Mutex::new(None);
    race(
        "fs-dax truncate",
        &setup.mm,
        &setup.mirror,
        0x77,
        Goal { faults: 2000, rounds: 1000, budget: BUDGET },
        Expect { efault: true, ..Expect::success(&pattern_or_zero) },
        |rng| {
            let keep = rng.below(pages);
            let tail = if rng.one_in(2) { 0 } else { 8 + rng.below(PAGE_SIZE - 8) };
            let size = keep * PAGE_SIZE + tail;
            match file.ftruncate(size) {
                Ok(()) => {}
                Err(e) if e.errno() == Errno::Busy => {
                    busy.fetch_add(1, Relaxed);
                    first_busy.lock().get_or_insert(size);
                }
                Err(e) => panic!("truncate to {size:#x}: {e:?}"),
            }
            // 7.3's ext4_setattr breaks the layouts for a grow too, so a
            // transient pin can make it EBUSY as well: grow again.
            loop {
                match file.ftruncate(4 * MIB) {
                    Ok(()) => break,
                    Err(e) if e.errno() == Errno::Busy => {
                        busy.fetch_add(1, Relaxed);
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("grow: {e:?}"),
                }
            }
            let at = REGION + (keep + rng.below(pages - keep)) * PAGE_SIZE;
            mm.write_u64(at, pattern(at)).expect("refill");
        },
    );
    // (EFAULT depends on timing here: the file is short only briefly. The
    // DAX scenario tests check SIGBUS → EFAULT deterministically.)
    // Nothing is pinned, yet a truncate can fail: a fault on the kept part
    // of a PMD block, between the unmap and the busy check, maps a page of
    // the block's order-9 folio, and the check is per folio. Rare here
    // (never seen in this test); deterministic with a pin held across the
    // refault. Reported, not asserted: it is the filesystem's business.
    let busy = busy.load(Relaxed);
    if busy > 0 {
        eprintln!("note: {busy} truncates failed with EBUSY with nothing pinned (first: to {:#x?})", first_busy.lock());
    }
    setup.mirror.verify_data(&setup.mm, 7);
    drop(mm);
    setup.finish();
}
