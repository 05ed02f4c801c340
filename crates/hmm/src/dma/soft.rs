//! A DMA device in software: an optional IOMMU with its IOVA space, or
//! dma-direct (address = physical + offset); peer-to-peer windows with
//! their relation to the device; one-shot fault injection for IOTLB syncs
//! and mappings. It checks what the kernel only WARNs about (linking a
//! range twice, unlinking what is not linked) and counts live links,
//! per-page mappings and reservations so a test sees every leak.
//!
//! Linux: what `drivers/iommu/dma-iommu.c` and `kernel/dma/direct.c` do
//! for the calls of [`super::DmaDevice`], reduced to their observable
//! decisions (delta §2.6); no caches, no swiotlb, no IOMMU page sizes.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use hmm_types::{Pfn, PAGE_SHIFT};

use super::iova::IovaAllocator;
use super::provider::{DmaAttrs, DmaDevice, DmaProps, IovaRange, P2pMapType};
use super::DmaError;

/// Peer-to-peer memory the device may see: `npages` frames from `first`,
/// owned by a provider whose relation to this device is `map`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct P2pWindow {
    /// First frame of the provider's pagemap.
    pub first: Pfn,
    /// Frames in it.
    pub npages: u64,
    /// How this device reaches them.
    pub map: P2pMapType,
}

/// How a [`SoftDmaDevice`] is built.
#[derive(Clone, Debug, Default)]
pub struct SoftDmaConfig {
    /// Needs cache syncs (refused by `hmm_dma_map_alloc`).
    pub needs_sync: bool,
    /// Addressing-limited (refused by `hmm_dma_map_alloc`).
    pub addressing_limited: bool,
    /// An IOMMU with an IOVA space of `(base, len)` bytes; `None` is
    /// dma-direct.
    pub iommu: Option<(u64, u64)>,
    /// dma-direct only: keep per-page mappings to be unmapped, as with
    /// DMA-API debugging (an IOMMU always needs unmaps).
    pub direct_needs_unmap: bool,
    /// dma-direct only: added to the physical address.
    pub dma_offset: u64,
    /// Peer-to-peer windows.
    pub p2p: Vec<P2pWindow>,
}

/// Counters of what is live in the device (leak checks) and of protocol
/// violations it refused or noticed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SoftDmaStats {
    /// IOVA reservations held.
    pub reservations: usize,
    /// Linked ranges inside reservations.
    pub links: usize,
    /// Per-page mappings held (IOMMU or dma-direct with unmaps), counting
    /// a page mapped twice by dma-direct twice.
    pub direct: usize,
    /// Unlinks or unmaps of something not mapped.
    pub bad_releases: u64,
}

#[derive(Debug, Default)]
struct State {
    iova: Option<IovaAllocator>,
    /// Linked ranges by device address: (end, physical address, mmio).
    links: BTreeMap<u64, (u64, u64, bool)>,
    /// Per-page mappings by device address: (length, physical address,
    /// how many times it is mapped: dma-direct gives one page mapped
    /// twice, such as the zero page, the same address).
    direct: BTreeMap<u64, (u64, u64, usize)>,
    fail_next_sync: bool,
    fail_next_map: bool,
    bad_releases: u64,
}

/// The model's DMA device.
#[derive(Debug)]
pub struct SoftDmaDevice {
    config: SoftDmaConfig,
    state: Mutex<State>,
}

impl SoftDmaDevice {
    /// A device as `config` describes.
    pub fn new(config: SoftDmaConfig) -> Self {
        let iova = config.iommu.map(|(base, len)| IovaAllocator::new(base, len));
        Self { config, state: Mutex::new(State { iova, ..State::default() }) }
    }

    /// The next IOTLB sync fails (`EIO`).
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// The next per-page mapping fails (`ENOMEM`).
    pub fn fail_next_map(&self) {
        self.state.lock().fail_next_map = true;
    }

    /// What is live and what was refused.
    pub fn stats(&self) -> SoftDmaStats {
        let state = self.state.lock();
        // An IOMMU's per-page mappings are reservations and links too.
        let per_page = if state.iova.is_some() { state.direct.len() } else { 0 };
        let direct = state.direct.values().map(|&(_, _, count)| count).sum();
        SoftDmaStats {
            reservations: state.iova.as_ref().map_or(0, |space| space.len()) - per_page,
            links: state.links.len() - per_page,
            direct,
            bad_releases: state.bad_releases,
        }
    }

