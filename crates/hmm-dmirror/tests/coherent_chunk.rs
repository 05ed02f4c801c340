//! What Linux 7.3's test device does with its device-coherent memory, as a
//! guest running hmm-tests showed: one chunk at a fixed address (a second
//! `memremap_pages` there conflicts), laid out by the allocation that
//! registered it; a close evicts the chunk but keeps it; RELEASE removes
//! it; and a device-coherent THP stays where it is when the device asks for
//! its coherent memory back (`migrate_vma_collect_huge_pmd` wants
//! `SELECT_SYSTEM` for any present huge PMD).

use std::sync::Arc;

use hmm_dmirror::{Dmirror, DmirrorConfig, DmirrorFile};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// Device 2: the first coherent device.
const COHERENT: usize = 2;

fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
    let config = KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() };
    let kernel = Kernel::new(config).expect("boot");
    // 16 MiB chunks: eight 2 MiB folios when laid out for folios.
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() }).unwrap();
    let mm = kernel.create_mm().expect("process");
    (kernel, dmirror, mm)
}

/// A 2 MiB aligned anonymous THP, page `i` holding `0x5000 + i`.
fn thp(mm: &Mm) -> u64 {
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap().next_multiple_of(PMD_SIZE);
    for i in 0..512 {
        mm.write_u64(va + i * PAGE_SIZE, 0x5000 + i).unwrap();
    }
    va
}

fn to_device(fd: &DmirrorFile, va: u64, npages: u64) -> Result<u64, Errno> {
    let mut out = vec![0u8; (npages * PAGE_SIZE) as usize];
    fd.migrate_to_dev(va, npages, &mut out).map(|c| c.cpages).map_err(|e| e.errno())
}

fn one_page(mm: &Mm) -> u64 {
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 7).unwrap();
    va
}

/// The module's own chunk holds 4K pages (`dmirror_device_init` registers
/// it for small pages) and a second chunk cannot be registered: a THP
/// lands on the device as 4K pages, which come back one by one.
#[test]
fn the_probe_chunk_of_a_coherent_device_gives_4k_pages_only() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(COHERENT).unwrap().open(&mm).unwrap();
    let va = thp(&mm);
    assert_eq!(to_device(&fd, va, 512), Ok(512));
    assert_eq!(fd.migrate_to_sys(va, 512).unwrap().cpages, 512, "4K coherent pages are collected");
    assert_eq!(mm.read_u64(va + 300 * PAGE_SIZE).unwrap(), 0x5000 + 300);
}

/// After RELEASE the next allocation registers the chunk again, for
/// folios: the THP moves whole; 7.3 then skips the coherent PMD when the
/// device selects only its coherent memory (cpages 0, hmm-tests'
/// `migrate_multiple` line 1224), and a 4K page finds no free page and no
/// room for a second chunk (ENOENT from the read-back).
#[test]
fn after_release_a_thp_makes_the_chunk_all_folios_and_stays_on_the_device() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(COHERENT).unwrap().open(&mm).unwrap();
    fd.release();
    let va = thp(&mm);
    assert_eq!(to_device(&fd, va, 512), Ok(512));
    assert_eq!(fd.migrate_to_sys(va, 512).unwrap().cpages, 0, "a present huge PMD needs SELECT_SYSTEM");
    assert_eq!(mm.read_u64(va + 300 * PAGE_SIZE).unwrap(), 0x5000 + 300, "the CPU reads coherent memory in place");
    assert_eq!(to_device(&fd, one_page(&mm), 1), Err(Errno::NoEnt));
}

/// Closing a file evicts every chunk but removes none
/// (`dmirror_fops_release`): the folio layout outlives the close.
#[test]
fn a_close_keeps_the_chunk_and_its_layout() {
    let (_k, dmirror, mm) = machine();
    let device = dmirror.device(COHERENT).unwrap();
    let fd = device.open(&mm).unwrap();
    fd.release();
    let va = thp(&mm);
    assert_eq!(to_device(&fd, va, 512), Ok(512));
    drop(fd);
    assert_eq!(mm.read_u64(va + 5 * PAGE_SIZE).unwrap(), 0x5005);
    let fd = device.open(&mm).unwrap();
    assert_eq!(to_device(&fd, one_page(&mm), 1), Err(Errno::NoEnt), "still the chunk of folios");
    assert_eq!(to_device(&fd, va, 512), Ok(512), "its folios are free again");
}
