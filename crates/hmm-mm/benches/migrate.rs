//! Benchmarks of device migration: a populated 8 MiB anonymous range moved
//! to device-private memory (`MigrateVma` with `SELECT_SYSTEM`: setup →
//! the driver's copy → pages → finalize) and back from the driver side
//! (`SELECT_DEVICE_PRIVATE`, the eviction loop a driver runs, not one CPU
//! fault per page), next to a memcpy of the same 8 MiB measured in the same
//! run, so results read as a fraction of memcpy bandwidth. Target: at least
//! 50% of memcpy.
//!
//! Three shapes of the same bytes:
//! * `4k`: 2048 4K pages (THP disabled);
//! * `thp_split`: four PMD-mapped THPs migrated without `SELECT_COMPOUND`,
//!   so collection splits each into 512 pages first (the THPs are rebuilt,
//!   untimed, before every iteration);
//! * `thp_compound`: the same THPs with `SELECT_COMPOUND` and 2 MiB device
//!   folios: each moves whole, and comes back whole.
//!
//! After criterion's report, a table of GB/s and ratios against memcpy, and
//! a split of the time between the migration steps (setup, the driver's
//! copy, pages, finalize).
//!
//! `cargo bench -p hmm-mm --bench migrate` (about a minute), `-- --quick`
//! for a shorter run.

use std::hint::black_box;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;

use hmm_mm::device::{
    migrate_pfn, migrate_pfn_to_pfn, MigrateSelect, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE,
};
use hmm_mm::phys::{MemoryType, Pagemap, PagemapOps, PhysMem};
use hmm_mm::testing::leaf;
use hmm_mm::{Kernel, Mm, MmapLocked, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{MapFlags, Owner, Pfn, Prot, PAGE_SIZE, PMD_SIZE};

#[path = "support/report.rs"]
mod report;

use report::{criterion_home, median_ns};

const LEN: u64 = 8 << 20;
const NPAGES: u64 = LEN / PAGE_SIZE;
const RAM: u64 = 96 << 20;
const OWNER: Owner = Owner(0xbe);
/// Where the range is mapped: 2 MiB aligned, so THP can back it.
const AT: u64 = 0x1000_0000_0000;
const ANON_FIXED: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::FIXED);

// ---------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------

/// Device-private memory with two pools: 4K pages and 2 MiB folios.
struct Driver {
    phys: Arc<PhysMem>,
    small: Mutex<Vec<Pfn>>,
    huge: Mutex<Vec<Pfn>>,
}

struct Ops(Weak<Driver>);

impl PagemapOps for Ops {
    fn folio_free(&self, head: Pfn) {
        if let Some(driver) = self.0.upgrade() {
            if driver.phys.folio_order(head) == 9 {
                driver.huge.lock().push(head);
            } else {
                driver.small.lock().push(head);
            }
        }
    }
}

/// Time spent in each step of the migrations done so far.
#[derive(Clone, Copy, Default)]
struct Steps {
    setup: Duration,
    alloc: Duration,
    copy: Duration,
    pages: Duration,
    finalize: Duration,
    runs: u32,
}

impl Driver {
    /// `NPAGES` 4K pages and `NPAGES / 512` 2 MiB folios of device memory.
    fn new(kernel: &Kernel) -> Arc<Self> {
        let driver = Arc::new(Driver {
            phys: kernel.phys().clone(),
            small: Mutex::new(Vec::new()),
            huge: Mutex::new(Vec::new()),
        });
        let pagemap =
            Pagemap::new(MemoryType::DevicePrivate, Some(OWNER)).with_ops(Arc::new(Ops(Arc::downgrade(&driver))));
        let base = kernel.phys().add_device_region(Arc::new(pagemap), 2 * NPAGES, None).expect("device region");
        *driver.small.lock() = (0..NPAGES).rev().map(|i| base.add(i)).collect();
        *driver.huge.lock() = (0..NPAGES / 512).rev().map(|i| base.add(NPAGES + 512 * i)).collect();
        driver
    }

