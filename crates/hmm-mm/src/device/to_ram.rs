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
        // Another fault is migrating it: let it finish, then look again.
        phys.put(page);
        while slot.load() == entry {
            std::thread::yield_now();
        }
        return Ok(());
    }
    let result = if slot.load() != entry {
        Ok(())
    } else {
        let ops = phys.pagemap(page).and_then(|p| p.ops().cloned());
        match ops {
            Some(ops) => ops.migrate_to_ram(&DeviceFault { locked, vma, address: va, page }).and_then(|()| {
                // A driver that could not move the page would make the
                // access fault forever: that is its SIGBUS.
                if slot.load() == entry {
                    Err(FaultError::Sigbus("the device did not migrate its page back"))
                } else {
                    Ok(())
                }
            }),
            None => Err(FaultError::Sigbus("a device-private page without a driver")),
        }
    };
    phys.unlock_put(page);
    result
}
