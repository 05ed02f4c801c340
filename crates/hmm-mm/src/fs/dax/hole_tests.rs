//! Tests of fs-dax holes under PMD faults: the huge zero page
//! (`dax_pmd_load_hole`), what a write, a 4K fault, a private write and a
//! pwrite do to it, with the invalidations each one sends.

use hmm_pagetable::Level;
use hmm_types::{Event, MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

use crate::phys::MemoryType;
use crate::testing::{kernel, leaf, record, temp_path};
use crate::ThpMode;

use super::DaxFs;

const MIB: u64 = 1 << 20;

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A formatted device with a 4 MiB file of holes.
fn setup(name: &str) -> (std::sync::Arc<crate::Kernel>, TempFile, DaxFs, crate::fs::File) {
    let k = kernel(64, ThpMode::Never);
    let path = TempFile(temp_path(name));
    let fs = DaxFs::format(&k, &path.0, 16 * MIB).unwrap();
    let file = fs.create("holes").unwrap();
    file.ftruncate(4 * MIB).unwrap();
    (k, path, fs, file)
}

#[test]
fn a_read_of_a_whole_hole_maps_the_huge_zero_page_and_a_write_replaces_it() {
    let (k, _path, fs, file) = setup("hugezero.pmem");
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    let free = fs.device().free_pages();
    assert_eq!(mm.read_u64(va + PMD_SIZE).unwrap(), 0);
    let (level, entry) = leaf(&mm, va + PMD_SIZE);
    assert_eq!((level, entry.pfn()), (Level::Pmd, k.phys().huge_zero_pfn()));
    assert!(!entry.is_write(), "read-only");
    assert_eq!(fs.device().free_pages(), free, "a read allocates no block");
    let rec = record(&mm);
    mm.write_u64(va + PMD_SIZE + 8, 5).unwrap();
    assert_eq!(
        rec.take_events(),
        [(Event::Clear, va + PMD_SIZE, va + 2 * PMD_SIZE)],
        "the huge zero page goes from every mapping before the block is mapped"
    );
    let (level, entry) = leaf(&mm, va + PMD_SIZE);
    assert_eq!(level, Level::Pmd);
    assert!(entry.is_write());
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::FsDax);
    assert_eq!(fs.device().free_pages(), free - 512, "the write allocates the whole block");
    let mut buf = [0u8; 8];
    file.pread(PMD_SIZE + 8, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 5);
}

#[test]
fn a_4k_fault_of_the_block_downgrades_the_huge_zero_page_everywhere() {
    let (k, _path, _fs, file) = setup("downgrade.pmem");
    let (a, b) = (k.create_mm().unwrap(), k.create_mm().unwrap());
    let va_a = a.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    // File offset 4K at a 2 MiB-aligned address: no PMD fits.
    let va_b = b.mmap_file(0, MIB, Prot::RW, MapFlags::SHARED, &file, PAGE_SIZE).unwrap();
    assert_eq!(a.read_u64(va_a).unwrap(), 0);
    assert_eq!(leaf(&a, va_a).0, Level::Pmd);
    let rec = record(&a);
    assert_eq!(b.read_u64(va_b).unwrap(), 0);
    assert_eq!(leaf(&b, va_b).1.pfn(), k.phys().zero_pfn(), "the 4K zero page");
    assert_eq!(rec.take_events(), [(Event::Clear, va_a, va_a + PMD_SIZE)]);
    assert!(leaf(&a, va_a).1.is_none(), "the huge zero page is gone");
    assert_eq!(a.read_u64(va_a).unwrap(), 0);
    assert_eq!(leaf(&a, va_a).0, Level::Pte, "the block is mapped by PTEs from now on");
}

