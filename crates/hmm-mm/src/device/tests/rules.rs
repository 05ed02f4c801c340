//! The Linux 7.3 rules of device migration the model follows (delta
//! §3.2–§3.6), one test per rule: which PMD states `setup` collects,
//! skips or splits; `cpages` per word; the compound cases of `pages`;
//! `migrate_device_pfns` and its straddling folio.

use hmm_pagetable::{Level, SwapKind};
use hmm_types::{MapFlags, Owner, Pfn, Prot, PAGE_SIZE, PMD_SIZE};

use super::super::MigrateDevice;
use super::{migrate_pfn, migrate_pfn_to_pfn, Device, MigrateSelect, MigrateVma, ANON, OWNER};
use super::{MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE};
use crate::mm::Mm;
use crate::phys::MemoryType;
use crate::testing::{kernel, leaf};
use crate::{Kernel, ThpMode};

/// `setup` alone (no driver step), under the read lock.
fn setup(mm: &Mm, start: u64, end: u64, owner: Owner, select: MigrateSelect) -> MigrateVma {
    let guard = mm.mmap_read();
    let mut migrate = MigrateVma::new(start, end, owner, select);
    migrate.setup(guard.locked()).unwrap();
    migrate
}

/// `pages` and `finalize` with whatever `dst` holds.
fn commit(mm: &Mm, migrate: &mut MigrateVma) {
    let guard = mm.mmap_read();
    migrate.pages(guard.locked());
    migrate.finalize(guard.locked());
}

/// A THP filled with `tag + i` in page `i`.
fn thp(k: &Kernel, mm: &Mm, tag: u64) -> u64 {
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    let va = va.next_multiple_of(PMD_SIZE);
    for i in 0..512 {
        mm.write_u64(va + i * PAGE_SIZE, tag + i).unwrap();
    }
    assert_eq!(leaf(mm, va).0, Level::Pmd);
    assert_eq!(k.phys().folio_order(leaf(mm, va).1.pfn()), 9);
    va
}

fn assert_whole_thp(k: &Kernel, mm: &Mm, va: u64, tag: u64) {
    let (level, entry) = leaf(mm, va);
    assert_eq!(level, Level::Pmd, "the PMD was not split");
    assert_eq!(k.phys().folio_order(entry.pfn()), 9);
    assert_eq!(mm.read_u64(va + 300 * PAGE_SIZE).unwrap(), tag + 300);
}

/// Linux: `migrate_vma_collect_hole` and `pte_none` give `MIGRATE` in an
/// anonymous VMA whatever the selection flags, and 0 in any other.
#[test]
fn holes_of_anonymous_vmas_are_collected_without_any_selection_flag() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap(); // a PTE table with three empty PTEs
    let migrate = setup(&mm, va, va + 4 * PAGE_SIZE, OWNER, MigrateSelect::DEVICE_PRIVATE);
    assert_eq!(migrate.src, [0, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_MIGRATE]);
    assert_eq!(migrate.cpages, 3);
    let shared = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    let migrate = setup(&mm, shared, shared + 2 * PAGE_SIZE, OWNER, MigrateSelect::SYSTEM);
    assert_eq!((migrate.src.as_slice(), migrate.cpages), (&[0, 0][..], 0), "not an anonymous VMA");
}

/// Linux: a present huge PMD without `SELECT_SYSTEM` is skipped whole,
/// all words 0, and not split.
#[test]
fn a_thp_is_skipped_whole_and_not_split_without_select_system() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 10);
    let select = MigrateSelect::DEVICE_PRIVATE | MigrateSelect::DEVICE_COHERENT;
    let mut migrate = setup(&mm, va + PAGE_SIZE, va + 8 * PAGE_SIZE, OWNER, select);
    assert!(migrate.src.iter().all(|&w| w == 0));
    assert_eq!(migrate.cpages, 0);
    commit(&mm, &mut migrate);
    assert_whole_thp(&k, &mm, va, 10);
}

