//! Benchmarks of the CPU side: anonymous write faults and CPU copies through
//! mappings, each next to a baseline measured in the same run (the least the
//! real machine would do: zero the page, copy the bytes), so that results read
//! as ratios. The ratios are printed after criterion's own report.
//!
//! `cargo bench -p hmm-mm --bench mm` for the full run, `-- --quick` for a
//! short one. Targets: a 4K fault under 1 µs; a CPU copy through mappings
//! within 2x of memcpy; a DAX PMD fault and a 1 GiB device-DAX fault about
//! the cost of a 4K anonymous fault.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use hmm_mm::testing::leaf;
use hmm_mm::{Kernel, Mm, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{MapFlags, PageSize, Prot, PAGE_SIZE, PMD_SIZE, PUD_SIZE};

#[path = "support/report.rs"]
mod report;

use report::{criterion_home, fmt_ns, median_ns};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const RAM: u64 = 128 << 20;
/// Region mapped afresh for the 4K faults (4096 pages: past L2, inside L3).
const REGION_4K: u64 = 16 << 20;
/// Region mapped afresh for the THP faults (32 huge pages).
const REGION_THP: u64 = 64 << 20;
const COPY_LEN: usize = 64 << 10;

fn kernel(thp: ThpMode) -> Arc<Kernel> {
    hmm_mm::testing::kernel(RAM >> 20, thp)
}

/// Time spent faulting `n` pieces of `stride` bytes, each by a write of its
/// first u64, in regions of `region` bytes that are mapped and unmapped
/// outside the timed part.
fn timed_first_writes(mm: &Mm, region: u64, stride: u64, n: u64) -> Duration {
    let per_region = region / stride;
    let mut left = n;
    let mut total = Duration::ZERO;
    while left > 0 {
        let count = left.min(per_region);
        let va = mm.mmap(0, region, Prot::RW, ANON).expect("mmap");
        let start = Instant::now();
        for i in 0..count {
            mm.write_u64(va + i * stride, i).expect("write fault");
        }
        total += start.elapsed();
        mm.munmap(va, region).expect("munmap");
        left -= count;
    }
    total
}

/// Time spent zeroing `n` consecutive `chunk`-byte pieces of `buf`, wrapping
/// around: the memset a kernel must do for each fresh page.
fn timed_memsets(buf: &mut [u8], chunk: usize, n: u64) -> Duration {
    let per_buf = (buf.len() / chunk) as u64;
    let mut left = n;
    let mut total = Duration::ZERO;
    while left > 0 {
        let count = left.min(per_buf) as usize;
        let start = Instant::now();
        for piece in buf.chunks_exact_mut(chunk).take(count) {
            piece.fill(0);
            black_box(piece);
        }
        total += start.elapsed();
        left -= count as u64;
    }
    total
}

/// An address space on a machine whose simulated RAM the host has already
/// committed (nearly all of it was faulted in and freed once), so that the
/// benchmarks measure recycled frames, as a running kernel does, and not
/// the host's own first-touch faults.
fn warmed_mm(thp: ThpMode, stride: u64) -> (Arc<Kernel>, Arc<Mm>) {
    let k = kernel(thp);
    let mm = k.create_mm().expect("mm");
    let warm = RAM - (16 << 20);
    timed_first_writes(&mm, warm, stride, warm / stride);
    (k, mm)
}

fn fault_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    group.throughput(Throughput::Bytes(PAGE_SIZE));
    let (_k, mm) = warmed_mm(ThpMode::Never, PAGE_SIZE);
    group.bench_function("anon_4k_write", |b| {
        b.iter_custom(|n| timed_first_writes(&mm, REGION_4K, PAGE_SIZE, n));
    });
    let mut buf = vec![0xa5u8; REGION_4K as usize];
    group.bench_function("memset_4k", |b| {
        b.iter_custom(|n| timed_memsets(&mut buf, PAGE_SIZE as usize, n));
    });
    drop((mm, buf));

    group.throughput(Throughput::Bytes(PMD_SIZE));
    let (_k, mm) = warmed_mm(ThpMode::Always, PMD_SIZE);
    {
        // Check that the faults below are THP faults, not 4K fallbacks.
        let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).expect("mmap");
        mm.write_u64(va, 1).expect("write fault");
        assert_eq!(leaf(&mm, va).0, Level::Pmd, "THP fault expected");
        mm.munmap(va, PMD_SIZE).expect("munmap");
    }
    group.sample_size(20);
    group.bench_function("anon_thp_write", |b| {
        b.iter_custom(|n| timed_first_writes(&mm, REGION_THP, PMD_SIZE, n));
    });
    let mut buf = vec![0xa5u8; REGION_THP as usize];
    group.bench_function("memset_2m", |b| {
        b.iter_custom(|n| timed_memsets(&mut buf, PMD_SIZE as usize, n));
    });
    group.finish();
}

/// Time spent faulting `n` leaves of `stride` bytes through mappings made
/// by `map` (each `per_map` leaves long) and removed by `unmap`, outside the
/// timed part.
fn timed_mapped_writes(mm: &Mm, map: impl Fn() -> u64, len: u64, stride: u64, n: u64) -> Duration {
    let mut left = n;
    let mut total = Duration::ZERO;
    while left > 0 {
        let count = left.min(len / stride);
        let va = map();
        let start = Instant::now();
        for i in 0..count {
            mm.write_u64(va + i * stride, i).expect("write fault");
        }
        total += start.elapsed();
        mm.munmap(va, len).expect("munmap");
        left -= count;
    }
    total
}

