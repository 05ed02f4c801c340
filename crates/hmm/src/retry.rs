//! The collision-retry loop every driver writes around `range_fault`
//! (spec §2.8), packaged: take a user reference on the address space, then
//! until the budget runs out: `read_begin`, walk under the mmap read lock,
//! and hand the result to the driver's commit step, which takes its update
//! lock, checks `read_retry` and programs the device, or asks for another
//! round.
//!
//! Rules the shape enforces: the driver lock is never held across
//! `read_begin` or the walk (the commit closure is the only place it is
//! taken), and the pfns are used only inside the commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmm_mm::Mm;

use crate::error::HmmError;
use crate::range::Range;
use crate::walk::range_fault;

/// The conventional budget for `EBUSY` retries (`HMM_RANGE_DEFAULT_TIMEOUT`).
pub const HMM_RANGE_DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Runs `range_fault` on `range` until `commit` accepts a result.
///
/// `commit(range)` is called with fresh outputs; it must take the same lock
/// the notifier callback takes, return `None` if
/// `range.notifier.read_retry(range.notifier_seq)` is true, and otherwise
/// program the device and return `Some`. `EBUSY` after `timeout` of
/// collisions; `EFAULT` if the address space has exited; other errors of
/// `range_fault` as they come.
pub fn range_fault_loop<T>(
    mm: &Arc<Mm>,
    range: &mut Range<'_>,
    timeout: Duration,
    mut commit: impl FnMut(&Range<'_>) -> Option<T>,
) -> Result<T, HmmError> {
    let user = mm.mmget_not_zero().ok_or(HmmError::Fault("the address space has exited"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() > deadline {
            return Err(HmmError::Busy);
        }
        range.notifier_seq = range.notifier.read_begin();
        let walked = {
            let guard = user.mmap_read();
            range_fault(&guard, range)
        };
        match walked {
            Err(HmmError::Busy) => continue,
            Err(error) => return Err(error),
            Ok(()) => {
                if let Some(done) = commit(range) {
                    return Ok(done);
                }
            }
        }
    }
}
