//! Tests of `hmm::range_fault` against the behavioural specification
//! (`linux-hmm.md` §2 and the §11 checklist): the output word of every kind
//! of CPU entry under every request, faulting and over-faulting, partial
//! results, snapshot mode taking no reference, the return values, the
//! collision-retry loop, and a property test over random anonymous address
//! spaces.
//!
//! Expected pfns come from known frames (the zero pages, device bases) or
//! from the CPU page table (`hmm_mm::testing::leaf`), never from the code
//! under test.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proptest::prelude::*;

use hmm::pfn::{
    hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_DMA_MAPPED, HMM_PFN_ERROR, HMM_PFN_INOUT_FLAGS, HMM_PFN_ORDER_SHIFT,
    HMM_PFN_P2PDMA, HMM_PFN_P2PDMA_BUS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE,
};
use hmm::{
    range_fault, range_fault_loop, HmmError, IntervalNotifier, IntervalNotifierOps, Range, HMM_RANGE_DEFAULT_TIMEOUT,
};
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::DaxFs;
use hmm_mm::phys::{MemoryType, Pagemap};
use hmm_mm::testing::{kernel, kernel_with_swap, leaf, temp_path};
use hmm_mm::{Kernel, KernelConfig, MigrationPoint, Mm, ThpMode};
use hmm_pagetable::{Level, SwapKind};
use hmm_types::{
    Errno, MadviseAdvice, MapFlags, NotifierRange, Owner, PageSize, Pfn, Prot, VmFlags, PAGE_SIZE, PMD_SIZE, PUD_SIZE,
    TASK_SIZE,
};

const PAGE: u64 = PAGE_SIZE;
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const FIXED: MapFlags = ANON.union(MapFlags::FIXED);
/// Where tests place fixed mappings: 1 GiB aligned, far from the top-down
/// allocator.
const REGION: u64 = 0x1000_0000_0000;
const MIB: u64 = 1 << 20;

/// Request values.
const NO_REQ: u64 = 0;
const REQ_R: u64 = HMM_PFN_REQ_FAULT;
const REQ_W: u64 = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
const REQ_BITS: u64 = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
const REQUESTS: [u64; 3] = [NO_REQ, REQ_R, REQ_W];

const VALID: u64 = HMM_PFN_VALID;
const WRITE: u64 = HMM_PFN_WRITE;
const ERROR: u64 = HMM_PFN_ERROR;

const fn order(order: u32) -> u64 {
    (order as u64) << HMM_PFN_ORDER_SHIFT
}

// ---------------------------------------------------------------------------
// The test driver
// ---------------------------------------------------------------------------

/// A minimal mirroring driver: its invalidate callback records the
/// sequence under the driver's update lock, as the contract asks.
#[derive(Default)]
struct Driver {
    update: Mutex<()>,
    invalidations: AtomicU64,
}

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let _update = self.update.lock();
        subscription.set_seq(cur_seq);
        self.invalidations.fetch_add(1, SeqCst);
        true
    }
}

/// How the request reaches `range_fault`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    /// `default_flags = req`, `pfn_flags_mask = 0`, inputs 0.
    Default,
    /// `default_flags = 0`, `pfn_flags_mask = REQ_FAULT | REQ_WRITE`,
    /// every input `req`.
    PerEntry,
}

const WAYS: [Way; 2] = [Way::Default, Way::PerEntry];

/// A subscription of one address space with the test driver behind it.
struct Mirror {
    mm: Arc<Mm>,
    driver: Arc<Driver>,
    notifier: Arc<IntervalNotifier>,
}

impl Mirror {
    /// Watches the whole user address space.
    fn new(mm: &Arc<Mm>) -> Self {
        Self::over(mm, 0, TASK_SIZE)
    }

    /// Watches `[start, start + len)`.
    fn over(mm: &Arc<Mm>, start: u64, len: u64) -> Self {
        let driver = Arc::new(Driver::default());
        let notifier = mm.interval_notifier_insert(start, len, driver.clone()).expect("insert");
        Self { mm: mm.clone(), driver, notifier }
    }

    /// One `read_begin` and one `range_fault` under the mmap read lock.
    fn once(&self, start: u64, pfns: &mut [u64], default_flags: u64, pfn_flags_mask: u64) -> Result<(), HmmError> {
        let seq = self.notifier.read_begin();
        self.with_seq(seq, start, pfns, default_flags, pfn_flags_mask)
    }

    /// `range_fault` with a given (possibly stale) sequence.
    fn with_seq(
        &self,
        seq: u64,
        start: u64,
        pfns: &mut [u64],
        default_flags: u64,
        pfn_flags_mask: u64,
    ) -> Result<(), HmmError> {
        let end = start + pfns.len() as u64 * PAGE;
        let guard = self.mm.mmap_read();
        let mut range = Range {
            notifier: &self.notifier,
            notifier_seq: seq,
            start,
            end,
            hmm_pfns: pfns,
            default_flags,
            pfn_flags_mask,
            dev_private_owner: None,
        };
        range_fault(&guard, &mut range)
    }

    /// The driver loop (`range_fault_loop` with the default budget and a
    /// commit that checks `read_retry` under the update lock).
    fn fault(&self, start: u64, pfns: &mut [u64], default_flags: u64, pfn_flags_mask: u64) -> Result<(), HmmError> {
        let end = start + pfns.len() as u64 * PAGE;
        let mut range = Range {
            notifier: &self.notifier,
            notifier_seq: 0,
            start,
            end,
            hmm_pfns: pfns,
            default_flags,
            pfn_flags_mask,
            dev_private_owner: None,
        };
        let driver = self.driver.clone();
        range_fault_loop(&self.mm, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |range| {
            let _update = driver.update.lock();
            (!range.notifier.read_retry(range.notifier_seq)).then_some(())
        })
    }

    /// `npages` entries from `start` requested with `req`, the `way` given,
    /// through the driver loop. Returns the result and the array.
    fn request(&self, start: u64, npages: u64, req: u64, way: Way) -> (Result<(), HmmError>, Vec<u64>) {
        let (mut pfns, default, mask) = match way {
            Way::Default => (vec![0; npages as usize], req, 0),
            Way::PerEntry => (vec![req; npages as usize], 0, REQ_BITS),
        };
        let result = self.fault(start, &mut pfns, default, mask);
        (result, pfns)
    }

    /// Like [`Self::request`], asserting success.
    fn request_ok(&self, start: u64, npages: u64, req: u64, way: Way) -> Vec<u64> {
        let (result, pfns) = self.request(start, npages, req, way);
        result.unwrap_or_else(|e| panic!("range_fault({start:#x}, {npages}, req {req:#x}, {way:?}): {e}"));
        pfns
    }

    /// A single snapshot call (no request at all), asserting success.
    fn snapshot(&self, start: u64, npages: u64) -> Vec<u64> {
        let mut pfns = vec![0; npages as usize];
        self.once(start, &mut pfns, 0, 0).expect("snapshot");
        pfns
    }
}

// ---------------------------------------------------------------------------
// CPU-side oracles and machines
// ---------------------------------------------------------------------------

/// The output word the CPU page table implies for a present leaf at `va`:
/// VALID, WRITE if writable, the order of its level, its pfn plus the
/// offset of `va` in the block.
fn cpu_word(mm: &Mm, va: u64) -> u64 {
    let (level, entry) = leaf(mm, va);
    assert!(entry.is_present(), "{va:#x} is not mapped by a present leaf: {entry:?}");
    let offset = (va & (level.entry_bytes() - 1)) / PAGE;
    let map_order = level.shift() - 12;
    VALID | if entry.is_write() { WRITE } else { 0 } | order(map_order) | (entry.pfn().0 + offset)
}

/// What a request-free walk must report at `va` (§2.5): ERROR outside any
/// VMA and in IO/PFNMAP/unreadable VMAs, 0 for empty and non-present
/// entries, ERROR for special pages other than the zero page, else the
/// CPU word.
fn oracle(mm: &Mm, va: u64) -> u64 {
    let flags = mm.mmap_read().vma(va).map(|vma| vma.flags);
    let Some(flags) = flags else { return ERROR };
    if flags.intersects(VmFlags::IO | VmFlags::PFNMAP) || !flags.contains(VmFlags::READ) {
        return ERROR;
    }
    let (_, entry) = leaf(mm, va);
    if entry.is_none() || !entry.is_present() || entry.is_protnone() {
        return 0;
    }
    if entry.is_special() && !mm.phys().is_zero_pfn(entry.pfn()) {
        return ERROR;
    }
    cpu_word(mm, va)
}

fn vas(start: u64, npages: u64) -> impl Iterator<Item = u64> {
    (0..npages).map(move |i| start + i * PAGE)
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A throw-away pmem file, removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything the walk must not change when it faults nothing: every
/// page's CPU entry, the counts of every mapped folio, the allocator.
#[derive(PartialEq, Eq, Debug)]
struct CpuState {
    entries: Vec<(u64, Level, u64)>,
    folios: Vec<(u64, (u32, i32))>,
    free_frames: u64,
    page_tables: u64,
    swap_used: u64,
}

fn cpu_state(k: &Kernel, mm: &Mm, ranges: &[(u64, u64)]) -> CpuState {
    let mut entries = Vec::new();
    let mut folios = Vec::new();
    for &(start, npages) in ranges {
        for va in vas(start, npages) {
            let (level, entry) = leaf(mm, va);
            entries.push((va, level, entry.raw()));
            if entry.is_present() {
                let offset = (va & (level.entry_bytes() - 1)) / PAGE;
                let pfn = entry.pfn().add(offset);
                folios.push((va, k.phys().folio_counts(pfn)));
            }
        }
    }
    CpuState {
        entries,
        folios,
        free_frames: k.phys().free_frames(),
        page_tables: k.phys().page_table_frames(),
        swap_used: k.swap().used_slots(),
    }
}

/// Holds each migrating folio before its copy (migration entries
/// installed) until released; dropping it releases all.
struct Pause {
    entered: mpsc::Receiver<MigrationPoint>,
    release: mpsc::Sender<()>,
}

fn pause(k: &Kernel) -> Pause {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    k.set_migration_hook(Some(Arc::new(move |point: &MigrationPoint| {
        let _ = entered_tx.lock().send(*point);
        let _ = release_rx.lock().recv();
    })));
    Pause { entered, release }
}

/// A fresh machine without THP, one private anonymous RW mapping of
/// `npages` at `REGION`.
fn anon_4k(npages: u64) -> (Arc<Kernel>, Arc<Mm>, u64) {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, npages * PAGE, Prot::RW, FIXED).unwrap();
    (k, mm, va)
}

/// Asserts `out` equals `expected` entry by entry, with a readable message.
#[track_caller]
fn assert_words(out: &[u64], expected: &[u64], what: &str) {
    assert_eq!(out.len(), expected.len(), "{what}: lengths");
    for (i, (&o, &e)) in out.iter().zip(expected).enumerate() {
        assert_eq!(o, e, "{what}: entry {i}: got {o:#018x}, expected {e:#018x}");
    }
}

