//! Tests of `hmm::range_fault_unlocked_timeout` against Linux 7.3
//! (delta §1.7): it owns the mmap lock, `notifier_seq` is its output, a
//! userfaultfd range waits for its handler (while the locked `range_fault`
//! gets EFAULT), the budget bounds only retries without progress, and a
//! fatal signal or an unstable address space ends it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hmm::pfn::{hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm::{range_fault, range_fault_unlocked_timeout, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::testing::{kernel, leaf};
use hmm_mm::uffd::{Userfaultfd, O_CLOEXEC, UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_EVENT_PAGEFAULT};
use hmm_mm::{Mm, ThpMode};
use hmm_types::{Errno, Event, MapFlags, NotifierRange, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: usize = PAGE_SIZE as usize;

#[derive(Default)]
struct Driver {
    update: parking_lot::Mutex<()>,
}

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, subscription: &IntervalNotifier, _range: &NotifierRange, cur_seq: u64) -> bool {
        let _update = self.update.lock();
        subscription.set_seq(cur_seq);
        true
    }
}

struct Setup {
    mm: Arc<Mm>,
    va: u64,
    notifier: Arc<IntervalNotifier>,
}

fn setup(npages: u64) -> Setup {
    let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
    let va = mm.mmap(0, npages * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let notifier = mm.interval_notifier_insert(va, npages * PAGE_SIZE, Arc::new(Driver::default())).unwrap();
    Setup { mm, va, notifier }
}

/// A read-fault request over `pfns`, with a garbage input sequence.
fn range<'a>(s: &'a Setup, pfns: &'a mut [u64]) -> Range<'a> {
    let end = s.va + pfns.len() as u64 * PAGE_SIZE;
    Range {
        notifier: &s.notifier,
        notifier_seq: 0xdead,
        start: s.va,
        end,
        hmm_pfns: pfns,
        default_flags: HMM_PFN_REQ_FAULT,
        pfn_flags_mask: 0,
        dev_private_owner: None,
    }
}

/// A blocking userfaultfd with MISSING registration over the setup's range.
fn uffd(s: &Setup, npages: u64) -> Arc<Userfaultfd> {
    let uffd = Userfaultfd::new(&s.mm, O_CLOEXEC).unwrap();
    uffd.api(UFFD_API, 0).unwrap();
    uffd.register(s.va, npages * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    Arc::new(uffd)
}

#[test]
fn notifier_seq_is_an_output_and_the_lock_is_not_held_after() {
    let s = setup(8);
    let mut pfns = vec![0; 8];
    let mut r = range(&s, &mut pfns);
    range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO).unwrap();
    assert_ne!(r.notifier_seq, 0xdead, "the input sequence is ignored");
    assert!(!s.notifier.read_retry(r.notifier_seq), "the sequence of the successful walk");
    drop(s.mm.mmap_write()); // would deadlock if the lock were still held
    for (i, &w) in pfns.iter().enumerate() {
        let (_, entry) = leaf(&s.mm, s.va + i as u64 * PAGE_SIZE);
        assert_eq!(w, HMM_PFN_VALID | entry.pfn().0 | if entry.is_write() { HMM_PFN_WRITE } else { 0 });
    }
}

/// Delta §1.7.4 and §5.3: the locked variant fails and queues nothing; the
/// unlocked one waits for each page's COPY (one round-trip per page).
#[test]
fn a_userfaultfd_range_waits_for_the_handler_only_in_the_unlocked_variant() {
    let npages = 4;
    let s = setup(npages);
    let uffd = uffd(&s, npages);
    let mut pfns = vec![0; npages as usize];
    {
        let mut r = range(&s, &mut pfns);
        r.notifier_seq = s.notifier.read_begin();
        let guard = s.mm.mmap_read();
        assert_eq!(range_fault(&guard, &mut r).map_err(|e| e.errno()), Err(Errno::Fault));
    }
    assert!(!uffd.poll().readable, "the locked fault queued no message");

    let messages = Arc::new(AtomicU64::new(0));
    let handler = {
        let (uffd, messages) = (uffd.clone(), messages.clone());
        thread::spawn(move || loop {
            let events = uffd.poll_wait();
            if events.interrupted {
                return;
            }
            let msg = uffd.read().unwrap();
            assert_eq!(msg.event, UFFD_EVENT_PAGEFAULT);
            messages.fetch_add(1, SeqCst);
            uffd.copy(msg.address(), &[0xAB; PAGE], 0).unwrap();
        })
    };
    let mut r = range(&s, &mut pfns);
    range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO).unwrap();
    uffd.poll_interrupt().interrupt();
    handler.join().unwrap();
    assert_eq!(messages.load(SeqCst), npages, "each lock drop faults one page");
    for (i, &w) in pfns.iter().enumerate() {
        assert_eq!(w & (HMM_PFN_VALID | HMM_PFN_WRITE), HMM_PFN_VALID | HMM_PFN_WRITE, "entry {i}");
        let mut byte = [0u8; 1];
        s.mm.phys().read(hmm_pfn_to_pfn(w), 0, &mut byte);
        assert_eq!(byte, [0xAB]);
    }
}

