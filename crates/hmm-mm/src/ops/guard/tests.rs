//! Guard regions, each rule as Linux 6.18 on this host showed it (a C
//! program calling madvise(102/103), reading with a SIGSEGV handler and
//! /proc/self/pagemap) unless it says otherwise.

use std::sync::Arc;

use hmm_pagetable::{Entry, Level};
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, MremapFlags, Prot, VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::error::{FaultError, MmError, SegvReason};
use crate::gup::FollFlags;
use crate::proc_pagemap::{PM_GUARD_REGION, PM_PRESENT, PM_SWAP};
use crate::testing::{kernel, leaf, record};
use crate::{Mm, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const SHARED: MapFlags = MapFlags::SHARED.union(MapFlags::ANONYMOUS);
const P: u64 = PAGE_SIZE;

fn install(mm: &Mm, va: u64, len: u64) -> Result<(), Errno> {
    mm.madvise(va, len, MadviseAdvice::GuardInstall).map_err(|e| e.errno())
}

fn remove(mm: &Mm, va: u64, len: u64) -> Result<(), Errno> {
    mm.madvise(va, len, MadviseAdvice::GuardRemove).map_err(|e| e.errno())
}

fn is_guard_segv(r: Result<u64, MmError>) -> bool {
    matches!(r, Err(MmError::Fault { error: FaultError::Segv(SegvReason::GuardRegion), .. }))
}

#[test]
fn install_discards_private_data_and_every_access_faults() {
    // madvise(a+1p, 2p, GUARD_INSTALL) over 8 written pages = 0: loads and
    // stores there are SIGSEGV, the page after keeps its data, pagemap
    // reads SWAP|GUARD_REGION (0x440000000000009f).
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 8 * P, Prot::RW, ANON).unwrap();
    for i in 0..8 {
        mm.write_u64(va + i * P, i + 1).unwrap();
    }
    let rec = record(&mm);
    assert_eq!(install(&mm, va + P, 2 * P), Ok(()));
    assert_eq!(rec.take_events(), [(Event::Clear, va + P, va + 3 * P)], "the populated pages are zapped");
    assert!(is_guard_segv(mm.read_u64(va + P)));
    assert!(matches!(mm.write_u64(va + 2 * P, 1), Err(MmError::Fault { .. })));
    assert_eq!(mm.read_u64(va + 3 * P), Ok(4));
    assert_eq!(mm.pagemap_entry(va + P), Ok(0x4400_0000_0000_009f));
    let word = mm.pagemap_entry(va + 2 * P).unwrap();
    assert_eq!((word & PM_SWAP != 0, word & PM_GUARD_REGION != 0, word & PM_PRESENT != 0), (true, true, false));
    // No VMA is created; the VMA may hold guards from now on.
    let guard = mm.mmap_read();
    assert_eq!(guard.len(), 1);
    assert!(guard.lookup(va).unwrap().flags.contains(VmFlags::MAYBE_GUARD));
    drop(guard);
    // Installing again counts the markers as done and announces nothing.
    assert_eq!(install(&mm, va + P, P), Ok(()));
    assert!(rec.take_events().is_empty());
    // REMOVE: the pages are empty again (anonymous memory reads zero).
    assert_eq!(remove(&mm, va, 8 * P), Ok(()));
    assert_eq!(mm.read_u64(va + P), Ok(0));
    assert_eq!(mm.pagemap_entry(va + 2 * P), Ok(0));
    assert_eq!(remove(&mm, va + P, P), Ok(()), "removing nothing is fine");
}

#[test]
fn gup_populate_and_device_exclusive_get_efault() {
    // POPULATE_READ/WRITE of a guard page and process_vm_readv/writev
    // (GUP) are EFAULT; POPULATE over [0,3) with a guard at 1 populates
    // page 0 and stops.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 3 * P, Prot::RW, ANON).unwrap();
    install(&mm, va + P, P).unwrap();
    assert_eq!(mm.get_user_pages(va + P, 1, FollFlags::empty()).unwrap_err().errno(), Errno::Fault);
    assert_eq!(mm.get_user_pages(va + P, 1, FollFlags::WRITE).unwrap_err().errno(), Errno::Fault);
    assert_eq!(mm.madvise(va, 3 * P, MadviseAdvice::PopulateRead).unwrap_err().errno(), Errno::Fault);
    assert!(leaf(&mm, va).1.is_present() && leaf(&mm, va + 2 * P).1.is_none());
    assert_eq!(mm.madvise(va + P, P, MadviseAdvice::PopulateWrite).unwrap_err().errno(), Errno::Fault);
    let guard = mm.mmap_read();
    let err = crate::device::make_device_exclusive(&guard, va + P, None).map(|_| ()).unwrap_err();
    assert_eq!(err.errno(), Errno::Fault, "GUP in make_device_exclusive");
}