// ---------------------------------------------------------------------------
// pte_none
// ---------------------------------------------------------------------------

#[test]
fn pte_none_without_request_is_zero_and_faults_nothing() {
    let (k, mm, va) = anon_4k(8);
    // Page 7 populated, so pages 0..4 are empty PTEs in an existing table;
    // a second mapping is a bare PMD hole.
    mm.write_u64(va + 7 * PAGE, 1).unwrap();
    let bare = mm.mmap(REGION + 4 * PMD_SIZE, 4 * PAGE, Prot::RW, FIXED).unwrap();
    let m = Mirror::new(&mm);
    for way in WAYS {
        for start in [va, bare] {
            let before = cpu_state(&k, &mm, &[(start, 4)]);
            let out = m.request_ok(start, 4, NO_REQ, way);
            assert_words(&out, &[0; 4], "pte_none, no request");
            assert_eq!(cpu_state(&k, &mm, &[(start, 4)]), before, "nothing faulted");
        }
    }
}

#[test]
fn pte_none_with_req_fault_maps_the_zero_page() {
    for way in WAYS {
        let (k, mm, va) = anon_4k(8);
        mm.write_u64(va + 7 * PAGE, 1).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va, 4, REQ_R, way);
        let zero = k.phys().zero_pfn().0;
        assert_words(&out, &[VALID | zero; 4], "read fault of pte_none");
        for v in vas(va, 4) {
            assert_eq!(leaf(&mm, v).1.pfn().0, zero, "the CPU maps the zero page too");
        }
    }
}

#[test]
fn pte_none_with_req_write_maps_new_writable_pages() {
    for way in WAYS {
        let (k, mm, va) = anon_4k(8);
        mm.write_u64(va + 7 * PAGE, 1).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va, 4, REQ_W, way);
        let expected: Vec<u64> = vas(va, 4).map(|v| cpu_word(&mm, v)).collect();
        assert_words(&out, &expected, "write fault of pte_none");
        let mut frames: Vec<Pfn> = out.iter().map(|&w| hmm_pfn_to_pfn(w)).collect();
        for (&word, frame) in out.iter().zip(&frames) {
            assert_eq!(word & !((1 << HMM_PFN_ORDER_SHIFT) - 1), VALID | WRITE, "VALID|WRITE, order 0");
            assert!(!k.phys().is_zero_pfn(*frame));
        }
        frames.dedup();
        assert_eq!(frames.len(), 4, "four distinct frames");
        // As many references as a page the CPU faulted itself: the walk
        // keeps none.
        let by_cpu = k.phys().folio_counts(leaf(&mm, va + 7 * PAGE).1.pfn());
        for frame in frames {
            assert_eq!(k.phys().folio_counts(frame), by_cpu, "no reference held by range_fault");
        }
    }
}

// ---------------------------------------------------------------------------
// Present pages
// ---------------------------------------------------------------------------

/// Four written pages made read-only (COW-shared) by a fork; returns the
/// child, which must stay alive.
fn cow_shared_pages() -> (Arc<Kernel>, Arc<Mm>, Arc<Mm>, u64, Vec<u64>) {
    let (k, mm, va) = anon_4k(4);
    for (i, v) in vas(va, 4).enumerate() {
        mm.write_u64(v, 0x100 + i as u64).unwrap();
    }
    let child = mm.fork().unwrap();
    let pfns: Vec<u64> = vas(va, 4)
        .map(|v| {
            let (level, entry) = leaf(&mm, v);
            assert!(level == Level::Pte && entry.is_present() && !entry.is_write(), "COW-shared after fork");
            entry.pfn().0
        })
        .collect();
    (k, mm, child, va, pfns)
}

#[test]
fn present_read_only_page_is_valid_without_write() {
    let (k, mm, child, va, pfns) = cow_shared_pages();
    let m = Mirror::new(&mm);
    for req in [NO_REQ, REQ_R] {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 4)]);
            let out = m.request_ok(va, 4, req, way);
            let expected: Vec<u64> = pfns.iter().map(|&p| VALID | p).collect();
            assert_words(&out, &expected, "read-only present page");
            assert_eq!(cpu_state(&k, &mm, &[(va, 4)]), before, "no fault, no reference");
        }
    }
    child.exit();
}

#[test]
fn present_read_only_page_with_req_write_is_cow_broken_to_a_new_writable_page() {
    for way in WAYS {
        let (_k, mm, child, va, old) = cow_shared_pages();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va, 4, REQ_W, way);
        for (i, v) in vas(va, 4).enumerate() {
            assert_eq!(out[i], cpu_word(&mm, v), "entry {i} reports the CPU's new page");
            assert_eq!(out[i] & (VALID | WRITE | ERROR), VALID | WRITE);
            assert_ne!(hmm_pfn_to_pfn(out[i]).0, old[i], "entry {i}: a copy, not the shared page");
            assert_eq!(leaf(&child, v).1.pfn().0, old[i], "the child keeps the original");
            assert_eq!(mm.read_u64(v).unwrap(), 0x100 + i as u64, "the copy has the data");
        }
        child.exit();
    }
}

#[test]
fn present_writable_page_is_valid_write_under_every_request() {
    let (k, mm, va) = anon_4k(4);
    for v in vas(va, 4) {
        mm.write_u64(v, v).unwrap();
    }
    let expected: Vec<u64> = vas(va, 4).map(|v| VALID | WRITE | leaf(&mm, v).1.pfn().0).collect();
    let m = Mirror::new(&mm);
    for req in REQUESTS {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 4)]);
            let out = m.request_ok(va, 4, req, way);
            assert_words(&out, &expected, "present writable page");
            assert_eq!(cpu_state(&k, &mm, &[(va, 4)]), before, "nothing faulted");
        }
    }
}

#[test]
fn zero_page_is_valid_read_only_with_the_zero_pfn() {
    let (k, mm, va) = anon_4k(4);
    for v in vas(va, 4) {
        assert_eq!(mm.read_u64(v).unwrap(), 0);
    }
    let zero = k.phys().zero_pfn().0;
    let m = Mirror::new(&mm);
    for req in [NO_REQ, REQ_R] {
        for way in WAYS {
            let out = m.request_ok(va, 4, req, way);
            assert_words(&out, &[VALID | zero; 4], "zero page");
            assert_eq!(hmm_pfn_to_map_order(out[0]), 0);
        }
    }
}

#[test]
fn zero_page_with_req_write_is_replaced_by_a_private_page() {
    for way in WAYS {
        let (k, mm, va) = anon_4k(4);
        for v in vas(va, 4) {
            mm.read_u64(v).unwrap();
        }
        let m = Mirror::new(&mm);
        let out = m.request_ok(va, 4, REQ_W, way);
        for (i, v) in vas(va, 4).enumerate() {
            assert_eq!(out[i], cpu_word(&mm, v));
            assert_eq!(out[i] & (VALID | WRITE), VALID | WRITE);
            assert!(!k.phys().is_zero_pfn(hmm_pfn_to_pfn(out[i])));
        }
    }
}

/// A write fault the walk itself performs (COW of the zero page) is an
/// invalidation of the mirrored interval: a single call returns EBUSY
/// after the fault (§2.7, §2.8 "faults can trigger invalidations of this
/// very interval"), with the entries before the faulting one written and
/// the rest still input; the next call succeeds.
#[test]
fn an_own_cow_fault_collides_and_the_next_call_succeeds() {
    let (_k, mm, va) = anon_4k(4);
    mm.write_u64(va, 1).unwrap();
    for v in vas(va + PAGE, 3) {
        mm.read_u64(v).unwrap();
    }
    let m = Mirror::new(&mm);
    let input = [0, REQ_W | HMM_PFN_DMA_MAPPED | 0x77, REQ_W | 0x78, REQ_W | 0x79];
    let mut pfns = input;
    assert_eq!(m.once(va, &mut pfns, 0, REQ_BITS), Err(HmmError::Busy));
    assert_eq!(pfns[0], cpu_word(&mm, va), "the prefix before the fault is output");
    assert_eq!(&pfns[1..], &input[1..], "the faulted entry and the rest are input");
    let mut pfns = input;
    m.once(va, &mut pfns, 0, REQ_BITS).unwrap();
    let expected: Vec<u64> = vas(va, 4).map(|v| cpu_word(&mm, v)).collect();
    assert_eq!(pfns[1], expected[1] | HMM_PFN_DMA_MAPPED);
    assert_eq!(pfns[2..], expected[2..]);
}

// ---------------------------------------------------------------------------
// PMD and PUD blocks
// ---------------------------------------------------------------------------

#[test]
fn huge_zero_page_is_an_order_9_read_only_block() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
    mm.read_u64(va + 5 * PAGE).unwrap();
    let (level, entry) = leaf(&mm, va);
    assert_eq!((level, entry.pfn()), (Level::Pmd, k.phys().huge_zero_pfn()), "precondition: huge zero PMD");
    let m = Mirror::new(&mm);
    let hz = k.phys().huge_zero_pfn().0;
    for req in [NO_REQ, REQ_R] {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 512)]);
            let out = m.request_ok(va + 7 * PAGE, 16, req, way);
            let expected: Vec<u64> = (0..16).map(|i| VALID | order(9) | (hz + 7 + i)).collect();
            assert_words(&out, &expected, "huge zero page");
            assert_eq!(cpu_state(&k, &mm, &[(va, 512)]), before);
        }
    }
}

#[test]
fn huge_zero_page_with_req_write_reports_the_new_writable_mapping() {
    for way in WAYS {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
        mm.read_u64(va).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va + 7 * PAGE, 16, REQ_W, way);
        for (i, v) in vas(va + 7 * PAGE, 16).enumerate() {
            assert_eq!(out[i], cpu_word(&mm, v), "entry {i}");
            assert_eq!(out[i] & (VALID | WRITE), VALID | WRITE);
            assert!(!k.phys().is_zero_pfn(hmm_pfn_to_pfn(out[i])));
        }
    }
}

#[test]
fn thp_is_an_order_9_block_reported_from_the_middle_and_across_a_boundary() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, 2 * PMD_SIZE, Prot::RW, FIXED).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PMD_SIZE, 2).unwrap();
    let heads: Vec<Pfn> = [va, va + PMD_SIZE]
        .iter()
        .map(|&v| {
            let (level, entry) = leaf(&mm, v);
            assert_eq!(level, Level::Pmd, "precondition: a THP");
            assert_eq!(k.phys().folio_order(entry.pfn()), 9);
            entry.pfn()
        })
        .collect();
    let m = Mirror::new(&mm);
    // 12 pages at the end of the first THP, 8 at the start of the second.
    let start = va + 500 * PAGE;
    let expected: Vec<u64> = (0..20)
        .map(|i| {
            let (head, off) = if i < 12 { (heads[0], 500 + i) } else { (heads[1], i - 12) };
            VALID | WRITE | order(9) | (head.0 + off)
        })
        .collect();
    for req in REQUESTS {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 1024)]);
            let out = m.request_ok(start, 20, req, way);
            assert_words(&out, &expected, "THP");
            assert_eq!(cpu_state(&k, &mm, &[(va, 1024)]), before, "no fault, no split, no reference");
        }
    }
    // A single entry in the middle still reports the whole block's order.
    let out = m.snapshot(va + 300 * PAGE, 1);
    assert_eq!(out, [VALID | WRITE | order(9) | (heads[0].0 + 300)]);
}

