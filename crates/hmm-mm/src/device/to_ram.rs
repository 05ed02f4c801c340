//! The CPU fault on a device-private entry: the page's owner migrates it
//! back to system RAM (`migrate_to_ram`), with the page locked and
//! referenced. Concurrent faults on the same page serialize on the page
//! lock: the loser waits for the entry to change and retries.
//!
//! Linux: `do_swap_page` (the `is_device_private_entry` branch).

use hmm_pagetable::{Entry, Slot};

use crate::error::FaultError;
use crate::mm::MmapLocked;
use crate::vma::Vma;

use super::DeviceFault;

/// Handles one fault; the caller retries the access afterwards.
pub(crate) fn fault(
    locked: MmapLocked<'_>,
    vma: &Vma,
    va: u64,
    slot: Slot<'_>,
    entry: Entry,
) -> Result<(), FaultError> {
    let mm = locked.mm();
    let phys = mm.phys();
    let page = entry.pfn();
    if !phys.try_get(page) {
        return Ok(());
    }
    if !phys.meta(page).try_lock() {
        // Someone holds the page (another fault migrating it, or its driver
        // between `pages` and `finalize`): wait for the unlock, then look
        // again (newest kernels wait for the page lock too).
        phys.put(page);
        while slot.load() == entry && phys.meta(page).flags().contains(crate::phys::PageFlags::LOCKED) {
            std::thread::yield_now();
        }
        return Ok(());
    }
    let result = if slot.load() != entry {
        Ok(())
    } else {
        let ops = phys.pagemap(page).and_then(|p| p.ops().cloned());
        match ops {
            // `Ok` without moving the page means "fault again" (a driver
            // that can never move it must answer SIGBUS itself).
            Some(ops) => ops.migrate_to_ram(&DeviceFault { locked, vma, address: va, page }),
            None => Err(FaultError::Sigbus("a device-private page without a driver")),
        }
    };
    phys.unlock_put(page);
    result
}
