//! Concurrency stress tests of the CPU side: many threads fault, write, read,
//! unmap, remap, change protections, drop pages and fork one address space
//! at once, and the data each thread owns must never change behind its back.
//!
//! Every test runs a bounded number of iterations with fixed seeds, on a
//! small machine (so freed frames are reused quickly), and ends by checking
//! that every frame and every page-table page went back to the allocator.
//! Freed memory is filled with distinctive patterns wherever possible, so a
//! frame reused while still mapped shows up as garbage in some reader.
//!
//! A watchdog aborts the test binary if a test stops making progress
//! (a deadlock), rather than letting the suite hang.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hmm_mm::phys::PhysMem;
use hmm_mm::testing::{kernel, Rng};
use hmm_mm::{Kernel, Mm, MmError, ThpMode};
use hmm_types::{Errno, MadviseAdvice, MapFlags, MmuNotifier, NotifierRange, Pfn, Prot, PAGE_SIZE, PMD_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const FIXED: MapFlags = ANON.union(MapFlags::FIXED);
/// Where the tests place their mappings: 1 GiB aligned, far from the
/// top-down allocator.
const REGION: u64 = 0x1000_0000_0000;

// ---------------------------------------------------------------------------
// Infrastructure
// ---------------------------------------------------------------------------

/// A machine plus what its allocator looked like right after boot.
struct Machine {
    kernel: Arc<Kernel>,
    free_at_boot: u64,
}

impl Machine {
    fn new(ram_mib: u64) -> Self {
        let kernel = kernel(ram_mib, ThpMode::Always);
        let free_at_boot = kernel.phys().free_frames();
        assert_eq!(kernel.phys().page_table_frames(), 0);
        Self { kernel, free_at_boot }
    }

    fn mm(&self) -> Arc<Mm> {
        self.kernel.create_mm().expect("an address space")
    }

    /// Requirement 4: once every address space is gone, every frame and
    /// every page-table page is back.
    fn assert_everything_returned(&self) {
        let phys = self.kernel.phys();
        if phys.free_frames() != self.free_at_boot {
            // Name the culprits: folios still referenced with nothing left
            // to reference them.
            for pfn in (0..phys.ram_frames()).map(Pfn) {
                let (refs, maps) = phys.folio_counts(pfn);
                if refs > 0 && phys.folio_head(pfn) == pfn && !phys.is_zero_pfn(pfn) {
                    let (order, flags) = (phys.folio_order(pfn), phys.meta(pfn).flags());
                    eprintln!("still allocated: {pfn:?} order {order}, {refs} refs, {maps} maps, {flags:?}");
                }
            }
        }
        if let Err(error) = phys.check_frames() {
            panic!("{error}");
        }
        assert_eq!(phys.page_table_frames(), 0, "page-table pages leaked after every address space is gone");
        assert_eq!(
            phys.free_frames(),
            self.free_at_boot,
            "frames leaked: {} free now, {} right after boot",
            phys.free_frames(),
            self.free_at_boot
        );
    }
}

type Job<'env> = (String, Box<dyn FnOnce() + Send + 'env>);
type Disturber<'env> = (String, Box<dyn FnOnce(&Control<'_>) + Send + 'env>);

/// What a disturber loops on: `while stop.running()`, which also counts its
/// rounds.
struct Control<'a> {
    stop: &'a AtomicBool,
    rounds: Cell<u64>,
}

impl Control<'_> {
    fn running(&self) -> bool {
        let running = !self.stop.load(SeqCst);
        self.rounds.set(self.rounds.get() + u64::from(running));
        running
    }
}

/// Runs `workers` (bounded loops) together with `disturbers` (which loop
/// until the stop flag, set once every worker has returned). A panic in any
/// thread is re-raised after all threads have ended, so a failing worker
/// cannot leave disturbers running forever. A watchdog aborts the process
/// if the whole run takes longer than `limit` (a deadlock). Every disturber
/// must have run at least one round while the workers ran: otherwise the
/// test did not test concurrency. Prints each disturber's round count
/// (visible with `--nocapture`).
fn run(name: &str, limit: Duration, workers: Vec<Job<'_>>, disturbers: Vec<Disturber<'_>>) {
    let (alive, watched) = mpsc::channel::<()>();
    let test = name.to_owned();
    let watchdog = thread::spawn(move || {
        if watched.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("{test}: no completion after {limit:?}: deadlock or livelock; aborting");
            std::process::abort();
        }
    });
    let began = Instant::now();
    let stop = AtomicBool::new(false);
    let (panics, rounds) = thread::scope(|s| {
        let stop = &stop;
        let disturbers: Vec<_> = disturbers
            .into_iter()
            .map(|(name, body)| {
                let handle = thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(s, move || {
                        let control = Control { stop, rounds: Cell::new(0) };
                        body(&control);
                        control.rounds.get()
                    })
                    .expect("spawn");
                (name, handle)
            })
            .collect();
        let workers: Vec<_> = workers
            .into_iter()
            .map(|(name, body)| thread::Builder::new().name(name).spawn_scoped(s, body).expect("spawn"))
            .collect();
        let mut panics: Vec<_> = workers.into_iter().filter_map(|h| h.join().err()).collect();
        stop.store(true, SeqCst);
        let mut rounds = Vec::new();
        for (name, handle) in disturbers {
            match handle.join() {
                Ok(n) => rounds.push((name, n)),
                Err(panic) => panics.push(panic),
            }
        }
        (panics, rounds)
    });
    drop(alive);
    watchdog.join().expect("watchdog");
    if let Some(panic) = panics.into_iter().next() {
        std::panic::resume_unwind(panic);
    }
    let summary: Vec<String> = rounds.iter().map(|(name, n)| format!("{name} {n}")).collect();
    eprintln!("{name}: {:.2?}; disturber rounds: {}", began.elapsed(), summary.join(", "));
    for (disturber, n) in &rounds {
        assert!(*n > 0, "{name}: {disturber} never ran while the workers did");
    }
}

fn job<'env>(name: impl Into<String>, body: impl FnOnce() + Send + 'env) -> Job<'env> {
    (name.into(), Box::new(body))
}

fn disturber<'env>(name: impl Into<String>, body: impl FnOnce(&Control<'_>) + Send + 'env) -> Disturber<'env> {
    (name.into(), Box::new(body))
}

fn is_efault(result: &Result<impl core::fmt::Debug, MmError>) -> bool {
    matches!(result, Err(e) if e.errno() == Errno::Fault)
}

/// A range of pages at a fixed place: `pages` pages from page `first` of
/// the 2 MiB block `block` of [`REGION`].
#[derive(Clone, Copy, Debug)]
struct Range {
    block: u64,
    first: u64,
    pages: u64,
}