#[test]
fn thp_shared_after_fork_is_read_only_and_req_write_breaks_the_cow() {
    for way in WAYS {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
        mm.write_u64(va + 20 * PAGE, 0x20).unwrap();
        let child = mm.fork().unwrap();
        let (level, entry) = leaf(&mm, va);
        assert!(level == Level::Pmd && !entry.is_write(), "precondition: a read-only shared THP");
        let head = entry.pfn().0;
        let m = Mirror::new(&mm);
        let start = va + 16 * PAGE;
        let out = m.request_ok(start, 8, REQ_R, way);
        let expected: Vec<u64> = (0..8).map(|i| VALID | order(9) | (head + 16 + i)).collect();
        assert_words(&out, &expected, "read-only THP");
        let out = m.request_ok(start, 8, REQ_W, way);
        for (i, v) in vas(start, 8).enumerate() {
            assert_eq!(out[i], cpu_word(&mm, v), "entry {i}");
            assert_eq!(out[i] & (VALID | WRITE), VALID | WRITE, "entry {i}");
        }
        assert_eq!(mm.read_u64(va + 20 * PAGE).unwrap(), 0x20);
        assert_eq!(leaf(&child, va).1.pfn().0, head, "the child keeps the THP");
        child.exit();
    }
}

#[test]
fn untouched_thp_range_faults_in_a_huge_zero_page_or_a_thp() {
    for way in WAYS {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va + 10 * PAGE, 4, REQ_R, way);
        let hz = k.phys().huge_zero_pfn().0;
        let expected: Vec<u64> = (0..4).map(|i| VALID | order(9) | (hz + 10 + i)).collect();
        assert_words(&out, &expected, "read fault of a THP-eligible hole");

        let mm = k.create_mm().unwrap();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va + 10 * PAGE, 4, REQ_W, way);
        let (level, entry) = leaf(&mm, va);
        assert_eq!(level, Level::Pmd, "a THP was allocated");
        let expected: Vec<u64> = (0..4).map(|i| VALID | WRITE | order(9) | (entry.pfn().0 + 10 + i)).collect();
        assert_words(&out, &expected, "write fault of a THP-eligible hole");
    }
}

/// A 16 MiB DAX filesystem with one 4 MiB file.
fn dax_setup(k: &Kernel) -> (TempFile, DaxFs, hmm_mm::fs::File) {
    let path = TempFile(temp_path("range-fault.pmem"));
    let fs = DaxFs::format(k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("f").unwrap();
    file.ftruncate(4 * MIB).unwrap();
    (path, fs, file)
}

#[test]
fn fs_dax_pmd_is_an_order_9_block_of_fsdax_memory() {
    let k = kernel(64, ThpMode::Never);
    let (_path, _fs, file) = dax_setup(&k);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(REGION, 4 * MIB, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PMD_SIZE, 2).unwrap();
    let heads: Vec<Pfn> = [va, va + PMD_SIZE]
        .iter()
        .map(|&v| {
            let (level, entry) = leaf(&mm, v);
            assert_eq!(level, Level::Pmd, "precondition: a DAX PMD");
            assert!(entry.is_write());
            entry.pfn()
        })
        .collect();
    let m = Mirror::new(&mm);
    let start = va + PMD_SIZE - 4 * PAGE;
    let expected: Vec<u64> = (0..8)
        .map(|i| {
            let (head, off) = if i < 4 { (heads[0], 508 + i) } else { (heads[1], i - 4) };
            VALID | WRITE | order(9) | (head.0 + off)
        })
        .collect();
    for req in REQUESTS {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 1024)]);
            let out = m.request_ok(start, 8, req, way);
            assert_words(&out, &expected, "fs-dax PMD");
            for &word in &out {
                assert_eq!(k.phys().memory_type(hmm_pfn_to_pfn(word)), MemoryType::FsDax);
            }
            assert_eq!(cpu_state(&k, &mm, &[(va, 1024)]), before, "no fault, no reference");
        }
    }
}

/// The seed patch's pagemap check (spec §7.2), which issue 4 asks for: a
/// walk that meets a pagemap being killed (unbind, before its unmap and
/// invalidation) backs off with EBUSY and writes nothing more; once the
/// unbind's invalidation removes the mapping, the driver's retry sees a
/// hole. (Linux ≥ 5.7 dropped the check and relies on the invalidation
/// alone; hmm keeps it so a dying device is never reported.)
#[test]
fn a_dying_dax_pagemap_makes_the_walk_back_off() {
    let k = kernel(64, ThpMode::Never);
    let (_path, fs, file) = dax_setup(&k);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(REGION, 2 * MIB, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
    mm.write_u64(va, 1).unwrap();
    let m = Mirror::new(&mm);
    fs.device().pagemap().kill();
    let seq = m.notifier.read_begin();
    let mut pfns = vec![0; 4];
    let result = m.with_seq(seq, va + 8 * PAGE, &mut pfns, 0, 0);
    assert_eq!(result.map_err(|e| e.errno()), Err(hmm_types::Errno::Busy));
    assert_eq!(pfns, [0; 4], "nothing reported from the dying device");
    fs.unbind().unwrap();
    let seq = m.notifier.read_begin();
    assert_eq!(m.with_seq(seq, va + 8 * PAGE, &mut pfns, 0, 0), Ok(()));
    assert_eq!(pfns, [0; 4], "after the unbind the range is a hole");
}

/// As a 7.3.4 guest shows (scenarios/device/dax_pmd_hole_huge_zero.hmm):
/// a read fault of a whole 2 MiB hole maps the huge zero page by a
/// read-only PMD (`dax_pmd_load_hole`), a write fault the block itself.
#[test]
fn fs_dax_hole_with_req_fault_is_the_huge_zero_pmd_or_the_written_block() {
    for req in [REQ_R, REQ_W] {
        let k = kernel(64, ThpMode::Never);
        let (_path, _fs, file) = dax_setup(&k);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_file(REGION, 4 * MIB, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va + PMD_SIZE + 3 * PAGE, 4, req, Way::Default);
        for (i, v) in vas(va + PMD_SIZE + 3 * PAGE, 4).enumerate() {
            assert_eq!(out[i], cpu_word(&mm, v));
            assert_eq!(out[i] & VALID, VALID);
            assert_eq!(hmm_pfn_to_map_order(out[i]), 9);
            let pfn = hmm_pfn_to_pfn(out[i]);
            if req == REQ_W {
                assert_eq!(out[i] & WRITE, WRITE);
                assert_eq!(k.phys().memory_type(pfn), MemoryType::FsDax);
            } else {
                assert_eq!(out[i] & WRITE, 0);
                assert!(k.phys().is_zero_pfn(pfn), "the huge zero page");
            }
        }
    }
}

#[test]
fn device_dax_pud_is_an_order_18_block() {
    let k = kernel(64, ThpMode::Never);
    let dev = DevDax::create(&k, 2 * PUD_SIZE, PageSize::Size1G, None).unwrap();
    let mm = k.create_mm().unwrap();
    let fixed = MapFlags::SHARED | MapFlags::FIXED;
    let va = mm.mmap_devdax(REGION, PUD_SIZE, Prot::RW, fixed, &dev, 0).unwrap();
    mm.write_u64(va + 12345 * 8, 99).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pud, "precondition: a PUD leaf");
    let m = Mirror::new(&mm);
    // The whole gigabyte in one snapshot.
    let npages = PUD_SIZE / PAGE;
    let before = cpu_state(&k, &mm, &[(va, 4)]);
    let out = m.snapshot(va, npages);
    assert_eq!(cpu_state(&k, &mm, &[(va, 4)]), before);
    let base = dev.base().0;
    for i in [0, 1, 511, 512, 4097, npages / 2, npages - 1] {
        assert_eq!(out[i as usize], VALID | WRITE | order(18) | (base + i), "slot {i}");
    }
    assert!(out.iter().enumerate().all(|(i, &w)| w == VALID | WRITE | order(18) | (base + i as u64)));
    assert_eq!(hmm_pfn_to_map_order(out[77]), 18);
    assert_eq!(k.phys().memory_type(hmm_pfn_to_pfn(out[77])), MemoryType::Generic);
    // A few slots from the middle, under every request.
    for req in REQUESTS {
        for way in WAYS {
            let start = va + 5 * PMD_SIZE + 3 * PAGE;
            let out = m.request_ok(start, 8, req, way);
            let expected: Vec<u64> = (0..8).map(|i| VALID | WRITE | order(18) | (base + 5 * 512 + 3 + i)).collect();
            assert_words(&out, &expected, "device-dax PUD");
        }
    }
    // The second gigabyte, untouched, faulted in by the request.
    let second = mm.mmap_devdax(REGION + PUD_SIZE, PUD_SIZE, Prot::RW, fixed, &dev, PUD_SIZE).unwrap();
    let out = m.request_ok(second + 7 * PMD_SIZE, 4, REQ_R, Way::PerEntry);
    let rights = cpu_word(&mm, second) & (VALID | WRITE);
    let expected: Vec<u64> = (0..4).map(|i| rights | order(18) | (base + PUD_SIZE / PAGE + 7 * 512 + i)).collect();
    assert_words(&out, &expected, "device-dax PUD faulted in");
    assert_eq!(leaf(&mm, second).0, Level::Pud);
}

#[test]
fn device_dax_pmd_is_an_order_9_block() {
    let k = kernel(64, ThpMode::Never);
    let dev = DevDax::create(&k, 8 * MIB, PageSize::Size2M, None).unwrap();
    let mm = k.create_mm().unwrap();
    let fixed = MapFlags::SHARED | MapFlags::FIXED;
    let va = mm.mmap_devdax(REGION, 4 * MIB, Prot::RW, fixed, &dev, 2 * MIB).unwrap();
    mm.write_u64(va, 1).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    let m = Mirror::new(&mm);
    let base = dev.base().0 + 512;
    for req in REQUESTS {
        // The first block present, the second faulted in on request.
        let n = if req == NO_REQ { 8 } else { 16 };
        let out = m.request_ok(va + PMD_SIZE - 8 * PAGE, n, req, Way::PerEntry);
        // A read fault maps the second block writable too: device-DAX has
        // no write notification, so the leaf takes the VMA's protection
        // (as a 7.3.4 guest shows, scenarios/device/dax_story.hmm).
        let expected: Vec<u64> = (0..n).map(|i| VALID | WRITE | order(9) | (base + 504 + i)).collect();
        assert_words(&out, &expected, "device-dax PMD");
    }
}

// ---------------------------------------------------------------------------
// hugetlb
// ---------------------------------------------------------------------------