#[test]
fn a_fatal_signal_while_waiting_is_eintr() {
    let s = setup(1);
    let uffd = uffd(&s, 1);
    let mm = s.mm.clone();
    let handler = thread::spawn(move || {
        uffd.read().unwrap();
        mm.send_fatal_signal();
    });
    let mut pfns = vec![0; 1];
    let mut r = range(&s, &mut pfns);
    assert_eq!(range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO), Err(HmmError::Intr));
    handler.join().unwrap();
}

#[test]
fn an_oom_reaped_address_space_is_efault() {
    let s = setup(1);
    s.mm.mark_oom_reaped();
    let mut pfns = vec![0; 1];
    let mut r = range(&s, &mut pfns);
    let result = range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO);
    assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault));
}

/// The budget is checked after taking the lock, so time spent in
/// `read_begin` waiting out an invalidation counts against it.
#[test]
fn a_budget_spent_in_read_begin_is_ebusy_and_zero_is_unbounded() {
    for (timeout, expected) in [(Duration::from_millis(1), Err(Errno::Busy)), (Duration::ZERO, Ok(()))] {
        let s = Arc::new(setup(1));
        let subs = s.mm.notifiers().intervals().clone();
        let ticket =
            subs.invalidate_start(&NotifierRange::new(s.mm.id(), s.va, s.va + PAGE_SIZE, Event::Clear)).unwrap();
        let caller = {
            let s = s.clone();
            thread::spawn(move || {
                let mut pfns = vec![0; 1];
                let mut r = range(&s, &mut pfns);
                range_fault_unlocked_timeout(&s.mm, &mut r, timeout).map_err(|e| e.errno())
            })
        };
        thread::sleep(Duration::from_millis(20));
        subs.invalidate_end(ticket);
        assert_eq!(caller.join().unwrap(), expected, "timeout {timeout:?}");
    }
}

/// A lock-dropping fault is progress: the budget starts again, so a slow
/// handler never exhausts it.
#[test]
fn the_budget_is_reset_by_every_lock_dropping_fault() {
    let npages = 2;
    let s = setup(npages);
    let uffd = uffd(&s, npages);
    let handler = thread::spawn(move || {
        for _ in 0..npages {
            let msg = uffd.read().unwrap();
            thread::sleep(Duration::from_millis(300));
            uffd.copy(msg.address(), &[1; PAGE], 0).unwrap();
        }
    });
    let mut pfns = vec![0; npages as usize];
    let mut r = range(&s, &mut pfns);
    assert_eq!(range_fault_unlocked_timeout(&s.mm, &mut r, Duration::from_millis(200)), Ok(()));
    handler.join().unwrap();
}

#[test]
fn a_write_request_on_a_read_only_mapping_is_eperm() {
    let s = setup(1);
    s.mm.mprotect(s.va, PAGE_SIZE, Prot::READ).unwrap();
    let mut pfns = vec![0; 1];
    let mut r = range(&s, &mut pfns);
    r.default_flags |= hmm::pfn::HMM_PFN_REQ_WRITE;
    assert_eq!(range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO), Err(HmmError::Perm));
}

