//! The device's own contract, beyond the conformance suite: the ioctl
//! prologue's argument checks, the errors of bad input (with the command
//! block untouched), the SNAPSHOT encoding, the quirks kept or changed
//! (inclusive-end invalidation, an exited address space, a second file of
//! the same device), and the allocation counters.

use std::sync::Arc;

use hmm::pfn::{HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm_dmirror::uapi::{prot, HMM_DMIRROR_FLAGS, HMM_DMIRROR_READ};
use hmm_dmirror::{mkentry, Dmirror, DmirrorConfig, DmirrorError, HmmDmirrorCmd};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{Errno, MadviseAdvice, MapFlags, Owner, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = PAGE_SIZE;

fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Never, ..KernelConfig::default() })
        .expect("boot");
    let config = DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() };
    let dmirror = Dmirror::probe(&kernel, config).expect("probe");
    let mm = kernel.create_mm().expect("process");
    (kernel, dmirror, mm)
}

fn filled(mm: &Mm, npages: u64) -> u64 {
    let va = mm.mmap(0, npages * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..npages {
        mm.write_u64(va + i * PAGE, 0x1000 + i).unwrap();
    }
    va
}

#[test]
fn the_prologue_rejects_bad_arguments_and_leaves_the_command_block_alone() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = filled(&mm, 2);
    let out = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    let cases = [
        (HMM_DMIRROR_READ, HmmDmirrorCmd { addr: va + 8, ptr: out, npages: 1, cpages: 7, faults: 7 }),
        (HMM_DMIRROR_READ, HmmDmirrorCmd { addr: va, ptr: out, npages: 0, cpages: 7, faults: 7 }),
        (HMM_DMIRROR_READ, HmmDmirrorCmd { addr: va, ptr: out, npages: u64::MAX / 2, cpages: 7, faults: 7 }),
        (0xC028_480A, HmmDmirrorCmd { addr: va, ptr: out, npages: 1, cpages: 7, faults: 7 }),
        // FLAGS carries its flag word in npages, and the range check applies.
        (HMM_DMIRROR_FLAGS, HmmDmirrorCmd { addr: va, ptr: out, npages: 0, cpages: 7, faults: 7 }),
    ];
    for (request, cmd) in cases {
        let mut given = cmd;
        let error = fd.ioctl(request, &mut given).expect_err("bad arguments");
        assert_eq!(error.errno(), Errno::Inval, "{request:#x} {cmd:?}: {error}");
        assert_eq!(given, cmd, "on error the block is not copied back");
    }
    assert!(matches!(fd.read(va, 2, &mut [0u8; 100]), Err(DmirrorError::BufferLength { .. })));
    // A user buffer that is not mapped: EFAULT, nothing copied back.
    let mut cmd = HmmDmirrorCmd { addr: va, ptr: 0x1000, npages: 2, cpages: 7, faults: 7 };
    assert_eq!(fd.ioctl(HMM_DMIRROR_READ, &mut cmd).map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!((cmd.cpages, cmd.faults), (7, 7));
    // The good command reports its counters (no fault round: the failed
    // one above had filled the device table before its copy-out failed).
    let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages: 2, cpages: 7, faults: 7 };
    fd.ioctl(HMM_DMIRROR_READ, &mut cmd).unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (2, 0));
    assert_eq!(mm.read_u64(out + PAGE).unwrap(), 0x1001);
}

#[test]
fn an_access_outside_any_mapping_is_efault_and_a_write_to_read_only_memory_eperm() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let mut buf = vec![0u8; PAGE as usize];
    assert_eq!(fd.read(0x7000_0000_0000, 1, &mut buf).unwrap_err().errno(), Errno::Fault);
    let ro = mm.mmap(0, PAGE, Prot::READ, ANON).unwrap();
    assert_eq!(fd.write(ro, 1, &buf).unwrap_err().errno(), Errno::Perm);
    assert_eq!(fd.migrate_to_dev(0x7000_0000_0000, 1, &mut buf).unwrap_err().errno(), Errno::Inval);
}

#[test]
fn an_invalidation_clears_one_page_past_its_range_as_linux_does() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = filled(&mm, 3);
    let mut buf = vec![0u8; 3 * PAGE as usize];
    assert_eq!(fd.read(va, 3, &mut buf).unwrap().faults, 1);
    assert_eq!(fd.mapped_pages(), 3);
    mm.madvise(va, PAGE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(fd.mapped_pages(), 1, "page 0 and, by the inclusive end, page 1 are gone");
    assert_eq!(fd.read(va + 2 * PAGE, 1, &mut buf[..PAGE as usize]).unwrap().faults, 0);
}

