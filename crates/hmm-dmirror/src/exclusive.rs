//! EXCLUSIVE and CHECK_EXCLUSIVE: pages taken from the CPU for device
//! atomics, mapped with the atomic tag, and the check that CPU accesses
//! revoked them (spec §4.9, §5.5).
//!
//! Linux: `dmirror_exclusive`, `dmirror_atomic_map`, `dmirror_check_atomic`
//! (`lib/test_hmm.c`).

use core::ops::ControlFlow;

use hmm::make_device_exclusive;
use hmm_types::PAGE_SIZE;

use crate::error::DmirrorError;
use crate::file::{Counts, Mirror};
use crate::table::{Access, DeviceEntry};

/// EXCLUSIVE: each page made exclusive with no owner (so this file's own
/// mirror drops the page too, harmlessly: it maps it right after), mapped
/// atomic while the page is still locked, then the range read back.
pub(crate) fn exclusive(mirror: &Mirror, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
    let end = addr + npages * PAGE_SIZE;
    let user = mirror.mm_user()?;
    {
        let guard = user.mmap_read();
        for va in (addr..end).step_by(PAGE_SIZE as usize) {
            let page = make_device_exclusive(&guard, va, None)?;
            mirror.lock_table().set(va, DeviceEntry { pfn: page.pfn(), access: Access::Atomic })?;
            drop(page);
        }
    }
    let table = mirror.lock_table();
    crate::rw::do_read(mirror, &table, addr, addr, end, out).map_err(DmirrorError::NotMapped)?;
    Ok(Counts { cpages: npages, faults: 0 })
}

/// CHECK_EXCLUSIVE.
pub(crate) fn check(mirror: &Mirror, addr: u64, npages: u64) -> Result<(), DmirrorError> {
    let table = mirror.lock_table();
    // Only mapped pages are visited: a huge range that maps little is
    // checked at once, as Linux's xarray walk does.
    let found = table.for_each_mapped(addr, addr + npages * PAGE_SIZE, |va, entry| match entry {
        DeviceEntry { access: Access::Atomic, .. } => ControlFlow::Break(va),
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(va) => Err(DmirrorError::StillExclusive(va)),
        ControlFlow::Continue(()) => Ok(()),
    }
}