/// Delta §1.7.4: HMM faults lack FAULT_FLAG_USER, so a USER_MODE_ONLY
/// context refuses them (EFAULT) even in the unlocked variant; so does a
/// context with UFFD_FEATURE_SIGBUS. Neither queues a message.
#[test]
fn sigbus_contexts_fail_the_unlocked_variant_too() {
    use hmm_mm::uffd::{O_NONBLOCK, UFFD_FEATURE_SIGBUS, UFFD_USER_MODE_ONLY};
    for (open_flags, features) in [(UFFD_USER_MODE_ONLY, 0), (0, UFFD_FEATURE_SIGBUS)] {
        let s = setup(1);
        let uffd = Userfaultfd::new(&s.mm, O_NONBLOCK | open_flags).unwrap();
        uffd.api(UFFD_API, features).unwrap();
        uffd.register(s.va, PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        let mut pfns = vec![0; 1];
        let mut r = range(&s, &mut pfns);
        let result = range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO);
        assert_eq!(result.map_err(|e| e.errno()), Err(Errno::Fault), "flags {open_flags:#x} features {features:#x}");
        assert!(!uffd.poll().readable);
    }
}

/// Delta §1.7.4: a pure snapshot of a userfaultfd range reports 0 for the
/// missing pages with no userfaultfd traffic.
#[test]
fn a_snapshot_of_a_userfaultfd_range_asks_nothing_of_the_handler() {
    let s = setup(2);
    let uffd = uffd(&s, 2);
    let mut pfns = vec![0; 2];
    let mut r = range(&s, &mut pfns);
    r.default_flags = 0;
    range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO).unwrap();
    assert_eq!(pfns, [0, 0]);
    assert!(!uffd.poll().readable);
}

/// Delta §1.7.2: after a lock drop the next walk starts again from
/// `range.start`, so pages changed meanwhile before the faulting one are
/// reported as they are now, not as the first walk saw them.
#[test]
fn after_a_lock_drop_every_entry_is_recomputed_from_the_start() {
    let s = setup(2);
    s.mm.write_u64(s.va, 1).unwrap();
    let uffd = Userfaultfd::new(&s.mm, O_CLOEXEC).unwrap();
    uffd.api(UFFD_API, 0).unwrap();
    uffd.register(s.va, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let mm = s.mm.clone();
    let va = s.va;
    let handler = thread::spawn(move || {
        let msg = uffd.read().unwrap();
        assert_eq!(msg.address(), va + PAGE_SIZE, "page 0 is present");
        // While the device's fault sleeps, page 0 is zapped: the next walk
        // must see that (and fault page 0 too).
        mm.madvise(va, PAGE_SIZE, hmm_types::MadviseAdvice::DontNeed).unwrap();
        uffd.copy(va + PAGE_SIZE, &[5; PAGE], 0).unwrap();
        let msg = uffd.read().unwrap();
        assert_eq!(msg.address(), va, "the restart faulted page 0 again");
        uffd.copy(va, &[6; PAGE], 0).unwrap();
    });
    let mut pfns = vec![0; 2];
    let mut r = range(&s, &mut pfns);
    range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO).unwrap();
    handler.join().unwrap();
    for (i, &w) in pfns.iter().enumerate() {
        assert_eq!(hmm_pfn_to_pfn(w), leaf(&s.mm, s.va + i as u64 * PAGE_SIZE).1.pfn(), "entry {i} is current");
    }
}

/// `mmap_read_lock_killable`: a fatal signal ends a wait for the lock
/// (EINTR); an uncontended lock is taken even with a signal pending, so a
/// walk that needs no lock drop still succeeds.
#[test]
fn a_fatal_signal_interrupts_only_a_contended_lock() {
    let s = Arc::new(setup(1));
    s.mm.send_fatal_signal();
    let mut pfns = vec![0; 1];
    let mut r = range(&s, &mut pfns);
    assert_eq!(range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO), Ok(()), "uncontended");

    let writer = s.mm.mmap_write();
    let caller = {
        let s = s.clone();
        thread::spawn(move || {
            let mut pfns = vec![0; 1];
            let mut r = range(&s, &mut pfns);
            range_fault_unlocked_timeout(&s.mm, &mut r, Duration::ZERO)
        })
    };
    assert_eq!(caller.join().unwrap(), Err(HmmError::Intr), "interrupted while waiting for the lock");
    drop(writer);
}