    fn free_pages(&self) -> u64 {
        self.small.lock().len() as u64 + 512 * self.huge.lock().len() as u64
    }

    /// Moves `[start, end)` to device memory; returns the pages moved.
    fn to_device(&self, locked: MmapLocked<'_>, start: u64, end: u64, compound: bool, steps: &mut Steps) -> u64 {
        let select = MigrateSelect::SYSTEM | if compound { MigrateSelect::COMPOUND } else { MigrateSelect::empty() };
        self.run(locked, MigrateVma::new(start, end, OWNER, select), steps, |phys, order| {
            let pool = if order == 9 { &self.huge } else { &self.small };
            let page = pool.lock().pop().expect("device memory");
            phys.zone_device_folio_init(page, order);
            page
        })
    }

    /// Evicts this device's pages of `[start, end)` to RAM from the driver
    /// side; returns the pages moved.
    fn to_ram(&self, locked: MmapLocked<'_>, start: u64, end: u64, compound: bool, steps: &mut Steps) -> u64 {
        let select =
            MigrateSelect::DEVICE_PRIVATE | if compound { MigrateSelect::COMPOUND } else { MigrateSelect::empty() };
        self.run(locked, MigrateVma::new(start, end, OWNER, select), steps, |phys, order| {
            let page = phys.alloc_folio(order, false).expect("RAM");
            phys.meta(page).try_lock();
            page
        })
    }

    /// setup → copy (a locked destination per entry, from `alloc`) → pages
    /// → finalize, timing each step.
    fn run(
        &self,
        locked: MmapLocked<'_>,
        mut migrate: MigrateVma,
        steps: &mut Steps,
        alloc: impl Fn(&PhysMem, u32) -> Pfn,
    ) -> u64 {
        let t0 = Instant::now();
        migrate.setup(locked).expect("setup");
        let t1 = Instant::now();
        // The destinations first, then the data (as a driver sets up its
        // pages, then runs its copy engine).
        let mut i = 0;
        while i < migrate.src.len() {
            let word = migrate.src[i];
            if word & MIGRATE_PFN_MIGRATE == 0 {
                i += 1;
                continue;
            }
            let (order, nr, flag) =
                if word & MIGRATE_PFN_COMPOUND != 0 { (9, 512, MIGRATE_PFN_COMPOUND) } else { (0, 1, 0) };
            migrate.dst[i] = migrate_pfn(alloc(&self.phys, order)) | flag;
            i += nr;
        }
        let t_alloc = Instant::now();
        for (&word, &dst) in migrate.src.iter().zip(&migrate.dst) {
            let Some(dst) = migrate_pfn_to_pfn(dst) else { continue };
            let nr = if word & MIGRATE_PFN_COMPOUND != 0 { 512 } else { 1 };
            match migrate_pfn_to_pfn(word) {
                Some(src) => self.phys.copy_frames(dst, src, nr),
                None => self.phys.zero_frames(dst, nr),
            }
        }
        let t2 = Instant::now();
        migrate.pages(locked);
        let t3 = Instant::now();
        migrate.finalize(locked);
        let t4 = Instant::now();
        steps.setup += t1 - t0;
        steps.alloc += t_alloc - t1;
        steps.copy += t2 - t_alloc;
        steps.pages += t3 - t2;
        steps.finalize += t4 - t3;
        steps.runs += 1;
        let moved = |w: &u64| w & MIGRATE_PFN_MIGRATE != 0;
        migrate.src.iter().filter(|w| moved(w)).map(|w| if w & MIGRATE_PFN_COMPOUND != 0 { 512 } else { 1 }).sum()
    }
}

