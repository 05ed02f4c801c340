//! Device memory: device-private pages (the CPU cannot map them; its page
//! table holds device-private entries instead), device-coherent pages (the
//! CPU maps them like RAM), moving anonymous memory between system RAM and
//! device memory (`MigrateVma`), the CPU fault that brings a device-private
//! page back (`to_ram`), and device-exclusive access for device atomics.
//!
//! A device registers its memory as a region with a
//! [`crate::phys::Pagemap`] of type `DevicePrivate` or `DeviceCoherent`, an
//! owner and [`crate::phys::PagemapOps`]; it allocates its pages itself and
//! activates them with [`crate::phys::PhysMem::zone_device_page_init`].
//!
//! Linux: `mm/migrate_device.c`, `include/linux/migrate.h`,
//! `include/linux/memremap.h`, `mm/memory.c` (`do_swap_page` for
//! device-private entries), `mm/rmap.c` (`make_device_exclusive`).

mod collect;
mod commit;
mod compound;
mod evict;
pub mod exclusive;
mod finalize;
mod migrate_vma;
pub(crate) mod to_ram;
mod unmap;

#[cfg(test)]
mod tests;

use hmm_types::Pfn;

use crate::mm::MmapLocked;
use crate::vma::Vma;

pub use evict::MigrateDevice;
pub use exclusive::{make_device_exclusive, ExclusivePage};
pub use migrate_vma::{
    migrate_pfn, migrate_pfn_to_pfn, MigrateSelect, MigrateVma, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT, MIGRATE_PFN_VALID, MIGRATE_PFN_WRITE,
};

/// A CPU fault on a device-private page, as `migrate_to_ram` receives it
/// (`struct vm_fault`).
#[derive(Debug)]
pub struct DeviceFault<'a> {
    /// The locked address space.
    pub locked: MmapLocked<'a>,
    /// The VMA of the faulting address.
    pub vma: &'a Vma,
    /// The faulting address (page aligned).
    pub address: u64,
    /// The device page, locked and referenced by the fault.
    pub page: Pfn,
}