fn hugetlb_kernel() -> Arc<Kernel> {
    let config =
        KernelConfig { ram_bytes: 64 * MIB, thp: ThpMode::Never, hugetlb_2m_pages: 4, ..KernelConfig::default() };
    Kernel::new(config).unwrap()
}

/// Two 2 MiB hugetlb pages at `REGION`: the first written (writable), the
/// second only read (read-only, as Linux maps a private hugetlb page on a
/// read fault).
fn hugetlb_setup() -> (Arc<Kernel>, Arc<Mm>, u64, [Pfn; 2]) {
    let k = hugetlb_kernel();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, 2 * PMD_SIZE, Prot::RW, FIXED | MapFlags::HUGETLB).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.read_u64(va + PMD_SIZE).unwrap();
    let (l0, e0) = leaf(&mm, va);
    let (l1, e1) = leaf(&mm, va + PMD_SIZE);
    assert_eq!((l0, l1), (Level::Pmd, Level::Pmd), "precondition: hugetlb PMDs");
    assert!(e0.is_write() && !e1.is_write(), "precondition: first writable, second read-only");
    (k, mm, va, [e0.pfn(), e1.pfn()])
}

#[test]
fn hugetlb_2m_page_is_an_order_9_block() {
    let (k, mm, va, heads) = hugetlb_setup();
    let m = Mirror::new(&mm);
    let start = va + PMD_SIZE - 3 * PAGE;
    let expected: Vec<u64> = (0..8)
        .map(|i| {
            if i < 3 {
                VALID | WRITE | order(9) | (heads[0].0 + 509 + i)
            } else {
                VALID | order(9) | (heads[1].0 + i - 3)
            }
        })
        .collect();
    for req in [NO_REQ, REQ_R] {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 1024)]);
            let out = m.request_ok(start, 8, req, way);
            assert_words(&out, &expected, "hugetlb");
            assert_eq!(cpu_state(&k, &mm, &[(va, 1024)]), before);
        }
    }
}

/// §2.5 hugetlb quirk: only the request of the first entry of the walk in
/// each huge page is consulted.
#[test]
fn hugetlb_consults_only_the_first_entrys_request() {
    let (_k, mm, va, heads) = hugetlb_setup();
    let m = Mirror::new(&mm);
    let start = va + PMD_SIZE + 2 * PAGE;
    // A write request on the fourth entry only: ignored, the call succeeds
    // with the read-only block although entry 3 asked for WRITE.
    let mut pfns = vec![0; 8];
    pfns[3] = REQ_W;
    m.fault(start, &mut pfns, 0, REQ_BITS).unwrap();
    let expected: Vec<u64> = (0..8).map(|i| VALID | order(9) | (heads[1].0 + 2 + i)).collect();
    assert_words(&pfns, &expected, "later request ignored");
    assert!(!leaf(&mm, start).1.is_write(), "no fault happened");
    // The same request on the first entry write-faults the whole block.
    let mut pfns = vec![0; 8];
    pfns[0] = REQ_W;
    m.fault(start, &mut pfns, 0, REQ_BITS).unwrap();
    let (_, entry) = leaf(&mm, start);
    assert!(entry.is_write(), "the huge page is writable now");
    let expected: Vec<u64> = (0..8).map(|i| VALID | WRITE | order(9) | (entry.pfn().0 + 2 + i)).collect();
    assert_words(&pfns, &expected, "first request write-faults the huge page");
}

#[test]
fn hugetlb_hole_with_req_fault_is_faulted_in() {
    for req in [REQ_R, REQ_W] {
        let k = hugetlb_kernel();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED | MapFlags::HUGETLB).unwrap();
        let m = Mirror::new(&mm);
        let out = m.request_ok(va + 9 * PAGE, 4, req, Way::PerEntry);
        let (level, entry) = leaf(&mm, va);
        assert_eq!(level, Level::Pmd);
        let w = if entry.is_write() { WRITE } else { 0 };
        if req == REQ_W {
            assert_eq!(w, WRITE);
        }
        let expected: Vec<u64> = (0..4).map(|i| VALID | w | order(9) | (entry.pfn().0 + 9 + i)).collect();
        assert_words(&out, &expected, "hugetlb hole faulted");
    }
}

// ---------------------------------------------------------------------------
// Non-present entries: swap and migration
// ---------------------------------------------------------------------------

fn swapped_out_pages() -> (Arc<Kernel>, Arc<Mm>, u64) {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, 4 * PAGE, Prot::RW, FIXED).unwrap();
    for (i, v) in vas(va, 4).enumerate() {
        mm.write_u64(v + 8, 0x500 + i as u64).unwrap();
    }
    mm.madvise(va, 4 * PAGE, MadviseAdvice::PageOut).unwrap();
    for v in vas(va, 4) {
        assert_eq!(leaf(&mm, v).1.swap_kind(), Some(SwapKind::Swap), "precondition: swapped out");
    }
    (k, mm, va)
}

#[test]
fn swap_entry_without_request_is_zero_and_stays_swapped() {
    let (k, mm, va) = swapped_out_pages();
    let m = Mirror::new(&mm);
    for way in WAYS {
        let before = cpu_state(&k, &mm, &[(va, 4)]);
        let out = m.request_ok(va, 4, NO_REQ, way);
        assert_words(&out, &[0; 4], "swap entry");
        assert_eq!(cpu_state(&k, &mm, &[(va, 4)]), before);
        assert_eq!(k.swap().swapped_in(), 0);
    }
}

#[test]
fn swap_entry_with_req_fault_is_swapped_in() {
    for req in [REQ_R, REQ_W] {
        for way in WAYS {
            let (k, mm, va) = swapped_out_pages();
            let m = Mirror::new(&mm);
            let out = m.request_ok(va, 4, req, way);
            assert_eq!(k.swap().swapped_in(), 4);
            for (i, v) in vas(va, 4).enumerate() {
                assert_eq!(out[i], cpu_word(&mm, v), "entry {i}");
                assert_eq!(out[i] & VALID, VALID);
                if req == REQ_W {
                    assert_eq!(out[i] & WRITE, WRITE);
                }
                assert_eq!(mm.read_u64(v + 8).unwrap(), 0x500 + i as u64);
            }
        }
    }
}

/// A migration entry reads as 0 without a request; with REQ_FAULT the walk
/// sleeps until the migration finishes and reports the new frame (§2.5,
/// "unmap pte, wait for the migration, internal -EBUSY").
#[test]
fn migration_entry_is_zero_without_request_and_waited_for_with_one() {
    let (k, mm, va) = anon_4k(1);
    mm.write_u64(va, 0x77).unwrap();
    let m = Mirror::new(&mm);
    let pause = pause(&k);
    thread::scope(|s| {
        let migrator = s.spawn(|| mm.migrate_pages(va, PAGE));
        let point = pause.entered.recv_timeout(Duration::from_secs(10)).expect("migration started");
        assert!(leaf(&mm, va).1.swap_kind().is_some_and(SwapKind::is_migration), "precondition");
        let before = cpu_state(&k, &mm, &[(va, 1)]);
        for way in WAYS {
            let out = m.request_ok(va, 1, NO_REQ, way);
            assert_eq!(out, [0], "a migration entry without request");
        }
        assert_eq!(cpu_state(&k, &mm, &[(va, 1)]), before);
        let faulter = s.spawn(|| {
            let mut pfns = [0];
            let result = m.once(va, &mut pfns, REQ_R, 0);
            (result, pfns)
        });
        wait_until("range_fault to wait on the migration entry", || k.migration_waiters() >= 1);
        assert!(!faulter.is_finished(), "range_fault waits while the migration runs");
        pause.release.send(()).unwrap();
        let (result, pfns) = faulter.join().unwrap();
        assert_eq!(result, Ok(()), "no collision: migration restores entries without invalidating");
        assert_eq!(pfns, [VALID | WRITE | point.new.0], "the new frame");
        assert_eq!(migrator.join().unwrap().unwrap().moved, 1);
    });
    k.set_migration_hook(None);
    assert_eq!(mm.read_u64(va).unwrap(), 0x77);
}

#[test]
fn pmd_migration_entry_is_zero_without_request_and_waited_for_with_one() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, PMD_SIZE, Prot::RW, FIXED).unwrap();
    mm.write_u64(va + 8, 0x78).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    let m = Mirror::new(&mm);
    let pause = pause(&k);
    thread::scope(|s| {
        let migrator = s.spawn(|| mm.migrate_pages(va, PMD_SIZE));
        let point = pause.entered.recv_timeout(Duration::from_secs(10)).expect("migration started");
        let (level, entry) = leaf(&mm, va);
        assert!(level == Level::Pmd && entry.swap_kind().is_some_and(SwapKind::is_migration), "precondition");
        assert_eq!(m.snapshot(va + 10 * PAGE, 4), [0; 4]);
        let faulter = s.spawn(|| {
            let mut pfns = [0; 4];
            let result = m.once(va + 10 * PAGE, &mut pfns, REQ_R, 0);
            (result, pfns)
        });
        wait_until("range_fault to wait on the PMD migration entry", || k.migration_waiters() >= 1);
        assert!(!faulter.is_finished());
        pause.release.send(()).unwrap();
        let (result, pfns) = faulter.join().unwrap();
        assert_eq!(result, Ok(()));
        let expected: Vec<u64> = (0..4).map(|i| VALID | WRITE | order(9) | (point.new.0 + 10 + i)).collect();
        assert_words(&pfns, &expected, "the new THP");
        assert_eq!(migrator.join().unwrap().unwrap().moved, 512);
    });
    k.set_migration_hook(None);
}

// ---------------------------------------------------------------------------
// VMAs HMM refuses or reports as ERROR
// ---------------------------------------------------------------------------

#[test]
fn prot_none_vma_is_error_without_request_and_efault_with_one() {
    let (k, mm, va) = anon_4k(8);
    mm.write_u64(va + 5 * PAGE, 1).unwrap();
    mm.mprotect(va + 4 * PAGE, 4 * PAGE, Prot::NONE).unwrap();
    mm.mprotect(va, 4 * PAGE, Prot::NONE).unwrap();
    let m = Mirror::new(&mm);
    for start in [va, va + 4 * PAGE] {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 8)]);
            let out = m.request_ok(start, 4, NO_REQ, way);
            assert_words(&out, &[ERROR; 4], "PROT_NONE");
            for req in [REQ_R, REQ_W] {
                let (result, out) = m.request(start, 4, req, way);
                assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault), "PROT_NONE with {req:#x} (not EPERM)");
                let input = if way == Way::PerEntry { req } else { 0 };
                assert_words(&out, &[input; 4], "nothing written");
            }
            assert_eq!(cpu_state(&k, &mm, &[(va, 8)]), before);
        }
    }
}

