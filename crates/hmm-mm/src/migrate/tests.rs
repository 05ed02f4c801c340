//! Tests of page migration: data, frames and events; accessors waiting on
//! migration entries; races with writers, munmap, mprotect, fork and
//! MADV_DONTNEED; skipped pages; frame accounting; errors.

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hmm_pagetable::{Level, SwapKind};
use hmm_types::{Errno, Event, MadviseAdvice, MapFlags, Prot, VaRange, PMD_SIZE};

use crate::gup::FollFlags;
use crate::phys::PageFlags;
use crate::testing::{kernel, leaf, record};
use crate::{Kernel, MigrateStats, MigrationPoint, MmError, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = 4096;

fn stats(moved: u64, skipped: u64) -> Result<MigrateStats, MmError> {
    Ok(MigrateStats { moved, skipped })
}

/// A hook that reports each folio about to be copied and holds the copy
/// (migration entries installed) until released. Dropping it releases all.
struct Pause {
    entered: mpsc::Receiver<MigrationPoint>,
    release: mpsc::Sender<()>,
}

fn pause(k: &Kernel) -> Pause {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    k.set_migration_hook(Some(Arc::new(move |point: &MigrationPoint| {
        let _ = entered_tx.lock().send(*point);
        let _ = release_rx.lock().recv();
    })));
    Pause { entered, release }
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn data_moves_to_new_frames_under_one_clear_per_page() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 11).unwrap();
    mm.write_u64(va + PAGE + 8, 22).unwrap();
    mm.read_u64(va + 2 * PAGE).unwrap();
    mm.mprotect(va + PAGE, PAGE, Prot::READ).unwrap();
    let old = [leaf(&mm, va).1.pfn(), leaf(&mm, va + PAGE).1.pfn()];
    let free = k.phys().free_frames();
    let rec = record(&mm);
    assert_eq!(mm.migrate_pages(va, 4 * PAGE), stats(2, 0), "the zero page and the hole are not candidates");
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PAGE), (Event::Clear, va + PAGE, va + 2 * PAGE)]);
    assert_eq!(k.phys().free_frames(), free, "each move allocated one frame and freed one");
    let (level, writable) = leaf(&mm, va);
    let (_, read_only) = leaf(&mm, va + PAGE);
    assert_eq!(level, Level::Pte);
    assert!(writable.pfn() != old[0] && read_only.pfn() != old[1]);
    assert!(writable.is_write() && writable.is_dirty() && !writable.is_accessed());
    assert!(!read_only.is_write() && read_only.is_dirty());
    for entry in [writable, read_only] {
        assert_eq!(k.phys().folio_counts(entry.pfn()), (1, 1));
        let flags = k.phys().meta(entry.pfn()).flags();
        assert!(flags.contains(PageFlags::ANON | PageFlags::ANON_EXCLUSIVE) && !flags.contains(PageFlags::LOCKED));
    }
    assert_eq!(leaf(&mm, va + 2 * PAGE).1.pfn(), k.phys().zero_pfn());
    assert_eq!(mm.read_u64(va), Ok(11));
    assert_eq!(mm.read_u64(va + PAGE + 8), Ok(22));
    // The moved read-only page is still exclusively ours: a write after
    // mprotect reuses it without a COW.
    mm.mprotect(va + PAGE, PAGE, Prot::RW).unwrap();
    rec.take_events();
    mm.write_u64(va + PAGE, 5).unwrap();
    assert!(rec.take_events().is_empty());
    assert_eq!(leaf(&mm, va + PAGE).1.pfn(), read_only.pfn());
}

#[test]
fn only_private_anonymous_memory_moves() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let shared = mm.mmap(0, PAGE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    mm.write_u64(shared, 1).unwrap();
    let before = leaf(&mm, shared).1;
    assert_eq!(mm.migrate_pages(shared, PAGE), stats(0, 0));
    assert_eq!(leaf(&mm, shared).1, before);
}