/// Linux 7.3: `migrate_vma_collect_huge_pmd` wants `SELECT_SYSTEM` for
/// every present huge PMD, device-coherent ones included: a coherent THP
/// is skipped whole (all words 0, not split) by a migration selecting only
/// `DEVICE_COHERENT` (test_hmm's `dmirror_migrate_to_system`; hmm-tests'
/// `migrate_multiple` fails at line 1224 with cpages 0 on a 7.3 guest).
#[test]
fn a_device_coherent_pmd_is_skipped_whole_without_select_system() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::with_type(&k, OWNER, 1024, MemoryType::DeviceCoherent);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 40);
    {
        let guard = mm.mmap_read();
        let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select);
    }
    let (level, entry) = leaf(&mm, va);
    assert_eq!(level, Level::Pmd, "the THP moved whole");
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::DeviceCoherent);
    let select = MigrateSelect::DEVICE_COHERENT | MigrateSelect::COMPOUND;
    let mut migrate = setup(&mm, va, va + PMD_SIZE, OWNER, select);
    assert!(migrate.src.iter().all(|&w| w == 0));
    assert_eq!(migrate.cpages, 0);
    commit(&mm, &mut migrate);
    let (level, entry) = leaf(&mm, va);
    assert_eq!(level, Level::Pmd, "not split");
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::DeviceCoherent);
    assert_eq!(mm.read_u64(va + 300 * PAGE_SIZE).unwrap(), 40 + 300);
}

/// Linux: a huge folio whose `folio_trylock` fails is skipped whole (0),
/// without the fallback split, compound or not.
#[test]
fn a_locked_thp_is_skipped_whole_and_not_split() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 20);
    let head = leaf(&mm, va).1.pfn();
    assert!(k.phys().meta(head).try_lock());
    for select in [MigrateSelect::SYSTEM, MigrateSelect::SYSTEM | MigrateSelect::COMPOUND] {
        let mut migrate = setup(&mm, va, va + PMD_SIZE, OWNER, select);
        assert!(migrate.src.iter().all(|&w| w == 0), "{select:?}");
        commit(&mm, &mut migrate);
        assert_eq!(leaf(&mm, va).0, Level::Pmd, "{select:?}: not split");
    }
    k.phys().meta(head).unlock();
    assert_whole_thp(&k, &mm, va, 20);
}

/// Linux: a device-private PMD of another owner (or without
/// `SELECT_DEVICE_PRIVATE`) is skipped whole and not split.
#[test]
fn a_device_private_pmd_of_another_owner_is_skipped_whole_and_not_split() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 30);
    {
        let guard = mm.mmap_read();
        device.migrate_to_device_with(
            guard.locked(),
            va,
            va + PMD_SIZE,
            MigrateSelect::SYSTEM | MigrateSelect::COMPOUND,
        );
    }
    let device_pmd = leaf(&mm, va);
    assert_eq!((device_pmd.0, device_pmd.1.swap_kind()), (Level::Pmd, Some(SwapKind::DevicePrivateWrite)));
    for (owner, select) in [(Owner(0xbad), MigrateSelect::DEVICE_PRIVATE), (OWNER, MigrateSelect::SYSTEM)] {
        let mut migrate = setup(&mm, va, va + 4 * PAGE_SIZE, owner, select);
        assert!(migrate.src.iter().all(|&w| w == 0));
        commit(&mm, &mut migrate);
        assert_eq!(leaf(&mm, va), device_pmd, "untouched, not split");
    }
    assert_eq!(mm.read_u64(va + 7 * PAGE_SIZE).unwrap(), 37);
}

/// Linux: the huge zero PMD is a hole (`migrate_vma_collect_hole`), not
/// split at collection: 512 `MIGRATE` words (or one compound word when
/// `COMPOUND` covers it); inserting 4K pages splits it then.
#[test]
fn the_huge_zero_pmd_is_a_hole_split_only_by_the_insertion() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 2048);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, ANON).unwrap().next_multiple_of(PMD_SIZE);
    for block in [va, va + PMD_SIZE] {
        assert_eq!(mm.read_u64(block).unwrap(), 0);
        let (level, entry) = leaf(&mm, block);
        assert!(level == Level::Pmd && k.phys().is_zero_pfn(entry.pfn()), "a huge zero PMD");
    }
    let mut migrate = setup(&mm, va, va + PMD_SIZE, OWNER, MigrateSelect::SYSTEM);
    assert!(migrate.src.iter().all(|&w| w == MIGRATE_PFN_MIGRATE));
    assert_eq!(migrate.cpages, 512, "one word per page");
    assert_eq!(leaf(&mm, va).0, Level::Pmd, "collection does not split it");
    device.copy(&mut migrate, |_, order| device.alloc(order));
    commit(&mm, &mut migrate);
    let (level, entry) = leaf(&mm, va + 5 * PAGE_SIZE);
    assert_eq!((level, entry.swap_kind()), (Level::Pte, Some(SwapKind::DevicePrivateWrite)));

    let block = va + PMD_SIZE;
    let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
    let migrate = {
        let guard = mm.mmap_read();
        device.migrate_to_device_with(guard.locked(), block, block + PMD_SIZE, select)
    };
    assert_eq!(migrate.src[0], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    assert!(migrate.src[1..].iter().all(|&w| w == 0));
    assert_eq!(migrate.cpages, 1, "a compound word counts one");
    let (level, entry) = leaf(&mm, block);
    assert_eq!((level, entry.swap_kind()), (Level::Pmd, Some(SwapKind::DevicePrivateWrite)));
}