#[test]
fn read_only_vma_with_req_write_is_eperm() {
    let (k, mm, va) = anon_4k(8);
    mm.mprotect(va, 8 * PAGE, Prot::READ).unwrap();
    let m = Mirror::new(&mm);
    let zero = k.phys().zero_pfn().0;
    for way in WAYS {
        // Empty entries (a PMD hole) and present read-only ones.
        let (result, out) = m.request(va, 4, REQ_W, way);
        assert_eq!(result, Err(HmmError::Perm));
        let input = if way == Way::PerEntry { REQ_W } else { 0 };
        assert_words(&out, &[input; 4], "nothing written");
        let out = m.request_ok(va, 4, REQ_R, way);
        assert_words(&out, &[VALID | zero; 4], "a read request succeeds");
        let (result, out) = m.request(va, 4, REQ_W, way);
        assert_eq!(result, Err(HmmError::Perm), "present read-only page in a read-only VMA");
        assert_words(&out, &[input; 4], "nothing written");
    }
    // A written page made read-only by mprotect.
    let (_k, mm, va) = anon_4k(2);
    mm.write_u64(va, 3).unwrap();
    mm.mprotect(va, 2 * PAGE, Prot::READ).unwrap();
    let m = Mirror::new(&mm);
    let (result, _) = m.request(va, 1, REQ_W, Way::Default);
    assert_eq!(result, Err(HmmError::Perm));
    assert_eq!(m.request_ok(va, 1, REQ_R, Way::Default), [cpu_word(&mm, va)]);
    assert_eq!(m.snapshot(va, 1)[0] & (VALID | WRITE), VALID);
}

/// §2.5 test_walk: a VMA without VM_READ is refused even if it is
/// writable (x86 lets the CPU read it; HMM does not).
#[test]
fn write_only_vma_is_error_without_request_and_efault_with_one() {
    let (_k, mm, va) = anon_4k(4);
    mm.mprotect(va, 4 * PAGE, Prot::WRITE).unwrap();
    mm.write_u64(va, 1).unwrap();
    let m = Mirror::new(&mm);
    for way in WAYS {
        assert_words(&m.request_ok(va, 4, NO_REQ, way), &[ERROR; 4], "PROT_WRITE only");
        for req in [REQ_R, REQ_W] {
            let (result, _) = m.request(va, 4, req, way);
            assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault), "PROT_WRITE only with {req:#x}");
        }
    }
}

/// §2.6/§2.7: a fault the handler cannot satisfy (SIGBUS past the end of
/// a file) is EFAULT; the failed segment started at the hole, so nothing
/// was written.
#[test]
fn sigbus_from_the_fault_handler_is_efault() {
    let k = kernel(64, ThpMode::Never);
    let file = k.tmpfs().create("short").unwrap();
    file.ftruncate(PAGE).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(REGION, 4 * PAGE, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
    let m = Mirror::new(&mm);
    assert_words(&m.snapshot(va, 4), &[0; 4], "not faulted yet");
    let input = sentinel(4);
    let mut pfns = input.clone();
    let result = m.once(va, &mut pfns, REQ_R, 0);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!(pfns, input);
    // Within the file it works.
    let out = m.request_ok(va, 1, REQ_W, Way::Default);
    assert_eq!(out, [cpu_word(&mm, va)]);
    assert_eq!(out[0] & (VALID | WRITE), VALID | WRITE);
}

/// Delta §1.4 (7.3 changed spec §2.6): the fault's result goes through
/// `vm_fault_to_errno`, so VM_FAULT_OOM is ENOMEM (it was EFAULT).
#[test]
fn out_of_memory_in_the_fault_handler_is_enomem() {
    let k = kernel(4, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let npages = 2 * k.phys().ram_frames();
    let va = mm.mmap(REGION, npages * PAGE, Prot::RW, FIXED).unwrap();
    let m = Mirror::new(&mm);
    let (result, _) = m.request(va, npages, REQ_W, Way::Default);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::NoMem));
}

#[test]
fn pfnmap_io_range_is_error_without_request_and_efault_with_one() {
    let k = kernel(64, ThpMode::Never);
    let bar =
        k.phys().add_device_region(Arc::new(Pagemap::new(MemoryType::PciP2pDma, Some(Owner(1)))), 16, None).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_pfn_range(4 * PAGE, Prot::RW, bar).unwrap();
    assert!(leaf(&mm, va).1.is_present(), "precondition: installed at mmap");
    let m = Mirror::new(&mm);
    for way in WAYS {
        let before = cpu_state(&k, &mm, &[(va, 4)]);
        let out = m.request_ok(va, 4, NO_REQ, way);
        assert_words(&out, &[ERROR; 4], "VM_PFNMAP");
        for req in [REQ_R, REQ_W] {
            let (result, _) = m.request(va, 4, req, way);
            assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault), "VM_PFNMAP with {req:#x}");
        }
        assert_eq!(cpu_state(&k, &mm, &[(va, 4)]), before);
    }
}

#[test]
fn mixedmap_pages_are_reported_valid() {
    let k = kernel(64, ThpMode::Never);
    let pages: Vec<Pfn> = (0..3).map(|_| k.phys().alloc_folio(0, true).unwrap()).collect();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_pages(Prot::RW, MapFlags::SHARED, &pages).unwrap();
    let ro = mm.mmap_pages(Prot::READ, MapFlags::SHARED, &pages).unwrap();
    let m = Mirror::new(&mm);
    let expected: Vec<u64> = pages.iter().map(|p| VALID | WRITE | p.0).collect();
    let expected_ro: Vec<u64> = pages.iter().map(|p| VALID | p.0).collect();
    for req in REQUESTS {
        for way in WAYS {
            let before = cpu_state(&k, &mm, &[(va, 3), (ro, 3)]);
            assert_words(&m.request_ok(va, 3, req, way), &expected, "VM_MIXEDMAP");
            if req != REQ_W {
                assert_words(&m.request_ok(ro, 3, req, way), &expected_ro, "read-only VM_MIXEDMAP");
            } else {
                assert_eq!(m.request(ro, 3, req, way).0, Err(HmmError::Perm));
            }
            assert_eq!(cpu_state(&k, &mm, &[(va, 3), (ro, 3)]), before);
        }
    }
}

#[test]
fn hole_without_vma_is_error_without_request_and_efault_with_one() {
    let (_k, mm, va) = anon_4k(4);
    mm.mmap(va + 8 * PAGE, 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(va, 4).chain(vas(va + 8 * PAGE, 4)) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::new(&mm);
    for way in WAYS {
        let out = m.request_ok(va, 12, NO_REQ, way);
        let expected: Vec<u64> =
            (0..12).map(|i| if (4..8).contains(&i) { ERROR } else { cpu_word(&mm, va + i * PAGE) }).collect();
        assert_words(&out, &expected, "hole");
        // Entirely inside the hole.
        assert_words(&m.request_ok(va + 5 * PAGE, 2, NO_REQ, way), &[ERROR; 2], "inside the hole");
        for req in [REQ_R, REQ_W] {
            let (result, _) = m.request(va + 5 * PAGE, 2, req, way);
            assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault), "hole with {req:#x}");
        }
    }
    // Below the first VMA and above the last one too.
    let out = m.snapshot(va - 2 * PAGE, 3);
    assert_eq!(out, [ERROR, ERROR, cpu_word(&mm, va)]);
}

// ---------------------------------------------------------------------------
// Requests and sticky bits
// ---------------------------------------------------------------------------