#[test]
fn a_thp_moves_whole() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 8, 6).unwrap();
    mm.write_u64(va + PMD_SIZE - 8, 7).unwrap();
    let (level, old) = leaf(&mm, va);
    assert_eq!(level, Level::Pmd);
    let rec = record(&mm);
    assert_eq!(mm.migrate_pages(va + 5 * PAGE, PAGE), stats(512, 0), "the whole folio moves");
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PMD_SIZE)]);
    let (level, new) = leaf(&mm, va);
    assert_eq!(level, Level::Pmd);
    assert!(new.pfn() != old.pfn() && new.is_huge() && new.is_write());
    assert_eq!(k.phys().folio_order(new.pfn()), 9);
    assert_eq!(k.phys().folio_counts(new.pfn()), (1, 1));
    assert_eq!((mm.read_u64(va + 8), mm.read_u64(va + PMD_SIZE - 8)), (Ok(6), Ok(7)));
    // Once PTE-mapped (the folio stays compound), its pages are skipped.
    mm.munmap(va + PMD_SIZE - PAGE, PAGE).unwrap();
    assert_eq!(mm.migrate_pages(va, PMD_SIZE - PAGE), stats(0, 511));
    assert_eq!(mm.read_u64(va + 8), Ok(6));
}

#[test]
fn a_reader_sleeps_on_the_migration_entry_until_the_copy_is_done() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 42).unwrap();
    let old = leaf(&mm, va).1.pfn();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    let point = pause.entered.recv().unwrap();
    assert_eq!((point.mm, point.va, point.old, point.nr_pages), (mm.id(), va, old, 1));
    let (_, entry) = leaf(&mm, va);
    assert_eq!((entry.swap_kind(), entry.pfn()), (Some(SwapKind::MigrationWrite), old));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (mm, done) = (mm.clone(), done.clone());
        thread::spawn(move || {
            let value = mm.read_u64(va);
            done.store(true, Ordering::Release);
            value
        })
    };
    // What the HMM range walk will do: wait holding the read lock, re-walk.
    let walker = {
        let mm = mm.clone();
        thread::spawn(move || {
            let guard = mm.mmap_read();
            guard.wait_for_migration(va);
            guard.mm().pgtable().find(va).load()
        })
    };
    wait_until("both waiters to sleep", || k.migration_waiters() == 2);
    thread::sleep(Duration::from_millis(20));
    assert!(!done.load(Ordering::Acquire), "the reader must wait for the copy");
    pause.release.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(42));
    let walked = walker.join().unwrap();
    assert!(walked.is_present() && walked.pfn() == point.new);
    assert_eq!(migrator.join().unwrap(), stats(1, 0));
    assert_eq!(leaf(&mm, va).1.pfn(), point.new);
    assert_eq!(k.migration_waiters(), 0);
}

#[test]
fn a_blocked_writer_lands_in_the_new_frame() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    let point = pause.entered.recv().unwrap();
    let writer = {
        let mm = mm.clone();
        thread::spawn(move || mm.write_u64(va + 8, 2))
    };
    wait_until("the writer to sleep", || k.migration_waiters() == 1);
    pause.release.send(()).unwrap();
    assert_eq!(writer.join().unwrap(), Ok(()));
    assert_eq!(migrator.join().unwrap(), stats(1, 0));
    let (_, entry) = leaf(&mm, va);
    assert!(entry.pfn() == point.new && entry.is_write() && entry.is_dirty());
    assert_eq!((mm.read_u64(va), mm.read_u64(va + 8)), (Ok(1), Ok(2)));
}

#[test]
fn writers_racing_migrations_never_lose_a_write() {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON | MapFlags::POPULATE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mm, stop) = (mm.clone(), stop.clone());
        thread::spawn(move || {
            let mut writes = 0;
            while !stop.load(Ordering::Acquire) || writes < 10_000 {
                mm.atomic_fetch_add(va + (writes % 4) * PAGE + 8 * (writes % 3), 1).unwrap();
                writes += 1;
            }
            writes
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut moved = 0;
    while moved < 400 {
        assert!(Instant::now() < deadline, "migrations kept failing: {moved} pages moved");
        moved += mm.migrate_pages(va, 4 * PAGE).unwrap().moved;
    }
    stop.store(true, Ordering::Release);
    let writes = writer.join().unwrap();
    let total: u64 = (0..4)
        .flat_map(|p| (0..3).map(move |s| (p, s)))
        .map(|(p, s)| mm.read_u64(va + p * PAGE + 8 * s).unwrap())
        .sum();
    assert_eq!(total, writes);
}

#[test]
fn munmap_during_the_copy_leaves_nothing_behind() {
    let k = kernel(64, ThpMode::Never);
    let baseline = k.phys().free_frames();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 9).unwrap();
    let rec = record(&mm);
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    pause.entered.recv().unwrap();
    mm.munmap(va, PAGE).unwrap();
    assert!(leaf(&mm, va).1.is_none());
    pause.release.send(()).unwrap();
    assert_eq!(migrator.join().unwrap(), stats(0, 1), "nothing was left to restore");
    assert_eq!(rec.take_events(), [(Event::Clear, va, va + PAGE), (Event::Unmap, va, va + PAGE)]);
    mm.exit();
    drop(mm);
    assert_eq!(k.phys().free_frames(), baseline);
    assert_eq!(k.phys().page_table_frames(), 0);
}