#[test]
fn a_second_file_of_the_same_device_drops_pages_the_first_migrates_away() {
    let (_k, dmirror, mm) = machine();
    let device = dmirror.device(0).unwrap();
    let (reader, migrator) = (device.open(&mm).unwrap(), device.open(&mm).unwrap());
    let va = filled(&mm, 4);
    let mut buf = vec![0u8; 4 * PAGE as usize];
    reader.read(va, 4, &mut buf).unwrap();
    assert_eq!(reader.mapped_pages(), 4);
    migrator.migrate_to_dev(va, 4, &mut buf).unwrap();
    assert_eq!(migrator.mapped_pages(), 4);
    assert_eq!(reader.mapped_pages(), 0, "its entries named the system pages that moved");
    // The reader now gets the device's pages reported (same owner), no fault.
    let counts = reader.read(va, 4, &mut buf).unwrap();
    assert_eq!((counts.faults, u64::from_le_bytes(buf[..8].try_into().unwrap())), (1, 0x1000));
}

#[test]
fn read_after_the_process_exited_fails_instead_of_spinning() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = filled(&mm, 1);
    mm.exit();
    let error = fd.read(va, 1, &mut vec![0u8; PAGE as usize]).unwrap_err();
    // Linux 7.3: `dmirror_fault` returns EFAULT when mmget_not_zero fails.
    assert_eq!(error, DmirrorError::MmGoneInFault);
    assert_eq!(error.errno(), Errno::Fault);
}

#[test]
fn closing_a_file_lets_its_address_space_go() {
    // Regression (found by the API fuzzer): the subscription held the
    // mirror and the mirror the subscription, so a closed file kept the
    // address space, and with it its page-table root, alive forever.
    let (kernel, dmirror, mm) = machine();
    let free = kernel.phys().free_frames();
    dmirror.device(0).unwrap().open(&mm).unwrap().close();
    assert_eq!(Arc::strong_count(&mm), 1);
    mm.exit();
    drop(mm);
    assert_eq!(kernel.phys().free_frames(), free + 1, "the root table is freed with the address space");
}

#[test]
fn check_exclusive_of_a_huge_sparse_range_returns_at_once() {
    // Regression (found by the API fuzzer): the check visited every page of
    // the range, mapped or not, so 2^35 pages took minutes.
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = filled(&mm, 4);
    fd.read(va, 4, &mut vec![0u8; 4 * PAGE as usize]).unwrap();
    let _dog = hmm_mm::testing::Watchdog::new("check_exclusive of 2^35 pages", std::time::Duration::from_secs(20));
    fd.check_exclusive(0, 1 << 35).unwrap();
    fd.check_exclusive(1 << 63, 1 << 35).unwrap();
}

#[test]
fn counters_follow_pages_to_the_device_and_back_and_close_evicts() {
    let (_k, dmirror, mm) = machine();
    let device = dmirror.device(0).unwrap();
    let fd = device.open(&mm).unwrap();
    let va = filled(&mm, 8);
    let free = device.free_pages();
    let mut buf = vec![0u8; 8 * PAGE as usize];
    fd.migrate_to_dev(va, 8, &mut buf).unwrap();
    assert_eq!(device.counters(), (8, 0));
    assert_eq!(device.free_pages(), free - 8);
    assert_eq!(fd.migrate_to_sys(va, 4).unwrap().cpages, 4);
    assert_eq!(device.counters(), (8, 4));
    drop(fd);
    // Closing evicted the other four: the CPU finds them in RAM.
    for i in 0..8 {
        let word = mm.pagemap_entry(va + i * PAGE).unwrap();
        assert_ne!(word & hmm_mm::proc_pagemap::PM_PRESENT, 0, "page {i} is back: {word:#x}");
        assert_eq!(mm.read_u64(va + i * PAGE).unwrap(), 0x1000 + i);
    }
}