/// DAX faults: a PMD leaf of an fs-dax file (blocks allocated beforehand, so
/// only the mapping is timed) and a PUD leaf of device-DAX. No per-4K work
/// happens at fault time, so each should cost about a 4K anonymous fault.
fn dax_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let k = kernel(ThpMode::Never);
    let path = hmm_mm::testing::temp_path("bench.pmem");
    let fs = hmm_mm::fs::DaxFs::format(&k, &path, 80 << 20).expect("pmem");
    let file = fs.create("bench").expect("create");
    let len = 64 << 20;
    file.ftruncate(len).expect("size");
    let mm = k.create_mm().expect("mm");
    let map_file = || mm.mmap_file(0, len, Prot::RW, MapFlags::SHARED, &file, 0).expect("mmap dax");
    // Allocate every block once, so the timed faults only map.
    timed_mapped_writes(&mm, map_file, len, PMD_SIZE, len / PMD_SIZE);
    {
        let va = map_file();
        mm.write_u64(va, 1).expect("write fault");
        assert_eq!(leaf(&mm, va).0, Level::Pmd, "DAX PMD fault expected");
        mm.munmap(va, len).expect("munmap");
    }
    group.bench_function("dax_pmd_write", |b| {
        b.iter_custom(|n| timed_mapped_writes(&mm, map_file, len, PMD_SIZE, n));
    });
    let dev = hmm_mm::devdax::DevDax::create(&k, PUD_SIZE, PageSize::Size1G, None).expect("device-dax");
    let map_dev = || mm.mmap_devdax(0, PUD_SIZE, Prot::RW, MapFlags::SHARED, &dev, 0).expect("mmap devdax");
    {
        let va = map_dev();
        mm.write_u64(va, 1).expect("write fault");
        assert_eq!(leaf(&mm, va).0, Level::Pud, "device-DAX PUD fault expected");
        mm.munmap(va, PUD_SIZE).expect("munmap");
    }
    group.bench_function("devdax_pud_write", |b| {
        b.iter_custom(|n| timed_mapped_writes(&mm, map_dev, PUD_SIZE, PUD_SIZE, n));
    });
    group.finish();
    drop((mm, file, fs));
    let _ = std::fs::remove_file(path);
}

/// A populated, writable 64 KiB range: 4K pages or part of one THP.
fn mapped_range(thp: bool) -> (Arc<Kernel>, Arc<Mm>, u64) {
    let (mode, len, level) =
        if thp { (ThpMode::Always, PMD_SIZE, Level::Pmd) } else { (ThpMode::Never, COPY_LEN as u64, Level::Pte) };
    let k = kernel(mode);
    let mm = k.create_mm().expect("mm");
    let va = mm.mmap(0, len, Prot::RW, ANON | MapFlags::POPULATE).expect("mmap");
    let (at, entry) = leaf(&mm, va);
    assert!(at == level && entry.is_write(), "populated {level:?} mapping");
    mm.write_bytes(va, &vec![0x5a; COPY_LEN]).expect("fill");
    (k, mm, va)
}

fn cpu_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(COPY_LEN as u64));

    let src = vec![0x5au8; COPY_LEN];
    let mut dst = vec![0u8; COPY_LEN];
    group.bench_function("memcpy_64k", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)));
    });
    for (name, thp) in [("4k", false), ("thp", true)] {
        let (_k, mm, va) = mapped_range(thp);
        group.bench_function(BenchmarkId::new("copy_64k_read", name), |b| {
            b.iter(|| mm.read_bytes(black_box(va), &mut dst).expect("read"));
        });
        group.bench_function(BenchmarkId::new("copy_64k_write", name), |b| {
            b.iter(|| mm.write_bytes(black_box(va), black_box(&src)).expect("write"));
        });
    }
    group.finish();
}

fn print_ratios(since: SystemTime) {
    const PAIRS: [(&str, &str, &str); 8] = [
        ("fault/anon_4k_write", "fault/memset_4k", "< 1 µs"),
        ("fault/dax_pmd_write", "fault/anon_4k_write", "about 1x"),
        ("fault/devdax_pud_write", "fault/anon_4k_write", "about 1x"),
        ("fault/anon_thp_write", "fault/memset_2m", ""),
        ("cpu/copy_64k_read/4k", "cpu/memcpy_64k", "<= 2x"),
        ("cpu/copy_64k_read/thp", "cpu/memcpy_64k", "<= 2x"),
        ("cpu/copy_64k_write/4k", "cpu/memcpy_64k", "<= 2x"),
        ("cpu/copy_64k_write/thp", "cpu/memcpy_64k", "<= 2x"),
    ];
    let Some(home) = criterion_home() else {
        return;
    };
    let rows: Vec<_> = PAIRS
        .iter()
        .filter_map(|&(bench, base, target)| {
            let t = median_ns(&home, bench, since)?;
            let b = median_ns(&home, base, since)?;
            Some((bench, t, base, b, target))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("\nmedians of this run, against their baselines:");
    println!("{:<24} {:>12}   {:<18} {:>12} {:>7}  target", "benchmark", "time", "baseline", "time", "ratio");
    for (bench, t, base, b, target) in rows {
        println!("{bench:<24} {:>12}   {base:<18} {:>12} {:>6.2}x  {target}", fmt_ns(t), fmt_ns(b), t / b);
    }
}

fn main() {
    let start = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    fault_benches(&mut c);
    dax_benches(&mut c);
    cpu_benches(&mut c);
    c.final_summary();
    print_ratios(start);
}