#[test]
fn a_writer_queued_behind_a_waiting_reader_does_not_block_the_restore() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 5).unwrap();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    pause.entered.recv().unwrap();
    let reader = {
        let mm = mm.clone();
        thread::spawn(move || mm.read_u64(va))
    };
    wait_until("the reader to sleep", || k.migration_waiters() == 1);
    // munmap queues for the write lock behind the sleeping reader.
    let unmapper = {
        let mm = mm.clone();
        thread::spawn(move || mm.munmap(va, PAGE))
    };
    thread::sleep(Duration::from_millis(20));
    pause.release.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(5));
    assert_eq!(migrator.join().unwrap(), stats(1, 0));
    assert_eq!(unmapper.join().unwrap(), Ok(()));
    assert_eq!(mm.read_u64(va).unwrap_err().errno(), Errno::Fault);
}

#[test]
fn pinned_referenced_and_locked_pages_are_skipped() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 3 * PAGE, Prot::RW, ANON | MapFlags::POPULATE).unwrap();
    let pinned = mm.pin_user_pages(va, 1, FollFlags::WRITE).unwrap();
    let referenced = mm.get_user_pages(va + PAGE, 1, FollFlags::empty()).unwrap();
    let locked = leaf(&mm, va + 2 * PAGE).1.pfn();
    assert!(k.phys().meta(locked).try_lock());
    let before: Vec<_> = (0..3).map(|i| leaf(&mm, va + i * PAGE).1).collect();
    let rec = record(&mm);
    assert_eq!(mm.migrate_pages(va, 3 * PAGE), stats(0, 3));
    assert!(rec.take_events().is_empty(), "checked before anything is announced");
    assert_eq!((0..3).map(|i| leaf(&mm, va + i * PAGE).1).collect::<Vec<_>>(), before);
    drop(pinned);
    k.phys().put(referenced[0]);
    k.phys().meta(locked).unlock();
    assert_eq!(mm.migrate_pages(va, 3 * PAGE), stats(3, 0));
}

#[test]
fn pages_shared_after_fork_are_skipped() {
    let k = kernel(64, ThpMode::Never);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    parent.write_u64(va, 3).unwrap();
    let child = parent.fork().unwrap();
    assert_eq!(parent.migrate_pages(va, PAGE), stats(0, 1));
    child.exit();
    assert_eq!(parent.migrate_pages(va, PAGE), stats(1, 0));
    parent.write_u64(va, 4).unwrap();
    assert_eq!(parent.read_u64(va), Ok(4));
}

#[test]
fn mprotect_makes_a_writable_migration_entry_read_only() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 8).unwrap();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    pause.entered.recv().unwrap();
    mm.mprotect(va, PAGE, Prot::READ).unwrap();
    assert_eq!(leaf(&mm, va).1.swap_kind(), Some(SwapKind::MigrationReadExclusive));
    pause.release.send(()).unwrap();
    assert_eq!(migrator.join().unwrap(), stats(1, 0));
    assert!(!leaf(&mm, va).1.is_write());
    assert_eq!(mm.read_u64(va), Ok(8));
    assert_eq!(mm.write_u64(va, 1).unwrap_err().errno(), Errno::Fault);
}

#[test]
fn prot_none_survives_a_migration() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 8).unwrap();
    mm.mprotect(va, PAGE, Prot::NONE).unwrap();
    assert_eq!(mm.migrate_pages(va, PAGE), stats(1, 0));
    assert!(leaf(&mm, va).1.is_protnone());
    mm.mprotect(va, PAGE, Prot::READ).unwrap();
    assert_eq!(mm.read_u64(va), Ok(8));
}