#[test]
fn snapshot_bytes_follow_linux_encoding() {
    let (kernel, dmirror, _mm) = machine();
    let phys = kernel.phys();
    let owner = dmirror.device(0).unwrap().owner();
    let ram = phys.alloc_folio(0, true).unwrap();
    let zero = phys.zero_pfn();
    assert_eq!(mkentry(phys, owner, HMM_PFN_ERROR), prot::ERROR);
    assert_eq!(mkentry(phys, owner, 0), prot::NONE);
    assert_eq!(mkentry(phys, owner, HMM_PFN_VALID | zero.0), prot::ZERO | prot::READ);
    assert_eq!(mkentry(phys, owner, HMM_PFN_VALID | HMM_PFN_WRITE | ram.0), prot::WRITE);
    let pmd = HMM_PFN_VALID | (9u64 << hmm::pfn::HMM_PFN_ORDER_SHIFT) | ram.0;
    assert_eq!(mkentry(phys, owner, pmd), prot::READ | prot::PMD);
    let pud = HMM_PFN_VALID | HMM_PFN_WRITE | (18u64 << hmm::pfn::HMM_PFN_ORDER_SHIFT) | ram.0;
    assert_eq!(mkentry(phys, Owner(1), pud), prot::WRITE | prot::PUD);
    phys.put(ram);
}

#[test]
fn without_coherent_memory_devices_2_and_3_do_not_exist() {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 64 << 20, ..KernelConfig::default() }).unwrap();
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig { coherent: false, chunk_pages: 512, max_chunks: 1 }).unwrap();
    assert_eq!(dmirror.devices().len(), 2);
    assert_eq!(dmirror.device(2).unwrap_err(), Errno::NoDev);
    let bad = DmirrorConfig { chunk_pages: 100, ..DmirrorConfig::default() };
    assert_eq!(Dmirror::probe(&kernel, bad).unwrap_err(), Errno::Inval);
}

/// Regression (leak): the file's subscription held the file's mirror, which
/// holds the subscription and the address space, so no closed file and no
/// address space it had mirrored was ever freed. Thousands of
/// open/read/close cycles must leave no reference on the address space and
/// every frame back once it goes.
#[test]
fn closing_a_file_frees_its_mirror_and_lets_the_address_space_go() {
    let (kernel, dmirror, mm) = machine();
    let va = filled(&mm, 4);
    let mut buf = vec![0u8; 4 * PAGE as usize];
    for round in 0..2000 {
        let fd = dmirror.device(round % 2).unwrap().open(&mm).unwrap();
        fd.read(va, 4, &mut buf).unwrap();
        drop(fd);
        assert_eq!(Arc::strong_count(&mm), 1, "round {round}: a closed file still holds the address space");
    }
    assert_eq!(u64::from_ne_bytes(buf[PAGE as usize..][..8].try_into().unwrap()), 0x1001);
    let gone = Arc::downgrade(&mm);
    drop(mm);
    assert!(gone.upgrade().is_none(), "the address space was freed");
    assert_eq!(kernel.phys().check_frames().unwrap().in_use, 0, "every frame returned");
    let machine = Arc::downgrade(&kernel);
    drop((dmirror, kernel));
    assert!(machine.upgrade().is_none(), "the device keeps no machine alive");
}

/// Regression: EXCLUSIVE on memory never touched (4 MiB, eligible for a
/// THP) corrupted the counts (the THP's PMD became the exclusive entry) and
/// exit panicked. Linux faults the pages in for write and splits the PMD:
/// the call succeeds and the device reads zeros.
#[test]
fn exclusive_on_untouched_memory_faults_it_in() {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() })
        .expect("boot");
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() }).unwrap();
    let mm = kernel.create_mm().unwrap();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
    let mut out = vec![0xffu8; 10 * PAGE as usize];
    let counts = fd.exclusive(va, 10, &mut out).unwrap();
    assert_eq!(counts.cpages, 10);
    assert!(out.iter().all(|&b| b == 0));
    mm.write_u64(va, 1).unwrap();
    assert!(fd.check_exclusive(va, 1).is_ok(), "the CPU access revoked the first page");
    drop(fd);
    mm.exit();
    drop(mm);
    assert_eq!(kernel.phys().check_frames().unwrap().in_use, 0);
}

/// Regression: a fork child PMD-maps a THP the parent PTE-maps after a copy
/// on write; closing a file (which evicts device memory from the parent's
/// address space) split the folio under the child's PMD, and exit
/// underflowed the mapcount in a destructor.
#[test]
fn closing_a_file_after_fork_and_copy_on_write_keeps_the_counts() {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() })
        .expect("boot");
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() }).unwrap();
    let mm = kernel.create_mm().unwrap();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = mm.mmap(0, 673 * PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 118 * PAGE, 1).unwrap();
    let shared = mm.mmap(0, 569 * PAGE, Prot::READ, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    let mut snap = vec![0u8; 569];
    fd.snapshot(shared, 569, &mut snap).unwrap();
    let child = mm.fork().unwrap();
    mm.write_u64(va + 433 * PAGE, 2).unwrap();
    fd.release();
    drop(fd);
    assert_eq!(child.read_u64(va + 118 * PAGE).unwrap(), 1);
    assert_eq!(child.read_u64(va + 433 * PAGE).unwrap(), 0);
    mm.exit();
    child.exit();
    drop((mm, child));
    assert_eq!(kernel.phys().check_frames().unwrap().in_use, 0);
}

