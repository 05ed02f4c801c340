//! `hmm demo dax`: the seed patch's story. A process maps a DAX file (2 MiB
//! leaves) and a device-DAX region (1 GiB leaves); a device mirrors both
//! with `range_fault`, holding no page reference; CPU and device share the
//! data; the file is truncated while mirrored and the device is simply told;
//! a pinned page, by contrast, blocks the filesystem.
//!
//! With `--pmem FILE` the emulated device's image is kept in FILE and reused
//! by the next run; a FILE holding anything else is refused unless
//! `--format` asks to erase it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use hmm::pfn::hmm_pfn_to_pfn;
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::{DaxFs, FormatMode, PmemError};
use hmm_mm::gup::FollFlags;
use hmm_mm::{Kernel, KernelConfig, MmError, ThpMode};
use hmm_types::{Errno, MapFlags, PageSize, Prot, PMD_SIZE, PUD_SIZE};

use super::mirror::Mirror;
use super::{expect, DemoError};
use crate::render::Out;

const PMEM_BYTES: u64 = 64 << 20;
const MESSAGE: &[u8] = b"written by the device into persistent memory";

/// Runs the story; `pmem` is the backing file (a temporary one if `None`),
/// erased first if `format`.
pub fn run(out: &Out, pmem: Option<&Path>, format: bool) -> Result<(), DemoError> {
    out.heading("hmm demo dax: mirroring DAX mappings without pinning them");
    let temp = pmem.is_none().then(|| std::env::temp_dir().join(format!("hmm-demo-{}.pmem", std::process::id())));
    let Some(path) = pmem.map(Path::to_path_buf).or(temp.clone()) else {
        return Err(DemoError("no backing file".into()));
    };
    let result = story(out, &path, pmem.is_some(), format);
    if let Some(temp) = temp {
        let _ = std::fs::remove_file(temp);
    }
    result
}

fn machine() -> Result<std::sync::Arc<Kernel>, DemoError> {
    Ok(Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() })?)
}

/// Durations in one format throughout.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

/// Formats or mounts the device image in `path`; explains a refusal.
fn open_fs(kernel: &Kernel, path: &Path, format: bool) -> Result<DaxFs, DemoError> {
    let result = if format {
        DaxFs::format_with(kernel, path, PMEM_BYTES, FormatMode::Overwrite)
    } else {
        DaxFs::mount_or_format(kernel, path, PMEM_BYTES)
    };
    result.map_err(|error| match &error {
        MmError::Pmem(
            PmemError::NotAnImage { .. }
            | PmemError::Version { .. }
            | PmemError::Corrupt { .. }
            | PmemError::SizeMismatch { .. },
        ) => DemoError(format!(
            "{error}\n(--pmem FILE keeps a device image between runs; to erase FILE and start afresh, add --format)"
        )),
        _ => error.into(),
    })
}

