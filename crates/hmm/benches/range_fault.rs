//! Benchmarks of the driver-facing side: `range_fault` snapshots of
//! populated mappings, and the cost of an invalidation as the number of
//! interval subscriptions grows. Each snapshot is measured next to a
//! baseline taken in the same run, a streaming read-plus-write of as many
//! u64 words as the snapshot has 4 KiB slots (read one array, write
//! another: the least a walk that reads one entry and writes one pfn word
//! per slot can do), so results read as ratios. The ratios are printed
//! after criterion's own report.
//!
//! `cargo bench -p hmm --bench range_fault` for the full run, `-- --quick`
//! for a short one. Targets: a snapshot of 4K leaves within 3x of the
//! baseline, of huge leaves (2M THP, 1G device-DAX) within 1.5x; the
//! invalidation cost growing logarithmically with the subscriptions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use hmm::pfn::{hmm_pfn_to_map_order, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm::{range_fault, IntervalNotifier, IntervalNotifierOps, Range, Subscriptions};
use hmm_mm::devdax::DevDax;
use hmm_mm::testing::leaf;
use hmm_mm::{Kernel, Mm, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{Event, MapFlags, MmId, NotifierRange, PageSize, Prot, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE};

#[path = "../../hmm-mm/benches/support/report.rs"]
mod report;

use report::{criterion_home, fmt_ns, median_ns};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const RAM: u64 = 128 << 20;
/// The 4K and THP snapshots cover 32 MiB: 8192 slots, 16 tables of PTEs
/// (64 KiB of entries, like the baseline's 64 KiB per array).
const SNAP_LEN: u64 = 32 << 20;
/// Where the invalidation benchmarks map their page.
const REGION: u64 = 0x1000_0000_0000;
/// Subscription counts of the invalidation benchmarks.
const SUBSCRIPTIONS: [usize; 4] = [0, 1, 1000, 10_000];

fn kernel(thp: ThpMode) -> Arc<Kernel> {
    hmm_mm::testing::kernel(RAM >> 20, thp)
}

/// A driver callback that does what every driver must and nothing else.
#[derive(Debug, Default)]
struct NoDevice {
    lock: parking_lot::Mutex<u64>,
}

impl IntervalNotifierOps for NoDevice {
    fn invalidate(&self, subscription: &IntervalNotifier, _: &NotifierRange, cur_seq: u64) -> bool {
        let mut calls = self.lock.lock();
        subscription.set_seq(cur_seq);
        *calls += 1;
        true
    }
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

/// A populated mapping, mirrored by one subscription, and its pfn array.
struct Snapshot {
    _kernel: Arc<Kernel>,
    _dev: Option<Arc<DevDax>>,
    mm: Arc<Mm>,
    notifier: Arc<IntervalNotifier>,
    va: u64,
    pfns: Vec<u64>,
}

impl Snapshot {
    fn new(kernel: Arc<Kernel>, dev: Option<Arc<DevDax>>, mm: Arc<Mm>, va: u64, len: u64, level: Level) -> Self {
        let (at, entry) = leaf(&mm, va);
        assert!(at == level && entry.is_write(), "populated writable {level:?} leaves expected, got {at:?}");
        let notifier = mm.interval_notifier_insert(va, len, Arc::new(NoDevice::default())).expect("subscribe");
        let mut snapshot =
            Self { _kernel: kernel, _dev: dev, mm, notifier, va, pfns: vec![0; (len >> PAGE_SHIFT) as usize] };
        snapshot.run();
        let order = level.shift() - PAGE_SHIFT;
        let expected = HMM_PFN_VALID | HMM_PFN_WRITE;
        assert!(
            snapshot.pfns.iter().all(|&w| w & expected == expected && hmm_pfn_to_map_order(w) == order),
            "every slot valid, writable, order {order}"
        );
        snapshot
    }

    fn slots(&self) -> u64 {
        self.pfns.len() as u64
    }

    /// One snapshot as a driver takes it: `read_begin`, the mmap read
    /// lock, the walk (no fault requested).
    fn run(&mut self) {
        let end = self.va + ((self.pfns.len() as u64) << PAGE_SHIFT);
        let mut range = Range {
            notifier: &self.notifier,
            notifier_seq: self.notifier.read_begin(),
            start: self.va,
            end,
            hmm_pfns: &mut self.pfns,
            default_flags: 0,
            pfn_flags_mask: 0,
            dev_private_owner: None,
        };
        let guard = self.mm.mmap_read();
        range_fault(&guard, &mut range).expect("snapshot");
        black_box(&self.pfns);
    }
}

fn anon_snapshot(thp: bool) -> Snapshot {
    let k = kernel(if thp { ThpMode::Always } else { ThpMode::Never });
    let mm = k.create_mm().expect("mm");
    let va = mm.mmap(REGION, SNAP_LEN, Prot::RW, ANON | MapFlags::FIXED | MapFlags::POPULATE).expect("mmap");
    let level = if thp { Level::Pmd } else { Level::Pte };
    Snapshot::new(k, None, mm, va, SNAP_LEN, level)
}

fn devdax_snapshot() -> Snapshot {
    let k = kernel(ThpMode::Never);
    let dev = DevDax::create(&k, PUD_SIZE, PageSize::Size1G, None).expect("a 1 GiB device-dax");
    let mm = k.create_mm().expect("mm");
    let va = mm.mmap_devdax(0, PUD_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::POPULATE, &dev, 0).expect("mmap");
    Snapshot::new(k, Some(dev), mm, va, PUD_SIZE, Level::Pud)
}

/// The baseline: read `src`, write `dst`, one u64 each per slot.
fn stream(src: &[u64], dst: &mut [u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s | HMM_PFN_VALID;
    }
    black_box(dst);
}

fn snapshot_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));

    type Case = (&'static str, fn() -> Snapshot);
    let cases: [Case; 3] =
        [("4k", || anon_snapshot(false)), ("thp_2m", || anon_snapshot(true)), ("devdax_1g", devdax_snapshot)];
    for (name, make) in cases {
        let mut snapshot = make();
        let slots = snapshot.slots();
        group.throughput(Throughput::Elements(slots));
        group.bench_function(BenchmarkId::new("range_fault", name), |b| b.iter(|| snapshot.run()));
        drop(snapshot);
        let src: Vec<u64> = (0..slots).map(|i| i * 3 + 1).collect();
        let mut dst = vec![0u64; slots as usize];
        group.bench_function(BenchmarkId::new("stream", name), |b| b.iter(|| stream(black_box(&src), &mut dst)));
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Invalidations
// ---------------------------------------------------------------------------

/// Subscribes `n` intervals of 64 KiB: the first covers the page the
/// benchmark changes, the others sit at disjoint places 1 MiB apart.
fn subscribe(mm: &Mm, n: usize) -> Vec<Arc<IntervalNotifier>> {
    let ops: Arc<dyn IntervalNotifierOps> = Arc::new(NoDevice::default());
    (0..n as u64)
        .map(|i| mm.interval_notifier_insert(REGION + i * (1 << 20), 64 << 10, ops.clone()).expect("subscribe"))
        .collect()
}

fn invalidation_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("invalidate");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in SUBSCRIPTIONS {
        let k = kernel(ThpMode::Never);
        let mm = k.create_mm().expect("mm");
        let va = mm.mmap(REGION, 16 * PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED | MapFlags::POPULATE).expect("mmap");
        let subscriptions = subscribe(&mm, n);
        // mprotect of one page there and back: two PROTECTION_VMA
        // invalidations (plus the VMA split and merge).
        group.bench_function(BenchmarkId::new("mprotect_pair", n), |b| {
            b.iter(|| {
                mm.mprotect(black_box(va), PAGE_SIZE, Prot::READ).expect("mprotect");
                mm.mprotect(black_box(va), PAGE_SIZE, Prot::RW).expect("mprotect");
            })
        });
        // munmap of one page (one UNMAP invalidation), then the remap and
        // the fault that make the next munmap do the same work.
        group.bench_function(BenchmarkId::new("munmap_remap", n), |b| {
            b.iter(|| {
                mm.munmap(black_box(va), PAGE_SIZE).expect("munmap");
                mm.mmap(va, PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED).expect("remap");
                mm.write_u64(va, 1).expect("fault");
            })
        });
        for s in &subscriptions {
            s.remove();
        }
        drop(mm);

        // The interval half alone: start and end on a registry with the
        // same intervals (the stabbing query, the callback, the sequence).
        let registry = Subscriptions::new(MmId(u64::MAX));
        let ops: Arc<dyn IntervalNotifierOps> = Arc::new(NoDevice::default());
        let subscriptions: Vec<_> = (0..n as u64)
            .map(|i| registry.insert(REGION + i * (1 << 20), 64 << 10, ops.clone()).expect("subscribe"))
            .collect();
        let range = NotifierRange::new(MmId(u64::MAX), REGION, REGION + PAGE_SIZE, Event::Clear);
        group.bench_function(BenchmarkId::new("start_end", n), |b| {
            b.iter(|| {
                let ticket = registry.invalidate_start(black_box(&range)).expect("blockable");
                registry.invalidate_end(ticket);
            })
        });
        for s in &subscriptions {
            s.remove();
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// The ratios
// ---------------------------------------------------------------------------

fn print_ratios(since: SystemTime) {
    let Some(home) = criterion_home() else {
        return;
    };
    let snapshots = [("4k", SNAP_LEN >> PAGE_SHIFT, "<= 3x"), ("thp_2m", SNAP_LEN >> PAGE_SHIFT, "<= 1.5x")];
    let snapshots = snapshots.into_iter().chain([("devdax_1g", PUD_SIZE >> PAGE_SHIFT, "<= 1.5x")]);
    let mut printed_header = false;
    for (name, slots, target) in snapshots {
        let (Some(t), Some(b)) = (
            median_ns(&home, &format!("snapshot/range_fault/{name}"), since),
            median_ns(&home, &format!("snapshot/stream/{name}"), since),
        ) else {
            continue;
        };
        if !printed_header {
            println!("\nsnapshots (medians of this run), per 4 KiB slot, against a streaming read+write:");
            println!("{:<12} {:>8} {:>12} {:>12} {:>7}  target", "leaves", "slots", "range_fault", "stream", "ratio");
            printed_header = true;
        }
        let slots = slots as f64;
        println!("{name:<12} {slots:>8} {:>9.3} ns {:>9.3} ns {:>6.2}x  {target}", t / slots, b / slots, t / b);
    }
    let mut printed_header = false;
    for op in ["mprotect_pair", "munmap_remap", "start_end"] {
        let times: Vec<Option<f64>> =
            SUBSCRIPTIONS.iter().map(|n| median_ns(&home, &format!("invalidate/{op}/{n}"), since)).collect();
        let Some(one) = times[1] else {
            continue;
        };
        if !printed_header {
            println!("\ninvalidations (medians of this run) by number of interval subscriptions, ratio to 1:");
            let columns: Vec<String> = SUBSCRIPTIONS.iter().map(|n| format!("{n:>18}")).collect();
            println!("{:<14} {}", "operation", columns.join(""));
            printed_header = true;
        }
        let cells: Vec<String> = times
            .iter()
            .map(|t| t.map_or(format!("{:>18}", "-"), |t| format!("{:>10} {:>5.2}x", fmt_ns(t), t / one)))
            .collect();
        println!("{op:<14} {}", cells.join(""));
    }
}

fn main() {
    // Keep the THP case honest: its leaves are 2 MiB.
    assert_eq!(SNAP_LEN % PMD_SIZE, 0);
    let start = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    snapshot_benches(&mut c);
    invalidation_benches(&mut c);
    c.final_summary();
    print_ratios(start);
}