#[test]
fn a_private_write_zaps_the_pmd_and_copies_one_page() {
    let (k, _path, fs, file) = setup("private.pmem");
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    assert_eq!(leaf(&mm, va).1.pfn(), k.phys().huge_zero_pfn());
    let free = fs.device().free_pages();
    let rec = record(&mm);
    mm.write_u64(va, 3).unwrap();
    let events = rec.take_events();
    assert_eq!(events.first(), Some(&(Event::Clear, va, va + PMD_SIZE)), "the PMD is zapped whole: {events:?}");
    let (level, entry) = leaf(&mm, va);
    assert_eq!(level, Level::Pte);
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::System, "an anonymous copy");
    assert!(leaf(&mm, va + PAGE_SIZE).1.is_none(), "the rest refaults later");
    assert_eq!(fs.device().free_pages(), free, "no block for a private copy");
}

#[test]
fn pwrite_into_a_hole_unmaps_its_huge_zero_page_and_allocates_one_page() {
    let (k, _path, fs, file) = setup("pwrite.pmem");
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va + 8).unwrap(), 0);
    let free = fs.device().free_pages();
    let rec = record(&mm);
    file.pwrite(8, &6u64.to_le_bytes()).unwrap();
    assert!(rec.take_events().contains(&(Event::Clear, va, va + PMD_SIZE)));
    assert_eq!(fs.device().free_pages(), free - 1, "ext4 allocates the written page alone");
    assert_eq!(mm.read_u64(va + 8).unwrap(), 6, "the mapping sees the data");
    assert_eq!(leaf(&mm, va).0, Level::Pte, "a partly allocated block maps by PTEs");
}

#[test]
fn a_block_mixing_a_hole_and_an_unwritten_extent_maps_by_ptes() {
    // Linux 7.3 (the guest, `dax_unwritten_extents.hmm`): a 2 MiB block
    // with a fallocated piece is not one extent, so its faults fall back
    // to 4K; a block fallocated whole behaves as a whole hole.
    let (k, _path, fs, file) = setup("unwritten.pmem");
    file.fallocate_keep_size(16 * PAGE_SIZE, 4 * PAGE_SIZE).unwrap();
    file.fallocate_keep_size(PMD_SIZE, PMD_SIZE).unwrap();
    let free = fs.device().free_pages();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    let (level, entry) = leaf(&mm, va);
    assert_eq!((level, entry.pfn()), (Level::Pte, k.phys().zero_pfn()));
    mm.write_u64(va + 17 * PAGE_SIZE, 3).unwrap();
    assert_eq!(leaf(&mm, va + 17 * PAGE_SIZE).0, Level::Pte);
    assert_eq!(fs.device().free_pages(), free - 1, "one block for the 4K write");
    assert_eq!(mm.read_u64(va + PMD_SIZE).unwrap(), 0);
    let (level, entry) = leaf(&mm, va + PMD_SIZE);
    assert_eq!((level, entry.pfn()), (Level::Pmd, k.phys().huge_zero_pfn()));
    // Punching the fallocated piece out leaves a whole hole again (seen
    // from a new mapping: the old one keeps its PTE table).
    file.punch_hole(0, PMD_SIZE).unwrap();
    let other = k.create_mm().unwrap();
    let va = other.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(other.read_u64(va + 8).unwrap(), 0);
    let (level, entry) = leaf(&other, va);
    assert_eq!((level, entry.pfn()), (Level::Pmd, k.phys().huge_zero_pfn()));
    // More than the device holds is ENOSPC and reserves nothing.
    assert_eq!(file.fallocate_keep_size(0, 64 * MIB).unwrap_err().errno(), hmm_types::Errno::NoSpc);
}

#[test]
fn a_private_write_to_a_hole_copies_zeros_into_a_reused_frame() {
    // Found by `hmm fuzz --kernel vm --seed 12`: the private copy of a
    // hole took a frame a freed copy had written, and showed its bytes.
    let (k, _path, _fs, file) = setup("cowhole.pmem");
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 * MIB, Prot::RW, MapFlags::PRIVATE, &file, PAGE_SIZE).unwrap();
    for page in 0..64 {
        for word in 0..PAGE_SIZE / 8 {
            mm.write_u64(va + page * PAGE_SIZE + word * 8, !0).unwrap();
        }
    }
    mm.munmap(va, 64 * PAGE_SIZE).unwrap();
    for page in 64..128 {
        let at = va + page * PAGE_SIZE;
        mm.write_u64(at, 1).unwrap();
        assert_eq!(mm.read_u64(at + 8).unwrap(), 0, "page {page} of the copy is zeros");
        assert_eq!(mm.read_u64(at + PAGE_SIZE - 8).unwrap(), 0);
    }
}

