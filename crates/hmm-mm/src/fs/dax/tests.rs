//! Tests of the DAX filesystem: PMD mappings, persistence across mounts,
//! truncation while mapped, pins against truncation, MAP_SYNC, unbind.

use std::time::Duration;

use hmm_pagetable::Level;
use hmm_types::{Errno, Event, MapFlags, Prot, PMD_SIZE};

use crate::gup::FollFlags;
use crate::phys::MemoryType;
use crate::testing::{kernel, leaf, record, temp_path};
use crate::{FaultError, MmError, ThpMode};

use super::DaxFs;

const MIB: u64 = 1 << 20;

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_aligned_shared_mapping_uses_pmd_leaves_on_device_frames() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("pmd.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("f").unwrap();
    file.ftruncate(4 * MIB).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    mm.write_u64(va + PMD_SIZE + 8, 0xdac).unwrap();
    let (level, entry) = leaf(&mm, va + PMD_SIZE);
    assert_eq!(level, Level::Pmd);
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::FsDax);
    assert_eq!(k.phys().folio_order(entry.pfn()), 9);
    let mut buf = [0u8; 8];
    file.pread(PMD_SIZE + 8, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 0xdac, "no page cache: pread sees the mapped block");
    file.pwrite(16, &7u64.to_le_bytes()).unwrap();
    assert_eq!(mm.read_u64(va + 16).unwrap(), 7);
    // ext4 would place a view from offset 4096 congruent with its offset
    // (`thp_get_unmapped_area`): misalign it on purpose.
    let fixed = MapFlags::SHARED | MapFlags::FIXED;
    let unaligned = mm.mmap_file(0x4000_0000, 4 * MIB - 4096, Prot::RW, fixed, &file, 4096).unwrap();
    assert_eq!(mm.read_u64(unaligned + PMD_SIZE - 4096 + 8).unwrap(), 0xdac);
    assert_eq!(leaf(&mm, unaligned + PMD_SIZE - 4096).0, Level::Pte, "a misaligned view maps 4K entries");
}

#[test]
fn data_survives_a_remount() {
    let path = TempFile(temp_path("persist.pmem"));
    {
        let k = kernel(64, ThpMode::Never);
        let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
        let file = fs.create("kept").unwrap();
        file.ftruncate(2 * MIB).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_file(0, 2 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        mm.write_bytes(va + 4096, b"written through a DAX mapping").unwrap();
        file.pwrite(2 * MIB, b"tail").unwrap();
        fs.sync().unwrap();
    }
    let k = kernel(64, ThpMode::Never);
    let fs = DaxFs::mount(&k, &path.0, 16 * MIB).unwrap();
    assert_eq!(fs.list(), ["kept"]);
    let file = fs.open("kept", crate::fs::OpenMode::ReadOnly).unwrap();
    assert_eq!(file.size(), 2 * MIB + 4);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 2 * MIB, Prot::READ, MapFlags::SHARED, &file, 0).unwrap();
    let mut buf = [0u8; 29];
    mm.read_bytes(va + 4096, &mut buf).unwrap();
    assert_eq!(&buf, b"written through a DAX mapping");
    let mut tail = [0u8; 4];
    file.pread(2 * MIB, &mut tail).unwrap();
    assert_eq!(&tail, b"tail");
    let missing = temp_path("never-formatted.pmem");
    // Regression: the open's own error, not EIO.
    assert_eq!(DaxFs::mount(&k, &missing, 16 * MIB).unwrap_err().errno(), Errno::NoEnt);
    let _ = std::fs::remove_file(missing);
}

#[test]
fn truncate_of_a_mapped_file_completes_and_clears_the_mapping() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("trunc.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("t").unwrap();
    file.ftruncate(4 * MIB).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PMD_SIZE, 2).unwrap();
    let free_before = fs.device().free_pages();
    let rec = record(&mm);
    file.ftruncate(PMD_SIZE + 4096).unwrap();
    // ext4 breaks the whole file's layouts first (7.3.4 guest: the kept
    // half is unmapped too), then truncate_pagecache unmaps the cut part.
    let events = rec.take_events();
    assert_eq!(
        events,
        [(Event::Clear, va, va + 4 * MIB), (Event::Clear, va + PMD_SIZE + 4096, va + 4 * MIB)],
        "{events:?}"
    );
    assert!(leaf(&mm, va).1.is_none(), "the kept first 2 MiB is unmapped as well");
    assert_eq!(fs.device().free_pages(), free_before + 511, "blocks past the new end are free");
    assert_eq!(mm.read_u64(va).unwrap(), 1, "the kept block refaults with its data");
    assert_eq!(leaf(&mm, va).0, Level::Pmd, "as a PMD again: its entry was deleted, not kept as PTE");
    assert_eq!(mm.read_u64(va + PMD_SIZE).unwrap(), 2, "the kept page refaults with its data");
    assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pte);
    match mm.read_u64(va + PMD_SIZE + 4096) {
        Err(MmError::Fault { error: FaultError::Sigbus(_), .. }) => {}
        other => panic!("expected SIGBUS past the end, got {other:?}"),
    }
}