impl Range {
    const fn new(block: u64, first: u64, pages: u64) -> Self {
        Self { block, first, pages }
    }
    fn start(self) -> u64 {
        REGION + self.block * PMD_SIZE + self.first * PAGE_SIZE
    }
    fn len(self) -> u64 {
        self.pages * PAGE_SIZE
    }
    fn page(self, index: u64) -> u64 {
        self.start() + index * PAGE_SIZE
    }
    /// The u64 a test uses in page `index`: a different offset per page,
    /// so a frame mapped at the wrong index is noticed too.
    fn cell(self, index: u64) -> u64 {
        self.page(index) + (self.page(index) / PAGE_SIZE % 512) * 8
    }
}

/// A device mirror in miniature, as HMM will build one: it snapshots CPU
/// translations (page -> frame) between invalidations, with the sequence
/// protocol of `mmu_interval_read_begin`/`_retry`, and forgets them at
/// `invalidate_range_start`. Since the memory manager changes a mapping only
/// inside an invalidation and frees frames only after its end, every frame
/// the mirror holds must still be allocated and still mapped at its page.
struct Mirror {
    phys: Arc<PhysMem>,
    state: parking_lot::Mutex<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    seq: u64,
    active: u32,
    pages: BTreeMap<u64, Pfn>,
}

impl MmuNotifier for Mirror {
    fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno> {
        let mut state = self.state.lock();
        state.seq += 1;
        state.active += 1;
        let doomed: Vec<u64> = state.pages.range(range.start..range.end).map(|(&va, _)| va).collect();
        for va in doomed {
            state.pages.remove(&va);
        }
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &NotifierRange) {
        let mut state = self.state.lock();
        state.active = state.active.checked_sub(1).expect("invalidation end without a start");
    }
}

impl Mirror {
    fn register(mm: &Mm) -> Arc<Self> {
        let mirror = Arc::new(Self { phys: mm.phys().clone(), state: Default::default() });
        mm.register_notifier(mirror.clone());
        mirror
    }

    /// Tries to mirror the page at `va` (`hmm_range_fault` without the
    /// fault): reads the CPU entry under the mmap read lock and keeps it only
    /// if no invalidation started meanwhile.
    fn snapshot(&self, mm: &Mm, va: u64) {
        let va = va & !(PAGE_SIZE - 1);
        let seq = {
            let state = self.state.lock();
            if state.active > 0 {
                return;
            }
            state.seq
        };
        let pfn = {
            let _guard = mm.mmap_read();
            let slot = mm.pgtable().find(va);
            let entry = slot.load();
            // A table linked since `find` (a fault filling an empty
            // level, which needs no invalidation) is not a leaf.
            if !entry.is_present() || entry.is_special() || entry.is_table(slot.level()) {
                return;
            }
            entry.pfn().add((va & (slot.level().entry_bytes() - 1)) / PAGE_SIZE)
        };
        let mut state = self.state.lock();
        if state.seq == seq && state.active == 0 {
            state.pages.insert(va, pfn);
        }
    }

    /// Checks every mirrored page: with the state locked no invalidation can
    /// get past its start, so each page must still map its frame, and the
    /// frame must be live. Returns how many pages were checked.
    fn check(&self, mm: &Mm) -> usize {
        let state = self.state.lock();
        for (&va, &pfn) in &state.pages {
            let (refs, maps) = self.phys.folio_counts(pfn);
            assert!(
                refs > 0 && maps > 0,
                "the mirror holds {pfn:?} for {va:#x}, but it is free or unmapped: {refs} refs, {maps} maps"
            );
            // Walking without the mmap lock is memory-safe (tables are
            // frames of simulated RAM) and, by the invariant, stable here.
            let slot = mm.pgtable().find(va);
            let entry = slot.load();
            let now = entry.pfn().add((va & (slot.level().entry_bytes() - 1)) / PAGE_SIZE);
            assert!(
                entry.is_present() && now == pfn,
                "the page at {va:#x} changed from {pfn:?} to {entry:?} without an invalidation"
            );
        }
        state.pages.len()
    }
}

/// A disturber that mirrors random pages of `ranges` and checks the mirror.
fn mirror_disturber<'env>(mm: &'env Mm, mirror: &'env Mirror, ranges: &'env [Range], seed: u64) -> Disturber<'env> {
    disturber("mirror", move |stop: &Control<'_>| {
        let mut rng = Rng::new(seed);
        let mut checked = 0;
        while stop.running() {
            for _ in 0..64 {
                let range = ranges[rng.below(ranges.len() as u64) as usize];
                mirror.snapshot(mm, range.page(rng.below(range.pages)));
            }
            checked += mirror.check(mm);
        }
        eprintln!("mirror: {checked} mirrored pages checked");
    })
}

// ---------------------------------------------------------------------------
// 1. No lost writes
// ---------------------------------------------------------------------------

/// Owners' pages. Blocks 0 and 2 are whole 2 MiB blocks (THPs that stay
/// huge until a fork splits them); blocks 4 and 6 are shared with ranges
/// other threads DONTNEED, unmap and mprotect, so their THPs are split
/// underneath the owners' writes.
const OWNED: [Range; 4] =
    [Range::new(0, 0, 512), Range::new(2, 0, 512), Range::new(4, 0, 256), Range::new(6, 128, 256)];
/// Unmapped and mapped again (MAP_FIXED) over and over.
const REMAPPED: [Range; 3] = [Range::new(1, 0, 512), Range::new(6, 384, 128), Range::new(7, 200, 100)];
/// Toggled between read-write, read-only and PROT_NONE.
const PROTECTED: [Range; 2] = [Range::new(3, 0, 512), Range::new(6, 0, 128)];
/// Written, then MADV_DONTNEED (in whole or in part).
const DROPPED: [Range; 2] = [Range::new(4, 256, 256), Range::new(5, 0, 512)];

const LOST_WRITES_ITERATIONS: u64 = 400_000;

fn owner_value(owner: u64, page: u64, counter: u64) -> u64 {
    (0xA5 << 56) | (owner << 48) | (page << 32) | counter
}

/// `(owner, page, counter)` of an owner's value.
fn decode_owner_value(value: u64) -> Option<(u64, u64, u64)> {
    (value >> 56 == 0xA5).then_some(((value >> 48) & 0xFF, (value >> 32) & 0xFFFF, value & 0xFFFF_FFFF))
}

/// What a thread that is not an owner writes: never an owner's value.
fn junk(rng: &mut Rng) -> u64 {
    0xDEAD_0000_0000_0000 | (rng.next_u64() & 0xFFFF_FFFF_FFFF)
}

