//! MADV_COLLAPSE of anonymous memory and of shmem, as Linux decides it.

use hmm_pagetable::Level;
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, PMD_SIZE};

use crate::testing::{kernel, leaf, record};
use crate::ThpMode;

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

#[test]
fn collapse_builds_a_thp_with_the_same_data() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    for i in (0..512).step_by(3) {
        mm.write_u64(va + i * 4096, i).unwrap();
    }
    assert_eq!(leaf(&mm, va).0, Level::Pte);
    let baseline_tables = k.phys().page_table_frames();
    let rec = record(&mm);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    assert_eq!(k.phys().page_table_frames(), baseline_tables - 1, "the PTE table is freed");
    for i in 0..512 {
        assert_eq!(mm.read_u64(va + i * 4096).unwrap(), if i % 3 == 0 { i } else { 0 });
    }
}

#[test]
fn collapse_is_einval_on_a_vma_without_a_whole_aligned_block() {
    // Regressions (scenarios/found), Linux 6.18: a 2 MiB VMA starting
    // 80 KiB past a 2 MiB boundary holds no aligned block, so even a
    // 4 KiB collapse inside it is EINVAL (not a no-op); a small VMA
    // after a hole is EINVAL too, the per-VMA error winning over the
    // hole's ENOMEM.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let w = 0x4000_0000;
    mm.mmap(w + 0x14000, PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    let err = mm.madvise(w + 0x1f8000, 4096, MadviseAdvice::Collapse).unwrap_err();
    assert_eq!(err.errno(), Errno::Inval);
    let v = 0x8000_0000;
    mm.mmap(v + 0x4000, 0xe000, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    assert_eq!(mm.madvise(v, 0x5000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    // A VMA holding an aligned block but no anon_vma yet (nothing
    // written) is EINVAL whatever the piece.
    let u = 0xc000_0000;
    mm.mmap(u, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    assert_eq!(mm.madvise(u + 0x7c000, 0xc000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(mm.madvise(u, 4096, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!(mm.madvise(u + 0x1ff000, 0x2000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    // Once it has one: a piece inside one block crossing no boundary
    // is EINVAL, one ending on the boundary its start rounds up to
    // covers zero blocks and succeeds (Linux 6.18 on the host).
    mm.write_u64(u + 3 * PMD_SIZE / 2, 1).unwrap();
    assert_eq!(mm.madvise(u + 0x7c000, 0xc000, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    mm.madvise(u, 4096, MadviseAdvice::Collapse).unwrap();
    mm.madvise(u + 0x1ff000, 0x2000, MadviseAdvice::Collapse).unwrap();
}