    /// The physical address the device reaches at `dma`, if mapped: what a
    /// transfer to that address would touch. Bus addresses of peer
    /// windows and plain dma-direct translate arithmetically.
    pub fn translate(&self, dma: u64) -> Option<u64> {
        let state = self.state.lock();
        if let Some((&start, &(end, phys, _))) = state.links.range(..=dma).next_back() {
            if dma < end {
                return Some(phys + (dma - start));
            }
        }
        if let Some((&start, &(len, phys, _))) = state.direct.range(..=dma).next_back() {
            if dma < start + len {
                return Some(phys + (dma - start));
            }
        }
        for window in &self.config.p2p {
            if let P2pMapType::BusAddr { bus_offset } = window.map {
                let phys = dma.wrapping_sub(bus_offset);
                if (window.first.0..window.first.0 + window.npages).contains(&(phys >> PAGE_SHIFT)) {
                    return Some(phys);
                }
            }
        }
        let direct = self.config.iommu.is_none() && !self.config.direct_needs_unmap;
        direct.then(|| dma.wrapping_sub(self.config.dma_offset))
    }

    fn link(state: &mut State, at: u64, phys: u64, len: u64, mmio: bool) -> Result<(), DmaError> {
        let end = at.checked_add(len).ok_or(DmaError::Invalid("IOVA range wraps"))?;
        let overlaps = state.links.range(..end).next_back().is_some_and(|(_, &(e, _, _))| e > at);
        if overlaps {
            return Err(DmaError::AlreadyLinked(at));
        }
        state.links.insert(at, (end, phys, mmio));
        Ok(())
    }
}

impl DmaDevice for SoftDmaDevice {
    fn props(&self) -> DmaProps {
        DmaProps {
            needs_sync: self.config.needs_sync,
            addressing_limited: self.config.addressing_limited,
            needs_unmap: self.config.iommu.is_some() || self.config.direct_needs_unmap || self.config.needs_sync,
        }
    }

    fn iova_try_alloc(&self, len: u64) -> Option<IovaRange> {
        let base = self.state.lock().iova.as_mut()?.alloc(len)?;
        Some(IovaRange { base, len })
    }

    fn iova_free(&self, iova: IovaRange) {
        let mut state = self.state.lock();
        if state.iova.as_mut().and_then(|space| space.free(iova.base)).is_none() {
            state.bad_releases += 1;
        }
    }

    fn iova_link(&self, iova: IovaRange, offset: u64, phys: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= iova.len);
        if !inside {
            return Err(DmaError::Invalid("IOVA link outside the reservation"));
        }
        Self::link(&mut self.state.lock(), iova.base + offset, phys, len, attrs.mmio)
    }

    fn iova_unlink(&self, iova: IovaRange, offset: u64, len: u64, _attrs: DmaAttrs) {
        let mut state = self.state.lock();
        let at = iova.base.wrapping_add(offset);
        match state.links.get(&at) {
            Some(&(end, _, _)) if end == at.wrapping_add(len) => {
                state.links.remove(&at);
            }
            _ => state.bad_releases += 1,
        }
    }

    fn iova_sync(&self, _iova: IovaRange, _offset: u64, _len: u64) -> Result<(), DmaError> {
        let mut state = self.state.lock();
        if core::mem::take(&mut state.fail_next_sync) {
            return Err(DmaError::SyncFailed);
        }
        Ok(())
    }

    fn map_phys(&self, phys: u64, len: u64, attrs: DmaAttrs) -> Result<u64, DmaError> {
        let mut state = self.state.lock();
        if core::mem::take(&mut state.fail_next_map) {
            return Err(DmaError::MapFailed("injected mapping failure"));
        }
        if let Some(space) = state.iova.as_mut() {
            // An IOMMU maps a single range through a small IOVA of its own.
            let at = space.alloc(len).ok_or(DmaError::MapFailed("IOVA space exhausted"))?;
            Self::link(&mut state, at, phys, len, attrs.mmio)?;
            state.direct.insert(at, (len, phys, 1));
            return Ok(at);
        }
        let dma =
            phys.checked_add(self.config.dma_offset).ok_or(DmaError::MapFailed("address beyond the device's reach"))?;
        if self.config.direct_needs_unmap {
            let entry = state.direct.entry(dma).or_insert((len, phys, 0));
            if entry.0 != len {
                return Err(DmaError::Invalid("the page is already mapped with another length"));
            }
            entry.2 += 1;
        }
        Ok(dma)
    }

    fn unmap_phys(&self, dma: u64, len: u64, _attrs: DmaAttrs) {
        let mut state = self.state.lock();
        match state.direct.get_mut(&dma) {
            Some((l, _, count)) if *l == len => {
                *count -= 1;
                if *count > 0 {
                    return;
                }
                state.direct.remove(&dma);
                if let Some(space) = state.iova.as_mut() {
                    space.free(dma);
                    state.links.remove(&dma);
                }
            }
            _ => state.bad_releases += 1,
        }
    }

    fn p2pdma_map_type(&self, pfn: Pfn) -> P2pMapType {
        self.config
            .p2p
            .iter()
            .find(|w| pfn.0 >= w.first.0 && pfn.0 - w.first.0 < w.npages)
            .map_or(P2pMapType::None, |w| w.map)
    }

    fn iova_linked_phys(&self, iova: IovaRange, offset: u64) -> Option<u64> {
        self.state.lock().links.get(&iova.base.checked_add(offset)?).map(|&(_, phys, _)| phys)
    }
}