/// Checks that the pages of `range` hold what `shadow` says.
fn verify(mm: &Mm, range: Range, shadow: &[u64], who: &str) {
    for (index, &expected) in shadow.iter().enumerate() {
        let got = mm.read_u64(range.cell(index as u64));
        assert_eq!(got, Ok(expected), "{who}: page {index} of {range:?} lost its data");
    }
}

/// Per-owner progress, published for the forking thread's snapshot checks.
struct OwnerProgress {
    /// The counter of the write in flight (stored before the write starts).
    started: AtomicU64,
    /// Per page, the counter of the last write that completed.
    completed: Vec<AtomicU64>,
}

#[test]
fn no_lost_writes_under_unmap_remap_mprotect_dontneed_and_fork() {
    no_lost_writes(false);
}

/// The same with MADV_HUGEPAGE/NOHUGEPAGE flips on parts of the owners'
/// ranges, which split VMAs inside PMD-mapped THPs.
#[test]
fn no_lost_writes_with_thp_policy_flips() {
    no_lost_writes(true);
}

/// Requirement 1, with `thp_policy_flips` deciding whether the adviser
/// also flips MADV_HUGEPAGE/NOHUGEPAGE on parts of the owners' ranges.
fn no_lost_writes(thp_policy_flips: bool) {
    let machine = Machine::new(96);
    let mm = machine.mm();
    assert_eq!(mm.mmap(REGION, 8 * PMD_SIZE, Prot::RW, FIXED), Ok(REGION));
    let progress: Vec<OwnerProgress> = OWNED
        .iter()
        .map(|r| OwnerProgress {
            started: AtomicU64::new(0),
            completed: (0..r.pages).map(|_| AtomicU64::new(0)).collect(),
        })
        .collect();
    let mirror = Mirror::register(&mm);
    let all_ranges: Vec<Range> = [&OWNED[..], &REMAPPED, &PROTECTED, &DROPPED].concat();
    let forks = AtomicUsize::new(0);

    let mut workers = Vec::new();
    for (owner, &range) in OWNED.iter().enumerate() {
        let (mm, progress) = (&mm, &progress[owner]);
        workers.push(job(format!("owner-{owner}"), move || {
            let mut rng = Rng::new(100 + owner as u64);
            let mut shadow = vec![0u64; range.pages as usize];
            let who = format!("owner {owner}");
            for counter in 1..=LOST_WRITES_ITERATIONS {
                let page = rng.below(range.pages);
                let value = owner_value(owner as u64, page, counter);
                progress.started.store(counter, SeqCst);
                if counter % 7 == 0 {
                    // A read-modify-write takes the write-fault path too.
                    let old = mm.atomic_fetch_add(range.cell(page), value.wrapping_sub(shadow[page as usize]));
                    assert_eq!(old, Ok(shadow[page as usize]), "{who}: page {page} changed under an atomic");
                } else {
                    mm.write_u64(range.cell(page), value)
                        .unwrap_or_else(|e| panic!("{who}: write of page {page} failed: {e}"));
                }
                shadow[page as usize] = value;
                progress.completed[page as usize].store(counter, SeqCst);
                assert_eq!(
                    mm.read_u64(range.cell(page)),
                    Ok(value),
                    "{who}: page {page} did not read back its last write (counter {counter})"
                );
                if counter % 2_000 == 0 {
                    verify(mm, range, &shadow, &who);
                }
            }
            verify(mm, range, &shadow, &who);
        }));
    }

    let mut disturbers = Vec::new();
    disturbers.push(disturber("remapper", |stop: &Control<'_>| {
        let mut rng = Rng::new(200);
        let mut shadows: Vec<Vec<u64>> = REMAPPED.iter().map(|r| vec![0; r.pages as usize]).collect();
        while stop.running() {
            let which = rng.below(REMAPPED.len() as u64) as usize;
            let (range, shadow) = (REMAPPED[which], &mut shadows[which]);
            verify(&mm, range, shadow, "remapper (before munmap)");
            mm.munmap(range.start(), range.len()).expect("munmap");
            assert!(is_efault(&mm.read_u64(range.cell(0))), "unmapped memory is readable");
            let flags = if rng.one_in(4) { FIXED | MapFlags::POPULATE } else { FIXED };
            assert_eq!(mm.mmap(range.start(), range.len(), Prot::RW, flags), Ok(range.start()));
            shadow.fill(0);
            let probe = rng.below(range.pages);
            assert_eq!(mm.read_u64(range.cell(probe)), Ok(0), "a fresh mapping is not zero");
            for _ in 0..1 + rng.below(16) {
                let page = rng.below(range.pages);
                let value = junk(&mut rng);
                // Fill the whole page so a frame freed from here carries junk.
                mm.write_bytes(range.page(page), &[0xEE; PAGE_SIZE as usize]).expect("fill");
                mm.write_u64(range.cell(page), value).expect("remapper write");
                shadow[page as usize] = value;
            }
            verify(&mm, range, shadow, "remapper (after mmap)");
        }
    }));
    disturbers.push(disturber("mprotector", |stop: &Control<'_>| {
        let mut rng = Rng::new(300);
        let mut shadows: Vec<Vec<u64>> = PROTECTED.iter().map(|r| vec![0; r.pages as usize]).collect();
        while stop.running() {
            let which = rng.below(PROTECTED.len() as u64) as usize;
            let (range, shadow) = (PROTECTED[which], &mut shadows[which]);
            let page = rng.below(range.pages);
            if rng.one_in(4) {
                mm.mprotect(range.start(), range.len(), Prot::NONE).expect("mprotect none");
                assert!(is_efault(&mm.read_u64(range.cell(page))), "PROT_NONE memory is readable");
            } else {
                mm.mprotect(range.start(), range.len(), Prot::READ).expect("mprotect ro");
                assert_eq!(mm.read_u64(range.cell(page)), Ok(shadow[page as usize]));
                assert!(is_efault(&mm.write_u64(range.cell(page), 1)), "read-only memory is writable");
            }
            mm.mprotect(range.start(), range.len(), Prot::RW).expect("mprotect rw");
            verify(&mm, range, shadow, "mprotector");
            for _ in 0..1 + rng.below(8) {
                let page = rng.below(range.pages);
                let value = junk(&mut rng);
                mm.write_u64(range.cell(page), value).expect("mprotector write");
                shadow[page as usize] = value;
            }
        }
    }));
    disturbers.push(disturber("dropper", |stop: &Control<'_>| {
        let mut rng = Rng::new(400);
        let mut shadows: Vec<Vec<u64>> = DROPPED.iter().map(|r| vec![0; r.pages as usize]).collect();
        while stop.running() {
            let which = rng.below(DROPPED.len() as u64) as usize;
            let (range, shadow) = (DROPPED[which], &mut shadows[which]);
            for _ in 0..1 + rng.below(16) {
                let page = rng.below(range.pages);
                let value = junk(&mut rng);
                mm.write_bytes(range.page(page), &[0xEE; PAGE_SIZE as usize]).expect("fill");
                mm.write_u64(range.cell(page), value).expect("dropper write");
                shadow[page as usize] = value;
            }
            verify(&mm, range, shadow, "dropper (before DONTNEED)");
            let first = rng.below(range.pages);
            let count = 1 + rng.below(range.pages - first);
            mm.madvise(range.page(first), count * PAGE_SIZE, MadviseAdvice::DontNeed).expect("DONTNEED");
            shadow[first as usize..(first + count) as usize].fill(0);
            verify(&mm, range, shadow, "dropper (after DONTNEED)");
        }
    }));
    disturbers.push(disturber("adviser", |stop: &Control<'_>| {
        // Advice that must not change anyone's data: prefault (which breaks
        // COW for the owners), MADV_FREE (no reclaim here, so nothing is
        // lost), MADV_COLLAPSE of the whole region, which copies every page
        // of each collapsible block into a fresh THP under the owners' feet,
        // and optionally THP policy flips (splitting and merging the owners'
        // VMAs).
        let mut rng = Rng::new(700);
        while stop.running() {
            let range = OWNED[rng.below(OWNED.len() as u64) as usize];
            let first = rng.below(range.pages);
            let (va, len) = (range.page(first), (1 + rng.below(range.pages - first)) * PAGE_SIZE);
            let advice = match rng.below(if thp_policy_flips { 6 } else { 4 }) {
                0 => MadviseAdvice::PopulateWrite,
                1 => MadviseAdvice::PopulateRead,
                2 => MadviseAdvice::Free,
                4 => MadviseAdvice::NoHugePage,
                5 => MadviseAdvice::HugePage,
                _ => {
                    match mm.madvise(REGION, 8 * PMD_SIZE, MadviseAdvice::Collapse) {
                        // A hole left by the remapper, or a NOHUGEPAGE VMA.
                        Ok(()) | Err(MmError::NotMapped(_) | MmError::Invalid(_)) => {}
                        Err(e) => panic!("collapse: {e}"),
                    }
                    continue;
                }
            };
            mm.madvise(va, len, advice).unwrap_or_else(|e| panic!("{advice:?} on an owner's range: {e}"));
        }
    }));
    disturbers.push(disturber("forker", |stop: &Control<'_>| {
        let mut rng = Rng::new(500);
        let mut previous: Option<Arc<Mm>> = None;
        while stop.running() {
            let low: Vec<Vec<u64>> = progress
                .iter()
                .map(|p| p.completed.iter().map(|c| c.load(SeqCst)).collect())
                .collect();
            let child = mm.fork().expect("fork");
            let high: Vec<u64> = progress.iter().map(|p| p.started.load(SeqCst)).collect();
            forks.fetch_add(1, SeqCst);
            // The child's copy of each owner page is a snapshot: the last
            // write completed before the fork, or a later one that had
            // started before the fork returned; never anything else.
            for (owner, &range) in OWNED.iter().enumerate() {
                for page in 0..range.pages {
                    let value = child.read_u64(range.cell(page)).expect("child read");
                    let low = low[owner][page as usize];
                    if value == 0 {
                        assert_eq!(low, 0, "child lost owner {owner}'s page {page}");
                        continue;
                    }
                    let decoded = decode_owner_value(value);
                    assert!(
                        matches!(decoded, Some((o, p, c)) if o == owner as u64 && p == page && (low..=high[owner]).contains(&c)),
                        "child sees {value:#x} in owner {owner}'s page {page}; expected a counter in {low}..={}",
                        high[owner]
                    );
                }
            }
            // The child writes its own copy; the owners must never see it.
            for (owner, &range) in OWNED.iter().enumerate() {
                for _ in 0..32 {
                    let page = rng.below(range.pages);
                    let value = junk(&mut rng);
                    child.write_u64(range.cell(page), value).expect("child write");
                    assert_eq!(child.read_u64(range.cell(page)), Ok(value), "child lost its write to owner {owner}'s page");
                }
            }
            // Sometimes two children share the pages with the parent.
            if let Some(old) = previous.take() {
                old.exit();
            }
            if rng.one_in(2) {
                previous = Some(child);
            } else {
                child.exit();
            }
        }
        if let Some(old) = previous {
            old.exit();
        }
    }));
    disturbers.push(mirror_disturber(&mm, &mirror, &all_ranges, 600));
    run("no_lost_writes", Duration::from_secs(120), workers, disturbers);
    assert!(forks.load(SeqCst) > 0, "the forker never forked");
    drop(mm);
    machine.assert_everything_returned();
}

