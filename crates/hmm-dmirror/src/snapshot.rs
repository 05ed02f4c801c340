//! SNAPSHOT: what the device would see, one byte per page, without
//! faulting: `range_fault` with no request, in 32-page chunks, each under a
//! temporary interval notifier of its own (spec §5.5, §5.6).
//!
//! Linux: `dmirror_snapshot`, `dmirror_range_snapshot`, `dmirror_mkentry`
//! (`lib/test_hmm.c`).

use std::sync::Arc;

use hmm::pfn::{hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm::{range_fault_loop, IntervalNotifier, IntervalNotifierOps, Range, HMM_RANGE_DEFAULT_TIMEOUT};
use hmm_mm::phys::{MemoryType, PhysMem};
use hmm_types::{NotifierRange, Owner, PAGE_SIZE};

use crate::error::DmirrorError;
use crate::file::{Counts, Mirror};
use crate::rw::FAULT_CHUNK_PAGES;
use crate::uapi::prot;

/// The temporary subscription of one chunk: it only records the sequence,
/// under the file's table lock (`dmirror_snapshot_invalidate`).
struct ChunkWatch(Arc<Mirror>);

impl IntervalNotifierOps for ChunkWatch {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let Some(_table) = self.0.lock_for(range) else { return false };
        subscription.set_seq(cur_seq);
        true
    }
}

/// SNAPSHOT into `out` (one byte per page).
pub(crate) fn snapshot(mirror: &Arc<Mirror>, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
    let user = mirror.mm_user()?;
    let owner = mirror.device.owner();
    let phys = user.phys().clone();
    let end = addr + npages * PAGE_SIZE;
    let mut pfns = [0u64; FAULT_CHUNK_PAGES as usize];
    let mut cpages = 0;
    let mut at = addr;
    while at < end {
        // `end` may lie within a chunk of 2^64: step by what is left.
        let next = at + (end - at).min(FAULT_CHUNK_PAGES * PAGE_SIZE);
        let n = ((next - at) / PAGE_SIZE) as usize;
        let watch = user
            .interval_notifier_insert(at, next - at, Arc::new(ChunkWatch(mirror.clone())))
            .map_err(|_| DmirrorError::MmGone)?;
        let mut range = Range {
            notifier: &watch,
            notifier_seq: 0,
            start: at,
            end: next,
            hmm_pfns: &mut pfns[..n],
            default_flags: 0,
            pfn_flags_mask: 0,
            dev_private_owner: Some(owner),
        };
        let offset = cpages as usize;
        let walked = range_fault_loop(&user, &mut range, HMM_RANGE_DEFAULT_TIMEOUT, |range| {
            let _table = mirror.lock_table();
            if range.notifier.read_retry(range.notifier_seq) {
                return None;
            }
            for (byte, &word) in out[offset..offset + n].iter_mut().zip(range.hmm_pfns.iter()) {
                *byte = mkentry(&phys, owner, word);
            }
            Some(())
        });
        watch.remove();
        walked?;
        cpages += n as u64;
        at = next;
    }
    Ok(Counts { cpages, faults: 0 })
}

/// One hmm pfn word as a SNAPSHOT byte (`dmirror_mkentry`).
pub fn mkentry(phys: &PhysMem, owner: Owner, word: u64) -> u8 {
    if word & HMM_PFN_ERROR != 0 {
        return prot::ERROR;
    }
    if word & HMM_PFN_VALID == 0 {
        return prot::NONE;
    }
    let pfn = hmm_pfn_to_pfn(word);
    let local = phys.pagemap(pfn).and_then(|p| p.owner()) == Some(owner);
    let mut byte = match phys.memory_type(pfn) {
        MemoryType::DevicePrivate if local => prot::DEV_PRIVATE_LOCAL,
        MemoryType::DevicePrivate => prot::DEV_PRIVATE_REMOTE,
        MemoryType::DeviceCoherent if local => prot::DEV_COHERENT_LOCAL,
        MemoryType::DeviceCoherent => prot::DEV_COHERENT_REMOTE,
        // Linux's is_zero_pfn: the 4K zero page only, not the huge one.
        _ if pfn == phys.zero_pfn() => prot::ZERO,
        _ => prot::NONE,
    };
    byte |= if word & HMM_PFN_WRITE != 0 { prot::WRITE } else { prot::READ };
    match hmm_pfn_to_map_order(word) {
        9 => byte | prot::PMD,
        18 => byte | prot::PUD,
        _ => byte,
    }
}
