//! READ_UNLOCKED (Linux 7.3): READ whose fault rounds call
//! `range_fault_unlocked_timeout` with no budget (timeout 0), so a page of
//! a userfaultfd range is faulted while the handler thread serves it. The
//! mmap lock is taken and dropped by HMM; the device only loops on
//! `read_retry` under its table lock.
//!
//! Linux 7.3: `dmirror_read_unlocked`, `dmirror_fault_unlocked`,
//! `dmirror_range_fault_unlocked` (`lib/test_hmm.c`).

use std::time::Duration;

use hmm::pfn::{HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE};
use hmm::{range_fault_unlocked_timeout, HmmError, Range};
use hmm_types::PAGE_SIZE;

use crate::error::DmirrorError;
use crate::file::{Counts, Mirror};
use crate::rw::{do_fault, do_read, FAULT_CHUNK_PAGES};

/// READ_UNLOCKED: copy what the device maps; each miss costs one unlocked
/// fault round from the missing page to the end.
pub(crate) fn read(mirror: &Mirror, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
    let end = addr + npages * PAGE_SIZE;
    let mut start = addr;
    let mut faults = 0;
    loop {
        let copied = do_read(mirror, &mirror.lock_table(), addr, start, end, out);
        match copied {
            Ok(()) => return Ok(Counts { cpages: npages, faults }),
            Err(missing) => {
                start = missing;
                fault(mirror, start, end, false, Duration::ZERO)?;
                faults += 1;
            }
        }
    }
}

/// One unlocked fault round over `[start, end)`, 32 pages at a time
/// (`dmirror_fault_unlocked`). An exited address space is `EFAULT`.
fn fault(mirror: &Mirror, start: u64, end: u64, write: bool, timeout: Duration) -> Result<(), DmirrorError> {
    let user = mirror.mm_user().map_err(|_| HmmError::Fault("the mirrored address space has exited"))?;
    let default_flags = HMM_PFN_REQ_FAULT | if write { HMM_PFN_REQ_WRITE } else { 0 };
    let mut pfns = [0u64; FAULT_CHUNK_PAGES as usize];
    let mut at = start;
    while at < end {
        let next = end.min(at + FAULT_CHUNK_PAGES * PAGE_SIZE);
        let mut range = Range {
            notifier: mirror.notifier(),
            notifier_seq: 0,
            start: at,
            end: next,
            hmm_pfns: &mut pfns[..((next - at) / PAGE_SIZE) as usize],
            default_flags,
            pfn_flags_mask: 0,
            dev_private_owner: Some(mirror.device.owner()),
        };
        // Each call gets a fresh budget; there is no outer deadline.
        loop {
            range_fault_unlocked_timeout(&user, &mut range, timeout)?;
            let mut table = mirror.lock_table();
            if range.notifier.read_retry(range.notifier_seq) {
                continue;
            }
            do_fault(&mut table, &range, write, mirror.mm.phys())?;
            break;
        }
        at = next;
    }
    Ok(())
}