/// Linux: a compound hole needs the walker's hole to start and end on
/// 2 MiB boundaries. An empty PUD is one hole: unaligned, every page is
/// its own word; aligned, one compound word covers all of it (the words
/// after it are 0). Once a PMD table exists, holes are per PMD.
#[test]
fn a_compound_hole_is_the_walkers_hole_when_both_its_ends_are_aligned() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let base = 0x7000_0000_0000; // 1 GiB aligned, nothing else in its PUD
    let fixed = ANON | MapFlags::FIXED;
    assert_eq!(mm.mmap(base, 3 * PMD_SIZE, Prot::RW, fixed).unwrap(), base);
    let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
    let migrate = setup(&mm, base + PAGE_SIZE, base + 3 * PMD_SIZE, OWNER, select);
    assert!(migrate.src.iter().all(|&w| w == MIGRATE_PFN_MIGRATE), "no compound word in an unaligned hole");
    assert_eq!(migrate.cpages, 3 * 512 - 1);
    let migrate = setup(&mm, base, base + 2 * PMD_SIZE, OWNER, select);
    assert_eq!(migrate.src[0], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    assert!(migrate.src[1..].iter().all(|&w| w == 0), "one word for the whole empty PUD");
    assert_eq!(migrate.cpages, 1);
    mm.write_u64(base + 2 * PMD_SIZE, 1).unwrap(); // now a PMD table exists
    let migrate = setup(&mm, base, base + 2 * PMD_SIZE, OWNER, select);
    assert_eq!(migrate.src[0], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    assert_eq!(migrate.src[512], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    assert_eq!(migrate.cpages, 2);
}

/// Linux: `migrate_vma_pages` first clears `MIGRATE` where the driver gave
/// no destination; a compound source is then neither split nor expanded,
/// and `finalize` restores the PMD.
#[test]
fn a_compound_word_without_a_destination_is_left_whole() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 40);
    let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
    let mut migrate = setup(&mm, va, va + 2 * PMD_SIZE, OWNER, select);
    assert_eq!(migrate.cpages, 2, "the THP and the empty PMD after it");
    commit(&mm, &mut migrate);
    assert_eq!(migrate.src[0] & (MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND), MIGRATE_PFN_COMPOUND);
    assert_eq!(migrate.src[512], MIGRATE_PFN_COMPOUND, "the hole word keeps COMPOUND only");
    assert!(migrate.src[1..512].iter().chain(&migrate.src[513..]).all(|&w| w == 0), "nothing expanded");
    assert_whole_thp(&k, &mm, va, 40);
    assert!(leaf(&mm, va + PMD_SIZE).1.is_none());
}