/// One address space with every kind of entry, for the sticky-bit and the
/// no-reference tests.
struct Zoo {
    k: Arc<Kernel>,
    mm: Arc<Mm>,
    _dax: (TempFile, DaxFs, hmm_mm::fs::File),
    _dev: Arc<DevDax>,
    child: Arc<Mm>,
    /// `(name, first va, pages, expected snapshot words)`.
    kinds: Vec<(&'static str, u64, u64, Vec<u64>)>,
}

impl Drop for Zoo {
    fn drop(&mut self) {
        self.child.exit();
    }
}

fn zoo() -> Zoo {
    let config = KernelConfig {
        ram_bytes: 64 * MIB,
        thp: ThpMode::Always,
        hugetlb_2m_pages: 2,
        swap_pages: 64,
        ..KernelConfig::default()
    };
    let k = Kernel::new(config).unwrap();
    let mm = k.create_mm().unwrap();
    let phys = k.phys().clone();
    let at = |n: u64| REGION + n * PMD_SIZE;
    let mut kinds = Vec::new();

    // Present read-only pages, COW-shared with a child. The fork comes
    // first: it write-protects every private page there is.
    let cow = mm.mmap(at(22), 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(cow, 4) {
        mm.write_u64(v, v).unwrap();
    }
    let child = mm.fork().unwrap();
    // Present writable 4K pages.
    let rw = mm.mmap(at(0), 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(rw, 4) {
        mm.write_u64(v, v).unwrap();
    }
    // Zero pages.
    let zero = mm.mmap(at(2), 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(zero, 4) {
        mm.read_u64(v).unwrap();
    }
    // Empty PTEs in a table (page 7 populated) and a bare PMD hole.
    let none = mm.mmap(at(4), 8 * PAGE, Prot::RW, FIXED).unwrap();
    mm.write_u64(none + 7 * PAGE, 1).unwrap();
    let bare = mm.mmap(at(5), 4 * PAGE, Prot::RW, FIXED).unwrap();
    // The huge zero page and a THP.
    let hz = mm.mmap(at(6), PMD_SIZE, Prot::RW, FIXED).unwrap();
    mm.read_u64(hz).unwrap();
    let thp = mm.mmap(at(8), PMD_SIZE, Prot::RW, FIXED).unwrap();
    mm.write_u64(thp, 1).unwrap();
    // Swapped-out pages.
    let swap = mm.mmap(at(10), 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(swap, 4) {
        mm.write_u64(v, v).unwrap();
    }
    mm.madvise(swap, 4 * PAGE, MadviseAdvice::PageOut).unwrap();
    // PROT_NONE, with a page populated before the mprotect.
    let none_vma = mm.mmap(at(12), 4 * PAGE, Prot::RW, FIXED).unwrap();
    mm.write_u64(none_vma, 1).unwrap();
    mm.mprotect(none_vma, 4 * PAGE, Prot::NONE).unwrap();
    // hugetlb.
    let huge = mm.mmap(at(14), PMD_SIZE, Prot::RW, FIXED | MapFlags::HUGETLB).unwrap();
    mm.write_u64(huge, 1).unwrap();
    // A read-only VMA with a read-only page.
    let ro = mm.mmap(at(16), 4 * PAGE, Prot::RW, FIXED).unwrap();
    mm.write_u64(ro, 1).unwrap();
    mm.mprotect(ro, 4 * PAGE, Prot::READ).unwrap();
    mm.read_u64(ro + PAGE).unwrap();
    // fs-dax.
    let (path, fs, file) = dax_setup(&k);
    let dax = mm.mmap_file(at(18), PMD_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
    mm.write_u64(dax, 1).unwrap();
    // Device-dax, 1 GiB.
    let dev = DevDax::create(&k, PUD_SIZE, PageSize::Size1G, None).unwrap();
    let devdax =
        mm.mmap_devdax(REGION + PUD_SIZE, PUD_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &dev, 0).unwrap();
    mm.write_u64(devdax, 1).unwrap();
    // PFNMAP and MIXEDMAP.
    let bar = phys.add_device_region(Arc::new(Pagemap::new(MemoryType::PciP2pDma, Some(Owner(1)))), 4, None).unwrap();
    let pfnmap = mm.mmap_pfn_range(4 * PAGE, Prot::RW, bar).unwrap();
    let pages: Vec<Pfn> = (0..4).map(|_| phys.alloc_folio(0, true).unwrap()).collect();
    let mixed = mm.mmap_pages(Prot::RW, MapFlags::SHARED, &pages).unwrap();

    let pfn_at = |va: u64| leaf(&mm, va).1.pfn().0;
    kinds.push(("present rw", rw, 4, vas(rw, 4).map(|v| VALID | WRITE | pfn_at(v)).collect()));
    kinds.push(("present ro (cow)", cow, 4, vas(cow, 4).map(|v| VALID | pfn_at(v)).collect()));
    kinds.push(("zero page", zero, 4, vec![VALID | phys.zero_pfn().0; 4]));
    kinds.push(("pte_none", none, 7, vec![0; 7]));
    kinds.push(("pmd hole", bare, 4, vec![0; 4]));
    let hzp = phys.huge_zero_pfn().0;
    kinds.push(("huge zero", hz + 100 * PAGE, 8, (0..8).map(|i| VALID | order(9) | (hzp + 100 + i)).collect()));
    let head = pfn_at(thp);
    kinds.push(("thp", thp + 100 * PAGE, 8, (0..8).map(|i| VALID | WRITE | order(9) | (head + 100 + i)).collect()));
    kinds.push(("swap", swap, 4, vec![0; 4]));
    kinds.push(("prot_none", none_vma, 4, vec![ERROR; 4]));
    let head = pfn_at(huge);
    kinds.push(("hugetlb", huge + 7 * PAGE, 8, (0..8).map(|i| VALID | WRITE | order(9) | (head + 7 + i)).collect()));
    kinds.push(("read-only vma", ro, 2, vec![VALID | pfn_at(ro), VALID | phys.zero_pfn().0]));
    let head = pfn_at(dax);
    kinds.push(("fs-dax", dax + 3 * PAGE, 8, (0..8).map(|i| VALID | WRITE | order(9) | (head + 3 + i)).collect()));
    let base = dev.base().0;
    let off = 5 * 512 + 3;
    kinds.push((
        "device-dax",
        devdax + off * PAGE,
        8,
        (0..8).map(|i| VALID | WRITE | order(18) | (base + off + i)).collect(),
    ));
    kinds.push(("pfnmap", pfnmap, 4, vec![ERROR; 4]));
    kinds.push(("mixedmap", mixed, 4, pages.iter().map(|p| VALID | WRITE | p.0).collect()));
    kinds.push(("no vma", at(20), 4, vec![ERROR; 4]));
    // Preconditions of the interesting kinds.
    assert!(vas(swap, 4).all(|v| leaf(&mm, v).1.swap_kind() == Some(SwapKind::Swap)));
    assert!(vas(cow, 4).all(|v| !leaf(&mm, v).1.is_write()));
    assert_eq!(leaf(&mm, ro + PAGE).1.pfn(), phys.zero_pfn(), "a read of the RO VMA maps the zero page");
    Zoo { k, mm, _dax: (path, fs, file), _dev: dev, child, kinds }
}

/// Sticky-bit patterns and junk that is not a request (ERROR, order and
/// pfn bits), cycled over the entries.
const STICKY: [u64; 8] = [
    0,
    HMM_PFN_DMA_MAPPED,
    HMM_PFN_P2PDMA,
    HMM_PFN_P2PDMA_BUS,
    HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA,
    HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA_BUS,
    HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS,
    HMM_PFN_INOUT_FLAGS,
];
const JUNK: [u64; 4] = [0, HMM_PFN_ERROR, order(9) | 0x1234, HMM_PFN_ERROR | order(31) | 0x1f_ffff_ffff_ffff];

fn sticky_input(i: usize, req: u64) -> u64 {
    STICKY[i % STICKY.len()] | JUNK[(i / 3) % JUNK.len()] | req
}

#[test]
fn sticky_bits_are_preserved_in_every_output_kind() {
    let z = zoo();
    let m = Mirror::new(&z.mm);
    for (name, va, npages, expected) in &z.kinds {
        // Snapshot: requests in the input are ignored (mask 0).
        let input: Vec<u64> = (0..*npages as usize).map(|i| sticky_input(i, REQ_W)).collect();
        let mut pfns = input.clone();
        m.once(*va, &mut pfns, 0, 0).unwrap();
        for i in 0..pfns.len() {
            assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | expected[i], "{name}, entry {i} (snapshot)");
        }
        // With a read request where it can be satisfied without changing
        // anything (the kinds that are already VALID).
        if expected.iter().all(|&w| w & VALID != 0) {
            let input: Vec<u64> = (0..*npages as usize).map(|i| sticky_input(i + 1, REQ_R)).collect();
            let mut pfns = input.clone();
            m.fault(*va, &mut pfns, 0, REQ_BITS).unwrap();
            for i in 0..pfns.len() {
                assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | expected[i], "{name}, entry {i} (REQ_FAULT)");
            }
        }
    }
}

#[test]
fn sticky_bits_are_preserved_by_outputs_written_after_faults() {
    let (k, mm, va) = anon_4k(16);
    mm.write_u64(va + 11 * PAGE, 1).unwrap(); // a PTE table: per-entry faults
    mm.mprotect(va + 12 * PAGE, 4 * PAGE, Prot::NONE).unwrap();
    let m = Mirror::new(&mm);
    // 0..4 read-faulted, 4..8 write-faulted, 8..12 not requested (but
    // over-faulted), 12..16 PROT_NONE not requested.
    let input: Vec<u64> = (0..16)
        .map(|i| {
            let req = match i {
                0..4 => REQ_R,
                4..8 => REQ_W,
                _ => 0,
            };
            sticky_input(i, req)
        })
        .collect();
    let mut pfns = input.clone();
    m.fault(va, &mut pfns, 0, REQ_BITS).unwrap();
    let zero = k.phys().zero_pfn().0;
    for i in 0..16 {
        let body = match i {
            0..12 => cpu_word(&mm, va + i as u64 * PAGE),
            _ => ERROR,
        };
        assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | body, "entry {i}");
    }
    assert_eq!(pfns[0] & !HMM_PFN_INOUT_FLAGS, VALID | zero);
}

#[test]
fn input_bits_outside_the_mask_are_ignored() {
    let (k, mm, va) = anon_4k(4);
    let m = Mirror::new(&mm);
    // Mask 0: requests in the input do nothing.
    let free = k.phys().free_frames();
    let mut pfns = [REQ_W | HMM_PFN_ERROR | 0x99; 4];
    m.once(va, &mut pfns, 0, 0).unwrap();
    assert_eq!(pfns, [0; 4], "no fault; junk overwritten");
    assert_eq!(k.phys().free_frames(), free);
    assert!(leaf(&mm, va).1.is_none());
    // Mask REQ_FAULT: REQ_WRITE in the input is ignored, a read fault only.
    let mut pfns = [REQ_W; 4];
    m.fault(va, &mut pfns, 0, HMM_PFN_REQ_FAULT).unwrap();
    assert_eq!(pfns, [VALID | k.phys().zero_pfn().0; 4], "read-faulted only");
    // Mask REQ_WRITE without REQ_FAULT anywhere: a write bit alone is no
    // request (§2.3 step 2).
    let mut pfns = [REQ_W; 4];
    m.once(va, &mut pfns, 0, HMM_PFN_REQ_WRITE).unwrap();
    assert_eq!(pfns, [VALID | k.phys().zero_pfn().0; 4], "no write fault");
    let mut pfns = [0; 4];
    m.once(va, &mut pfns, HMM_PFN_REQ_WRITE, 0).unwrap();
    assert_eq!(pfns, [VALID | k.phys().zero_pfn().0; 4], "REQ_WRITE alone in default_flags: no fault");
    // Mask REQ_WRITE with default REQ_FAULT (the documented idiom): the
    // write is requested for entry 2 only (and over-faults entry 3, §2.6).
    let mut pfns = [HMM_PFN_REQ_FAULT, 0, HMM_PFN_REQ_WRITE, 0];
    m.fault(va, &mut pfns, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE).unwrap();
    let zero = VALID | k.phys().zero_pfn().0;
    assert_eq!(pfns[..2], [zero, zero]);
    assert_eq!(pfns[2] & (VALID | WRITE), VALID | WRITE);
    assert_eq!(pfns[2], cpu_word(&mm, va + 2 * PAGE));
    assert_eq!(pfns[3], cpu_word(&mm, va + 3 * PAGE));
}

// ---------------------------------------------------------------------------
// Over-faulting
// ---------------------------------------------------------------------------

/// §2.6: the first entry needing a fault decides the flags for the rest of
/// its PMD segment; the following entries are write-faulted although they
/// requested nothing, up to the end of the segment and no further.
#[test]
fn a_write_request_write_faults_the_rest_of_its_pmd_segment() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, 2 * PMD_SIZE, Prot::RW, FIXED).unwrap();
    // 16 zero pages across a PMD boundary.
    let start = va + PMD_SIZE - 8 * PAGE;
    for v in vas(start, 16) {
        mm.read_u64(v).unwrap();
    }
    let zero = VALID | k.phys().zero_pfn().0;
    let m = Mirror::new(&mm);
    let mut pfns = [0; 16];
    pfns[2] = REQ_W;
    m.fault(start, &mut pfns, 0, REQ_BITS).unwrap();
    for (i, (&word, v)) in pfns.iter().zip(vas(start, 16)).enumerate() {
        match i {
            0..2 => assert_eq!(word, zero, "entry {i}: before the request"),
            2..8 => {
                assert_eq!(word, cpu_word(&mm, v), "entry {i}");
                assert_eq!(word & (VALID | WRITE), VALID | WRITE, "entry {i}: over-faulted for write");
            }
            _ => assert_eq!(word, zero, "entry {i}: next PMD segment untouched"),
        }
    }
}

/// §2.5 empty levels: a hole is faulted whole, with the union of the
/// requests over it, including the entries before the requesting one.
#[test]
fn an_empty_table_is_faulted_whole_with_the_union_of_the_requests() {
    let (_k, mm, va) = anon_4k(8);
    let m = Mirror::new(&mm);
    let mut pfns = [0; 8];
    pfns[5] = REQ_W;
    m.fault(va, &mut pfns, 0, REQ_BITS).unwrap();
    for (i, v) in vas(va, 8).enumerate() {
        assert_eq!(pfns[i], cpu_word(&mm, v), "entry {i}");
        assert_eq!(pfns[i] & (VALID | WRITE), VALID | WRITE, "entry {i}: the whole hole is write-faulted");
    }
}

/// The same across a PMD boundary when no table exists below the root: one
/// hole, faulted whole by a request on its last entry.
#[test]
fn a_hole_above_the_pmd_level_is_faulted_whole_across_pmds() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(REGION, 2 * PMD_SIZE, Prot::RW, FIXED).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::P4d, "precondition: no table below the root");
    let m = Mirror::new(&mm);
    let start = va + PMD_SIZE - 4 * PAGE;
    let mut pfns = [0; 8];
    pfns[7] = REQ_W;
    m.fault(start, &mut pfns, 0, REQ_BITS).unwrap();
    for (i, v) in vas(start, 8).enumerate() {
        assert_eq!(pfns[i], cpu_word(&mm, v), "entry {i}");
        assert_eq!(pfns[i] & (VALID | WRITE), VALID | WRITE, "entry {i}: write-faulted with the hole");
    }
}