// ---------------------------------------------------------------------------
// 2. Atomic increments across fork
// ---------------------------------------------------------------------------

const ADDERS: u64 = 3;
const ADDS_PER_THREAD: u64 = 400_000;

#[test]
fn atomic_increments_survive_concurrent_forks() {
    let machine = Machine::new(64);
    let mm = machine.mm();
    // One counter in a THP (split by the first COW after a fork), one in
    // 4K memory, one sharing its page with the other counter's neighbour.
    let huge = Range::new(0, 0, 512);
    let small = Range::new(3, 5, 4);
    assert_eq!(mm.mmap(huge.start(), huge.len(), Prot::RW, FIXED), Ok(huge.start()));
    assert_eq!(mm.mmap(small.start(), small.len(), Prot::RW, FIXED), Ok(small.start()));
    let counters = [huge.page(0) + 64, small.page(1) + 8, small.page(1) + 16];
    let started: Vec<AtomicU64> = counters.iter().map(|_| AtomicU64::new(0)).collect();
    let done: Vec<AtomicU64> = counters.iter().map(|_| AtomicU64::new(0)).collect();
    let forks = AtomicUsize::new(0);

    let mut workers = Vec::new();
    for adder in 0..ADDERS {
        let (mm, started, done) = (&mm, &started, &done);
        workers.push(job(format!("adder-{adder}"), move || {
            let mut rng = Rng::new(1000 + adder);
            for _ in 0..ADDS_PER_THREAD * counters.len() as u64 {
                let which = rng.below(counters.len() as u64) as usize;
                started[which].fetch_add(1, SeqCst);
                mm.atomic_fetch_add(counters[which], 1).expect("fetch_add");
                done[which].fetch_add(1, SeqCst);
            }
        }));
    }
    let mut disturbers = Vec::new();
    disturbers.push(disturber("forker", |stop: &Control<'_>| {
        let mut rng = Rng::new(2000);
        let mut previous: Option<Arc<Mm>> = None;
        while stop.running() {
            let low: Vec<u64> = done.iter().map(|d| d.load(SeqCst)).collect();
            let child = mm.fork().expect("fork");
            let high: Vec<u64> = started.iter().map(|s| s.load(SeqCst)).collect();
            forks.fetch_add(1, SeqCst);
            for (which, &va) in counters.iter().enumerate() {
                let seen = child.read_u64(va).expect("child read");
                assert!(
                    (low[which]..=high[which]).contains(&seen),
                    "child's counter {which} is {seen}, outside {}..={}",
                    low[which],
                    high[which]
                );
                // The child's own increments must stay in the child.
                assert_eq!(child.atomic_fetch_add(va, 1 << 40), Ok(seen));
                assert_eq!(child.read_u64(va), Ok(seen + (1 << 40)));
            }
            if let Some(old) = previous.take() {
                old.exit();
            }
            if rng.one_in(2) {
                previous = Some(child);
            } else {
                child.exit();
            }
        }
        if let Some(old) = previous {
            old.exit();
        }
    }));
    disturbers.push(disturber("watcher", |stop: &Control<'_>| {
        // Reads each counter atomically (a compare-exchange that never
        // matches) and checks it never goes backwards.
        let mut last = vec![0u64; counters.len()];
        while stop.running() {
            for (which, &va) in counters.iter().enumerate() {
                let now = match mm.atomic_compare_exchange(va, u64::MAX, u64::MAX) {
                    Ok(Err(now)) => now,
                    other => panic!("watcher: unexpected {other:?}"),
                };
                assert!(now >= last[which], "counter {which} went back from {} to {now}", last[which]);
                last[which] = now;
            }
        }
    }));
    run("atomic_increments", Duration::from_secs(120), workers, disturbers);
    for (which, &va) in counters.iter().enumerate() {
        assert_eq!(mm.read_u64(va), Ok(done[which].load(SeqCst)), "counter {which} lost or gained increments");
    }
    let total: u64 = counters.iter().map(|&va| mm.read_u64(va).unwrap()).sum();
    assert_eq!(total, ADDERS * ADDS_PER_THREAD * counters.len() as u64);
    assert!(forks.load(SeqCst) > 0, "the forker never forked");
    drop(mm);
    machine.assert_everything_returned();
}