#[test]
fn install_refuses_special_hugetlb_and_locked_mappings() {
    // Linux (`is_valid_guard_vma`): VM_SPECIAL, VM_HUGETLB and (install
    // only) VM_LOCKED are EINVAL. The host has no hugetlb pool and the
    // model no mlock: MAP_LOCKED on the host gave EINVAL for install and 0
    // for remove.
    let config = crate::KernelConfig { ram_bytes: 64 << 20, hugetlb_2m_pages: 1, ..Default::default() };
    let k = crate::Kernel::new(config).unwrap();
    let mm = k.create_mm().unwrap();
    let huge = mm.mmap(0, PMD_SIZE, Prot::RW, ANON | MapFlags::HUGETLB).unwrap();
    assert_eq!(install(&mm, huge, PMD_SIZE), Err(Errno::Inval));
    assert_eq!(remove(&mm, huge, PMD_SIZE), Err(Errno::Inval));
    let pagemap = Arc::new(crate::phys::Pagemap::new(crate::phys::MemoryType::PciP2pDma, None));
    let bar = k.phys().add_device_region(pagemap, 4, None).unwrap();
    let pfnmap = mm.mmap_pfn_range(4 * P, Prot::RW, bar).unwrap();
    assert_eq!(install(&mm, pfnmap, P), Err(Errno::Inval));
    assert_eq!(remove(&mm, pfnmap, P), Err(Errno::Inval));
    let locked = mm.mmap(0, 2 * P, Prot::RW, ANON).unwrap();
    mm.mmap_write().vmas_mut().lookup_mut(locked).unwrap().flags |= VmFlags::LOCKED;
    assert_eq!(install(&mm, locked, P), Err(Errno::Inval));
    assert_eq!(remove(&mm, locked, P), Ok(()));
}

#[test]
fn read_only_and_prot_none_mappings_take_guards_and_mprotect_keeps_them() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 2 * P, Prot::READ, ANON).unwrap();
    assert_eq!(install(&mm, va, P), Ok(()));
    let none = mm.mmap(0, 2 * P, Prot::NONE, ANON).unwrap();
    assert_eq!(install(&mm, none, P), Ok(()));
    mm.mprotect(none, 2 * P, Prot::RW).unwrap();
    mm.mprotect(va, 2 * P, Prot::RW).unwrap();
    assert!(is_guard_segv(mm.read_u64(none)) && is_guard_segv(mm.read_u64(va)));
    assert_eq!(mm.read_u64(none + P), Ok(0));
}

#[test]
fn dontneed_and_free_keep_markers_munmap_and_map_fixed_drop_them() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 4 * P, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 2 * P, 7).unwrap();
    install(&mm, va, P).unwrap();
    mm.madvise(va, 4 * P, MadviseAdvice::DontNeed).unwrap();
    mm.madvise(va, 4 * P, MadviseAdvice::Free).unwrap();
    assert!(is_guard_segv(mm.read_u64(va)));
    assert_eq!(mm.read_u64(va + 2 * P), Ok(0), "DONTNEED still zaps pages");
    // MAP_FIXED over the guard page unmaps it first: a fresh page.
    mm.mmap(va, P, Prot::RW, ANON | MapFlags::FIXED).unwrap();
    assert_eq!(mm.read_u64(va), Ok(0));
    install(&mm, va + P, P).unwrap();
    mm.munmap(va + P, P).unwrap();
    assert_eq!(leaf(&mm, va + P).1, Entry::NONE);
}

