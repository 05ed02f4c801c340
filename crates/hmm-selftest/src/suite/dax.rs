//! DAX conformance beyond the kernel's suite, hmm's starting point: the
//! device mirrors fs-dax (PMD leaves) and device-DAX (PUD leaves) mappings
//! without pinning them, so truncate and hole punch complete at once and
//! the device's next access fails as Linux fails an access beyond end of
//! file; a pinned page makes the filesystem wait and give up; the device's
//! writes are in the backing file afterwards; MAP_SYNC mappings mirror too.
//!
//! Each test formats a fresh 64 MiB pmem device backed by a temporary file.

use std::time::Duration;

use hmm_dmirror::uapi::{prot, HMM_DMIRROR_READ, HMM_DMIRROR_SNAPSHOT, HMM_DMIRROR_WRITE};
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::{DaxFs, File, OpenMode};
use hmm_mm::gup::FollFlags;
use hmm_mm::{Kernel, KernelConfig};
use hmm_types::{Errno, MapFlags, PageSize, Prot, PMD_SIZE, PUD_SIZE};

use super::anon::check_counts;
use crate::harness::{check_ints, check_ok, hmm_dmirror_cmd, Backing, Ctx, HmmBuffer};
use crate::verdict::Verdict;
use crate::{check, check_eq, ok, Fail};

const PMEM_BYTES: u64 = 64 << 20;
const FILE_BYTES: u64 = 2 * PMD_SIZE;

/// A fresh DAX filesystem with one 4 MiB file mapped shared at a PMD
/// boundary (MAP_SYNC with `sync`) and a buffer over it.
fn dax_file(ctx: &Ctx, sync: bool) -> Result<(Backing, DaxFs, File, HmmBuffer), Fail> {
    let backing = Backing::scratch();
    let fs = ok!(DaxFs::format(&ctx.kernel, &backing.0, PMEM_BYTES));
    let file = ok!(fs.create("mirrored"));
    ok!(file.ftruncate(FILE_BYTES));
    let flags = if sync { MapFlags::SHARED_VALIDATE | MapFlags::SYNC } else { MapFlags::SHARED };
    let ptr = ok!(ctx.cpu().mm.mmap_file(0, FILE_BYTES, Prot::RW, flags, &file, 0));
    let buffer = ctx.buffer_at(ptr, FILE_BYTES)?;
    Ok((backing, fs, file, buffer))
}

fn snapshot(ctx: &Ctx, buffer: &mut HmmBuffer, npages: u64) -> Result<Vec<u8>, Fail> {
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    let mut m = vec![0u8; npages as usize];
    ok!(ctx.cpu().mm.read_bytes(buffer.mirror, &mut m));
    Ok(m)
}

fn file_ints(file: &File, len: u64) -> Result<Vec<i32>, Fail> {
    let mut bytes = vec![0u8; len as usize];
    check_eq!(ok!(file.pread(0, &mut bytes)), len as usize);
    Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4"))).collect())
}

/// Device READ and WRITE through an fs-dax mapping with PMD leaves; the
/// snapshot shows the PMD level and no reference is taken.
pub(crate) fn read_write_through_pmd(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (_backing, _fs, file, mut buffer) = dax_file(ctx, false)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    let m = snapshot(ctx, &mut buffer, npages)?;
    check!(m.iter().all(|&b| b == prot::WRITE | prot::PMD), "snapshot {:02x?}…, expected WRITE|PMD", &m[..4]);
    let frame = cpu.mm.pgtable().find(buffer.ptr).load().pfn();
    let counts = cpu.mm.phys().folio_counts(frame);
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_eq!(cpu.mm.phys().folio_counts(frame), counts, "the mirror takes no reference");
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| -(i as i32))?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 0)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| -(i as i32))?;
    check_ints("file", &file_ints(&file, FILE_BYTES)?, |i| -(i as i32))
}

/// Device READ and WRITE through a device-DAX mapping with a 1 GiB leaf;
/// the snapshot shows the PUD level.
pub(crate) fn read_write_through_devdax_pud(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let dev = ok!(DevDax::create(&ctx.kernel, PUD_SIZE, PageSize::Size1G, None));
    let base = ok!(cpu.mm.mmap_devdax(0, PUD_SIZE, Prot::RW, MapFlags::SHARED, &dev, 0));
    let size = 4 * PMD_SIZE;
    let npages = size >> ctx.page_shift;
    // The window ends at the last byte of the gigabyte: a PUD leaf covers it.
    let mut buffer = ctx.buffer_at(base + PUD_SIZE - size, size)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    let m = snapshot(ctx, &mut buffer, npages)?;
    check!(m.iter().all(|&b| b == prot::WRITE | prot::PUD), "snapshot {:02x?}…, expected WRITE|PUD", &m[..4]);
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| 7 * i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| 7 * i as i32)
}