// ---------------------------------------------------------------------------
// 3. Fork COW isolation under concurrency
// ---------------------------------------------------------------------------

const COW_WRITERS: usize = 3;
const COW_ROUNDS: u64 = 150;

fn parent_word(page: u64, seq: u64) -> u64 {
    (0x5C << 56) | (page << 32) | seq
}

fn child_word(page: u64, round: u64) -> u64 {
    (0xC1 << 56) | (page << 32) | round
}

fn whole_page(word: u64) -> Vec<u8> {
    word.to_le_bytes().repeat((PAGE_SIZE / 8) as usize)
}

/// Reads the page at `va` and returns the word it repeats; panics if the
/// page is torn (two different words in it).
fn read_uniform(mm: &Mm, va: u64, who: &str) -> u64 {
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    mm.read_bytes(va, &mut buf).unwrap_or_else(|e| panic!("{who}: read of {va:#x} failed: {e}"));
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let first = word(0);
    for i in 1..(PAGE_SIZE / 8) as usize {
        assert_eq!(word(i), first, "{who}: page {va:#x} is torn at word {i}: {:#x} vs {first:#x}", word(i));
    }
    first
}

/// How long a thread waiting for another's progress waits before it calls
/// the other stuck.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn fork_snapshots_are_consistent_and_isolated() {
    let machine = Machine::new(64);
    let mm = machine.mm();
    // 192 pages of one THP, and 96 4K pages.
    let huge = Range::new(0, 0, 512);
    let small = Range::new(2, 1, 96);
    assert_eq!(mm.mmap(huge.start(), huge.len(), Prot::RW, FIXED), Ok(huge.start()));
    assert_eq!(mm.mmap(small.start(), small.len(), Prot::RW, FIXED), Ok(small.start()));
    let pages: Vec<u64> = (0..192).map(|i| huge.page(i)).chain((0..small.pages).map(|i| small.page(i))).collect();
    let started: Vec<AtomicU64> = pages.iter().map(|_| AtomicU64::new(0)).collect();
    let completed: Vec<AtomicU64> = pages.iter().map(|_| AtomicU64::new(0)).collect();
    let total_writes = AtomicU64::new(0);

    {
        let (mm, pages, started, completed, total_writes) = (&mm, &pages, &started, &completed, &total_writes);
        let forker = job("forker", move || {
            let mut rng = Rng::new(3000);
            let mut previous: Option<Arc<Mm>> = None;
            for round in 1..=COW_ROUNDS {
                let low: Vec<u64> = completed.iter().map(|c| c.load(SeqCst)).collect();
                let child = mm.fork().expect("fork");
                let high: Vec<u64> = started.iter().map(|s| s.load(SeqCst)).collect();
                // Each page of the child is exactly one of the parent's writes
                // (never torn), no older than what had completed before the fork
                // and no newer than what had started when it returned.
                let snapshot: Vec<u64> = pages
                    .iter()
                    .enumerate()
                    .map(|(k, &va)| {
                        let word = read_uniform(&child, va, "child");
                        let (low, high) = (low[k], high[k]);
                        if word == 0 {
                            assert_eq!(low, 0, "child lost page {k}");
                        } else {
                            assert_eq!(
                                word >> 32,
                                parent_word(k as u64, 0) >> 32,
                                "child page {k} holds another page's data: {word:#x}"
                            );
                            let seq = word & 0xFFFF_FFFF;
                            assert!(
                                (low..=high).contains(&seq),
                                "child page {k} has write {seq}, outside {low}..={high}"
                            );
                        }
                        word
                    })
                    .collect();
                // Let the parent write a good deal more.
                let target = total_writes.load(SeqCst) + 200;
                let waited = Instant::now();
                while total_writes.load(SeqCst) < target {
                    assert!(waited.elapsed() < PROGRESS_TIMEOUT, "the writers stopped making progress");
                    thread::yield_now();
                }
                for (k, &va) in pages.iter().enumerate() {
                    assert_eq!(
                        read_uniform(&child, va, "child"),
                        snapshot[k],
                        "a later parent write reached the child's page {k}"
                    );
                }
                let grandchild = (round % 3 == 0).then(|| child.fork().expect("fork of the child"));
                // The child writes its copy; neither the parent nor the
                // grandchild may see it.
                let mut written = Vec::new();
                for _ in 0..24 {
                    let k = rng.below(pages.len() as u64) as usize;
                    let word = child_word(k as u64, round);
                    child.write_bytes(pages[k], &whole_page(word)).expect("child write");
                    written.push(k);
                }
                for &k in &written {
                    assert_eq!(read_uniform(&child, pages[k], "child"), child_word(k as u64, round));
                    // The parent's writers may be mid-write here: only look
                    // for the child's words.
                    let mut buf = vec![0u8; PAGE_SIZE as usize];
                    mm.read_bytes(pages[k], &mut buf).expect("parent read");
                    assert!(
                        buf.chunks_exact(8).all(|w| w[7] != 0xC1),
                        "the child's write reached the parent's page {k}"
                    );
                }
                if let Some(grandchild) = grandchild {
                    for (k, &va) in pages.iter().enumerate() {
                        assert_eq!(
                            read_uniform(&grandchild, va, "grandchild"),
                            snapshot[k],
                            "grandchild page {k} changed"
                        );
                    }
                    grandchild.exit();
                }
                if let Some(old) = previous.replace(child) {
                    old.exit();
                }
            }
            if let Some(old) = previous {
                old.exit();
            }
        });
        let writers: Vec<Disturber<'_>> = (0..COW_WRITERS)
            .map(|w| {
                disturber(format!("writer-{w}"), move |stop: &Control<'_>| {
                    let mut rng = Rng::new(4000 + w as u64);
                    let own: Vec<usize> = (w..pages.len()).step_by(COW_WRITERS).collect();
                    let mut seq = vec![0u64; pages.len()];
                    while stop.running() {
                        let k = own[rng.below(own.len() as u64) as usize];
                        seq[k] += 1;
                        let word = parent_word(k as u64, seq[k]);
                        started[k].store(seq[k], SeqCst);
                        mm.write_bytes(pages[k], &whole_page(word)).expect("parent write");
                        completed[k].store(seq[k], SeqCst);
                        total_writes.fetch_add(1, SeqCst);
                        assert_eq!(read_uniform(mm, pages[k], "parent"), word, "parent page {k} lost its last write");
                    }
                    for &k in &own {
                        let expected = if seq[k] == 0 { 0 } else { parent_word(k as u64, seq[k]) };
                        assert_eq!(read_uniform(mm, pages[k], "parent"), expected, "parent page {k}");
                    }
                })
            })
            .collect();
        run("fork_snapshots", Duration::from_secs(120), vec![forker], writers);
    }
    drop(mm);
    machine.assert_everything_returned();
}

