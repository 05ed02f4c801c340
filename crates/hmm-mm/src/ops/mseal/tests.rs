//! mseal and its EPERM points, each as Linux 6.18 on this host showed it
//! (a C program calling syscall(462, ...) and reading /proc/self/maps).

use hmm_types::{Errno, MadviseAdvice, MapFlags, MremapFlags, Prot, VmFlags, PAGE_SIZE};

use crate::testing::kernel;
use crate::{Mm, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const P: u64 = PAGE_SIZE;

/// `(first page, last page + 1, sealed)` of each VMA, relative to `base`.
fn layout(mm: &Mm, base: u64) -> Vec<(u64, u64, bool)> {
    mm.mmap_read()
        .iter()
        .map(|v| ((v.start - base) / P, (v.end - base) / P, v.flags.contains(VmFlags::SEALED)))
        .collect()
}

fn errno<T>(r: Result<T, crate::MmError>) -> Result<T, Errno> {
    r.map_err(|e| e.errno())
}

#[test]
fn arguments_and_holes() {
    // flags 1, an unaligned address, a length of -1 (rounds to 0) or
    // -8192 (wraps) = EINVAL; length 0 = 0; a range over a hole = ENOMEM
    // with nothing sealed (maps unchanged).
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 8 * P, Prot::RW, ANON).unwrap();
    assert_eq!(errno(mm.mseal(va, P, 1)), Err(Errno::Inval));
    assert_eq!(errno(mm.mseal(va + 1, P, 0)), Err(Errno::Inval));
    assert_eq!(errno(mm.mseal(va, 0, 0)), Ok(()));
    assert_eq!(errno(mm.mseal(va, u64::MAX, 0)), Err(Errno::Inval));
    assert_eq!(errno(mm.mseal(va, 0u64.wrapping_sub(2 * P), 0)), Err(Errno::Inval));
    assert_eq!(errno(mm.mseal(0u64.wrapping_sub(2 * P), 2 * P, 0)), Err(Errno::Inval));
    mm.munmap(va + 4 * P, P).unwrap();
    assert_eq!(errno(mm.mseal(va + 3 * P, 2 * P, 0)), Err(Errno::NoMem));
    assert_eq!(layout(&mm, va), [(0, 4, false), (5, 8, false)]);
    assert_eq!(errno(mm.mseal(0x7000_0000, P, 0)), Err(Errno::NoMem));
}

#[test]
fn sealing_splits_and_sealed_neighbours_merge() {
    // mseal(a+1p, 1) splits [0,4) in three; sealing [0,2) then merges
    // the two sealed pieces; sealing again is 0.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 4 * P, Prot::RW, ANON).unwrap();
    mm.mseal(va + P, 1, 0).unwrap();
    assert_eq!(layout(&mm, va), [(0, 1, false), (1, 2, true), (2, 4, false)]);
    mm.mseal(va, 2 * P, 0).unwrap();
    assert_eq!(layout(&mm, va), [(0, 2, true), (2, 4, false)]);
    assert_eq!(errno(mm.mseal(va, 2 * P, 0)), Ok(()));
    // The seal is inherited by a child.
    let child = mm.fork().unwrap();
    assert_eq!(errno(child.munmap(va, P)), Err(Errno::Perm));
    child.exit();
}

#[test]
fn munmap_fails_before_unmapping_anything_but_keeps_its_first_split() {
    // [0,8) with [4,5) sealed: munmap [1,5) = EPERM, nothing unmapped, and
    // maps shows [0,1) [1,4) [4,5) [5,8); munmap [4,5) = EPERM at once.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 8 * P, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 2 * P, 2).unwrap();
    mm.mseal(va + 4 * P, P, 0).unwrap();
    assert_eq!(errno(mm.munmap(va + P, 4 * P)), Err(Errno::Perm));
    assert_eq!(layout(&mm, va), [(0, 1, false), (1, 4, false), (4, 5, true), (5, 8, false)]);
    assert_eq!(mm.read_u64(va + 2 * P), Ok(2));
    assert_eq!(errno(mm.munmap(va + 4 * P, P)), Err(Errno::Perm));
    assert_eq!(errno(mm.munmap(va + 5 * P, 3 * P)), Ok(()));
    // MAP_FIXED over it unmaps first: EPERM too, and so does an mremap
    // whose destination is sealed.
    assert_eq!(errno(mm.mmap(va + 3 * P, 2 * P, Prot::READ, ANON | MapFlags::FIXED)), Err(Errno::Perm));
    let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
    assert_eq!(errno(mm.mremap(va, P, P, fixed, va + 4 * P)), Err(Errno::Perm));
    assert_eq!(mm.read_u64(va), Ok(0), "the source did not move");
}