/// Truncating a mirrored DAX file completes at once and clears the
/// device's entries, of the kept part too (ext4 breaks the layouts of the
/// whole file first, as the 7.3.4 guest shows); the device's next access
/// past the end fails with EFAULT, the part before the end reads the data.
pub(crate) fn truncate_while_mirrored(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (_backing, _fs, file, mut buffer) = dax_file(ctx, false)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_eq!(ctx.fd().mapped_pages(), npages);
    ok!(file.ftruncate(PMD_SIZE));
    check_eq!(ctx.fd().mapped_pages(), 0, "every device entry of the file is gone");
    check_eq!(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages), Err(Errno::Fault));
    // The failed READ faulted the kept half back in on the CPU before it
    // reached the end of file, so this one finds it present: no fault.
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages / 2))?;
    check_counts(&buffer, npages / 2, 0)?;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints() / 2)?, |i| i as i32)
}

/// Punching a hole in a mirrored DAX file completes at once and clears
/// the device's entries there; the device then reads zeros in the hole.
pub(crate) fn punch_hole_while_mirrored(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (_backing, _fs, file, mut buffer) = dax_file(ctx, false)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    ok!(file.punch_hole(PMD_SIZE, PMD_SIZE));
    check!(ctx.fd().mapped_pages() <= npages / 2, "device entries over the hole are gone");
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    let half = buffer.ints() / 2;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| if i < half { i as i32 } else { 0 })
}

/// With a page pinned by pin_user_pages, truncate waits for it and gives
/// up with EBUSY, leaving the file whole; unpinned, it completes. A
/// long-term pin is refused on fs-dax outright.
pub(crate) fn truncate_with_a_pinned_page(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (_backing, fs, file, mut buffer) = dax_file(ctx, false)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    let longterm = cpu.mm.pin_user_pages(buffer.ptr, 1, FollFlags::WRITE | FollFlags::LONGTERM);
    check_eq!(longterm.map(|_| ()).map_err(|e| e.errno()), Err(Errno::OpNotSupp));
    fs.set_busy_timeout(Duration::from_millis(100));
    let pin = ok!(cpu.mm.pin_user_pages(buffer.ptr + PMD_SIZE + ctx.page_size, 1, FollFlags::WRITE));
    check_eq!(file.ftruncate(PMD_SIZE).map_err(|e| e.errno()), Err(Errno::Busy));
    check_eq!(file.size(), FILE_BYTES, "the failed truncate left the size");
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
    pin.unpin();
    ok!(file.ftruncate(PMD_SIZE));
    check_eq!(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages), Err(Errno::Fault));
    Ok(())
}

/// What the device wrote into a DAX file is in the backing file after the
/// process exits: a new machine mounting it reads it back.
pub(crate) fn device_writes_persist(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (backing, fs, file, mut buffer) = dax_file(ctx, false)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| (i as i32) ^ 0x5a5a)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    ok!(fs.sync());
    ok!(cpu.mm.munmap(buffer.ptr, FILE_BYTES));
    // Unmount: with no file open or mapped, the device and its backing
    // file's lock go with the last handle.
    drop(file);
    drop(fs);
    let next = ok!(Kernel::new(KernelConfig { ram_bytes: 64 << 20, ..KernelConfig::default() }));
    let fs = ok!(DaxFs::mount(&next, &backing.0, PMEM_BYTES));
    let file = ok!(fs.open("mirrored", OpenMode::ReadOnly));
    check_ints("file after remount", &file_ints(&file, FILE_BYTES)?, |i| (i as i32) ^ 0x5a5a)
}

/// A MAP_SYNC mapping of a DAX file mirrors like any other.
pub(crate) fn map_sync_mirrored(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let (_backing, _fs, file, mut buffer) = dax_file(ctx, true)?;
    let npages = FILE_BYTES >> ctx.page_shift;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| 3 * i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| 3 * i as i32)?;
    check_ints("file", &file_ints(&file, FILE_BYTES)?, |i| 3 * i as i32)?;
    let m = snapshot(ctx, &mut buffer, npages)?;
    check!(m.iter().all(|&b| b & prot::WRITE != 0), "snapshot {:02x?}…: every page writable", &m[..4]);
    Ok(())
}
