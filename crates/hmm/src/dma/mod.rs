//! DMA helpers for HMM mirrors (Linux 7.3 `include/linux/hmm-dma.h`,
//! delta §2): a driver keeps one [`HmmDmaMap`] per mirrored span, passes
//! slices of its pfn list to `range_fault*` as `hmm_pfns`, and maps and
//! unmaps entries one by one for its device.
//!
//! * [`hmm_dma_map_alloc`]: the pfn list, one IOVA reservation of
//!   `nr_entries` pages when the device has an IOMMU with room, else a
//!   list of per-entry DMA addresses when the device needs unmaps.
//! * [`hmm_dma_map_pfn`]: maps entry `idx` (`dma_entry_size` bytes of its
//!   page), recording the mapping in the entry's sticky bits
//!   (`HMM_PFN_DMA_MAPPED`, `HMM_PFN_P2PDMA`, `HMM_PFN_P2PDMA_BUS`), which
//!   `range_fault` keeps; a mapped entry returns its address again.
//! * [`hmm_dma_unmap_pfn`]: undoes it, but only for an entry that is still
//!   VALID: unmap in the notifier's `invalidate`, before the next fault
//!   rewrites the entry.
//! * [`hmm_dma_map_free`]: releases the reservation and the lists.
//!
//! The device side is the [`DmaDevice`] trait; [`SoftDmaDevice`] is the
//! model's device (IOMMU or dma-direct, peer-to-peer windows, fault
//! injection, leak counters). Where Linux leaves a precondition unchecked
//! the model refuses with a typed error instead: mapping an entry that is
//! not VALID, an index past the map, an entry size of 0.
//!
//! Linux: `hmm_dma_map_alloc`, `hmm_dma_map_free`, `hmm_dma_map_pfn`,
//! `hmm_dma_unmap_pfn` (`mm/hmm.c`).

mod iova;
mod provider;
mod soft;

#[cfg(test)]
mod tests;

use hmm_types::{Errno, PAGE_SIZE};

use crate::pfn::{
    hmm_pfn_to_pfn, hmm_pfn_to_phys, HMM_PFN_DMA_MAPPED, HMM_PFN_INOUT_FLAGS, HMM_PFN_P2PDMA, HMM_PFN_P2PDMA_BUS,
    HMM_PFN_VALID,
};

pub use iova::IovaAllocator;
pub use provider::{DmaAttrs, DmaDevice, DmaProps, IovaRange, P2pMapType};
pub use soft::{P2pWindow, SoftDmaConfig, SoftDmaDevice, SoftDmaStats};