#[test]
fn mprotect_changes_the_vmas_before_the_sealed_one() {
    // [0,8) with [4,6) sealed: mprotect([1,5), r--) = EPERM with [1,4)
    // read-only; mprotect of the sealed VMA to its own protection = EPERM.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 8 * P, Prot::RW, ANON).unwrap();
    mm.mseal(va + 4 * P, 2 * P, 0).unwrap();
    assert_eq!(errno(mm.mprotect(va + P, 4 * P, Prot::READ)), Err(Errno::Perm));
    let writable: Vec<(u64, bool)> =
        mm.mmap_read().iter().map(|v| ((v.start - va) / P, v.flags.contains(VmFlags::WRITE))).collect();
    assert_eq!(writable, [(0, true), (1, false), (4, true), (6, true)]);
    assert_eq!(errno(mm.mprotect(va + 4 * P, P, Prot::RW)), Err(Errno::Perm));
}

#[test]
fn mremap_refuses_a_sealed_source() {
    // Grow, shrink, move and DONTUNMAP of a sealed VMA = EPERM; growing
    // an unsealed VMA into it = ENOMEM (no room), as for any neighbour.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 8 * P, Prot::RW, ANON).unwrap();
    mm.mseal(va + 4 * P, P, 0).unwrap();
    let sealed = va + 4 * P;
    assert_eq!(errno(mm.mremap(sealed, P, 2 * P, MremapFlags::empty(), 0)), Err(Errno::Perm));
    assert_eq!(errno(mm.mremap(sealed, 2 * P, P, MremapFlags::empty(), 0)), Err(Errno::Perm));
    let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
    assert_eq!(errno(mm.mremap(sealed, P, P, fixed, va + 7 * P)), Err(Errno::Perm));
    let dontunmap = MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP;
    assert_eq!(errno(mm.mremap(sealed, P, P, dontunmap, 0)), Err(Errno::Perm));
    assert_eq!(errno(mm.mremap(va + 3 * P, P, 2 * P, MremapFlags::empty(), 0)), Err(Errno::NoMem));
}

#[test]
fn madvise_discarding_needs_a_writable_or_file_vma() {
    // Sealed anonymous rw: DONTNEED, DONTFORK, WIPEONFORK, FREE, guard
    // install/remove, DOFORK, NOHUGEPAGE = 0. Sealed anonymous PROT_NONE:
    // DONTNEED = EPERM. Sealed read-only shared memory and private file:
    // DONTNEED = 0.
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let rw = mm.mmap(0, 2 * P, Prot::RW, ANON).unwrap();
    mm.write_u64(rw, 1).unwrap();
    mm.mseal(rw, 2 * P, 0).unwrap();
    use MadviseAdvice::*;
    for advice in [DontNeed, DontFork, WipeOnFork, Free, GuardInstall, GuardRemove, DoFork, NoHugePage] {
        assert_eq!(errno(mm.madvise(rw, P, advice)), Ok(()), "{advice:?}");
    }
    let none = mm.mmap(0, 2 * P, Prot::NONE, ANON).unwrap();
    mm.mseal(none, 2 * P, 0).unwrap();
    assert_eq!(errno(mm.madvise(none, P, DontNeed)), Err(Errno::Perm));
    assert_eq!(errno(mm.madvise(none, P, NoHugePage)), Ok(()), "not discarding");
    let shm = mm.mmap(0, 2 * P, Prot::READ, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    mm.mseal(shm, 2 * P, 0).unwrap();
    assert_eq!(errno(mm.madvise(shm, P, DontNeed)), Ok(()));
    let file = k.tmpfs().create("sealed").unwrap();
    file.ftruncate(2 * P).unwrap();
    let private = mm.mmap_file(0, 2 * P, Prot::READ, MapFlags::PRIVATE, &file, 0).unwrap();
    mm.mseal(private, 2 * P, 0).unwrap();
    assert_eq!(errno(mm.madvise(private, P, DontNeed)), Ok(()));
}

#[test]
fn madvise_stops_at_the_sealed_vma_after_advising_the_earlier_ones() {
    // [0,4) rw with [1,2) read-only and sealed, pages 0 and 3 written:
    // DONTNEED over [0,4) = EPERM with page 0 zapped and page 3 kept.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 4 * P, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 7).unwrap();
    mm.write_u64(va + 3 * P, 8).unwrap();
    mm.mprotect(va + P, P, Prot::READ).unwrap();
    mm.mseal(va + P, P, 0).unwrap();
    assert_eq!(errno(mm.madvise(va, 4 * P, MadviseAdvice::DontNeed)), Err(Errno::Perm));
    assert_eq!([mm.read_u64(va), mm.read_u64(va + 3 * P)], [Ok(0), Ok(8)]);
    assert_eq!(errno(mm.madvise(va, 4 * P, MadviseAdvice::DontFork)), Err(Errno::Perm));
}