// ---------------------------------------------------------------------------
// 5. A reader racing munmap + MAP_FIXED remap
// ---------------------------------------------------------------------------

const GENERATIONS: u64 = 1_500;
/// What freed memory is filled with: never a generation's byte.
const FILL_BYTE: u8 = 0xFD;

/// The byte generation `generation` fills its mapping with (1..=251).
fn generation_byte(generation: u64) -> u8 {
    1 + (generation % 251) as u8
}

/// Checks one read of a remapped target: every byte is zero (fresh page or
/// dropped page) or the byte of a single generation that was current while
/// the read ran. Returns that generation, if any byte had one.
fn check_generation(buf: &[u8], low: u64, high: u64, reader: usize, va: u64) -> Option<u64> {
    let byte = buf.iter().copied().find(|&b| b != 0)?;
    if let Some(other) = buf.iter().copied().find(|&b| b != 0 && b != byte) {
        panic!("reader {reader} at {va:#x}: bytes {byte:#x} and {other:#x} in one read (garbage from a reused frame?)");
    }
    let generation = (low..=high).find(|&g| generation_byte(g) == byte);
    assert!(
        generation.is_some(),
        "reader {reader} at {va:#x}: read byte {byte:#x}, which no generation in {low}..={high} wrote \
         (garbage from a reused frame?)"
    );
    generation
}