/// With a PTE table present, empty PTEs before the first requesting entry
/// stay empty, and those after it are read-faulted with it.
#[test]
fn a_read_request_read_faults_the_rest_of_its_segment_but_not_what_precedes_it() {
    let (k, mm, va) = anon_4k(8);
    mm.write_u64(va + 7 * PAGE, 1).unwrap();
    let m = Mirror::new(&mm);
    let mut pfns = [0, REQ_R, 0, REQ_W, 0, 0, 0, 0];
    m.fault(va, &mut pfns, 0, REQ_BITS).unwrap();
    let zero = VALID | k.phys().zero_pfn().0;
    assert_eq!(pfns[0], 0, "before the first request: still pte_none");
    assert!(leaf(&mm, va).1.is_none());
    assert_eq!(pfns[1..3], [zero, zero], "read-faulted (entry 2 over-faulted)");
    for (i, v) in vas(va, 8).enumerate().skip(3) {
        assert_eq!(pfns[i], cpu_word(&mm, v), "entry {i}");
        assert_eq!(pfns[i] & (VALID | WRITE), VALID | WRITE, "entry {i}");
    }
}

// ---------------------------------------------------------------------------
// Partial results (§2.4 invariant)
// ---------------------------------------------------------------------------

fn sentinel(n: usize) -> Vec<u64> {
    (0..n).map(|i| sticky_input(i, 0) | (0xdead_0000 + i as u64)).collect()
}

#[test]
fn after_efault_in_a_hole_the_prefix_is_output_and_the_suffix_is_input() {
    let (_k, mm, va) = anon_4k(4);
    mm.mmap(va + 8 * PAGE, 4 * PAGE, Prot::RW, FIXED).unwrap();
    for v in vas(va, 4) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::new(&mm);
    let input = sentinel(12);
    let mut pfns = input.clone();
    let result = m.once(va, &mut pfns, HMM_PFN_REQ_FAULT, 0);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault));
    for i in 0..4 {
        assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | cpu_word(&mm, va + i as u64 * PAGE), "prefix {i}");
    }
    assert_eq!(pfns[4..], input[4..], "from the hole on, the input is untouched");
    assert!(leaf(&mm, va + 8 * PAGE).1.is_none(), "the VMA after the hole was not faulted");
}

#[test]
fn after_efault_in_a_prot_none_vma_the_prefix_is_output_and_the_suffix_is_input() {
    let (_k, mm, va) = anon_4k(12);
    mm.mprotect(va + 6 * PAGE, 2 * PAGE, Prot::NONE).unwrap();
    let m = Mirror::new(&mm);
    let input = sentinel(12);
    let mut pfns = input.clone();
    let result = m.fault(va, &mut pfns, HMM_PFN_REQ_FAULT, 0);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault));
    for i in 0..6 {
        assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | cpu_word(&mm, va + i as u64 * PAGE), "prefix {i}");
    }
    assert_eq!(pfns[6..], input[6..]);
}

#[test]
fn after_eperm_in_the_middle_the_prefix_is_output_and_the_suffix_is_input() {
    let (_k, mm, va) = anon_4k(8);
    for v in vas(va, 8) {
        mm.write_u64(v, 1).unwrap();
    }
    mm.mprotect(va + 5 * PAGE, 3 * PAGE, Prot::READ).unwrap();
    let m = Mirror::new(&mm);
    let input = sentinel(8);
    let mut pfns = input.clone();
    let result = m.once(va, &mut pfns, REQ_W, 0);
    assert_eq!(result, Err(HmmError::Perm));
    for i in 0..5 {
        assert_eq!(pfns[i], (input[i] & HMM_PFN_INOUT_FLAGS) | cpu_word(&mm, va + i as u64 * PAGE), "prefix {i}");
    }
    assert_eq!(pfns[5..], input[5..]);
}

// ---------------------------------------------------------------------------
// Snapshot mode takes no reference (§11.10)
// ---------------------------------------------------------------------------

#[test]
fn snapshot_takes_no_reference_and_faults_nothing_on_any_kind() {
    let z = zoo();
    let m = Mirror::new(&z.mm);
    let ranges: Vec<(u64, u64)> = z.kinds.iter().map(|&(_, va, n, _)| (va, n)).collect();
    let before = cpu_state(&z.k, &z.mm, &ranges);
    for (name, va, npages, expected) in &z.kinds {
        // The cheap path (no REQ_FAULT anywhere) and a masked but empty
        // request, and input requests hidden by the mask.
        for (default, mask, input) in [(0, 0, 0), (0, REQ_BITS, 0), (0, HMM_PFN_DMA_MAPPED, REQ_W)] {
            let mut pfns = vec![input; *npages as usize];
            m.once(*va, &mut pfns, default, mask).unwrap();
            assert_words(&pfns, expected, name);
        }
    }
    // One walk over everything, holes between the kinds included.
    let span = (PUD_SIZE + 4 * MIB) / PAGE;
    let end = REGION + span * PAGE;
    let out = m.snapshot(REGION, span);
    for (name, va, npages, expected) in &z.kinds {
        if (REGION..end).contains(va) {
            let first = ((va - REGION) / PAGE) as usize;
            assert_words(&out[first..first + *npages as usize], expected, name);
        }
    }
    let mapped: Vec<(u64, u64)> = z.mm.mmap_read().overlapping(REGION, end).map(|v| (v.start, v.end)).collect();
    let mut gaps = 0;
    for (i, &word) in out.iter().enumerate() {
        let va = REGION + i as u64 * PAGE;
        if !mapped.iter().any(|&(s, e)| (s..e).contains(&va)) {
            assert_eq!(word, ERROR, "no VMA at {va:#x}");
            gaps += 1;
        }
    }
    assert!(gaps > 0);
    assert_eq!(cpu_state(&z.k, &z.mm, &ranges), before, "no entry, count or allocation changed");
}

// ---------------------------------------------------------------------------
// Return values
// ---------------------------------------------------------------------------

#[test]
fn malformed_ranges_are_einval_and_leave_the_array_alone() {
    let (_k, mm, va) = anon_4k(8);
    let m = Mirror::new(&mm);
    let seq = m.notifier.read_begin();
    let guard = mm.mmap_read();
    let call = |start: u64, end: u64, pfns: &mut [u64], default_flags: u64, notifier: &IntervalNotifier| {
        let mut range = Range {
            notifier,
            notifier_seq: seq,
            start,
            end,
            hmm_pfns: pfns,
            default_flags,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        range_fault(&guard, &mut range)
    };
    let einval = |r: Result<(), HmmError>| matches!(r, Err(HmmError::Invalid(_)));
    let junk = 0xabcd_u64;
    let mut pfns = vec![junk; 4];
    let n = &m.notifier;
    assert!(einval(call(va, va, &mut [], 0, n)), "start == end");
    assert!(einval(call(va + 4 * PAGE, va, &mut pfns, 0, n)), "start > end");
    assert!(einval(call(va + 1, va + 4 * PAGE + 1, &mut pfns, 0, n)), "unaligned start");
    assert!(einval(call(va, va + 4 * PAGE - 8, &mut pfns, 0, n)), "unaligned end");
    assert!(einval(call(va, va + 3 * PAGE, &mut pfns, 0, n)), "array too long");
    assert!(einval(call(va, va + 5 * PAGE, &mut pfns, 0, n)), "array too short");
    for bad in [HMM_PFN_DMA_MAPPED, HMM_PFN_ERROR, HMM_PFN_P2PDMA, order(9), 1] {
        assert!(einval(call(va, va + 4 * PAGE, &mut pfns, REQ_R | bad, n)), "default_flags {bad:#x}");
    }
    assert_eq!(pfns, [junk; 4], "nothing written");
    // A notifier of another address space.
    let other = mm.kernel().create_mm().unwrap();
    let foreign = Mirror::new(&other);
    assert!(einval(call(va, va + 4 * PAGE, &mut pfns, 0, &foreign.notifier)), "notifier of another mm");
    assert_eq!(pfns, [junk; 4], "nothing written");
    drop(guard);
    // The same range, well formed, works.
    m.once(va, &mut pfns, 0, 0).unwrap();
    assert_eq!(pfns, [0; 4]);
}

#[test]
fn an_overlapping_invalidation_after_read_begin_is_ebusy() {
    let (_k, mm, va) = anon_4k(16);
    for v in vas(va, 16) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::over(&mm, va, 8 * PAGE);
    let seq = m.notifier.read_begin();
    mm.munmap(va + 2 * PAGE, PAGE).unwrap();
    let input = sentinel(8);
    let mut pfns = input.clone();
    assert_eq!(m.with_seq(seq, va, &mut pfns, 0, 0), Err(HmmError::Busy));
    assert_eq!(pfns, input, "nothing written before the collision check");
    // Also with a request, and for a range that is only part of the
    // interval: the sequence belongs to the interval.
    assert_eq!(m.with_seq(seq, va + 4 * PAGE, &mut pfns[..4], REQ_R, 0), Err(HmmError::Busy));
    assert_eq!(pfns, input);
    // A fresh sequence sees the hole.
    m.once(va, &mut pfns, 0, 0).unwrap();
    assert_eq!(pfns[2] & !HMM_PFN_INOUT_FLAGS, ERROR);
}

#[test]
fn a_non_overlapping_invalidation_is_not_ebusy() {
    let (_k, mm, va) = anon_4k(16);
    for v in vas(va, 16) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::over(&mm, va, 8 * PAGE);
    let seq = m.notifier.read_begin();
    mm.munmap(va + 10 * PAGE, PAGE).unwrap();
    mm.mprotect(va + 12 * PAGE, PAGE, Prot::READ).unwrap();
    assert_eq!(m.driver.invalidations.load(SeqCst), 0, "the callback was not called");
    let mut pfns = vec![0; 8];
    m.with_seq(seq, va, &mut pfns, REQ_R, 0).unwrap();
    let expected: Vec<u64> = vas(va, 8).map(|v| cpu_word(&mm, v)).collect();
    assert_eq!(pfns, expected);
}

#[test]
fn range_fault_loop_succeeds_after_a_collision() {
    let (_k, mm, va) = anon_4k(8);
    for v in vas(va, 8) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::new(&mm);
    let driver = m.driver.clone();
    let mut pfns = vec![0; 4];
    let mut range = Range {
        notifier: &m.notifier,
        notifier_seq: 0,
        start: va,
        end: va + 4 * PAGE,
        hmm_pfns: &mut pfns,
        default_flags: REQ_R,
        pfn_flags_mask: 0,
        dev_private_owner: None,
    };
    let mut commits = 0;
    let mut retried = 0;
    let done = range_fault_loop(&mm, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |range| {
        commits += 1;
        if commits == 1 {
            // An invalidation of the interval between the walk and the
            // commit: the commit must see it and ask for another round.
            mm.mprotect(va + 6 * PAGE, PAGE, Prot::READ).unwrap();
        }
        let _update = driver.update.lock();
        if range.notifier.read_retry(range.notifier_seq) {
            retried += 1;
            return None;
        }
        Some(range.hmm_pfns.to_vec())
    })
    .unwrap();
    assert_eq!((commits, retried), (2, 1));
    let expected: Vec<u64> = vas(va, 4).map(|v| cpu_word(&mm, v)).collect();
    assert_eq!(done, expected);
    assert_eq!(pfns, expected);
}

#[test]
fn range_fault_loop_on_an_exited_address_space_is_efault() {
    assert_eq!(HMM_RANGE_DEFAULT_TIMEOUT, Duration::from_millis(1000));
    let (_k, mm, va) = anon_4k(4);
    let m = Mirror::new(&mm);
    mm.exit();
    let (result, out) = m.request(va, 4, NO_REQ, Way::Default);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!(out, [0; 4]);
}

#[test]
fn range_fault_loop_gives_up_with_ebusy_while_invalidations_never_stop() {
    let (_k, mm, va) = anon_4k(8);
    for v in vas(va, 8) {
        mm.write_u64(v, 1).unwrap();
    }
    let m = Mirror::new(&mm);
    let driver = m.driver.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let budget = Duration::from_millis(50);
    thread::scope(|s| {
        let invalidator = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                let prot = if n % 2 == 0 { Prot::READ } else { Prot::RW };
                mm.mprotect(va + 6 * PAGE, PAGE, prot).unwrap();
                mm.write_u64(va + 7 * PAGE, n).unwrap();
                n += 1;
                thread::sleep(Duration::from_micros(200));
            }
        });
        let mut pfns = vec![0; 4];
        let mut range = Range {
            notifier: &m.notifier,
            notifier_seq: 0,
            start: va,
            end: va + 4 * PAGE,
            hmm_pfns: &mut pfns,
            default_flags: REQ_R,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        let started = Instant::now();
        let mut rounds = 0;
        let result = range_fault_loop(&mm, &mut range, budget, |range| {
            rounds += 1;
            // Every round collides: wait for the next invalidation.
            let seen = driver.invalidations.load(SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while driver.invalidations.load(SeqCst) == seen && Instant::now() < deadline {
                thread::yield_now();
            }
            let _update = driver.update.lock();
            (!range.notifier.read_retry(range.notifier_seq)).then_some(())
        });
        stop.store(true, SeqCst);
        invalidator.join().unwrap();
        assert_eq!(result, Err(HmmError::Busy));
        assert!(started.elapsed() >= budget, "gave up only after the budget");
        assert!(rounds >= 2, "it retried ({rounds} rounds)");
    });
}