#[test]
fn mremap_moves_markers_and_fork_copies_them() {
    // A partial move takes its marker along; a growing move keeps them;
    // the child of a fork faults on the same pages, anonymous (even never
    // written) or shared memory, but not in a WIPEONFORK VMA.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 4 * P, Prot::RW, ANON).unwrap();
    install(&mm, va + P, 2 * P).unwrap();
    let moved = mm.mremap(va + 2 * P, P, P, MremapFlags::MAYMOVE | MremapFlags::FIXED, 0x5000_0000).unwrap();
    assert!(is_guard_segv(mm.read_u64(moved)));
    assert_eq!(install(&mm, va + 2 * P, P), Err(Errno::NoMem), "the source range is gone");
    let grown = mm.mremap(va, 2 * P, 8 * P, MremapFlags::MAYMOVE, 0).unwrap();
    assert!(is_guard_segv(mm.read_u64(grown + P)));
    let shm = mm.mmap(0, 2 * P, Prot::RW, SHARED).unwrap();
    mm.write_u64(shm + P, 8).unwrap();
    install(&mm, shm, P).unwrap();
    let wiped = mm.mmap(0, 2 * P, Prot::RW, ANON).unwrap();
    install(&mm, wiped, P).unwrap();
    mm.madvise(wiped, 2 * P, MadviseAdvice::WipeOnFork).unwrap();
    let child = mm.fork().unwrap();
    assert!(is_guard_segv(child.read_u64(grown + P)));
    assert_eq!(child.read_u64(grown), Ok(0));
    assert!(is_guard_segv(child.read_u64(shm)));
    assert_eq!(child.read_u64(shm + P), Ok(8));
    assert_eq!(child.read_u64(wiped), Ok(0));
    child.exit();
}

#[test]
fn install_splits_a_thp_and_zaps_only_the_guarded_page() {
    // A written MADV_HUGEPAGE THP, guard at +4 KiB: the PMD is split, the
    // pages around keep their data.
    let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..3 {
        mm.write_u64(va + i * P, i + 1).unwrap();
    }
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    install(&mm, va + P, P).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pte);
    assert_eq!([mm.read_u64(va), mm.read_u64(va + 2 * P)], [Ok(1), Ok(3)]);
    assert!(is_guard_segv(mm.read_u64(va + P)));
    // A whole THP under the range goes at once.
    let whole = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    let block = (whole + PMD_SIZE - 1) & !(PMD_SIZE - 1);
    mm.write_u64(block, 5).unwrap();
    install(&mm, block, PMD_SIZE).unwrap();
    assert!(is_guard_segv(mm.read_u64(block + PMD_SIZE - P)));
}

