//! Closing a file and RELEASE cost what the device has in use: the memory
//! manager finds the mappings of each device page through its reverse map
//! instead of walking the address spaces the files mirror (issue 11 item 2;
//! the report: 2 s for 1 TiB mapped, 8 s for 4 TiB, no device page at all).

use std::sync::Arc;

use hmm_dmirror::{Dmirror, DmirrorConfig};
use hmm_mm::phys::MemoryType;
use hmm_mm::testing::leaf;
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{MapFlags, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = PAGE_SIZE;
const TIB: u64 = 1 << 40;

fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Never, ..KernelConfig::default() })
        .expect("boot");
    let config = DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() };
    let dmirror = Dmirror::probe(&kernel, config).expect("probe");
    let mm = kernel.create_mm().expect("process");
    (kernel, dmirror, mm)
}

/// A 1 TiB private mapping with a page written at its start, middle and end.
fn huge_range(mm: &Mm) -> [u64; 3] {
    let va = mm.mmap(0, TIB, Prot::RW, ANON).unwrap();
    let pages = [va, va + TIB / 2, va + TIB - PAGE];
    for (i, &page) in pages.iter().enumerate() {
        mm.write_u64(page, 0x5000 + i as u64).unwrap();
    }
    pages
}

#[test]
fn release_and_close_with_no_device_page_examine_no_cpu_entry() {
    let (kernel, dmirror, mm) = machine();
    let device = dmirror.device(0).unwrap();
    let fd = device.open(&mm).unwrap();
    let pages = huge_range(&mm);
    // One page went to the device and came back: the device has memory
    // (a chunk) but no page in use.
    let mut bounce = vec![0u8; PAGE as usize];
    fd.migrate_to_dev(pages[1], 1, &mut bounce).unwrap();
    assert_eq!(mm.read_u64(pages[1]).unwrap(), 0x5001);
    let before = kernel.device_migration_scanned();
    fd.release();
    assert_eq!(kernel.device_migration_scanned(), before, "RELEASE walked CPU entries");
    drop(fd);
    assert_eq!(kernel.device_migration_scanned(), before, "close walked CPU entries");
}

#[test]
fn release_examines_only_the_mappings_of_the_pages_in_use() {
    let (kernel, dmirror, mm) = machine();
    let device = dmirror.device(0).unwrap();
    let fd = device.open(&mm).unwrap();
    let pages = huge_range(&mm);
    let mut bounce = vec![0u8; PAGE as usize];
    for &page in &pages {
        fd.migrate_to_dev(page, 1, &mut bounce).unwrap();
    }
    // A fork maps each device page a second time.
    let child = mm.fork().unwrap();
    let before = kernel.device_migration_scanned();
    fd.release();
    let scanned = kernel.device_migration_scanned() - before;
    // Each page's mappings: the parent's and the child's, nothing else.
    assert!(scanned <= 2 * pages.len() as u64, "RELEASE examined {scanned} CPU entries");
    for (i, &page) in pages.iter().enumerate() {
        for process in [&mm, &child] {
            let (_, entry) = leaf(process, page);
            assert!(entry.is_present(), "evicted before any access: {entry:?}");
            assert_eq!(kernel.phys().memory_type(entry.pfn()), MemoryType::System);
            assert_eq!(process.read_u64(page).unwrap(), 0x5000 + i as u64);
        }
    }
}