#[test]
fn fork_waits_for_a_migration_in_flight() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 12).unwrap();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    let point = pause.entered.recv().unwrap();
    let forker = {
        let mm = mm.clone();
        thread::spawn(move || mm.fork())
    };
    wait_until("fork to wait", || k.migration_waiters() == 1);
    pause.release.send(()).unwrap();
    let child = forker.join().unwrap().unwrap();
    assert_eq!(migrator.join().unwrap(), stats(1, 0));
    assert_eq!(leaf(&child, va).1.pfn(), point.new, "the child shares the new frame");
    assert_eq!(child.read_u64(va), Ok(12));
    child.exit();
}

#[test]
fn a_thp_partly_zapped_during_the_copy_is_restored_page_by_page() {
    let k = kernel(64, ThpMode::Always);
    let baseline = k.phys().free_frames();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 8, 1).unwrap();
    mm.write_u64(va + PAGE + 8, 2).unwrap();
    mm.write_u64(va + 100 * PAGE, 3).unwrap();
    let pause = pause(&k);
    let migrator = {
        let mm = mm.clone();
        thread::spawn(move || mm.migrate_pages(va, PAGE))
    };
    let point = pause.entered.recv().unwrap();
    assert_eq!(point.nr_pages, 512);
    let (level, entry) = leaf(&mm, va);
    assert!(level == Level::Pmd && entry.is_huge() && entry.swap_kind() == Some(SwapKind::MigrationWrite));
    // DONTNEED splits the PMD migration entry into PTE migration entries.
    mm.madvise(va + PAGE, PAGE, MadviseAdvice::DontNeed).unwrap();
    let (level, entry) = leaf(&mm, va + 2 * PAGE);
    assert_eq!((level, entry.swap_kind(), entry.pfn()), (Level::Pte, Some(SwapKind::MigrationWrite), point.old.add(2)));
    pause.release.send(()).unwrap();
    assert_eq!(migrator.join().unwrap(), stats(512, 0));
    assert_eq!(leaf(&mm, va + 100 * PAGE).1.pfn(), point.new.add(100));
    assert_eq!(k.phys().folio_counts(point.new), (511, 511));
    assert_eq!((mm.read_u64(va + 8), mm.read_u64(va + PAGE + 8), mm.read_u64(va + 100 * PAGE)), (Ok(1), Ok(0), Ok(3)));
    mm.exit();
    drop(mm);
    assert_eq!(k.phys().free_frames(), baseline);
}

#[test]
fn frames_return_to_baseline_after_exit() {
    let k = kernel(64, ThpMode::Always);
    let baseline = k.phys().free_frames();
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    for page in (0..1024).step_by(7) {
        mm.write_u64(va + page * PAGE, page).unwrap();
    }
    mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::NoHugePage).unwrap();
    mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::DontNeed).unwrap();
    for page in (512..1024).step_by(5) {
        mm.write_u64(va + page * PAGE, page).unwrap();
    }
    for _ in 0..3 {
        let done = mm.migrate_pages(va, 2 * PMD_SIZE).unwrap();
        assert_eq!(done, MigrateStats { moved: 512 + (512 / 5 + 1), skipped: 0 });
    }
    assert_eq!(mm.read_u64(va + 511 * PAGE), Ok(511));
    assert_eq!(mm.read_u64(va + 1022 * PAGE), Ok(1022));
    mm.exit();
    drop(mm);
    assert_eq!(k.phys().free_frames(), baseline);
    assert_eq!(k.phys().page_table_frames(), 0);
}

#[test]
fn bad_input_gives_typed_errors() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0x2000_0000, 2 * PAGE, Prot::RW, ANON).unwrap();
    let errno = |r: Result<MigrateStats, MmError>| r.unwrap_err().errno();
    assert_eq!(errno(mm.migrate_pages(va + 1, PAGE)), Errno::Inval);
    assert_eq!(errno(mm.migrate_pages(va, 0)), Errno::Inval);
    assert_eq!(errno(mm.migrate_pages(!(PAGE - 1), 2 * PAGE)), Errno::Inval);
    assert_eq!(errno(mm.migrate_pages(1 << 47, PAGE)), Errno::Inval);
    let hole = VaRange::new(va, 3 * PAGE).unwrap();
    assert_eq!(mm.migrate_pages(va, 3 * PAGE), Err(MmError::NotMapped(hole)));
    assert_eq!(mm.migrate_pages(va, 2 * PAGE - 1), stats(0, 0), "the length is rounded up");
    mm.exit();
    assert_eq!(mm.migrate_pages(va, PAGE), Err(MmError::Exited));
}