// ---------------------------------------------------------------------------
// The machine and the range
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// 4K pages, THP disabled.
    Small,
    /// THP-backed, migrated without SELECT_COMPOUND (split on collection).
    ThpSplit,
    /// THP-backed, migrated whole with SELECT_COMPOUND.
    ThpCompound,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Small => "4k",
            Self::ThpSplit => "thp_split",
            Self::ThpCompound => "thp_compound",
        }
    }
    fn compound(self) -> bool {
        self == Self::ThpCompound
    }
}

struct Bench {
    mm: Arc<Mm>,
    driver: Arc<Driver>,
    shape: Shape,
    steps_to_device: Steps,
    steps_to_ram: Steps,
}

impl Bench {
    fn new(shape: Shape) -> Self {
        let thp = if shape == Shape::Small { ThpMode::Never } else { ThpMode::Always };
        let kernel = hmm_mm::testing::kernel(RAM >> 20, thp);
        let mm = kernel.create_mm().expect("mm");
        let driver = Driver::new(&kernel);
        let mut bench = Bench { mm, driver, shape, steps_to_device: Steps::default(), steps_to_ram: Steps::default() };
        bench.map();
        // One round trip, so that the host has committed every frame
        // involved before anything is timed.
        bench.send();
        bench.bring_back();
        bench.remap_if_split();
        bench.steps_to_device = Steps::default();
        bench.steps_to_ram = Steps::default();
        bench
    }

    /// Maps and fills the range; checks its shape.
    fn map(&self) {
        let va = self.mm.mmap(AT, LEN, Prot::RW, ANON_FIXED | MapFlags::POPULATE).expect("mmap");
        assert_eq!(va, AT);
        let chunk: Vec<u8> = (0..PMD_SIZE).map(|i| (i * 7 + 1) as u8).collect();
        for offset in (0..LEN).step_by(PMD_SIZE as usize) {
            self.mm.write_bytes(AT + offset, &chunk).expect("fill");
        }
        let level = if self.shape == Shape::Small { Level::Pte } else { Level::Pmd };
        for offset in (0..LEN).step_by(PMD_SIZE as usize) {
            assert_eq!(leaf(&self.mm, AT + offset).0, level, "{:?} expected", level);
        }
    }

    /// THPs split by a migration come back as 4K pages: rebuild them.
    fn remap_if_split(&self) {
        if self.shape == Shape::ThpSplit {
            self.mm.munmap(AT, LEN).expect("munmap");
            self.map();
        }
    }

    fn send(&mut self) {
        let guard = self.mm.mmap_read();
        let moved =
            self.driver.to_device(guard.locked(), AT, AT + LEN, self.shape.compound(), &mut self.steps_to_device);
        assert_eq!(moved, NPAGES, "every page moved to the device");
    }

    fn bring_back(&mut self) {
        let guard = self.mm.mmap_read();
        let moved = self.driver.to_ram(guard.locked(), AT, AT + LEN, self.shape.compound(), &mut self.steps_to_ram);
        assert_eq!(moved, NPAGES, "every page moved back");
        assert_eq!(self.driver.free_pages(), 2 * NPAGES, "every device page went back to the driver");
    }

    /// `n` timed migrations to the device (the way back untimed).
    fn timed_to_device(&mut self, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let start = Instant::now();
            self.send();
            total += start.elapsed();
            self.bring_back();
            self.remap_if_split();
        }
        total
    }

    /// `n` timed evictions back to RAM (the way there untimed).
    fn timed_to_ram(&mut self, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            self.send();
            let start = Instant::now();
            self.bring_back();
            total += start.elapsed();
            self.remap_if_split();
        }
        total
    }
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

const SHAPES: [Shape; 3] = [Shape::Small, Shape::ThpSplit, Shape::ThpCompound];
/// Buffer pairs the cold memcpy rotates through (8 × 16 MiB).
const COLD_SETS: usize = 8;