fn story(out: &Out, path: &Path, kept: bool, format: bool) -> Result<(), DemoError> {
    out.step(1, &format!("plug in a {} MiB emulated persistent-memory (pmem) device", PMEM_BYTES >> 20));
    if kept {
        out.note(&format!("its bytes live in {} and are kept after the demo: the next run", path.display()));
        out.note("with the same --pmem mounts this image and finds this run's data; --format erases the");
        out.note("file and starts afresh (without it, a file that is not a device image is refused)");
    } else {
        out.note(&format!("its bytes live in {} (temporary; --pmem FILE keeps them)", path.display()));
    }
    let kernel = machine()?;
    let fresh = format || std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let fs = open_fs(&kernel, path, format)?;
    if fresh {
        out.fact("formatted a new DAX filesystem on it");
    } else {
        out.fact("mounted the device image an earlier run kept");
    }
    if let Ok(previous) = fs.open("seed", hmm_mm::fs::OpenMode::ReadOnly) {
        let mut buf = vec![0u8; MESSAGE.len()];
        previous.pread(4096, &mut buf)?;
        out.fact(&format!("the earlier run left \"{}\" in its file", String::from_utf8_lossy(&buf)));
    }
    let file = fs.create("seed")?;
    file.ftruncate(2 * PMD_SIZE)?;
    out.fact("created a 4 MiB file: its blocks are the device's own memory (no page cache in between)");

    out.step(2, "a process maps the file shared, 2 MiB aligned, and a 1 GiB device-DAX region");
    let mm = kernel.create_mm()?;
    let file_va = mm.mmap_file(0, 2 * PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, 0)?;
    let dev = DevDax::create(&kernel, PUD_SIZE, PageSize::Size1G, None)?;
    let dev_va = mm.mmap_devdax(0, PUD_SIZE, Prot::RW, MapFlags::SHARED, &dev, 0)?;
    mm.write_u64(file_va, 1)?;
    mm.write_u64(file_va + PMD_SIZE, 2)?;
    mm.write_u64(dev_va + 12345 * 8, 3)?;
    out.fact(&format!("file at {file_va:#x}: the CPU maps it with two 2 MiB page-table leaves (PMD)"));
    out.fact(&format!("device-DAX at {dev_va:#x}: the CPU maps all 1 GiB with one leaf (PUD)"));

    out.step(3, "a device mirrors both with range_fault: a snapshot of the CPU page table, nothing faulted in");
    let mirror = Mirror::bind(&mm)?;
    let file_frame = mm.leaf_at(file_va).1.pfn();
    let refs_before = kernel.phys().folio_counts(file_frame);
    mirror.fault(file_va, 2 * PMD_SIZE, false, false)?;
    let dev_mirrored = 4 * PMD_SIZE;
    mirror.fault(dev_va, dev_mirrored, false, false)?;
    let file_orders = mirror.orders(file_va, file_va + 2 * PMD_SIZE);
    let dev_orders = mirror.orders(dev_va, dev_va + dev_mirrored);
    expect(file_orders.keys().eq([9].iter()), "the DAX file to be mirrored at order 9")?;
    expect(dev_orders.keys().eq([18].iter()), "the device-DAX region to be mirrored at order 18")?;
    out.note("the device table has one entry per 4 KiB page; each entry also tells the size of the CPU");
    out.note("leaf behind it as an order: 2^order pages of 4 KiB (order 9 = 2 MiB, order 18 = 1 GiB)");
    out.fact(&format!("DAX file, all 4 MiB: {} entries of order 9 (2 MiB leaves)", file_orders[&9]));
    out.fact(&format!(
        "device-DAX, its first {} MiB [{dev_va:#x}, {:#x}) of 1 GiB: {} entries of order 18 (one 1 GiB leaf)",
        dev_mirrored >> 20,
        dev_va + dev_mirrored,
        dev_orders[&18]
    ));
    expect(kernel.phys().folio_counts(file_frame) == refs_before, "the mirror to take no page reference")?;
    out.fact(&format!(
        "the file's first 2 MiB block (page frame number, PFN {file_frame}): reference count {}, map count {}, \
         unchanged by the mirror",
        refs_before.0, refs_before.1
    ));

    out.step(4, "CPU and device share the data");
    mm.write_bytes(file_va + 64, b"from the CPU")?;
    let mut seen = [0u8; 12];
    mirror.read(file_va + 64, &mut seen)?;
    expect(&seen == b"from the CPU", "the device to read the CPU's bytes")?;
    mirror.write(file_va + 4096, MESSAGE)?;
    let mut back = vec![0u8; MESSAGE.len()];
    mm.read_bytes(file_va + 4096, &mut back)?;
    expect(back == MESSAGE, "the CPU to read the device's bytes")?;
    mirror.write(dev_va + PUD_SIZE - 8, &7u64.to_le_bytes())?;
    expect(mm.read_u64(dev_va + PUD_SIZE - 8)? == 7, "the CPU to read the device's write to device-DAX")?;
    out.fact("device reads \"from the CPU\"; CPU reads the device's message; same on device-DAX");

    out.step(5, "the data is in the backing file");
    fs.sync()?;
    let word = mirror.entry(file_va + 4096).ok_or_else(|| DemoError("the device lost its entry".into()))?;
    let pfn = hmm_pfn_to_pfn(word);
    let offset = (pfn.0 - fs.device().base().0) * 4096;
    let mut on_disk = vec![0u8; MESSAGE.len()];
    let mut backing = std::fs::File::open(path).map_err(|e| DemoError(e.to_string()))?;
    backing
        .seek(SeekFrom::Start(offset))
        .and_then(|_| backing.read_exact(&mut on_disk))
        .map_err(|e| DemoError(e.to_string()))?;
    expect(on_disk == MESSAGE, "the device's bytes in the backing file")?;
    out.fact(&format!(
        "the device wrote to PFN {pfn}, which is byte {offset:#x} of {}: \"{}\"",
        path.display(),
        String::from_utf8_lossy(&on_disk)
    ));

    out.step(6, "truncate the file to 2 MiB while the device mirrors it");
    let started = Instant::now();
    file.ftruncate(PMD_SIZE)?;
    let took = started.elapsed();
    out.note("each \"notifier\" line is an invalidation the device received: its kind (MMU_NOTIFY_CLEAR:");
    out.note("the CPU mapping of the range is being removed) and the virtual address range");
    for line in mirror.take_log() {
        out.event(&line);
    }
    expect(mirror.entry(file_va + PMD_SIZE).is_none(), "the device entry for the cut block to be gone")?;
    out.fact(&format!("truncate completed in {}: nothing to wait for, the mirror holds no reference", ms(took)));
    let denied = mirror.read(file_va + PMD_SIZE, &mut [0u8; 8]).err();
    let denied = denied.ok_or_else(|| DemoError("expected the device's access past the end to fail".into()))?;
    expect(denied.errno() == Errno::Fault, "the device's access past the end to fail with EFAULT")?;
    out.fact(&format!("the device's next access past the end fails: {denied}"));

    out.step(7, "contrast: pin a page with pin_user_pages, then truncate");
    fs.set_busy_timeout(Duration::from_millis(300));
    let pin = mm.pin_user_pages(file_va + 4096, 1, FollFlags::WRITE)?;
    let started = Instant::now();
    // Keep the device's message (page 1) for the next run; cut the rest of
    // the 2 MiB block, which the pin holds busy.
    let keep = 4096 + MESSAGE.len() as u64;
    let blocked = file.ftruncate(keep).err();
    let blocked = blocked.ok_or_else(|| DemoError("expected the pinned page to block truncation".into()))?;
    expect(blocked.errno() == Errno::Busy, "EBUSY from the blocked filesystem")?;
    for line in mirror.take_log() {
        out.event(&line);
    }
    expect(mirror.entry(file_va + 4096).is_none(), "the device's entries to go before the filesystem waits")?;
    out.note("the filesystem first unmaps the block everywhere (the device drops its entries at once),");
    out.note("then waits for the block to be unused; the pin keeps it in use");
    out.fact(&format!("the filesystem waited {} for the pin and gave up: {blocked}", ms(started.elapsed())));
    pin.unpin();
    file.ftruncate(keep)?;
    fs.sync()?;
    let log = mirror.take_log();
    for line in &log {
        out.event(line);
    }
    out.note("the retry announces the same range again; the device has nothing left there, hence 0");
    out.fact("after unpin_user_pages the truncate completes");
    drop(mirror);
    mm.exit();
    out.note("a mirror built with range_fault never blocks the filesystem; a pin does.");
    if kept {
        out.note(&format!("run again with --pmem {} to see the next run read the message back", path.display()));
    }
    Ok(())
}