/// Linux: `migrate_device_pages` has no VMA to split in: a large source
/// with a small destination loses `MIGRATE` and `COMPOUND`; a small source
/// with a large destination loses `MIGRATE`. Both stay on the device.
#[test]
fn migrate_device_pages_refuses_mismatched_sizes() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 50);
    let small = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(small, 77).unwrap();
    {
        let guard = mm.mmap_read();
        let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select);
        device.migrate_to_device_with(guard.locked(), small, small + PAGE_SIZE, MigrateSelect::SYSTEM);
    }
    let (head, page) = (leaf(&mm, va).1.pfn(), leaf(&mm, small).1.pfn());
    let base = *device.base.get().unwrap();
    let mut evict = MigrateDevice::setup(&k, base, 1024).unwrap();
    let (hi, pi) = ((head.0 - base.0) as usize, (page.0 - base.0) as usize);
    assert_eq!(
        evict.src[hi],
        migrate_pfn(head) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND | super::MIGRATE_PFN_WRITE
    );
    let phys = k.phys();
    let (d4k, d2m) = (phys.alloc_folio(0, false).unwrap(), phys.alloc_folio(9, false).unwrap());
    phys.meta(d4k).try_lock();
    phys.meta(d2m).try_lock();
    evict.dst[hi] = migrate_pfn(d4k);
    evict.dst[pi] = migrate_pfn(d2m) | MIGRATE_PFN_COMPOUND;
    evict.pages();
    assert_eq!(evict.src[hi] & (MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND), 0);
    assert_eq!(evict.src[pi] & MIGRATE_PFN_MIGRATE, 0);
    evict.finalize();
    assert_eq!(leaf(&mm, va).1.swap_kind(), Some(SwapKind::DevicePrivateWrite), "the folio stayed on the device");
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    assert_eq!(mm.read_u64(va + 9 * PAGE_SIZE).unwrap(), 59);
    assert_eq!(mm.read_u64(small).unwrap(), 77);
}

/// Linux: `migrate_device_pfns` overwrites each raw pfn with its word; a
/// large folio's head is `COMPOUND` and the next `nr - 1` slots are
/// zeroed whatever they held; a folio running past the end of the array
/// is dropped, every remaining slot zeroed and collection stops.
#[test]
fn migrate_device_pfns_zeroes_tails_and_stops_at_a_straddling_folio() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 60);
    let small = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(small, 1).unwrap();
    mm.write_u64(small + PAGE_SIZE, 2).unwrap();
    {
        let guard = mm.mmap_read();
        let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select);
        device.migrate_to_device_with(guard.locked(), small, small + 2 * PAGE_SIZE, MigrateSelect::SYSTEM);
    }
    let head = leaf(&mm, va).1.pfn();
    let (a, b) = (leaf(&mm, small).1.pfn(), leaf(&mm, small + PAGE_SIZE).1.pfn());
    let phys = k.phys();
    let is_unlocked = |pfn: Pfn| {
        let free = phys.meta(pfn).try_lock();
        if free {
            phys.meta(pfn).unlock();
        }
        free
    };

    let mut straddle = MigrateDevice::setup_pfns(&k, &[a, head, b]).unwrap();
    assert_eq!(straddle.src[0] & !super::MIGRATE_PFN_WRITE, migrate_pfn(a) | MIGRATE_PFN_MIGRATE);
    assert_eq!(&straddle.src[1..], &[0, 0], "the folio is dropped and b is never looked at");
    assert!(is_unlocked(head) && is_unlocked(b));
    straddle.pages();
    straddle.finalize();

    let mut pfns = vec![head];
    pfns.extend(std::iter::repeat_n(a, 511)); // not its tails: overwritten anyway
    pfns.push(b);
    let mut fits = MigrateDevice::setup_pfns(&k, &pfns).unwrap();
    assert_eq!(fits.src[0] & !super::MIGRATE_PFN_WRITE, migrate_pfn(head) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    assert!(fits.src[1..512].iter().all(|&w| w == 0));
    assert_eq!(migrate_pfn_to_pfn(fits.src[512]), Some(b));
    assert!(is_unlocked(a), "a slot overwritten as a tail takes nothing");
    fits.pages();
    fits.finalize();

    // A frame that is not device memory: EINVAL, and nothing stays locked.
    let error = MigrateDevice::setup_pfns(&k, &[a, phys.zero_pfn()]).unwrap_err();
    assert_eq!(error.errno(), hmm_types::Errno::Inval);
    assert!(is_unlocked(a));
    assert_eq!(mm.read_u64(va + 3 * PAGE_SIZE).unwrap(), 63);
    assert_eq!(mm.read_u64(small + PAGE_SIZE).unwrap(), 2);
}

