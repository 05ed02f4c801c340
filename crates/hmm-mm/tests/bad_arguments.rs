//! Arguments at the edges of what the calls take (addresses near 2^64, at
//! 2^63, in the kernel half, unaligned; lengths and counts that wrap or
//! that no memory could hold; unknown flags): each fails with Linux's
//! errno, or succeeds where Linux does, and never panics, aborts or wraps.

use hmm_mm::gup::FollFlags;
use hmm_mm::{Kernel, KernelConfig, Mm, MmError};
use hmm_types::{Errno, MapFlags, Pfn, Prot, PAGE_SIZE, TASK_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// The last page below 2^64.
const TOP: u64 = 0u64.wrapping_sub(PAGE_SIZE);

fn machine() -> (std::sync::Arc<Kernel>, std::sync::Arc<Mm>) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 64 << 20, ..KernelConfig::default() }).unwrap();
    let mm = kernel.create_mm().unwrap();
    (kernel, mm)
}

fn errno<T: core::fmt::Debug>(result: Result<T, MmError>) -> Errno {
    result.expect_err("the call must fail").errno()
}

#[test]
fn mmap_ignores_a_hint_that_does_not_fit_and_refuses_impossible_lengths() {
    let (_k, mm) = machine();
    // A hint is only a hint: past the user address space it is ignored.
    for hint in [TOP, 1 << 63, TASK_SIZE] {
        let va = mm.mmap(hint, PAGE_SIZE, Prot::RW, ANON).unwrap();
        assert!(va + PAGE_SIZE <= TASK_SIZE);
    }
    for len in [u64::MAX, 1 << 63, TASK_SIZE + PAGE_SIZE] {
        assert_eq!(errno(mm.mmap(0, len, Prot::RW, ANON)), Errno::NoMem, "{len:#x}");
    }
    for addr in [TOP, 1 << 63, TASK_SIZE] {
        assert_eq!(errno(mm.mmap(addr, PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED)), Errno::NoMem);
    }
    assert_eq!(errno(mm.mmap(0x1001, PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED)), Errno::Inval);
    assert_eq!(errno(mm.munmap(TOP, PAGE_SIZE)), Errno::Inval);
    assert_eq!(errno(mm.munmap(0x1000, u64::MAX)), Errno::Inval);
}

#[test]
fn cpu_accesses_running_past_2_64_fault() {
    let (_k, mm) = machine();
    let mut buf = [0u8; 8];
    assert_eq!(errno(mm.read_bytes(u64::MAX - 3, &mut buf)), Errno::Fault);
    assert_eq!(errno(mm.write_bytes(u64::MAX - 3, &buf)), Errno::Fault);
    assert_eq!(errno(mm.read_u64(u64::MAX)), Errno::Fault);
    assert_eq!(errno(mm.write_u64(1 << 63, 1)), Errno::Fault);
    assert_eq!(errno(mm.atomic_compare_exchange(u64::MAX - 7, 0, 1)), Errno::Fault);
}

#[test]
fn gup_takes_linux_arguments() {
    let (_k, mm) = machine();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + PAGE_SIZE, 5).unwrap();
    // Unknown FOLL_* bits: EINVAL (`is_valid_gup_args`), nothing taken.
    assert_eq!(errno(mm.pin_user_pages(va, 1, FollFlags::from_bits_retain(1 << 9))), Errno::Inval);
    // No page: no work. An unaligned start names the page holding it.
    assert_eq!(mm.get_user_pages(va, 0, FollFlags::empty()).unwrap(), []);
    let pinned = mm.pin_user_pages(va + PAGE_SIZE + 123, 1, FollFlags::empty()).unwrap();
    assert_eq!(pinned.pfns().len(), 1);
    drop(pinned);
    // Past the user address space, past 2^64, or counts no range holds:
    // EFAULT at the first page without a mapping, no allocation sized by
    // the count.
    for (start, nr_pages) in [(TOP, 2), (1 << 63, 1), (va, u64::MAX), (va, 1 << 40)] {
        assert_eq!(errno(mm.get_user_pages(start, nr_pages, FollFlags::empty())), Errno::Fault, "{start:#x}");
    }
}

#[test]
fn a_pfn_range_must_name_frames_that_exist() {
    let (kernel, mm) = machine();
    let ram = kernel.phys().ram_frames();
    let cases = [
        (PAGE_SIZE, Pfn(u64::MAX)),
        (PAGE_SIZE, Pfn(1 << 40)),
        (PAGE_SIZE, Pfn(ram)),
        (2 * PAGE_SIZE, Pfn(ram - 1)),
        (u64::MAX, Pfn(0)),
    ];
    for (len, base) in cases {
        assert_eq!(errno(mm.mmap_pfn_range(len, Prot::READ, base)), Errno::Inval, "{len:#x} {base:?}");
    }
    let va = mm.mmap_pfn_range(PAGE_SIZE, Prot::READ, Pfn(ram - 1)).unwrap();
    let mut byte = [0u8; 1];
    mm.read_bytes(va, &mut byte).unwrap();
}

#[test]
fn file_offsets_and_sizes_follow_loff_t() {
    let (kernel, mm) = machine();
    let file = kernel.tmpfs().create("edges").unwrap();
    let mut buf = [0u8; 8];
    // Negative as `loff_t`: EINVAL.
    assert_eq!(errno(file.ftruncate(u64::MAX)), Errno::Inval);
    assert_eq!(errno(file.ftruncate(1 << 63)), Errno::Inval);
    assert_eq!(errno(file.pwrite(u64::MAX - 3, &buf)), Errno::Inval);
    assert_eq!(errno(file.pread(u64::MAX - 3, &mut buf)), Errno::Inval);
    assert_eq!(errno(file.punch_hole(u64::MAX - 3, 8)), Errno::Inval);
    // A hole ending past MAX_LFS_FILESIZE: EFBIG (vfs_fallocate). A read or
    // write ending past it: EINVAL, never a short write (rw_verify_area;
    // probed on 6.18 tmpfs).
    assert_eq!(errno(file.punch_hole(i64::MAX as u64 - 3, 8)), Errno::FBig);
    assert_eq!(errno(file.pwrite(i64::MAX as u64, &buf)), Errno::Inval);
    assert_eq!(errno(file.pwrite(i64::MAX as u64 - 3, &buf)), Errno::Inval);
    assert_eq!(errno(file.pread(i64::MAX as u64 - 7, &mut buf)), Errno::Inval);
    assert_eq!(file.pwrite(i64::MAX as u64 - 8, &buf).unwrap(), 8);
    // Large but valid sizes work.
    file.ftruncate(1 << 62).unwrap();
    assert_eq!(file.size(), 1 << 62);
    // A mapping must end within the largest file size: EOVERFLOW.
    for offset in [TOP, 1 << 63, i64::MAX as u64 & !(PAGE_SIZE - 1)] {
        let mapped = mm.mmap_file(0, 2 * PAGE_SIZE, Prot::READ, MapFlags::SHARED, &file, offset);
        assert_eq!(errno(mapped), Errno::Overflow, "{offset:#x}");
    }
    let va = mm.mmap_file(0, PAGE_SIZE, Prot::READ, MapFlags::SHARED, &file, (1 << 62) - PAGE_SIZE).unwrap();
    assert_eq!(mm.read_u64(va).unwrap(), 0);
}
