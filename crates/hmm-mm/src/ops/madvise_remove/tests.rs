//! MADV_REMOVE per memory kind (answers of Linux 6.18 and the 7.3.4 guest:
//! scenarios/corpus/madvise_remove_shmem.hmm,
//! scenarios/device/madvise_remove_dax.hmm), and the DAX huge zero page cut
//! at a VMA edge (scenarios/device/dax_huge_zero_split.hmm).

use hmm_pagetable::Level;
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

use crate::fs::dax::DaxFs;
use crate::testing::{kernel, leaf, record, temp_path};
use crate::{Kernel, KernelConfig, ThpMode};

const PAGE: u64 = 4096;
const REMOVE: MadviseAdvice = MadviseAdvice::Remove;

#[test]
fn shared_memory_is_punched_in_every_mapping_and_other_kinds_refuse() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, shared).unwrap();
    mm.write_u64(va, 7).unwrap();
    mm.write_u64(va + PAGE, 8).unwrap();
    let child = mm.fork().unwrap();
    let rec = record(&child);
    // A length inside a page is rounded up to it.
    mm.madvise(va, PAGE / 2, REMOVE).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PAGE)], "the other process's mapping goes too");
    assert_eq!(child.read_u64(va).unwrap(), 0);
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    assert_eq!(mm.read_u64(va + PAGE).unwrap(), 8, "the next page is kept");

    let private = mm.mmap(0, PAGE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    mm.write_u64(private, 1).unwrap();
    assert_eq!(mm.madvise(private, PAGE, REMOVE).unwrap_err().errno(), Errno::Inval);
    assert_eq!(mm.read_u64(private).unwrap(), 1);
    // A gap after the mapped part: the part is punched, then ENOMEM.
    mm.write_u64(va + 3 * PAGE, 9).unwrap();
    assert_eq!(mm.madvise(va + 3 * PAGE, PMD_SIZE, REMOVE).unwrap_err().errno(), Errno::NoMem);
    assert_eq!(mm.read_u64(va + 3 * PAGE).unwrap(), 0);
}

#[test]
fn fs_dax_punches_the_file_and_a_private_mapping_is_eacces() {
    let k = kernel(64, ThpMode::Never);
    let path = temp_path("remove.pmem");
    let fs = DaxFs::format(&k, &path, 16 << 20).unwrap();
    let file = fs.create("r").unwrap();
    file.ftruncate(4 << 20).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 << 20, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PAGE, 2).unwrap();
    mm.madvise(va, PAGE, REMOVE).unwrap();
    assert!(leaf(&mm, va + PAGE).1.is_none(), "the whole PMD went");
    let mut buf = [0u8; 8];
    file.pread(0, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 0, "the file has the hole");
    assert_eq!(mm.read_u64(va + PAGE).unwrap(), 2);
    let private = mm.mmap_file(0, PAGE, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
    assert_eq!(mm.madvise(private, PAGE, REMOVE).unwrap_err().errno(), Errno::Acces);
    drop((mm, file, fs));
    let _ = std::fs::remove_file(path);
}

#[test]
fn shared_hugetlb_drops_whole_huge_pages_and_zeroes_partial_ones() {
    let k = Kernel::new(KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 4, ..KernelConfig::default() }).unwrap();
    let mm = k.create_mm().unwrap();
    let huge = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::HUGETLB;
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, huge).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PMD_SIZE, 2).unwrap();
    mm.write_u64(va + PMD_SIZE + PAGE, 3).unwrap();
    mm.madvise(va, PMD_SIZE, REMOVE).unwrap();
    assert!(leaf(&mm, va).1.is_none());
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    mm.madvise(va + PMD_SIZE, PAGE, REMOVE).unwrap();
    assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd, "a partial huge page stays mapped");
    assert_eq!(mm.read_u64(va + PMD_SIZE).unwrap(), 0, "and is zeroed");
    assert_eq!(mm.read_u64(va + PMD_SIZE + PAGE).unwrap(), 3);
    let private = mm.mmap(0, PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::HUGETLB).unwrap();
    assert_eq!(mm.madvise(private, PMD_SIZE, REMOVE).unwrap_err().errno(), Errno::Acces);
}

#[test]
fn a_dax_huge_zero_pmd_cut_at_an_edge_goes_whole_and_an_anonymous_one_splits() {
    let k = kernel(64, ThpMode::Always);
    let path = temp_path("hzsplit.pmem");
    let fs = DaxFs::format(&k, &path, 16 << 20).unwrap();
    let file = fs.create("z").unwrap();
    file.ftruncate(4 << 20).unwrap();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap_file(0, 4 << 20, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    assert_eq!(leaf(&mm, va).1.pfn(), k.phys().huge_zero_pfn());
    mm.mprotect(va + PAGE, PAGE, Prot::READ).unwrap();
    for page in 0..3 {
        assert!(leaf(&mm, va + page * PAGE).1.is_none(), "page {page} unmapped");
    }
    let anon = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    let anon = anon.next_multiple_of(PMD_SIZE);
    assert_eq!(mm.read_u64(anon).unwrap(), 0);
    assert_eq!(leaf(&mm, anon).0, Level::Pmd);
    mm.mprotect(anon + PAGE, PAGE, Prot::READ).unwrap();
    assert_eq!(leaf(&mm, anon + 2 * PAGE).1.pfn(), k.phys().zero_pfn(), "4K zero-page entries");
    drop((mm, file, fs));
    let _ = std::fs::remove_file(path);
}