/// Every command near the top of the address space (within a fault chunk
/// of 2^64, at 2^63, in the kernel half) and with page counts no buffer
/// can hold fails with Linux's errno: nothing panics, aborts or wraps.
#[test]
fn commands_at_the_edges_of_the_address_space_fail_cleanly() {
    use hmm_dmirror::uapi::{
        HMM_DMIRROR_CHECK_EXCLUSIVE, HMM_DMIRROR_EXCLUSIVE, HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS,
        HMM_DMIRROR_SNAPSHOT, HMM_DMIRROR_WRITE,
    };
    let (kernel, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let out = mm.mmap(0, 64 * PAGE, Prot::RW, ANON).unwrap();
    let requests = [
        HMM_DMIRROR_READ,
        HMM_DMIRROR_WRITE,
        HMM_DMIRROR_MIGRATE_TO_DEV,
        HMM_DMIRROR_MIGRATE_TO_SYS,
        HMM_DMIRROR_SNAPSHOT,
        HMM_DMIRROR_EXCLUSIVE,
        HMM_DMIRROR_CHECK_EXCLUSIVE,
    ];
    let top = 0u64.wrapping_sub(32 * PAGE);
    let cases = [(top, 31), (top + PAGE, 30), (1 << 63, 32), (0xffff_8000_0000_0000, 8), (1 << 47, 4)];
    for request in requests {
        for (addr, npages) in cases {
            let mut cmd = HmmDmirrorCmd { addr, ptr: out, npages, cpages: 0, faults: 0 };
            let result = fd.ioctl(request, &mut cmd);
            if request == HMM_DMIRROR_CHECK_EXCLUSIVE {
                assert!(result.is_ok(), "{request:#x} {addr:#x}: nothing there is exclusive");
                continue;
            }
            if request == HMM_DMIRROR_SNAPSHOT {
                // No VMA and no fault asked: every page reads as an error.
                result.unwrap();
                assert_eq!(cmd.cpages, npages);
                let mut bytes = vec![0u8; npages as usize];
                mm.read_bytes(out, &mut bytes).unwrap();
                assert!(bytes.iter().all(|&b| b == prot::ERROR), "{addr:#x}: {bytes:?}");
                continue;
            }
            let errno = result.expect_err("nothing is mapped there").errno();
            let expected = match request {
                HMM_DMIRROR_MIGRATE_TO_DEV | HMM_DMIRROR_MIGRATE_TO_SYS => Errno::Inval,
                _ => Errno::Fault,
            };
            assert_eq!(errno, expected, "{request:#x} {addr:#x} {npages}");
        }
    }
    // Page counts whose bounce buffer exceeds RAM: ENOMEM, as vmalloc
    // refuses, before anything is allocated. SNAPSHOT needs no buffer the
    // size of the range: it walks chunk by chunk and fails on the hole.
    let va = filled(&mm, 2);
    for npages in [kernel.phys().ram_frames() + 1, 1 << 30, 1 << 44] {
        for request in [HMM_DMIRROR_READ, HMM_DMIRROR_WRITE, HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_EXCLUSIVE] {
            let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages, cpages: 0, faults: 0 };
            assert_eq!(fd.ioctl(request, &mut cmd).unwrap_err().errno(), Errno::NoMem, "{request:#x} {npages}");
        }
        // One byte a page: the 64-page user buffer holds 2^18 of them.
        let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages, cpages: 0, faults: 0 };
        let snapshot = fd.ioctl(HMM_DMIRROR_SNAPSHOT, &mut cmd).map_err(|e| e.errno());
        assert_eq!(snapshot, if npages <= 64 * PAGE { Ok(()) } else { Err(Errno::Fault) }, "{npages}");
    }
    // The device file's mmap of more pages than memory holds: ENOMEM.
    for npages in [u64::MAX, 1 << 52, kernel.phys().ram_frames() + 1] {
        let error = fd.mmap(npages, Prot::READ, MapFlags::SHARED).unwrap_err();
        assert_eq!(error.errno(), Errno::NoMem, "{npages}");
    }
}