#[test]
fn a_pin_blocks_truncation_until_it_is_dropped() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("pin.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    fs.set_busy_timeout(Duration::from_millis(30));
    let file = fs.create("p").unwrap();
    file.ftruncate(2 * MIB).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 2 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    let long = mm.pin_user_pages(va, 1, FollFlags::WRITE | FollFlags::LONGTERM).unwrap_err();
    assert_eq!(long.errno(), Errno::OpNotSupp, "long-term pins are refused on fs-dax");
    let pin = mm.pin_user_pages(va + 4096, 1, FollFlags::WRITE).unwrap();
    assert!(k.phys().maybe_pinned(pin.pfns()[0]));
    let err = file.ftruncate(0).unwrap_err();
    assert_eq!(err.errno(), Errno::Busy);
    assert_eq!(file.size(), 2 * MIB, "a failed truncate keeps the size");
    // The wait covers the whole file (`dax_break_layout(inode, 0,
    // LLONG_MAX)`): a pin on a page the truncate keeps blocks it as well.
    let err = file.ftruncate(MIB).unwrap_err();
    assert_eq!(err.errno(), Errno::Busy);
    pin.unpin();
    file.ftruncate(0).unwrap();
    assert_eq!(file.size(), 0);
}

#[test]
fn map_sync_and_unbind() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("sync.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("s").unwrap();
    file.ftruncate(2 * MIB).unwrap();
    let mm = k.create_mm().unwrap();
    let sync = MapFlags::SHARED_VALIDATE | MapFlags::SYNC;
    let va = mm.mmap_file(0, 2 * MIB, Prot::RW, sync, &file, 0).unwrap();
    assert!(mm.mmap_read().lookup(va).unwrap().flags.contains(hmm_types::VmFlags::SYNC));
    mm.write_u64(va, 5).unwrap();
    let rec = record(&mm);
    fs.unbind().unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + 2 * MIB)]);
    match mm.read_u64(va) {
        Err(MmError::Fault { error: FaultError::Sigbus(_), .. }) => {}
        other => panic!("expected SIGBUS after unbind, got {other:?}"),
    }
}

#[test]
fn a_refault_of_the_kept_half_does_not_keep_truncation_busy() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("refault.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    fs.set_busy_timeout(Duration::from_millis(2000));
    let file = fs.create("r").unwrap();
    file.ftruncate(2 * MIB).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 2 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    mm.write_u64(va, 1).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    let pin = mm.pin_user_pages(va + 3 * MIB / 2, 1, FollFlags::empty()).unwrap();
    // While the truncation waits for the pin, another thread refaults the
    // kept half (it waits for the block's entry lock instead of making the
    // block busy again), and a third drops the pin.
    let refault = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            mm.read_u64(va).unwrap()
        })
    };
    let unpin = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(pin);
    });
    file.ftruncate(MIB).expect("nothing in the cut range is referenced once the pin is gone");
    unpin.join().unwrap();
    assert_eq!(refault.join().unwrap(), 1);
    assert_eq!(mm.read_u64(va).unwrap(), 1);
}

#[test]
fn punching_a_page_unmaps_the_whole_file_and_a_read_maps_the_hole_as_the_zero_page() {
    // 7.3.4 guest (scenarios/device/dax_punch_hole.hmm): ext4_fallocate
    // breaks the file's layouts, so the neighbours go too; a read of the
    // hole then maps the zero page and its neighbours read-only.
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("hole.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("h").unwrap();
    file.ftruncate(64 * 4096).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 64 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    for page in 0..3 {
        mm.write_u64(va + page * 4096, page + 1).unwrap();
    }
    let rec = record(&mm);
    file.punch_hole(4096, 4096).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + 64 * 4096), (Event::Clear, va + 4096, va + 2 * 4096)]);
    for page in 0..3 {
        assert!(leaf(&mm, va + page * 4096).1.is_none(), "page {page} is unmapped");
    }
    let free = fs.device().free_pages();
    assert_eq!(mm.read_u64(va + 4096).unwrap(), 0);
    let hole = leaf(&mm, va + 4096).1;
    assert!(hole.pfn() == k.phys().zero_pfn() && !hole.is_write(), "the hole is the zero page, read-only");
    assert_eq!(fs.device().free_pages(), free, "a read allocates no block");
    assert_eq!(mm.read_u64(va + 2 * 4096).unwrap(), 3);
    assert!(!leaf(&mm, va + 2 * 4096).1.is_write(), "a read fault maps a DAX page read-only");
}

#[test]
fn a_write_to_a_hole_replaces_the_zero_page_in_every_mapping() {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path("zero.pmem"));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("z").unwrap();
    file.ftruncate(64 * 4096).unwrap();
    let (a, b) = (k.create_mm().unwrap(), k.create_mm().unwrap());
    let va_a = a.mmap_file(0, 64 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    let va_b = b.mmap_file(0, 64 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    let va_p = b.mmap_file(0, 64 * 4096, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
    assert_eq!(a.read_u64(va_a).unwrap(), 0);
    assert_eq!(b.read_u64(va_b).unwrap(), 0);
    let free = fs.device().free_pages();
    b.write_u64(va_p, 9).unwrap();
    assert_eq!(fs.device().free_pages(), free, "a private copy of a hole allocates no block");
    a.write_u64(va_a, 7).unwrap();
    assert_eq!(fs.device().free_pages(), free - 1, "the shared write allocates the block");
    assert!(leaf(&b, va_b).1.is_none(), "the other process's zero page is gone");
    assert_eq!(b.read_u64(va_b).unwrap(), 7);
    assert_eq!(b.read_u64(va_p).unwrap(), 9, "the private copy stays");
    // A write through a read-only zero-page entry replaces it as well.
    assert_eq!(a.read_u64(va_a + 4096).unwrap(), 0);
    assert_eq!(b.read_u64(va_b + 4096).unwrap(), 0);
    a.write_u64(va_a + 4096, 5).unwrap();
    let entry = leaf(&a, va_a + 4096).1;
    assert!(entry.pfn() != k.phys().zero_pfn() && entry.is_write());
    assert!(leaf(&b, va_b + 4096).1.is_none());
    assert_eq!(b.read_u64(va_b + 4096).unwrap(), 5);
}