#[test]
fn file_mappings_refault_the_page_cache_after_remove() {
    // A shared mapping keeps the file's data; a private one loses its COW
    // copy (the host read 9, the file's byte, after install and remove).
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let file = k.tmpfs().create("guarded").unwrap();
    file.ftruncate(2 * P).unwrap();
    file.pwrite(0, &9u64.to_le_bytes()).unwrap();
    let shared = mm.mmap_file(0, 2 * P, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
    mm.write_u64(shared + 8, 3).unwrap();
    install(&mm, shared, P).unwrap();
    assert!(is_guard_segv(mm.read_u64(shared)));
    remove(&mm, shared, P).unwrap();
    assert_eq!(mm.read_u64(shared + 8), Ok(3));
    let private = mm.mmap_file(0, 2 * P, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
    mm.write_u64(private, 5).unwrap();
    install(&mm, private, P).unwrap();
    remove(&mm, private, P).unwrap();
    assert_eq!(mm.read_u64(private), Ok(9));
    // Truncation zaps pages but keeps markers.
    install(&mm, shared + P, P).unwrap();
    file.ftruncate(0).unwrap();
    assert!(is_guard_segv(mm.read_u64(shared + P)));
}

#[test]
fn holes_are_enomem_after_every_mapped_part_got_the_advice() {
    // [0,4) with page 1 unmapped: install over [0,4) = ENOMEM with pages
    // 0, 2 and 3 guarded; remove over it = ENOMEM with all removed.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 4 * P, Prot::RW, ANON).unwrap();
    mm.munmap(va + P, P).unwrap();
    mm.write_u64(va + 2 * P, 1).unwrap();
    assert_eq!(install(&mm, va, 4 * P), Err(Errno::NoMem));
    assert!([0, 2, 3].iter().all(|&i| is_guard_segv(mm.read_u64(va + i * P))));
    assert_eq!(remove(&mm, va, 4 * P), Err(Errno::NoMem));
    assert_eq!([mm.read_u64(va), mm.read_u64(va + 2 * P)], [Ok(0), Ok(0)]);
    // Bad arguments as every advice: unaligned EINVAL, zero length 0.
    assert_eq!(install(&mm, va + 1, P), Err(Errno::Inval));
    assert_eq!(install(&mm, va, 0), Ok(()));
    assert_eq!(install(&mm, va, u64::MAX), Err(Errno::Inval));
}

#[test]
fn a_sealed_read_only_anonymous_vma_refuses_install_but_not_remove() {
    // madvise(GUARD_INSTALL) on a sealed PROT_NONE anonymous VMA = EPERM;
    // on a sealed writable one, or sealed shared memory, = 0.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let ro = mm.mmap(0, 2 * P, Prot::NONE, ANON).unwrap();
    let rw = mm.mmap(0, 2 * P, Prot::RW, ANON).unwrap();
    let shm = mm.mmap(0, 2 * P, Prot::READ, SHARED).unwrap();
    for va in [ro, rw, shm] {
        mm.mseal(va, 2 * P, 0).unwrap();
    }
    assert_eq!(install(&mm, ro, P), Err(Errno::Perm));
    assert_eq!(remove(&mm, ro, P), Ok(()));
    assert_eq!(install(&mm, rw, P), Ok(()));
    assert_eq!(install(&mm, shm, P), Ok(()));
}

#[test]
fn guards_do_not_split_the_vma_and_it_still_merges() {
    // maps shows one VMA after install; mprotect of a part and back
    // merges again (VM_MAYBE_GUARD is sticky, not a merge barrier).
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 4 * P, Prot::RW, ANON).unwrap();
    install(&mm, va + P, P).unwrap();
    mm.mprotect(va + 2 * P, P, Prot::READ).unwrap();
    assert_eq!(mm.mmap_read().len(), 3);
    mm.mprotect(va + 2 * P, P, Prot::RW).unwrap();
    let guard = mm.mmap_read();
    assert_eq!(guard.len(), 1);
    assert!(guard.lookup(va + 3 * P).unwrap().flags.contains(VmFlags::MAYBE_GUARD));
}

#[test]
fn migrate_vma_does_not_collect_a_guard_page() {
    // Linux 7.3 delta §7.4: `migrate_vma_setup` leaves a guard page's src
    // at 0 (a marker is neither a hole nor a page), next to a collected
    // page and a collected hole.
    use crate::device::{MigrateSelect, MigrateVma, MIGRATE_PFN_MIGRATE};
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 3 * P, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    install(&mm, va + P, P).unwrap();
    let guard = mm.mmap_read();
    let mut migrate = MigrateVma::new(va, va + 3 * P, hmm_types::Owner(9), MigrateSelect::SYSTEM);
    migrate.setup(guard.locked()).unwrap();
    let collected: Vec<bool> = migrate.src.iter().map(|&w| w & MIGRATE_PFN_MIGRATE != 0).collect();
    assert_eq!(collected, [true, false, true]);
    assert_eq!(migrate.src[1], 0);
    migrate.finalize(guard.locked());
    drop(guard);
    assert_eq!(mm.read_u64(va), Ok(1));
    assert!(is_guard_segv(mm.read_u64(va + P)));
}

#[test]
fn collapse_of_a_block_with_a_guard_page_is_einval_after_the_other_blocks() {
    // Linux 6.18 on the host: two written 2 MiB blocks (4K pages), a
    // guard page in the first: MADV_COLLAPSE over both = EINVAL and the
    // second block is a THP; a block holding only a guard page = EINVAL;
    // after GUARD_REMOVE the first block collapses.
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0x4000_0000, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PMD_SIZE, 2).unwrap();
    install(&mm, va + P, P).unwrap();
    assert_eq!(mm.madvise(va, 2 * PMD_SIZE, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    assert_eq!((leaf(&mm, va).0, leaf(&mm, va + PMD_SIZE).0), (Level::Pte, Level::Pmd));
    assert_eq!(mm.read_u64(va), Ok(1));
    let only = mm.mmap(0x8000_0000, PMD_SIZE, Prot::RW, ANON).unwrap();
    install(&mm, only + P, P).unwrap();
    assert_eq!(mm.madvise(only, PMD_SIZE, MadviseAdvice::Collapse).unwrap_err().errno(), Errno::Inval);
    remove(&mm, va + P, P).unwrap();
    mm.madvise(va, PMD_SIZE, MadviseAdvice::Collapse).unwrap();
    assert_eq!((leaf(&mm, va).0, mm.read_u64(va)), (Level::Pmd, Ok(1)));
}
