//! The device side of the DMA helpers: what `hmm_dma_map_*` needs to know
//! about a device and what it asks the device (its IOMMU or dma-direct
//! layer) to do. A driver implements [`DmaDevice`] for real hardware; the
//! model's [`super::SoftDmaDevice`] implements it in software.
//!
//! Linux: `struct device` as seen by `mm/hmm.c`'s DMA helpers:
//! `dma_addressing_limited`, `dev_dma_skip_sync`, `dma_need_unmap`,
//! `dma_iova_try_alloc`/`free`/`link`/`unlink`/`sync`,
//! `dma_map_phys`/`dma_unmap_phys`, `pci_p2pdma_state`
//! (`include/linux/dma-mapping.h`, `include/linux/pci-p2pdma.h`).

use hmm_types::Pfn;

use super::DmaError;

/// Fixed properties of a device (delta §2.6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DmaProps {
    /// CPU caches must be synced for the device (`!dev_dma_skip_sync`):
    /// `hmm_dma_map_alloc` refuses it.
    pub needs_sync: bool,
    /// The device cannot reach all memory, so swiotlb might bounce
    /// (`dma_addressing_limited`): refused too.
    pub addressing_limited: bool,
    /// Per-page mappings must be undone explicitly (`dma_need_unmap`): an
    /// IOMMU, or dma-direct with DMA-API debugging. False for plain
    /// dma-direct, whose addresses are computed, not stored.
    pub needs_unmap: bool,
}

/// How a page relates to the device for peer-to-peer DMA
/// (`enum pci_p2pdma_map_type`; Linux's values in [`P2pMapType::linux_value`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum P2pMapType {
    /// Not peer-to-peer memory: an ordinary mapping (`PCI_P2PDMA_MAP_NONE`).
    None,
    /// The device cannot reach this peer memory
    /// (`PCI_P2PDMA_MAP_NOT_SUPPORTED`).
    NotSupported,
    /// Reached by PCI bus address, with no IOMMU work: the DMA address is
    /// the physical address plus the provider's `bus_offset`
    /// (`PCI_P2PDMA_MAP_BUS_ADDR`).
    BusAddr {
        /// The provider's offset between CPU physical and bus addresses.
        bus_offset: u64,
    },
    /// Reached through the host bridge: mapped like MMIO
    /// (`PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`).
    ThruHostBridge,
}

impl P2pMapType {
    /// Linux's enumerator value (UNKNOWN is 0 and never returned).
    pub const fn linux_value(self) -> u32 {
        match self {
            Self::None => 1,
            Self::NotSupported => 2,
            Self::BusAddr { .. } => 3,
            Self::ThruHostBridge => 4,
        }
    }
}

/// Attributes of a mapping (`DMA_ATTR_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DmaAttrs {
    /// `DMA_ATTR_REQUIRE_COHERENT`: fail rather than bounce or need syncs;
    /// HMM passes it on every map and unmap.
    pub require_coherent: bool,
    /// `DMA_ATTR_MMIO`: the physical address is peer MMIO, not RAM (pages
    /// reached through the host bridge).
    pub mmio: bool,
}

/// One contiguous IOVA reservation (`struct dma_iova_state` with an IOVA).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IovaRange {
    /// First device address.
    pub base: u64,
    /// Bytes reserved.
    pub len: u64,
}

/// A DMA-capable device, as the HMM DMA helpers use it. Implementations
/// must be callable from any thread; the helpers serialise calls on one
/// map through `&mut HmmDmaMap`.
pub trait DmaDevice: Send + Sync + core::fmt::Debug {
    /// Its fixed properties.
    fn props(&self) -> DmaProps;

    /// Reserves `len` contiguous device bytes (`dma_iova_try_alloc`);
    /// `None` without an IOMMU or when the IOVA space is exhausted.
    fn iova_try_alloc(&self, len: u64) -> Option<IovaRange>;

    /// Releases a reservation (`dma_iova_free`); links left in it are not
    /// undone (the caller unlinks first).
    fn iova_free(&self, iova: IovaRange);

    /// Maps `len` bytes of `phys` at `offset` of the reservation
    /// (`dma_iova_link`). Fails if any of it is already linked or lies
    /// outside the reservation.
    fn iova_link(&self, iova: IovaRange, offset: u64, phys: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError>;

    /// Unmaps `len` bytes at `offset` (`dma_iova_unlink`).
    fn iova_unlink(&self, iova: IovaRange, offset: u64, len: u64, attrs: DmaAttrs);

    /// Makes links in `[offset, offset + len)` visible to the device
    /// (`dma_iova_sync`, an IOTLB sync).
    fn iova_sync(&self, iova: IovaRange, offset: u64, len: u64) -> Result<(), DmaError>;

    /// Maps one range on its own (`dma_map_phys`): dma-direct computes the
    /// address, an IOMMU allocates and links a small IOVA.
    fn map_phys(&self, phys: u64, len: u64, attrs: DmaAttrs) -> Result<u64, DmaError>;

    /// Undoes [`DmaDevice::map_phys`] (`dma_unmap_phys`).
    fn unmap_phys(&self, dma: u64, len: u64, attrs: DmaAttrs);

    /// Classifies the page at `pfn` for peer-to-peer DMA by this device
    /// (`pci_p2pdma_state`).
    fn p2pdma_map_type(&self, pfn: Pfn) -> P2pMapType;

    /// The physical address linked at `offset` of `iova`, if the device
    /// can tell (a diagnostic for stale mappings; no Linux counterpart).
    fn iova_linked_phys(&self, _iova: IovaRange, _offset: u64) -> Option<u64> {
        None
    }
}