#[test]
fn readers_racing_munmap_and_remap_see_only_zero_old_new_or_efault() {
    let machine = Machine::new(64);
    let mm = machine.mm();
    let other = machine.mm();
    // A THP-sized target and a single 4K page.
    let targets = [Range::new(0, 0, 512), Range::new(2, 7, 1)];
    for t in targets {
        assert_eq!(mm.mmap(t.start(), t.len(), Prot::RW, FIXED), Ok(t.start()));
    }
    let current: Vec<AtomicU64> = targets.iter().map(|_| AtomicU64::new(0)).collect();
    let mirror = Mirror::register(&mm);
    let seen_values = AtomicU64::new(0);
    let seen_faults = AtomicU64::new(0);
    let seen_zeroes = AtomicU64::new(0);

    {
        let (mm, other, current, mirror) = (&mm, &other, &current, &mirror);
        let (seen_values, seen_faults, seen_zeroes) = (&seen_values, &seen_faults, &seen_zeroes);
        let remapper = job("remapper", move || {
            let mut rng = Rng::new(5000);
            for generation in 1..=GENERATIONS {
                for (which, t) in targets.iter().enumerate() {
                    mm.munmap(t.start(), t.len()).expect("munmap");
                    assert!(is_efault(&mm.read_u64(t.start())));
                    assert_eq!(mm.mmap(t.start(), t.len(), Prot::RW, FIXED), Ok(t.start()));
                    current[which].store(generation, SeqCst);
                    let byte = generation_byte(generation);
                    if rng.one_in(3) {
                        mm.write_bytes(t.start(), &vec![byte; t.len() as usize]).expect("fill");
                    } else {
                        let page = rng.below(t.pages);
                        mm.write_bytes(t.page(page), &[byte; PAGE_SIZE as usize]).expect("fill page");
                    }
                }
            }
        });
        let mut disturbers: Vec<Disturber<'_>> = Vec::new();
        for (which, t) in targets.iter().copied().enumerate() {
            disturbers.push(disturber(format!("reader-{which}"), move |stop: &Control<'_>| {
                let mut rng = Rng::new(6000 + which as u64);
                let mut last = 0;
                let mut buf = vec![0u8; t.len() as usize];
                while stop.running() {
                    // Mostly one page, sometimes the whole target at once.
                    let (va, len) = if rng.one_in(8) {
                        (t.start(), t.len() as usize)
                    } else {
                        (t.page(rng.below(t.pages)), PAGE_SIZE as usize)
                    };
                    let low = current[which].load(SeqCst);
                    let result = mm.read_bytes(va, &mut buf[..len]);
                    let high = current[which].load(SeqCst);
                    match result {
                        Ok(()) => match check_generation(&buf[..len], low.max(last), high, which, va) {
                            Some(g) => {
                                last = g;
                                seen_values.fetch_add(1, SeqCst);
                            }
                            None => drop(seen_zeroes.fetch_add(1, SeqCst)),
                        },
                        Err(e) => {
                            assert_eq!(e.errno(), Errno::Fault, "reader {which}: unexpected error {e}");
                            seen_faults.fetch_add(1, SeqCst);
                        }
                    }
                }
            }));
        }
        disturbers.push(disturber("dropper", move |stop: &Control<'_>| {
            let mut rng = Rng::new(7000);
            while stop.running() {
                let t = targets[rng.below(targets.len() as u64) as usize];
                let first = rng.below(t.pages);
                let count = 1 + rng.below(t.pages - first);
                match mm.madvise(t.page(first), count * PAGE_SIZE, MadviseAdvice::DontNeed) {
                    Ok(()) => {}
                    Err(e) => assert_eq!(e.errno(), Errno::NoMem, "DONTNEED: unexpected {e}"),
                }
                thread::yield_now();
            }
        }));
        disturbers.push(disturber("filler", move |stop: &Control<'_>| {
            // Churns frames through the allocator, leaving FILL_BYTE in
            // every frame it frees, from this and from another process.
            let mut rng = Rng::new(8000);
            let fill = vec![FILL_BYTE; 4 << 20];
            while stop.running() {
                let target = if rng.one_in(2) { mm } else { other };
                let len = PAGE_SIZE * (1 + rng.below(1024));
                let va = target.mmap(0, len, Prot::RW, ANON).expect("filler mmap");
                target.write_bytes(va, &fill[..len as usize]).expect("filler write");
                target.munmap(va, len).expect("filler munmap");
            }
        }));
        disturbers.push(disturber("forker", move |stop: &Control<'_>| {
            // A child shares the targets' frames for a while and writes
            // FILL_BYTE into its own copies.
            let mut rng = Rng::new(9000);
            while stop.running() {
                let child = mm.fork().expect("fork");
                let t = targets[rng.below(targets.len() as u64) as usize];
                let page = t.page(rng.below(t.pages));
                match child.write_bytes(page, &[FILL_BYTE; PAGE_SIZE as usize]) {
                    Ok(()) => {
                        let mut buf = [0u8; 64];
                        child.read_bytes(page, &mut buf).expect("child read");
                        assert_eq!(buf, [FILL_BYTE; 64], "child lost its own write");
                    }
                    Err(e) => assert_eq!(e.errno(), Errno::Fault, "child write: unexpected {e}"),
                }
                child.exit();
            }
        }));
        disturbers.push(mirror_disturber(mm, mirror, &targets, 9500));
        run("munmap_vs_reader", Duration::from_secs(120), vec![remapper], disturbers);
    }
    let (values, zeroes, faults) = (seen_values.load(SeqCst), seen_zeroes.load(SeqCst), seen_faults.load(SeqCst));
    eprintln!("munmap_vs_reader: reads saw {values} generation values, {zeroes} zero pages, {faults} EFAULTs");
    assert!(values > 0, "the readers never saw a written generation");
    drop((mm, other));
    machine.assert_everything_returned();
}

// ---------------------------------------------------------------------------
// 4. Every frame comes back
// ---------------------------------------------------------------------------

/// Address spaces forked from each other and exited in random order, by
/// threads that hold only user references (as devices do), while a writer
/// keeps breaking COW in the root: once all are gone, everything is free.
#[test]
fn fork_trees_exited_in_any_order_return_every_frame() {
    fork_trees(600, Duration::ZERO);
}

/// The schedule that once ran the test above out of memory, made likely:
/// the forking threads pause after each fork, so the device thread copies
/// far more pages of the live address spaces (about half again as many
/// frames at the peak; past 64 MiB in some runs). The budget must hold.
#[test]
fn fork_trees_with_descheduled_forkers_stay_within_their_memory() {
    fork_trees(60, Duration::from_millis(20));
}

