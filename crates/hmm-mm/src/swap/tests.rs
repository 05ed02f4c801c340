use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmm_pagetable::{Level, SwapKind};
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, MremapFlags, Prot, PAGE_SIZE, PMD_SIZE};

use crate::gup::FollFlags;
use crate::testing::{kernel, kernel_with_swap, leaf, record};
use crate::{FaultFlags, Mm, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = PAGE_SIZE;

fn swapped(mm: &Mm, va: u64) -> bool {
    leaf(mm, va).1.swap_kind() == Some(SwapKind::Swap)
}

fn slot_of(mm: &Mm, va: u64) -> u64 {
    let (_, entry) = leaf(mm, va);
    assert_eq!(entry.swap_kind(), Some(SwapKind::Swap));
    entry.pfn().0
}

fn clear_per_page(va: u64, pages: u64) -> Vec<(Event, u64, u64)> {
    (0..pages).map(|i| (Event::Clear, va + i * PAGE, va + (i + 1) * PAGE)).collect()
}

#[test]
fn pageout_writes_pages_to_swap_and_faults_bring_them_back() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..4 {
        mm.write_u64(va + i * PAGE + 8, 100 + i).unwrap();
    }
    let free = k.phys().free_frames();
    let rec = record(&mm);
    mm.madvise(va, 4 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(rec.take_events(), clear_per_page(va, 4), "one CLEAR per page, in order");
    assert!((0..4).all(|i| swapped(&mm, va + i * PAGE)));
    assert_eq!(k.swap().used_slots(), 4);
    assert_eq!(k.phys().free_frames(), free + 4, "the frames are freed once the invalidations ended");
    for i in 0..4 {
        assert_eq!(mm.read_u64(va + i * PAGE + 8).unwrap(), 100 + i);
    }
    assert!(rec.take_events().is_empty(), "swap-in replaces no mapping");
    assert_eq!(k.swap().used_slots(), 0, "each slot is freed with its last user");
    assert_eq!((k.swap().swapped_out(), k.swap().swapped_in()), (4, 4));
    let (_, entry) = leaf(&mm, va);
    assert!(entry.is_write() && !entry.is_dirty(), "an exclusive slot comes back writable, clean: {entry:?}");
}

#[test]
fn pageout_swaps_anonymous_pages_and_unmaps_shmem_pages() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PAGE, Prot::RW, ANON).unwrap();
    let shared = mm.mmap(0, 2 * PAGE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.read_u64(va + PAGE).unwrap();
    mm.write_u64(shared, 2).unwrap();
    mm.read_u64(shared + PAGE).unwrap();
    let dirty = leaf(&mm, shared).1.pfn();
    let rec = record(&mm);
    mm.madvise(va, 3 * PAGE, MadviseAdvice::PageOut).unwrap();
    mm.madvise(shared, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    // As Linux 6.18: the shmem pages mapped only here are unmapped (not
    // swapped: shmem swap is not modelled), the zero page and hole stay.
    let mut expected = clear_per_page(va, 1);
    expected.extend(clear_per_page(shared, 2));
    assert_eq!(rec.take_events(), expected);
    assert_eq!(leaf(&mm, va + PAGE).1.pfn(), k.phys().zero_pfn());
    assert!(leaf(&mm, shared).1.is_none() && leaf(&mm, shared + PAGE).1.is_none());
    assert_eq!(k.swap().used_slots(), 1);
    // The dirty page stayed cached: the next fault maps the same page.
    assert_eq!(mm.read_u64(shared).unwrap(), 2);
    assert_eq!(leaf(&mm, shared).1.pfn(), dirty);
    assert_eq!(mm.madvise(va, 8 << 20, MadviseAdvice::PageOut).unwrap_err().errno(), Errno::NoMem);
}

#[test]
fn pageout_keeps_a_shmem_page_mapped_twice() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let shared = mm.mmap(0, PAGE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    mm.write_u64(shared, 2).unwrap();
    let child = mm.fork().unwrap();
    child.read_u64(shared).unwrap();
    mm.madvise(shared, PAGE, MadviseAdvice::PageOut).unwrap();
    assert!(leaf(&mm, shared).1.is_present() && leaf(&child, shared).1.is_present());
}

#[test]
fn without_swap_pageout_changes_nothing() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    let rec = record(&mm);
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(k.reclaim(10), 0);
    assert!(rec.take_events().is_empty());
    assert!(leaf(&mm, va).1.is_present());
}