// ---------------------------------------------------------------------------
// Property test (§11.1, §11.2, §11.3)
// ---------------------------------------------------------------------------

const PROP_PAGES: u64 = 1024;

#[derive(Clone, Debug)]
enum Op {
    Map { off: u64, len: u64, prot: u8 },
    Touch { off: u64, len: u64, write: bool },
    Protect { off: u64, len: u64, prot: u8 },
    Unmap { off: u64, len: u64 },
}

fn prot_of(p: u8) -> Prot {
    [Prot::NONE, Prot::READ, Prot::RW][p as usize % 3]
}

fn op() -> impl Strategy<Value = Op> {
    let span = (0..PROP_PAGES, 1..=600u64);
    prop_oneof![
        1 => (span.clone(), 0..3u8).prop_map(|((off, len), prot)| Op::Map { off, len, prot }),
        3 => (span.clone(), any::<bool>()).prop_map(|((off, len), write)| Op::Touch { off, len, write }),
        1 => (span.clone(), 0..3u8).prop_map(|((off, len), prot)| Op::Protect { off, len, prot }),
        1 => span.prop_map(|(off, len)| Op::Unmap { off, len }),
    ]
}

fn clip(off: u64, len: u64) -> (u64, u64) {
    (REGION + off * PAGE, len.min(PROP_PAGES - off) * PAGE)
}

fn apply(mm: &Mm, op: &Op) {
    match *op {
        Op::Map { off, len, prot } => {
            let (a, l) = clip(off, len);
            mm.mmap(a, l, prot_of(prot), FIXED).unwrap();
        }
        Op::Touch { off, len, write } => {
            let (a, l) = clip(off, len);
            // Touching a page at a time; protection faults are expected.
            for v in vas(a, l / PAGE) {
                let _ = if write { mm.write_u64(v, v) } else { mm.read_u64(v).map(|_| ()) };
            }
        }
        Op::Protect { off, len, prot } => {
            let (a, l) = clip(off, len);
            let _ = mm.mprotect(a, l, prot_of(prot)); // ENOMEM over holes is fine
        }
        Op::Unmap { off, len } => {
            let (a, l) = clip(off, len);
            mm.munmap(a, l).unwrap();
        }
    }
}

/// Why a requested entry cannot be satisfied, if it cannot.
fn impossible(mm: &Mm, va: u64, req: u64) -> Option<Errno> {
    if req & HMM_PFN_REQ_FAULT == 0 {
        return None;
    }
    let flags = mm.mmap_read().vma(va).map(|vma| vma.flags);
    match flags {
        None => Some(Errno::Fault),
        Some(f) if !f.contains(VmFlags::READ) => Some(Errno::Fault),
        Some(f) if req & HMM_PFN_REQ_WRITE != 0 && !f.contains(VmFlags::WRITE) => Some(Errno::Perm),
        Some(_) => None,
    }
}

const MASKS: [u64; 4] = [0, HMM_PFN_REQ_FAULT, REQ_BITS, u64::MAX];

/// No request `none_weight` times as often as each of REQ_FAULT and
/// REQ_FAULT|REQ_WRITE.
fn request(none_weight: u32) -> impl Strategy<Value = u64> {
    prop_oneof![none_weight => Just(NO_REQ), 1 => Just(REQ_R), 1 => Just(REQ_W)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_anonymous_address_spaces_give_complete_and_satisfying_outputs(
        thp in any::<bool>(),
        ops in prop::collection::vec(op(), 1..10),
        first in 0..PROP_PAGES,
        len in 1..=300u64,
        default in request(6),
        mask in prop::sample::select(MASKS.to_vec()),
        inputs in prop::collection::vec((request(4), 0..STICKY.len()), 300),
    ) {
        let k = kernel(64, if thp { ThpMode::Always } else { ThpMode::Never });
        let mm = k.create_mm().unwrap();
        mm.mmap(REGION, PROP_PAGES * PAGE, Prot::RW, FIXED).unwrap();
        for op in &ops {
            apply(&mm, op);
        }
        let n = len.min(PROP_PAGES - first) as usize;
        let start = REGION + first * PAGE;
        let input: Vec<u64> = inputs[..n].iter().map(|&(r, s)| r | STICKY[s]).collect();
        let requests: Vec<u64> = input.iter().map(|&w| ((w & mask) | default) & REQ_BITS).collect();
        let m = Mirror::new(&mm);
        let mut out = input.clone();
        let result = m.fault(start, &mut out, default, mask);

        let first_impossible = (0..n).find_map(|i| impossible(&mm, start + i as u64 * PAGE, requests[i]).map(|e| (i, e)));
        match (result, first_impossible) {
            (Ok(()), None) => {
                for i in 0..n {
                    let va = start + i as u64 * PAGE;
                    prop_assert_eq!(out[i] & HMM_PFN_INOUT_FLAGS, input[i] & HMM_PFN_INOUT_FLAGS, "sticky bits of {}", i);
                    let body = out[i] & !HMM_PFN_INOUT_FLAGS;
                    if requests[i] & HMM_PFN_REQ_FAULT != 0 {
                        prop_assert!(body & VALID != 0, "entry {} requested a fault: {:#x}", i, body);
                    }
                    if requests[i] & HMM_PFN_REQ_WRITE != 0 {
                        prop_assert!(body & WRITE != 0, "entry {} requested a write: {:#x}", i, body);
                    }
                    if body & VALID != 0 {
                        prop_assert!(body & ERROR == 0);
                        prop_assert!([0, 9, 18].contains(&hmm_pfn_to_map_order(body)));
                    } else {
                        prop_assert!(body == 0 || body == ERROR, "entry {}: {:#x}", i, body);
                    }
                    prop_assert_eq!(body, oracle(&mm, va), "entry {} at {:#x} matches the CPU", i, va);
                }
            }
            (Err(error), Some((f, errno))) => {
                prop_assert_eq!(error.errno(), errno, "the first impossible request (entry {}) decides the error", f);
                prop_assert_eq!(&out[f..], &input[f..], "from entry {} on, the input is untouched", f);
                for i in 0..f {
                    if out[i] != input[i] {
                        let va = start + i as u64 * PAGE;
                        prop_assert_eq!(out[i] & HMM_PFN_INOUT_FLAGS, input[i] & HMM_PFN_INOUT_FLAGS);
                        prop_assert_eq!(out[i] & !HMM_PFN_INOUT_FLAGS, oracle(&mm, va), "prefix entry {}", i);
                    }
                }
            }
            (result, expected) => {
                prop_assert!(false, "result {:?}, but the first impossible request is {:?}", result, expected);
            }
        }
    }
}

#[test]
fn shmem_thp_built_by_collapse_is_an_order_9_block_and_refaults_as_one() {
    // A PMD-mapped shmem THP (MADV_COLLAPSE of a memfd block) reports order
    // 9 for every page, as Linux's hmm_vma_handle_pmd does for any PMD
    // leaf; after PAGEOUT unmapped it, a faulting walk maps the PMD again.
    let k = kernel(64, ThpMode::Never);
    let file = k.tmpfs().create("shm").unwrap();
    file.ftruncate(PMD_SIZE).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(REGION, PMD_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0).unwrap();
    mm.write_u64(va + 3 * PAGE, 3).unwrap();
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    let (level, entry) = leaf(&mm, va);
    assert_eq!((level, k.phys().folio_order(entry.pfn())), (Level::Pmd, 9), "precondition: a shmem THP");
    let head = entry.pfn();
    let m = Mirror::new(&mm);
    let expected: Vec<u64> = (0..512).map(|i| VALID | WRITE | order(9) | (head.0 + i)).collect();
    assert_words(&m.snapshot(va, 512), &expected, "shmem THP");
    mm.madvise(va, PMD_SIZE, MadviseAdvice::PageOut).unwrap();
    assert!(leaf(&mm, va).1.is_none(), "precondition: unmapped, still cached");
    let out = m.request_ok(va + 100 * PAGE, 4, REQ_R, Way::Default);
    assert_words(&out, &expected[100..104], "refaulted shmem THP");
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
}