#[test]
fn an_allocation_caches_the_hole_it_looks_up_so_a_later_punch_merges_into_it() {
    // Linux 7.3 (the guest, `dax_allocation_caches_hole.hmm`): a punch of
    // 6 pages at a block's start, in a file never looked up, caches a hole
    // of 6 pages, and a read PMD fault there maps 4K entries; after a
    // write (or a fallocate) elsewhere looked the hole up whole, the same
    // punch merges into the cached hole and the fault maps the huge zero
    // page.
    let huge_zero_after = |prepare: &dyn Fn(&crate::fs::File)| {
        let (k, _path, _fs, file) = setup("escache.pmem");
        prepare(&file);
        file.punch_hole(PMD_SIZE, 6 * PAGE_SIZE).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_file(0, PMD_SIZE, Prot::READ, MapFlags::SHARED, &file, PMD_SIZE).unwrap();
        assert_eq!(mm.read_u64(va + 6 * PAGE_SIZE).unwrap(), 0);
        let (level, entry) = leaf(&mm, va + 6 * PAGE_SIZE);
        let huge = level == Level::Pmd && entry.pfn() == k.phys().huge_zero_pfn();
        assert!(huge || (level == Level::Pte && entry.pfn() == k.phys().zero_pfn()), "{level:?}");
        huge
    };
    assert!(!huge_zero_after(&|_| ()));
    assert!(huge_zero_after(&|file| {
        file.pwrite(0, &[1; 9]).unwrap();
    }));
    assert!(huge_zero_after(&|file| file.fallocate_keep_size(16 * PAGE_SIZE, PAGE_SIZE).unwrap()));
}

#[test]
fn a_write_meeting_a_short_cached_hole_allocates_it_and_maps_4k() {
    // Linux 7.3 (the guest, `dax_allocation_caches_hole.hmm`): the cached
    // one-page hole at the block's start limits ext4's allocation to that
    // page, and the fault falls back to a 4K entry at the written page.
    let (k, _path, fs, file) = setup("esshortwrite.pmem");
    file.punch_hole(PMD_SIZE, PAGE_SIZE).unwrap();
    let free = fs.device().free_pages();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, PMD_SIZE).unwrap();
    mm.write_u64(va + 0x1fd000, 5).unwrap();
    assert_eq!(leaf(&mm, va + 0x1fd000).0, Level::Pte);
    assert!(!leaf(&mm, va).1.is_present(), "the allocated first page is not mapped");
    assert_eq!(fs.device().free_pages(), free - 2, "the cached hole's page and the written one");
}

#[test]
fn a_read_caches_the_hole_a_truncation_then_shortens() {
    // Linux 7.3 (the guest, `dax_read_caches_hole.hmm`): pread's lookup
    // caches the whole hole; the shrink trims it, the regrowth does not
    // lengthen it, and the PMD read fault falls back to a 4K zero page.
    let (k, _path, _fs, file) = setup("esread.pmem");
    let mut byte = [0u8; 8];
    assert_eq!(file.pread(0, &mut byte).unwrap(), 8);
    file.ftruncate(0x14f000).unwrap();
    file.ftruncate(0x232000).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, PMD_SIZE, Prot::READ, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va + 0x32000).unwrap(), 0);
    let (level, entry) = leaf(&mm, va + 0x32000);
    assert_eq!(level, Level::Pte);
    assert_eq!(entry.pfn(), k.phys().zero_pfn());
}