#[test]
fn a_full_swap_takes_what_fits() {
    let k = kernel_with_swap(64, ThpMode::Never, 2);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    (0..4).for_each(|i| mm.write_u64(va + i * PAGE, i + 1).unwrap());
    let rec = record(&mm);
    mm.madvise(va, 4 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(rec.take_events(), clear_per_page(va, 2));
    assert_eq!((k.swap().used_slots(), k.swap().free_slots()), (2, 0));
    assert!(leaf(&mm, va + 2 * PAGE).1.is_present() && leaf(&mm, va + 3 * PAGE).1.is_present());
    assert_eq!(k.reclaim(10), 0);
    assert!(rec.take_events().is_empty(), "nothing announced when no slot is free");
    assert!((0..4).all(|i| mm.read_u64(va + i * PAGE) == Ok(i + 1)));
}

#[test]
fn pinned_and_referenced_pages_stay() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PAGE, Prot::RW, ANON).unwrap();
    (0..3).for_each(|i| mm.write_u64(va + i * PAGE, i).unwrap());
    let pin = mm.pin_user_pages(va, 1, FollFlags::WRITE).unwrap();
    let gup = mm.get_user_pages(va + PAGE, 1, FollFlags::empty()).unwrap();
    let rec = record(&mm);
    mm.madvise(va, 3 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(rec.take_events(), clear_per_page(va + 2 * PAGE, 1));
    assert!(leaf(&mm, va).1.is_present() && leaf(&mm, va + PAGE).1.is_present());
    pin.unpin();
    gup.into_iter().for_each(|pfn| k.phys().put(pfn));
    assert_eq!(k.reclaim(10), 2);
    assert_eq!(rec.take_events(), clear_per_page(va, 2));
}

#[test]
fn fork_shares_a_slot_and_both_sides_diverge() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    parent.write_u64(va, 1).unwrap();
    parent.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    let child = parent.fork().unwrap();
    let slot = slot_of(&parent, va);
    assert_eq!(slot_of(&child, va), slot);
    assert_eq!(k.swap().slot_count(slot), 2, "one use per entry");
    assert_eq!(child.read_u64(va).unwrap(), 1);
    assert!(!leaf(&child, va).1.is_write(), "a shared slot comes back read-only");
    assert_eq!(k.swap().slot_count(slot), 1);
    assert_eq!(parent.read_u64(va).unwrap(), 1);
    assert!(leaf(&parent, va).1.is_write(), "the last user gets it writable");
    assert_eq!(k.swap().used_slots(), 0);
    child.write_u64(va, 2).unwrap();
    parent.write_u64(va, 3).unwrap();
    assert_eq!((parent.read_u64(va).unwrap(), child.read_u64(va).unwrap()), (3, 2));
    child.exit();
}

#[test]
fn a_write_to_a_shared_slot_gets_a_private_copy() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    parent.write_u64(va, 5).unwrap();
    let child = parent.fork().unwrap();
    parent.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    assert!(!swapped(&parent, va), "a page mapped by two processes is skipped");
    child.write_u64(va, 6).unwrap();
    parent.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    let child2 = parent.fork().unwrap();
    child2.write_u64(va, 7).unwrap();
    assert_eq!(parent.read_u64(va).unwrap(), 5);
    assert_eq!((child.read_u64(va).unwrap(), child2.read_u64(va).unwrap()), (6, 7));
    assert_eq!(k.swap().used_slots(), 0);
    child.exit();
    child2.exit();
}

#[test]
fn reclaim_walks_every_address_space() {
    let k = kernel_with_swap(64, ThpMode::Never, 256);
    let mms: Vec<_> = (0..2).map(|_| k.create_mm().unwrap()).collect();
    let vas: Vec<_> = mms.iter().map(|mm| mm.mmap(0, 8 * PAGE, Prot::RW, ANON).unwrap()).collect();
    for (mm, &va) in mms.iter().zip(&vas) {
        (0..8).for_each(|i| mm.write_u64(va + i * PAGE, mm.id().0 * 100 + i).unwrap());
    }
    let gone = k.create_mm().unwrap();
    gone.exit();
    let free = k.phys().free_frames();
    assert_eq!(k.reclaim(5), 5);
    assert_eq!(k.phys().free_frames(), free + 5);
    assert_eq!(k.reclaim(100), 11);
    assert_eq!(k.phys().free_frames(), free + 16);
    assert_eq!(k.swap().used_slots(), 16);
    for (mm, &va) in mms.iter().zip(&vas) {
        assert!((0..8).all(|i| mm.read_u64(va + i * PAGE) == Ok(mm.id().0 * 100 + i)));
    }
    assert_eq!(k.phys().free_frames(), free);
}

