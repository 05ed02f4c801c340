//! Which memory a frame belongs to: system RAM, or a device's memory
//! described by a pagemap.
//!
//! Linux: `enum memory_type`, `struct dev_pagemap` (`include/linux/memremap.h`).

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hmm_types::{Owner, Pfn};

/// What a device's memory manager is told (`struct dev_pagemap_ops`).
pub trait PagemapOps: Send + Sync {
    /// The folio headed by `head` lost its last reference (`folio_free`):
    /// the driver takes it back into its allocator.
    fn folio_free(&self, _head: Pfn) {}
    /// The CPU (or GUP, or another device's `range_fault`) touched a
    /// device-private page (`migrate_to_ram`). The page is locked and
    /// referenced; the driver must migrate at least it back to system RAM,
    /// typically with `MigrateVma` and `fault_page` set. An error is the
    /// fault's result (SIGBUS kills the access).
    fn migrate_to_ram(&self, _fault: &crate::device::DeviceFault<'_>) -> Result<(), crate::FaultError> {
        Err(crate::FaultError::Sigbus("the device cannot migrate its page back"))
    }
}

/// The kind of memory behind a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemoryType {
    /// Ordinary system RAM.
    System,
    /// `MEMORY_DEVICE_PRIVATE`: device memory the CPU cannot map; CPU page
    /// tables hold device-private entries for it.
    DevicePrivate,
    /// `MEMORY_DEVICE_COHERENT`: device memory the CPU can map (CXL-like).
    DeviceCoherent,
    /// `MEMORY_DEVICE_FS_DAX`: persistent memory under a DAX filesystem.
    FsDax,
    /// `MEMORY_DEVICE_GENERIC`: a device-DAX character device.
    Generic,
    /// `MEMORY_DEVICE_PCI_P2PDMA`: PCI BAR memory for peer-to-peer.
    PciP2pDma,
}

impl MemoryType {
    /// True for every `ZONE_DEVICE` type.
    pub fn is_zone_device(self) -> bool {
        self != Self::System
    }
}

/// A device's memory as registered with the memory manager
/// (`struct dev_pagemap`): its type, its owner, and whether it is still
/// alive. Killing a pagemap (unbind) is announced before its pages go away.
pub struct Pagemap {
    memory_type: MemoryType,
    owner: Option<Owner>,
    alive: AtomicBool,
    ops: Option<Arc<dyn PagemapOps>>,
}

impl core::fmt::Debug for Pagemap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pagemap")
            .field("memory_type", &self.memory_type)
            .field("owner", &self.owner)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl Pagemap {
    /// A live pagemap. Device-private memory must have an owner, as
    /// `memremap_pages` requires.
    pub fn new(memory_type: MemoryType, owner: Option<Owner>) -> Self {
        Self { memory_type, owner, alive: AtomicBool::new(true), ops: None }
    }
    /// The same pagemap with its owner's operations.
    pub fn with_ops(mut self, ops: Arc<dyn PagemapOps>) -> Self {
        self.ops = Some(ops);
        self
    }
    pub(crate) fn ops(&self) -> Option<&Arc<dyn PagemapOps>> {
        self.ops.as_ref()
    }
    pub(crate) fn folio_idle(&self, head: Pfn) {
        if let Some(ops) = &self.ops {
            ops.folio_free(head);
        }
    }
    /// Its type.
    pub fn memory_type(&self) -> MemoryType {
        self.memory_type
    }
    /// Its owner (`pgmap->owner`).
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }
    /// False once [`Self::kill`] ran (`percpu_ref_kill(&pgmap->ref)`).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
    /// Marks the pagemap as going away.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
    }
}