/// Linux: `migrate_vma_insert_huge_pmd_page` aborts when the PMD is no
/// longer empty (a CPU fault built a PTE table meanwhile), clearing
/// `MIGRATE` on all 512 words; the driver's folio goes back.
#[test]
fn a_compound_hole_insertion_loses_to_a_pte_table_built_meanwhile() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, ANON).unwrap().next_multiple_of(PMD_SIZE);
    mm.write_u64(va + PMD_SIZE, 1).unwrap(); // a PMD table, so the hole is one PMD
    let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
    let mut migrate = setup(&mm, va, va + PMD_SIZE, OWNER, select);
    assert_eq!(migrate.src[0], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
    device.copy(&mut migrate, |_, order| device.alloc(order));
    assert_eq!(migrate.dst[0] & MIGRATE_PFN_COMPOUND, MIGRATE_PFN_COMPOUND);
    mm.write_u64(va + 7 * PAGE_SIZE, 7).unwrap(); // the CPU wins the race
    commit(&mm, &mut migrate);
    assert!(migrate.src.iter().all(|&w| w & MIGRATE_PFN_MIGRATE == 0));
    assert_eq!(leaf(&mm, va + 7 * PAGE_SIZE).0, Level::Pte);
    assert_eq!(mm.read_u64(va + 7 * PAGE_SIZE).unwrap(), 7);
    assert_eq!(device.free_pages(), 1024, "the unused device folio went back to the driver");
}

/// Linux: a THP shared by fork is collected whole; `try_to_migrate` turns
/// the child's PMD into a migration entry too, and both processes end up
/// with the device folio (read-only, still copy-on-write).
#[test]
fn a_thp_shared_by_fork_moves_whole_for_both_processes() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let parent = k.create_mm().unwrap();
    let va = thp(&k, &parent, 70);
    let child = parent.fork().unwrap();
    let migrate = {
        let guard = parent.mmap_read();
        let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select)
    };
    assert_eq!(migrate.cpages, 1);
    for mm in [&parent, &child] {
        let (level, entry) = leaf(mm, va);
        assert_eq!((level, entry.swap_kind()), (Level::Pmd, Some(SwapKind::DevicePrivateRead)));
    }
    assert_eq!(leaf(&parent, va).1.pfn(), leaf(&child, va).1.pfn(), "one device folio for both");
    assert_eq!(child.read_u64(va + 5 * PAGE_SIZE).unwrap(), 75);
    assert_eq!(parent.read_u64(va + 6 * PAGE_SIZE).unwrap(), 76);
    child.write_u64(va, 1).unwrap();
    assert_eq!(parent.read_u64(va).unwrap(), 70, "still copy-on-write");
    child.exit();
    parent.exit();
    drop((parent, child));
    assert_eq!(device.free_pages(), 1024);
    assert_eq!(k.phys().check_frames().unwrap().in_use, 0);
}

/// Linux: a pinned THP is collected whole, then put back by the unmap
/// step's pin check: all words 0 and the PMD mapping restored, not split.
#[test]
fn a_pinned_thp_is_put_back_whole() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = thp(&k, &mm, 80);
    let pin = mm.pin_user_pages(va, 1, crate::gup::FollFlags::empty()).unwrap();
    let migrate = {
        let guard = mm.mmap_read();
        let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select)
    };
    assert!(migrate.src.iter().all(|&w| w == 0));
    assert_eq!(migrate.cpages, 0);
    drop(pin);
    assert_whole_thp(&k, &mm, va, 80);
    assert_eq!(device.free_pages(), 1024);
}

/// Linux: a compound hole given 4K destinations loses `COMPOUND` and each
/// of its 512 pages is inserted on its own, every word ending exactly
/// `MIGRATE`.
#[test]
fn a_compound_hole_with_4k_destinations_is_inserted_page_by_page() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 1024);
    device.fail_huge.store(true, std::sync::atomic::Ordering::Relaxed);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, ANON).unwrap().next_multiple_of(PMD_SIZE);
    mm.write_u64(va + PMD_SIZE, 1).unwrap(); // a PMD table, so the hole is one PMD
    let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
    let migrate = {
        let guard = mm.mmap_read();
        device.migrate_to_device_with(guard.locked(), va, va + PMD_SIZE, select)
    };
    assert_eq!(migrate.cpages, 1);
    assert!(migrate.src.iter().all(|&w| w == MIGRATE_PFN_MIGRATE), "every word exactly MIGRATE");
    let (level, entry) = leaf(&mm, va + 100 * PAGE_SIZE);
    assert_eq!((level, entry.swap_kind()), (Level::Pte, Some(SwapKind::DevicePrivateWrite)));
    assert_eq!(device.free_pages(), 512);
    assert_eq!(mm.read_u64(va + 100 * PAGE_SIZE).unwrap(), 0);
}