#[test]
fn a_thp_is_split_then_paged_out_page_by_page() {
    let k = kernel_with_swap(64, ThpMode::Always, 1024);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 8, 1).unwrap();
    mm.write_u64(va + PMD_SIZE - 8, 2).unwrap();
    assert_eq!(leaf(&mm, va).0, Level::Pmd);
    let free = k.phys().free_frames();
    let rec = record(&mm);
    mm.madvise(va, PMD_SIZE, MadviseAdvice::PageOut).unwrap();
    let events = rec.take_events();
    assert_eq!(events[0], (Event::Clear, va, va + PMD_SIZE), "the split comes first");
    assert_eq!(events[1..], clear_per_page(va, 512)[..]);
    assert_eq!(k.swap().used_slots(), 512);
    assert_eq!(k.phys().free_frames(), free + 512 - 1, "the THP is freed, a PTE table was built");
    assert_eq!(mm.read_u64(va + 8).unwrap(), 1);
    assert_eq!(mm.read_u64(va + PMD_SIZE - 8).unwrap(), 2);
    assert_eq!(mm.read_u64(va + PAGE).unwrap(), 0);
}

#[test]
fn clean_lazyfree_pages_are_discarded_and_redirtied_ones_swapped() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PAGE, 2).unwrap();
    mm.madvise(va, 2 * PAGE, MadviseAdvice::Free).unwrap();
    mm.write_u64(va + PAGE, 3).unwrap();
    let rec = record(&mm);
    mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(rec.take_events(), clear_per_page(va, 2));
    assert!(leaf(&mm, va).1.is_none(), "discarded without a slot");
    assert!(swapped(&mm, va + PAGE));
    assert_eq!(k.swap().used_slots(), 1);
    assert_eq!((mm.read_u64(va).unwrap(), mm.read_u64(va + PAGE).unwrap()), (0, 3));

    let noswap = kernel(64, ThpMode::Never);
    let mm = noswap.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PAGE, 2).unwrap();
    mm.madvise(va, PAGE, MadviseAdvice::Free).unwrap();
    assert_eq!(noswap.reclaim(10), 1, "without swap only lazyfree pages go");
    assert_eq!((mm.read_u64(va).unwrap(), mm.read_u64(va + PAGE).unwrap()), (0, 2));
}

#[test]
fn zap_free_munmap_and_exit_release_slots() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let baseline = k.phys().free_frames();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 8 * PAGE, Prot::RW, ANON).unwrap();
    (0..8).for_each(|i| mm.write_u64(va + i * PAGE, i + 1).unwrap());
    mm.madvise(va, 8 * PAGE, MadviseAdvice::PageOut).unwrap();
    assert_eq!(k.swap().used_slots(), 8);
    mm.madvise(va, 2 * PAGE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(k.swap().used_slots(), 6);
    assert_eq!(mm.read_u64(va).unwrap(), 0);
    mm.madvise(va + 2 * PAGE, 2 * PAGE, MadviseAdvice::Free).unwrap();
    assert_eq!(k.swap().used_slots(), 4, "MADV_FREE drops swapped pages");
    assert!(leaf(&mm, va + 2 * PAGE).1.is_none());
    mm.munmap(va + 4 * PAGE, 2 * PAGE).unwrap();
    assert_eq!(k.swap().used_slots(), 2);
    let child = mm.fork().unwrap();
    assert_eq!(k.swap().slot_count(slot_of(&child, va + 7 * PAGE)), 2);
    mm.exit();
    assert_eq!(k.swap().used_slots(), 2, "the child still names them");
    assert_eq!(child.read_u64(va + 6 * PAGE).unwrap(), 7);
    child.exit();
    drop((mm, child));
    assert_eq!((k.swap().used_slots(), k.phys().free_frames()), (0, baseline));
    assert_eq!(k.phys().page_table_frames(), 0);
}

#[test]
fn mprotect_keeps_and_mremap_moves_swap_entries() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0x3000_0000, 2 * PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 7).unwrap();
    mm.write_u64(va + PAGE, 8).unwrap();
    mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
    mm.mprotect(va, PAGE, Prot::READ).unwrap();
    assert!(swapped(&mm, va));
    assert_eq!(mm.read_u64(va).unwrap(), 7);
    assert!(!leaf(&mm, va).1.is_write(), "a read-only VMA maps the page read-only");
    assert_eq!(mm.write_u64(va, 1).unwrap_err().errno(), Errno::Fault);
    let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
    let target = 0x5000_0000;
    assert_eq!(mm.mremap(va + PAGE, PAGE, PAGE, flags, target), Ok(target));
    assert!(swapped(&mm, target));
    assert_eq!(mm.read_u64(target).unwrap(), 8);
    assert_eq!(k.swap().used_slots(), 0);
}