fn migrate_benches(c: &mut Criterion, steps: &mut Vec<(Shape, Steps, Steps)>) {
    let mut group = c.benchmark_group("migrate");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(LEN));

    let src = vec![0x5au8; LEN as usize];
    let mut dst = vec![0u8; LEN as usize];
    group.bench_function("memcpy_8m", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    drop((src, dst));
    // The same copy with a working set four times the L3 (32 MiB here):
    // each iteration copies between buffers no recent one touched, so the
    // bytes come from DRAM.
    let srcs: Vec<Vec<u8>> = (0..COLD_SETS).map(|i| vec![i as u8; LEN as usize]).collect();
    let mut dsts: Vec<Vec<u8>> = (0..COLD_SETS).map(|_| vec![0u8; LEN as usize]).collect();
    let mut next = 0;
    group.bench_function("memcpy_8m_cold", |b| {
        b.iter(|| {
            next = (next + 1) % COLD_SETS;
            dsts[next].copy_from_slice(black_box(&srcs[(next + COLD_SETS / 2) % COLD_SETS]));
        })
    });
    drop((srcs, dsts));

    for shape in SHAPES {
        let mut bench = Bench::new(shape);
        group.bench_function(BenchmarkId::new("to_device_8m", shape.name()), |b| {
            b.iter_custom(|n| bench.timed_to_device(n));
        });
        group.bench_function(BenchmarkId::new("to_ram_8m", shape.name()), |b| {
            b.iter_custom(|n| bench.timed_to_ram(n));
        });
        steps.push((shape, bench.steps_to_device, bench.steps_to_ram));
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

fn gbps(ns: f64) -> f64 {
    LEN as f64 / ns
}

fn print_ratios(since: SystemTime) {
    let Some(home) = criterion_home() else { return };
    let Some(memcpy) = median_ns(&home, "migrate/memcpy_8m", since) else { return };
    let cold = median_ns(&home, "migrate/memcpy_8m_cold", since);
    println!(
        "\nmedians of this run, 8 MiB each, against memcpy of the same bytes (hot: L3-resident; cold: from DRAM):"
    );
    println!(
        "{:<34} {:>10} {:>8} {:>13} {:>14}  target",
        "benchmark", "time", "GB/s", "of hot memcpy", "of cold memcpy"
    );
    let row = |id: &str, ns: f64, target: &str| {
        let of_cold = cold.map_or(String::from("-"), |c| format!("{:.0}%", 100.0 * c / ns));
        println!(
            "{id:<34} {:>7.3} ms {:>8.2} {:>12.0}% {:>14}  {target}",
            ns / 1e6,
            gbps(ns),
            100.0 * memcpy / ns,
            of_cold
        );
    };
    row("migrate/memcpy_8m", memcpy, "");
    if let Some(cold) = cold {
        row("migrate/memcpy_8m_cold", cold, "");
    }
    for direction in ["to_device_8m", "to_ram_8m"] {
        for shape in SHAPES {
            let id = format!("migrate/{direction}/{}", shape.name());
            if let Some(ns) = median_ns(&home, &id, since) {
                row(&id, ns, ">= 50% of hot");
            }
        }
    }
}

fn print_steps(steps: &[(Shape, Steps, Steps)]) {
    println!("\nwhere the time goes (mean per 8 MiB migration, warm-up included):");
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "", "setup", "alloc", "copy", "pages", "finalize", "runs"
    );
    for &(shape, to_device, to_ram) in steps {
        for (direction, s) in [("to_device", to_device), ("to_ram", to_ram)] {
            if s.runs == 0 {
                continue;
            }
            let mean = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3 / f64::from(s.runs));
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
                format!("{direction}/{}", shape.name()),
                mean(s.setup),
                mean(s.alloc),
                mean(s.copy),
                mean(s.pages),
                mean(s.finalize),
                s.runs
            );
        }
    }
}

fn main() {
    let start = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    let mut steps = Vec::new();
    migrate_benches(&mut c, &mut steps);
    c.final_summary();
    print_ratios(start);
    print_steps(&steps);
}