fn fork_trees(rounds: usize, pause_after_fork: Duration) {
    let data = Range::new(0, 0, 1024);
    let small = Range::new(4, 3, 64);
    // Memory for the worst case, with no overcommit: the device thread may
    // write every page of every live address space while the workers are
    // descheduled, so each may hold a private copy of both ranges (plus its
    // page tables). Alive at once: the root, up to 17 in the pool, one
    // child per worker not yet in it, one victim per worker being exited,
    // and one kept by the device's user reference. With less, Linux would
    // run out of memory too (this test once did, with 64 MiB).
    const WORKERS: u64 = 3;
    const MAX_ALIVE: u64 = 1 + 17 + WORKERS + WORKERS + 1;
    let pages_each = data.pages + small.pages + 16;
    let machine = Machine::new(((MAX_ALIVE * pages_each * PAGE_SIZE) >> 20) + 16);
    let root = machine.mm();
    for r in [data, small] {
        assert_eq!(root.mmap(r.start(), r.len(), Prot::RW, FIXED | MapFlags::POPULATE), Ok(r.start()));
        for page in (0..r.pages).step_by(3) {
            root.write_u64(r.cell(page), page + 1).expect("write");
        }
    }
    // Address spaces alive and not yet exited; whoever removes one exits it.
    let pool = parking_lot::Mutex::new(Vec::<Arc<Mm>>::new());
    let forks = AtomicUsize::new(0);
    {
        let (root, pool, forks) = (&root, &pool, &forks);
        let pick = move |rng: &mut Rng| -> Option<Arc<Mm>> {
            let pool = pool.lock();
            (!pool.is_empty()).then(|| pool[rng.below(pool.len() as u64) as usize].clone())
        };
        let workers: Vec<Job<'_>> = (0..WORKERS)
            .map(|w| {
                job(format!("tree-{w}"), move || {
                    let mut rng = Rng::new(10_000 + w);
                    for _ in 0..rounds {
                        // Fork the root or any live address space; it may be
                        // exiting under us, which must fail cleanly.
                        let parent = if rng.one_in(3) { pick(&mut rng) } else { None };
                        let child = match parent.as_ref().map(|p| p.mmget_not_zero()) {
                            Some(Some(user)) => match user.fork() {
                                Ok(child) => child,
                                Err(e) => {
                                    assert_eq!(e.errno(), Errno::Srch, "fork: unexpected {e}");
                                    continue;
                                }
                            },
                            Some(None) => continue,
                            None => root.fork().expect("fork of the root"),
                        };
                        forks.fetch_add(1, SeqCst);
                        thread::sleep(pause_after_fork);
                        // Break COW here and there, split THPs, unmap and
                        // protect pieces, drop pages.
                        for _ in 0..8 {
                            let r = if rng.one_in(2) { data } else { small };
                            let page = rng.below(r.pages);
                            match child.write_u64(r.cell(page), rng.next_u64()) {
                                Ok(()) => {}
                                Err(e) => assert_eq!(e.errno(), Errno::Fault, "child write: {e}"),
                            }
                        }
                        let page = rng.below(data.pages - 8);
                        let piece = |n: u64| (data.page(page), n * PAGE_SIZE);
                        let (va, len) = piece(1 + rng.below(8));
                        match rng.below(4) {
                            0 => drop(child.munmap(va, len)),
                            1 => drop(child.mprotect(va, len, Prot::READ)),
                            2 => drop(child.madvise(va, len, MadviseAdvice::DontNeed)),
                            _ => drop(child.mmap(va, len, Prot::RW, FIXED | MapFlags::POPULATE)),
                        }
                        pool.lock().push(child);
                        // Exit random live address spaces (maybe the one
                        // just made, maybe one another thread is using),
                        // keeping at most 16 alive.
                        loop {
                            let victim = {
                                let mut pool = pool.lock();
                                (pool.len() > 16 || (!pool.is_empty() && rng.one_in(2))).then(|| {
                                    let i = rng.below(pool.len() as u64) as usize;
                                    pool.swap_remove(i)
                                })
                            };
                            match victim {
                                Some(victim) => victim.exit(),
                                None => break,
                            }
                        }
                    }
                })
            })
            .collect();
        let device = disturber("device", move |stop: &Control<'_>| {
            let mut rng = Rng::new(11_000);
            while stop.running() {
                let Some(mm) = pick(&mut rng) else {
                    thread::yield_now();
                    continue;
                };
                // With a user reference, the address space cannot be torn
                // down under us; dropping it may be what tears it down.
                let Some(user) = mm.mmget_not_zero() else { continue };
                for _ in 0..16 {
                    let r = if rng.one_in(2) { data } else { small };
                    let va = r.cell(rng.below(r.pages));
                    let result =
                        if rng.one_in(2) { user.read_u64(va).map(drop) } else { user.write_u64(va, rng.next_u64()) };
                    if let Err(e) = result {
                        assert_eq!(e.errno(), Errno::Fault, "device access: unexpected {e}");
                    }
                }
                drop(user);
            }
        });
        let root_writer = disturber("root-writer", move |stop: &Control<'_>| {
            let mut rng = Rng::new(12_000);
            let mut shadow: Vec<u64> = (0..data.pages).map(|p| if p % 3 == 0 { p + 1 } else { 0 }).collect();
            while stop.running() {
                let page = rng.below(data.pages);
                let value = rng.next_u64();
                root.write_u64(data.cell(page), value).expect("root write");
                shadow[page as usize] = value;
                if rng.one_in(64) {
                    verify(root, data, &shadow, "root writer");
                }
            }
            verify(root, data, &shadow, "root writer");
        });
        run("fork_trees", Duration::from_secs(120), workers, vec![device, root_writer]);
    }
    assert!(forks.load(SeqCst) > 0);
    for mm in pool.into_inner() {
        mm.exit();
    }
    root.exit();
    drop(root);
    machine.assert_everything_returned();
}

/// An mmap that starts before the exit and takes the mmap lock after it
/// must fail (ESRCH) rather than map memory into the dead address space,
/// whose frames nothing would ever free.
#[test]
fn mmap_racing_with_exit_leaks_nothing() {
    let machine = Machine::new(16);
    let mm = machine.mm();
    let result = thread::scope(|s| {
        // Hold the lock so both calls queue behind it: exit first (it
        // marks the address space dead once it has the lock), then mmap
        // (which has checked that it is alive before queueing).
        let guard = mm.mmap_read();
        let exiter = s.spawn(|| mm.exit());
        thread::sleep(Duration::from_millis(100));
        let mapper = s.spawn(|| mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED | MapFlags::POPULATE));
        thread::sleep(Duration::from_millis(100));
        drop(guard);
        exiter.join().expect("exit");
        mapper.join().expect("mmap")
    });
    assert!(mm.has_exited());
    drop(mm);
    machine.assert_everything_returned();
    // ESRCH if the exit got the lock first (the intended order); had the
    // mmap won the race, the exit would have unmapped it.
    assert!(matches!(result, Ok(REGION)) || matches!(&result, Err(e) if e.errno() == Errno::Srch), "mmap: {result:?}");
}

// ---------------------------------------------------------------------------
// Regression tests for bugs the stress tests found
// ---------------------------------------------------------------------------

/// madvise(NOHUGEPAGE) on half of a PMD-mapped THP once split the VMA but
/// not the huge leaf, and fork copied the leaf once for each VMA it
/// straddled, leaking a reference. Now the leaf is split at the VMA edge
/// first: every page is mapped once in each process, nothing leaks.
#[test]
fn fork_after_madvise_splits_a_thp_vma_leaks_nothing() {
    let machine = Machine::new(16);
    let mm = machine.mm();
    let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).expect("mmap");
    mm.write_u64(va, 1).expect("write");
    let thp = hmm_mm::testing::leaf(&mm, va).1.pfn();
    assert_eq!(machine.kernel.phys().folio_order(thp), 9, "a THP backs the block");
    mm.madvise(va + PMD_SIZE / 2, PMD_SIZE / 2, MadviseAdvice::NoHugePage).expect("madvise");
    let child = mm.fork().expect("fork");
    let counts = machine.kernel.phys().folio_counts(thp);
    child.exit();
    mm.exit();
    drop((mm, child));
    assert_eq!(counts, (1024, 1024), "after fork, parent and child map each of the 512 pages once");
    machine.assert_everything_returned();
}

/// A straddling leaf once carried a DONTFORK or WIPEONFORK half of a THP
/// into the child: the child must fault (no VMA there) or read zeroes
/// (wiped).
#[test]
fn dontfork_and_wipeonfork_half_of_a_thp_stay_out_of_the_child() {
    for advice in [MadviseAdvice::DontFork, MadviseAdvice::WipeOnFork] {
        let machine = Machine::new(16);
        let mm = machine.mm();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).expect("mmap");
        let secret = va + PMD_SIZE - 8;
        mm.write_u64(secret, 42).expect("write");
        mm.madvise(va + PMD_SIZE / 2, PMD_SIZE / 2, advice).expect("madvise");
        let child = mm.fork().expect("fork");
        let seen = child.read_u64(secret);
        child.exit();
        mm.exit();
        drop((mm, child));
        match advice {
            MadviseAdvice::DontFork => assert!(is_efault(&seen), "DONTFORK memory in the child reads {seen:?}"),
            _ => assert_eq!(seen, Ok(0), "WIPEONFORK memory in the child is not wiped"),
        }
        machine.assert_everything_returned();
    }
}