#[test]
fn remote_faults_swap_in() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 9).unwrap();
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    mm.mmap_read().handle_mm_fault(va, FaultFlags::REMOTE | FaultFlags::WRITE).unwrap();
    let (_, entry) = leaf(&mm, va);
    assert!(entry.is_write() && entry.is_dirty());
    assert_eq!(mm.read_u64(va).unwrap(), 9);
}

#[test]
fn private_file_copies_swap_and_survive_a_hole_punch() {
    let k = kernel_with_swap(64, ThpMode::Never, 64);
    let mm = k.create_mm().unwrap();
    let file = k.tmpfs().create("cow").unwrap();
    file.pwrite(0, &7u64.to_le_bytes()).unwrap();
    let va = mm.mmap_file(0, PAGE, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
    mm.write_u64(va, 8).unwrap();
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    assert!(swapped(&mm, va));
    file.punch_hole(0, PAGE).unwrap();
    assert!(swapped(&mm, va), "a hole punch keeps private copies");
    assert_eq!(mm.read_u64(va).unwrap(), 8);
    mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
    file.ftruncate(0).unwrap();
    assert_eq!(k.swap().used_slots(), 0, "truncation takes private copies too");
    assert_eq!(mm.read_u64(va).unwrap_err().errno(), Errno::Fault);
}

#[test]
fn writes_survive_repeated_pageouts() {
    let k = kernel_with_swap(64, ThpMode::Never, 16);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE, Prot::RW, ANON).unwrap();
    let counter = va + PAGE;
    mm.write_u64(counter, 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pager = {
        let (mm, stop) = (mm.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                mm.madvise(va, 2 * PAGE, MadviseAdvice::PageOut).unwrap();
            }
        })
    };
    let started = Instant::now();
    let (mut n, mut buf) = (0u64, vec![0u8; PAGE as usize]);
    while n < 100_000 || (k.swap().swapped_out() < 100 && started.elapsed() < Duration::from_secs(20)) {
        n += 1;
        // A whole page per write keeps the CPU inside the page for a while.
        mm.write_bytes(va, &[n as u8; PAGE as usize]).unwrap();
        mm.read_bytes(va, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == n as u8), "a write was lost at {n}");
        assert_eq!(mm.atomic_fetch_add(counter, 1).unwrap(), n - 1);
    }
    stop.store(true, Ordering::Relaxed);
    pager.join().unwrap();
    assert_eq!(mm.read_u64(counter).unwrap(), n);
    assert!(k.swap().swapped_out() > 0, "the pager never succeeded");
}

#[test]
fn concurrent_faults_on_one_swap_entry() {
    let k = kernel_with_swap(64, ThpMode::Never, 16);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 42).unwrap();
    let mapped = k.phys().free_frames();
    for _ in 0..100 {
        mm.madvise(va, PAGE, MadviseAdvice::PageOut).unwrap();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let mm = mm.clone();
                std::thread::spawn(move || mm.read_u64(va).unwrap())
            })
            .collect();
        assert!(readers.into_iter().all(|t| t.join().unwrap() == 42));
        assert_eq!(k.phys().free_frames(), mapped, "losing faults freed their frames");
    }
    assert_eq!(k.swap().used_slots(), 0);
}

#[test]
fn racing_zaps_faults_and_pageouts_leak_nothing() {
    let k = kernel_with_swap(64, ThpMode::Never, 16);
    let baseline = k.phys().free_frames();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |advice: MadviseAdvice| {
        let (mm, stop) = (mm.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                mm.madvise(va, 4 * PAGE, advice).unwrap();
            }
        })
    };
    let threads = [spawn(MadviseAdvice::PageOut), spawn(MadviseAdvice::DontNeed), spawn(MadviseAdvice::Free)];
    let mut child = None;
    for n in 1..20_000u64 {
        let page = va + (n % 4) * PAGE;
        mm.write_u64(page, n).unwrap();
        let seen = mm.read_u64(page).unwrap();
        assert!(seen == n || seen == 0, "page holds {seen}, wrote {n}");
        if n % 1000 == 0 {
            // Forks share whatever is swapped out at that moment.
            if let Some(old) = child.replace(mm.fork().unwrap()) {
                old.exit();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    if let Some(last) = child {
        last.exit();
    }
    mm.exit();
    drop(mm);
    assert_eq!((k.swap().used_slots(), k.phys().free_frames()), (0, baseline));
}
