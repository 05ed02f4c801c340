//! `hmm demo dax`: the seed patch's story. A process maps a DAX file (2 MiB
//! leaves) and a device-DAX region (1 GiB leaves); a device mirrors both
//! with `range_fault`, holding no page reference; CPU and device share the
//! data; the file is truncated while mirrored and the device is simply told;
//! a pinned page, by contrast, blocks the filesystem.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmm::pfn::hmm_pfn_to_pfn;
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::DaxFs;
use hmm_mm::gup::FollFlags;
use hmm_mm::{Kernel, KernelConfig, ThpMode};
use hmm_types::{Errno, MapFlags, PageSize, Prot, PMD_SIZE, PUD_SIZE};

use super::mirror::Mirror;
use super::{expect, DemoError};
use crate::render::Out;

const PMEM_BYTES: u64 = 64 << 20;
const MESSAGE: &[u8] = b"written by the device into persistent memory";

/// Runs the story; `pmem` is the backing file (a temporary one if `None`).
pub fn run(out: &Out, pmem: Option<&Path>) -> Result<(), DemoError> {
    out.heading("hmm demo dax: mirroring DAX mappings without pinning them");
    let temp = pmem.is_none().then(|| std::env::temp_dir().join(format!("hmm-demo-{}.pmem", std::process::id())));
    let path: PathBuf = pmem.map(Path::to_path_buf).or(temp.clone()).expect("one of the two");
    let result = story(out, &path);
    if let Some(temp) = temp {
        let _ = std::fs::remove_file(temp);
    }
    result
}

fn machine() -> Result<std::sync::Arc<Kernel>, DemoError> {
    Ok(Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() })?)
}

fn story(out: &Out, path: &Path) -> Result<(), DemoError> {
    out.step(1, &format!("plug in a {} MiB pmem device backed by {}", PMEM_BYTES >> 20, path.display()));
    // A previous run's filesystem, if any, is read on a machine of its own.
    if let Ok(previous) = DaxFs::mount(&*machine()?, path, PMEM_BYTES) {
        if let Ok(file) = previous.open("seed", hmm_mm::fs::OpenMode::ReadOnly) {
            let mut buf = vec![0u8; MESSAGE.len()];
            file.pread(4096, &mut buf)?;
            out.fact(&format!("a previous run left \"{}\" in the file", String::from_utf8_lossy(&buf)));
        }
    }
    let kernel = machine()?;
    let fs = DaxFs::format(&kernel, path, PMEM_BYTES)?;
    let file = fs.create("seed")?;
    file.ftruncate(2 * PMD_SIZE)?;
    out.fact("formatted a DAX filesystem and created a 4 MiB file: its blocks are device frames, no page cache");

    out.step(2, "a process maps the file shared, 2 MiB aligned, and a 1 GiB device-DAX region");
    let mm = kernel.create_mm()?;
    let file_va = mm.mmap_file(0, 2 * PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, 0)?;
    let dev = DevDax::create(&kernel, PUD_SIZE, PageSize::Size1G, None)?;
    let dev_va = mm.mmap_devdax(0, PUD_SIZE, Prot::RW, MapFlags::SHARED, &dev, 0)?;
    mm.write_u64(file_va, 1)?;
    mm.write_u64(file_va + PMD_SIZE, 2)?;
    mm.write_u64(dev_va + 12345 * 8, 3)?;
    out.fact(&format!("file at {file_va:#x} (PMD leaves), device-DAX at {dev_va:#x} (a PUD leaf)"));

    out.step(3, "a device mirrors both with range_fault: no fault requested, a pure snapshot");
    let mirror = Mirror::bind(&mm)?;
    let file_frame = mm.leaf_at(file_va).1.pfn();
    let refs_before = kernel.phys().folio_counts(file_frame);
    mirror.fault(file_va, 2 * PMD_SIZE, false, false)?;
    mirror.fault(dev_va, 4 * PMD_SIZE, false, false)?;
    let file_orders = mirror.orders(file_va, file_va + 2 * PMD_SIZE);
    let dev_orders = mirror.orders(dev_va, dev_va + 4 * PMD_SIZE);
    expect(file_orders.keys().eq([9].iter()), "the DAX file to be mirrored at order 9")?;
    expect(dev_orders.keys().eq([18].iter()), "the device-DAX region to be mirrored at order 18")?;
    out.fact(&format!(
        "DAX file: {} slots of order 9; device-DAX: {} slots of order 18",
        file_orders[&9], dev_orders[&18]
    ));
    expect(kernel.phys().folio_counts(file_frame) == refs_before, "the mirror to take no page reference")?;
    out.fact(&format!("reference count of the mirrored block unchanged: {:?} (refcount, mapcount)", refs_before));

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
    let offset = (hmm_pfn_to_pfn(word).0 - fs.device().base().0) * 4096;
    let mut on_disk = vec![0u8; MESSAGE.len()];
    let mut backing = std::fs::File::open(path).map_err(|e| DemoError(e.to_string()))?;
    backing
        .seek(SeekFrom::Start(offset))
        .and_then(|_| backing.read_exact(&mut on_disk))
        .map_err(|e| DemoError(e.to_string()))?;
    expect(on_disk == MESSAGE, "the device's bytes in the backing file")?;
    out.fact(&format!("byte {offset:#x} of {}: \"{}\"", path.display(), String::from_utf8_lossy(&on_disk)));
    out.note("run again with --pmem FILE to see the next run read it back");

    out.step(6, "truncate the file to 2 MiB while the device mirrors it");
    let started = Instant::now();
    file.ftruncate(PMD_SIZE)?;
    let took = started.elapsed();
    for line in mirror.take_log() {
        out.event(&line);
    }
    expect(mirror.entry(file_va + PMD_SIZE).is_none(), "the device entry for the cut block to be gone")?;
    out.fact(&format!("truncate completed in {took:?}: nothing to wait for, the mirror holds no reference"));
    let denied = mirror.read(file_va + PMD_SIZE, &mut [0u8; 8]).expect_err("beyond end of file must fail");
    expect(denied.errno() == Errno::Fault, "the device's access past the end to fail with EFAULT")?;
    out.fact(&format!("the device's next access past the end fails: {denied}"));

    out.step(7, "contrast: pin a page with pin_user_pages, then truncate");
    fs.set_busy_timeout(Duration::from_millis(300));
    let pin = mm.pin_user_pages(file_va + 4096, 1, FollFlags::WRITE)?;
    let started = Instant::now();
    // Keep the device's message (page 1) for the next run; cut the rest of
    // the 2 MiB block, which the pin holds busy.
    let keep = 4096 + MESSAGE.len() as u64;
    let blocked = file.ftruncate(keep).expect_err("a pinned DAX page must block truncation");
    expect(blocked.errno() == Errno::Busy, "EBUSY from the blocked filesystem")?;
    out.fact(&format!("the filesystem waited {:?} for the pin and gave up: {blocked}", started.elapsed()));
    pin.unpin();
    file.ftruncate(keep)?;
    fs.sync()?;
    out.fact("after unpin_user_pages the truncate completes");
    for line in mirror.take_log() {
        out.event(&line);
    }
    drop(mirror);
    mm.exit();
    out.note("a mirror built with range_fault never blocks the filesystem; a pin does.");
    Ok(())
}
