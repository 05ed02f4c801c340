//! Device memory shared after fork and moved by mremap: the other
//! mappings of a page are found through the reverse map, not at the same
//! address in other processes (regressions of issue 11 item 2).

use std::time::Duration;

use hmm_types::{MremapFlags, Prot, PAGE_SIZE};

use super::{to_device, Device, ANON, OWNER};
use crate::device::MigrateDevice;
use crate::gup::FollFlags;
use crate::phys::MemoryType;
use crate::testing::{kernel, leaf, Watchdog};
use crate::ThpMode;

const NR: u64 = 4;

/// Data on the device, a fork, and the parent's range moved elsewhere
/// with `mremap(MAYMOVE|FIXED)`: returns (parent's new address, child's
/// address).
fn fork_then_move(device: &Device, parent: &crate::Mm) -> (std::sync::Arc<crate::Mm>, u64, u64) {
    let va = parent.mmap(0, NR * PAGE_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..NR {
        parent.write_u64(va + i * PAGE_SIZE, 100 + i).unwrap();
    }
    to_device(device, parent, va, va + NR * PAGE_SIZE);
    let child = parent.fork().unwrap();
    let spot = parent.mmap(0, NR * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
    let moved = parent.mremap(va, NR * PAGE_SIZE, NR * PAGE_SIZE, flags, spot).unwrap();
    assert_eq!(moved, spot);
    assert!(leaf(parent, moved).1.swap_kind().is_some_and(|k| k.is_device_private()));
    (child, moved, va)
}

#[test]
fn cpu_read_in_the_parent_after_fork_and_mremap_returns() {
    let _watchdog = Watchdog::new("parent read after fork+mremap", Duration::from_secs(30));
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 16);
    let parent = k.create_mm().unwrap();
    let (child, moved, va) = fork_then_move(&device, &parent);
    for i in 0..NR {
        assert_eq!(parent.read_u64(moved + i * PAGE_SIZE).unwrap(), 100 + i);
    }
    for i in 0..NR {
        assert_eq!(child.read_u64(va + i * PAGE_SIZE).unwrap(), 100 + i);
    }
    child.write_u64(va, 7).unwrap();
    assert_eq!(parent.read_u64(moved).unwrap(), 100, "the child's write copied the page");
    assert_eq!(device.free_pages(), 16, "both mappings left device memory together");
}

#[test]
fn cpu_read_in_the_child_after_the_parents_mremap_returns() {
    let _watchdog = Watchdog::new("child read after fork+mremap", Duration::from_secs(30));
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 16);
    let parent = k.create_mm().unwrap();
    let (child, moved, va) = fork_then_move(&device, &parent);
    for i in 0..NR {
        assert_eq!(child.read_u64(va + i * PAGE_SIZE).unwrap(), 100 + i);
    }
    assert!(leaf(&parent, moved).1.is_present(), "the parent's mapping moved back with the child's");
    parent.write_u64(moved + PAGE_SIZE, 9).unwrap();
    assert_eq!(child.read_u64(va + PAGE_SIZE).unwrap(), 101);
    assert_eq!(device.free_pages(), 16);
}

#[test]
fn pin_and_eviction_by_frame_after_fork_and_mremap() {
    let _watchdog = Watchdog::new("pin/evict after fork+mremap", Duration::from_secs(30));
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 16);
    let parent = k.create_mm().unwrap();
    let (child, moved, va) = fork_then_move(&device, &parent);
    let pin = parent.pin_user_pages(moved, 1, FollFlags::LONGTERM).unwrap();
    assert_eq!(k.phys().memory_type(pin.pfns()[0]), MemoryType::System);
    assert_eq!(child.read_u64(va).unwrap(), 100);
    drop(pin);
    // The rest leaves by frame number, found through the reverse map.
    let base = *device.base.get().unwrap();
    let evicted = MigrateDevice::to_ram(&k, base, 16).unwrap();
    assert_eq!(evicted, NR - 1);
    assert_eq!(device.free_pages(), 16);
    for i in 1..NR {
        assert!(leaf(&parent, moved + i * PAGE_SIZE).1.is_present());
        assert!(leaf(&child, va + i * PAGE_SIZE).1.is_present());
        assert_eq!(parent.read_u64(moved + i * PAGE_SIZE).unwrap(), 100 + i);
        assert_eq!(child.read_u64(va + i * PAGE_SIZE).unwrap(), 100 + i);
    }
}

#[test]
fn a_thp_still_pmd_mapped_after_fork_is_not_split_under_the_other_process() {
    let _watchdog = Watchdog::new("THP shared after fork", Duration::from_secs(30));
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, hmm_types::PMD_SIZE, Prot::RW, ANON).unwrap();
    let nr = hmm_types::PMD_SIZE / PAGE_SIZE;
    for i in 0..nr {
        parent.write_u64(va + i * PAGE_SIZE, 0x100 + i).unwrap();
    }
    let child = parent.fork().unwrap();
    // The parent's write splits its PMD and copies one page; the child's
    // PMD still maps the whole THP, so its mapcount (1 PMD + 511 PTEs)
    // happens to be a multiple of 512 although the pages are not mapped
    // alike.
    parent.write_u64(va + 100 * PAGE_SIZE, 7).unwrap();
    assert_eq!(leaf(&child, va).0, hmm_pagetable::Level::Pmd);
    to_device(&device, &parent, va, va + hmm_types::PMD_SIZE);
    for i in 0..nr {
        let want = if i == 100 { 7 } else { 0x100 + i };
        assert_eq!(parent.read_u64(va + i * PAGE_SIZE).unwrap(), want);
        assert_eq!(child.read_u64(va + i * PAGE_SIZE).unwrap(), 0x100 + i, "the child's page {i}");
    }
}

#[test]
fn eviction_by_frame_moves_a_pmd_mapped_device_folio_whole() {
    let _watchdog = Watchdog::new("device THP eviction", Duration::from_secs(30));
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let len = hmm_types::PMD_SIZE;
    let va = mm.mmap(0, len, Prot::RW, ANON).unwrap();
    for i in 0..len / PAGE_SIZE {
        mm.write_u64(va + i * PAGE_SIZE, 0x300 + i).unwrap();
    }
    let guard = mm.mmap_read();
    let select = super::MigrateSelect::SYSTEM | super::MigrateSelect::COMPOUND;
    device.migrate_to_device_with(guard.locked(), va, va + len, select);
    drop(guard);
    // It moved to the device whole, and mremap moved the range.
    let spot = mm.mmap(0, len, Prot::RW, ANON).unwrap();
    let moved = mm.mremap(va, len, len, MremapFlags::MAYMOVE | MremapFlags::FIXED, spot).unwrap();
    let (level, entry) = leaf(&mm, moved);
    assert_eq!(level, hmm_pagetable::Level::Pmd);
    assert!(entry.swap_kind().is_some_and(|k| k.is_device_private()));
    let base = *device.base.get().unwrap();
    assert_eq!(MigrateDevice::to_ram(&k, base, 1024).unwrap(), 512);
    let (level, entry) = leaf(&mm, moved);
    assert_eq!(level, hmm_pagetable::Level::Pmd, "still one PMD, now of a RAM THP");
    assert!(entry.is_present());
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::System);
    assert_eq!(device.free_pages(), 1024);
    for i in 0..len / PAGE_SIZE {
        assert_eq!(mm.read_u64(moved + i * PAGE_SIZE).unwrap(), 0x300 + i);
    }
}
