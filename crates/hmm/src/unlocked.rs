//! `range_fault_unlocked_timeout`: the entry point that takes and drops the
//! mmap lock itself, so a fault may sleep without it (a userfaultfd
//! handler serving the page) and the walk then starts over.
//!
//! One iteration: reset the budget if the last one made progress (a fault
//! released the lock), `read_begin` into `range.notifier_seq` (an output),
//! take the lock killably (`EINTR`), refuse an unstable address space
//! (`EFAULT`), check the budget (`EBUSY`), then run one locked session from
//! `range.start`: walk, perform recorded faults with `ALLOW_RETRY`, resume
//! at the faulting address while the lock stays held. A collision or a
//! released lock starts the next iteration from `range.start`; a release
//! with a fatal signal pending is `EINTR`.
//!
//! Linux 7.3: `mm/hmm.c` (`hmm_range_fault_unlocked_timeout`,
//! `hmm_range_fault_locked`).

use std::time::{Duration, Instant};

use hmm_mm::{Mm, MmapReadGuard};

use crate::error::HmmError;
use crate::fault::{do_fault_unlockable, Performed};
use crate::range::Range;
use crate::walk::{walk, Stop};

/// How one locked session ended without an error.
enum Session {
    /// Every entry written.
    Done,
    /// The notifier's sequence moved: start over.
    Collided,
    /// A fault released the mmap lock: start over.
    Released,
}

/// Fills `range.hmm_pfns` like [`crate::range_fault`], but takes the mmap
/// lock of `mm` itself and lets faults release it
/// (`hmm_range_fault_unlocked_timeout`).
///
/// The caller holds a user reference on `mm` (`mmget_not_zero`) and
/// neither the mmap lock nor its driver update lock; `range.notifier_seq`
/// is overwritten (its input is ignored). On `Ok` every entry is written,
/// `range.notifier_seq` is the sequence of the successful walk and the
/// lock is not held: the caller takes its update lock and checks
/// `read_retry(range.notifier_seq)`, calling again if it is true.
///
/// `timeout` bounds only retries without progress; `Duration::ZERO` retries
/// forever. Errors: `Busy` once the budget is spent, `Intr` on a fatal
/// signal, `Fault` on an exiting or OOM-reaped address space, and those of
/// `range_fault`, except that a userfaultfd range waits for its handler
/// instead of failing.
pub fn range_fault_unlocked_timeout(mm: &Mm, range: &mut Range<'_>, timeout: Duration) -> Result<(), HmmError> {
    range.validate()?;
    if mm.id() != range.notifier.mm() {
        return Err(HmmError::Invalid("the notifier watches another address space"));
    }
    let bounded = !timeout.is_zero();
    let mut deadline = Instant::now();
    let mut progressed = true;
    loop {
        if bounded && progressed {
            deadline = Instant::now() + timeout;
        }
        progressed = false;
        range.notifier_seq = range.notifier.read_begin();
        let mut guard = mm.mmap_read_killable().ok_or(HmmError::Intr)?;
        if !mm.is_stable() {
            return Err(HmmError::Fault("the address space is exiting or being OOM-reaped"));
        }
        if bounded && Instant::now() > deadline {
            return Err(HmmError::Busy);
        }
        match session(&mut guard, range)? {
            Session::Done => return Ok(()),
            Session::Collided => {}
            Session::Released => {
                drop(guard);
                if mm.fatal_signal_pending() {
                    return Err(HmmError::Intr);
                }
                progressed = true;
            }
        }
    }
}

/// One locked session from `range.start` (`hmm_range_fault_locked` with a
/// `locked` flag).
fn session(guard: &mut MmapReadGuard<'_>, range: &mut Range<'_>) -> Result<Session, HmmError> {
    let mut last = range.start;
    loop {
        if range.notifier.check_retry(range.notifier_seq) {
            return Ok(Session::Collided);
        }
        match walk(guard, range, last) {
            Ok(()) => return Ok(Session::Done),
            Err(Stop::Again(addr)) => last = addr,
            Err(Stop::Fault(recorded)) => match do_fault_unlockable(guard, recorded)? {
                Performed::All => last = recorded.addr,
                Performed::Released => return Ok(Session::Released),
            },
            Err(Stop::Error(error)) => return Err(error),
        }
    }
}