/// Why a DMA helper failed. Linux's `hmm_dma_map_pfn` returns
/// `DMA_MAPPING_ERROR` without a reason; the variants say which step
/// failed, each with the errno the kernel's layers give for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The device needs cache syncs or may bounce through swiotlb; HMM
    /// cannot hand buffer ownership over (`-EOPNOTSUPP` from
    /// `hmm_dma_map_alloc`).
    #[error("EOPNOTSUPP: the device needs cache syncs or bounce buffers, which HMM mappings cannot have")]
    NotSupported,
    /// A list could not be allocated (`-ENOMEM`).
    #[error("ENOMEM: {0}")]
    NoMem(&'static str),
    /// Bad arguments: an index past the map, an entry that is not VALID,
    /// a zero entry size, a range outside the reservation (`-EINVAL`).
    #[error("EINVAL: {0}")]
    Invalid(&'static str),
    /// The page is peer-to-peer memory the device cannot reach
    /// (`PCI_P2PDMA_MAP_NOT_SUPPORTED`). `hmm_dma_map_pfn` returns
    /// `DMA_MAPPING_ERROR` and its users (RDMA ODP, `drm_gpusvm`) turn
    /// that into `-EFAULT`.
    #[error("EFAULT: peer-to-peer memory this device cannot reach")]
    P2pNotSupported,
    /// Device addresses at this IOVA are already linked (`-EEXIST`, what an
    /// IOMMU's map gives for a present entry).
    #[error("EEXIST: device address {0:#x} is already mapped")]
    AlreadyLinked(u64),
    /// The IOTLB sync after a link failed (`-EIO`).
    #[error("EIO: the IOTLB sync failed")]
    SyncFailed,
    /// A per-page mapping failed (`-ENOMEM`, as `dma_map_*` reports).
    #[error("ENOMEM: {0}")]
    MapFailed(&'static str),
    /// `hmm_dma_map_free` found entries still mapped; it freed the map
    /// anyway, as Linux does, so their device mappings leaked (`-EBUSY`).
    #[error("EBUSY: the map was freed with {0} entries still DMA-mapped; their mappings leaked")]
    StillMapped(usize),
}

impl DmaError {
    /// Linux's errno.
    pub fn errno(&self) -> Errno {
        match self {
            Self::NotSupported => Errno::OpNotSupp,
            Self::NoMem(_) | Self::MapFailed(_) => Errno::NoMem,
            Self::Invalid(_) => Errno::Inval,
            Self::P2pNotSupported => Errno::Fault,
            Self::AlreadyLinked(_) => Errno::Exist,
            Self::SyncFailed => Errno::Io,
            Self::StillMapped(_) => Errno::Busy,
        }
    }
}

/// The DMA state of one mirrored span (`struct hmm_dma_map`).
#[derive(Debug)]
pub struct HmmDmaMap {
    /// The IOVA reservation, if the device gave one.
    iova: Option<IovaRange>,
    /// The hmm pfn words: `range_fault` writes them, the helpers keep their
    /// sticky DMA bits.
    pfn_list: Vec<u64>,
    /// Per-entry DMA addresses, kept only without an IOVA for a device
    /// that needs unmaps.
    dma_list: Option<Vec<u64>>,
    dma_entry_size: u64,
    /// Times an already-mapped entry returned an IOVA address linked to a
    /// different page than the entry now names (delta §2.6 invariant 5).
    stale_returns: u64,
}

impl HmmDmaMap {
    /// Entries in the map.
    pub fn nr_entries(&self) -> usize {
        self.pfn_list.len()
    }
    /// Bytes one entry maps.
    pub fn dma_entry_size(&self) -> u64 {
        self.dma_entry_size
    }
    /// The IOVA reservation, or `None` in per-page mode.
    pub fn iova(&self) -> Option<IovaRange> {
        self.iova
    }
    /// Whether per-entry DMA addresses are kept.
    pub fn has_dma_list(&self) -> bool {
        self.dma_list.is_some()
    }
    /// The pfn words.
    pub fn pfn_list(&self) -> &[u64] {
        &self.pfn_list
    }
    /// The pfn words, to pass (a slice of) as `Range::hmm_pfns`, or to
    /// clear an entry's flags after unmapping it.
    pub fn pfn_list_mut(&mut self) -> &mut [u64] {
        &mut self.pfn_list
    }
    /// Already-mapped returns whose IOVA was linked to another page: a
    /// driver that did not unmap before the page changed (a diagnostic;
    /// Linux returns the stale address silently).
    pub fn stale_returns(&self) -> u64 {
        self.stale_returns
    }

    fn check_index(&self, idx: usize) -> Result<u64, DmaError> {
        if idx >= self.pfn_list.len() {
            return Err(DmaError::Invalid("index past the end of the DMA map"));
        }
        (idx as u64).checked_mul(self.dma_entry_size).ok_or(DmaError::Invalid("entry offset overflows"))
    }
}

/// Sets up a map of `nr_entries` pfn words, each entry mapping
/// `dma_entry_size` bytes (`hmm_dma_map_alloc`). `EOPNOTSUPP` for a device
/// that needs syncs or is addressing-limited, `ENOMEM` when a list cannot
/// be allocated, `EINVAL` for an entry size of 0. The IOVA reservation is
/// `nr_entries` *pages*, whatever the entry size; none is taken without an
/// IOMMU or when its space is full (the map then works page by page).
pub fn hmm_dma_map_alloc(dev: &dyn DmaDevice, nr_entries: usize, dma_entry_size: u64) -> Result<HmmDmaMap, DmaError> {
    if dma_entry_size == 0 {
        return Err(DmaError::Invalid("dma_entry_size of 0"));
    }
    // Linux WARNs when nr_entries pages hold less than one entry, and
    // goes on; so does the model.
    let props = dev.props();
    if props.needs_sync || props.addressing_limited {
        return Err(DmaError::NotSupported);
    }
    let mut pfn_list = Vec::new();
    pfn_list.try_reserve_exact(nr_entries).map_err(|_| DmaError::NoMem("the pfn list"))?;
    pfn_list.resize(nr_entries, 0);
    let iova = (nr_entries as u64).checked_mul(PAGE_SIZE).and_then(|len| dev.iova_try_alloc(len));
    let mut dma_list = None;
    if iova.is_none() && props.needs_unmap {
        let mut list = Vec::new();
        list.try_reserve_exact(nr_entries).map_err(|_| DmaError::NoMem("the DMA address list"))?;
        list.resize(nr_entries, 0);
        dma_list = Some(list);
    }
    Ok(HmmDmaMap { iova, pfn_list, dma_list, dma_entry_size, stale_returns: 0 })
}

/// Releases the map (`hmm_dma_map_free`): the IOVA reservation and both
/// lists. Linux does not unlink live entries and neither does this; it
/// frees anyway and reports `EBUSY` with how many entries were still
/// DMA-mapped (leaked), so a caller that forgot to unmap finds out.
pub fn hmm_dma_map_free(dev: &dyn DmaDevice, map: HmmDmaMap) -> Result<(), DmaError> {
    let live = map.pfn_list.iter().filter(|&&w| w & HMM_PFN_DMA_MAPPED != 0 && w & HMM_PFN_P2PDMA_BUS == 0).count();
    if let Some(iova) = map.iova {
        dev.iova_free(iova);
    }
    if live > 0 {
        return Err(DmaError::StillMapped(live));
    }
    Ok(())
}

/// Maps entry `idx` for the device and returns its DMA address
/// (`hmm_dma_map_pfn`). The entry must be VALID (from `range_fault`).
///
/// * Already mapped (DMA_MAPPED without P2PDMA_BUS): with an IOVA, the
///   same address again, without touching the device; in per-page mode
///   with unmaps, the stored address; in plain dma-direct, mapped afresh.
/// * Peer-to-peer memory: by bus address (`P2PDMA_BUS | DMA_MAPPED`, no
///   device work), through the host bridge (`P2PDMA`, mapped as MMIO), or
///   refused (`P2pNotSupported`, no flag touched).
/// * Otherwise linked at `idx * dma_entry_size` in the IOVA (then the
///   IOTLB synced; a failed sync unlinks), or mapped on its own.
///
/// On failure `HMM_PFN_P2PDMA` is cleared and nothing stays mapped.
pub fn hmm_dma_map_pfn(dev: &dyn DmaDevice, map: &mut HmmDmaMap, idx: usize) -> Result<u64, DmaError> {
    let offset = map.check_index(idx)?;
    let word = map.pfn_list[idx];
    if word & HMM_PFN_VALID == 0 {
        return Err(DmaError::Invalid("mapping an entry that is not VALID"));
    }
    let phys = hmm_pfn_to_phys(word);
    if word & HMM_PFN_DMA_MAPPED != 0 && word & HMM_PFN_P2PDMA_BUS == 0 {
        if let Some(iova) = map.iova {
            if dev.iova_linked_phys(iova, offset).is_some_and(|linked| linked != phys) {
                map.stale_returns += 1;
            }
            return Ok(iova.base + offset);
        }
        if let Some(list) = &map.dma_list {
            return Ok(list[idx]);
        }
        // Plain dma-direct keeps nothing: the address is computed again.
    }
    let mut attrs = DmaAttrs { require_coherent: true, mmio: false };
    match dev.p2pdma_map_type(hmm_pfn_to_pfn(word)) {
        P2pMapType::None => {}
        P2pMapType::ThruHostBridge => {
            map.pfn_list[idx] |= HMM_PFN_P2PDMA;
            attrs.mmio = true;
        }
        P2pMapType::BusAddr { bus_offset } => {
            map.pfn_list[idx] |= HMM_PFN_P2PDMA_BUS | HMM_PFN_DMA_MAPPED;
            return Ok(phys.wrapping_add(bus_offset));
        }
        P2pMapType::NotSupported => return Err(DmaError::P2pNotSupported),
    }
    match map_one(dev, map, idx, offset, phys, attrs) {
        Ok(dma) => {
            map.pfn_list[idx] |= HMM_PFN_DMA_MAPPED;
            Ok(dma)
        }
        Err(error) => {
            map.pfn_list[idx] &= !HMM_PFN_P2PDMA;
            Err(error)
        }
    }
}

fn map_one(
    dev: &dyn DmaDevice,
    map: &mut HmmDmaMap,
    idx: usize,
    offset: u64,
    phys: u64,
    attrs: DmaAttrs,
) -> Result<u64, DmaError> {
    let size = map.dma_entry_size;
    if let Some(iova) = map.iova {
        dev.iova_link(iova, offset, phys, size, attrs)?;
        if let Err(error) = dev.iova_sync(iova, offset, size) {
            dev.iova_unlink(iova, offset, size, attrs);
            return Err(error);
        }
        return Ok(iova.base + offset);
    }
    let needs_unmap = dev.props().needs_unmap;
    if needs_unmap && map.dma_list.is_none() {
        return Err(DmaError::Invalid("per-page mapping without the DMA address list"));
    }
    let dma = dev.map_phys(phys, size, attrs)?;
    if let Some(list) = map.dma_list.as_mut().filter(|_| needs_unmap) {
        list[idx] = dma;
    }
    Ok(dma)
}

/// Unmaps entry `idx` (`hmm_dma_unmap_pfn`): `Ok(false)` and nothing done
/// unless the entry is both VALID and DMA_MAPPED, so an entry that a
/// later `range_fault` rewrote as not VALID can no longer be released
/// (unmap in `invalidate`). A bus-address entry has nothing to undo.
/// Clears DMA_MAPPED, P2PDMA and P2PDMA_BUS.
pub fn hmm_dma_unmap_pfn(dev: &dyn DmaDevice, map: &mut HmmDmaMap, idx: usize) -> Result<bool, DmaError> {
    let offset = map.check_index(idx)?;
    let word = map.pfn_list[idx];
    if word & (HMM_PFN_VALID | HMM_PFN_DMA_MAPPED) != HMM_PFN_VALID | HMM_PFN_DMA_MAPPED {
        return Ok(false);
    }
    let attrs = DmaAttrs { require_coherent: true, mmio: word & HMM_PFN_P2PDMA != 0 };
    let size = map.dma_entry_size;
    if word & HMM_PFN_P2PDMA_BUS != 0 {
        // A bus address involves no device mapping.
    } else if let Some(iova) = map.iova {
        dev.iova_unlink(iova, offset, size, attrs);
    } else if let Some(list) = map.dma_list.as_mut() {
        dev.unmap_phys(list[idx], size, attrs);
        list[idx] = 0;
    }
    map.pfn_list[idx] &= !HMM_PFN_INOUT_FLAGS;
    Ok(true)
}
