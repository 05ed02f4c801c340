//! The device's DMA window: when a file is given a [`DmaDevice`]
//! ([`crate::DmirrorFile::dma_attach`]), the system pages it mirrors in
//! `[start, start + npages)` are DMA-mapped through Linux 7.3's HMM DMA
//! helpers, as an RDMA ODP or GPU SVM driver maps what it mirrors:
//!
//! * a device fault maps each page it installs (`hmm_dma_map_pfn`; a page
//!   already mapped returns its address again);
//! * whatever removes or replaces a device entry (the notifier's
//!   invalidation, a migration to device memory, eviction, close) unmaps
//!   it first (`hmm_dma_unmap_pfn`) and clears the entry's flags, ODP
//!   style, so no sticky `HMM_PFN_DMA_MAPPED` outlives its page.
//!
//! The window's pfn list is the map's (`HmmDmaMap::pfn_list`). Linux's
//! drivers hand a slice of it to the walk; here the walk fills the fault
//! round's own words and they are merged in under the table lock after
//! `read_retry` confirmed no invalidation ran since the walk began, so the
//! sticky bits are exactly those the walk would have kept. Device memory
//! (this device's private or coherent pages) is reached directly, not
//! DMA-mapped.
//!
//! Lock order: the mirror's table mutex, then the DMA device's own locks;
//! every call into the device is made under the table mutex.
//!
//! Linux: `struct hmm_dma_map` users: `ib_umem_odp_map_dma_single_page`,
//! `ib_umem_odp_unmap_dma_pages` (`drivers/infiniband/core/umem_odp.c`).

use std::sync::Arc;

use hmm::dma::{hmm_dma_map_alloc, hmm_dma_map_free, hmm_dma_map_pfn, hmm_dma_unmap_pfn, DmaDevice, HmmDmaMap};
use hmm::pfn::{hmm_pfn_to_pfn, HMM_PFN_DMA_MAPPED, HMM_PFN_FLAGS, HMM_PFN_INOUT_FLAGS};
use hmm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

use crate::error::DmirrorError;

/// The DMA state of a file's window.
pub(crate) struct DmaWindow {
    dev: Arc<dyn DmaDevice>,
    map: HmmDmaMap,
    start: u64,
    /// The DMA address of each mapped entry (0 when not mapped).
    addrs: Vec<u64>,
}

impl core::fmt::Debug for DmaWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaWindow").field("start", &self.start).field("entries", &self.map.nr_entries()).finish()
    }
}

impl DmaWindow {
    /// A window of `npages` from `start` (`hmm_dma_map_alloc` with 4K
    /// entries).
    pub(crate) fn new(dev: Arc<dyn DmaDevice>, start: u64, npages: usize) -> Result<Self, DmirrorError> {
        let map = hmm_dma_map_alloc(&*dev, npages, PAGE_SIZE)?;
        let mut addrs = Vec::new();
        addrs.try_reserve_exact(npages).map_err(|_| DmirrorError::NoMem("the DMA address list"))?;
        addrs.resize(npages, 0);
        Ok(Self { dev, map, start, addrs })
    }

    fn index(&self, va: u64) -> Option<usize> {
        let idx = usize::try_from(va.checked_sub(self.start)? >> PAGE_SHIFT).ok()?;
        (idx < self.map.nr_entries()).then_some(idx)
    }

    /// Records the walk's `word` for `va` (keeping the entry's sticky bits)
    /// and, for system memory, maps it: the DMA address, or `None` when
    /// `va` is outside the window or the page is device memory.
    pub(crate) fn map(&mut self, va: u64, word: u64, is_device_memory: bool) -> Result<Option<u64>, DmirrorError> {
        let Some(idx) = self.index(va) else { return Ok(None) };
        let old = self.map.pfn_list()[idx];
        if old & HMM_PFN_DMA_MAPPED != 0 && hmm_pfn_to_pfn(old) != hmm_pfn_to_pfn(word) {
            // Cannot happen without an invalidation in between, which
            // unmapped; never hand out a stale address if it does.
            self.unmap_index(idx);
        }
        let merged = (self.map.pfn_list()[idx] & HMM_PFN_INOUT_FLAGS) | (word & !HMM_PFN_INOUT_FLAGS);
        self.map.pfn_list_mut()[idx] = merged;
        if is_device_memory {
            return Ok(None);
        }
        let dma = hmm_dma_map_pfn(&*self.dev, &mut self.map, idx)?;
        self.addrs[idx] = dma;
        Ok(Some(dma))
    }

    /// Unmaps `va` if it is mapped to a frame other than `pfn` (its device
    /// entry is being replaced).
    pub(crate) fn unmap_if_changed(&mut self, va: u64, pfn: Pfn) {
        if let Some(idx) = self.index(va) {
            if hmm_pfn_to_pfn(self.map.pfn_list()[idx]) != pfn {
                self.unmap_index(idx);
            }
        }
    }

    /// Unmaps every entry of `[start, end)` and clears its flags.
    pub(crate) fn unmap_range(&mut self, start: u64, end: u64) {
        let window_end = self.start + ((self.map.nr_entries() as u64) << PAGE_SHIFT);
        let (first, last) = (start.max(self.start), end.min(window_end));
        if first >= last {
            return;
        }
        let first = ((first - self.start) >> PAGE_SHIFT) as usize;
        let last = (last - self.start).div_ceil(PAGE_SIZE) as usize;
        for idx in first..last {
            self.unmap_index(idx);
        }
    }

    fn unmap_index(&mut self, idx: usize) {
        // Only a bad index fails, and `idx` is inside the map.
        let _ = hmm_dma_unmap_pfn(&*self.dev, &mut self.map, idx);
        self.map.pfn_list_mut()[idx] &= !HMM_PFN_FLAGS;
        self.addrs[idx] = 0;
    }

    /// The DMA address the device uses for `va`, if mapped.
    pub(crate) fn address(&self, va: u64) -> Option<u64> {
        let idx = self.index(va)?;
        (self.map.pfn_list()[idx] & HMM_PFN_DMA_MAPPED != 0).then_some(self.addrs[idx])
    }

    /// Unmaps everything and frees the map (`hmm_dma_map_free`).
    pub(crate) fn free(mut self) -> Result<(), DmirrorError> {
        self.unmap_range(self.start, u64::MAX);
        Ok(hmm_dma_map_free(&*self.dev, self.map)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmm::dma::{DmaDevice, SoftDmaConfig, SoftDmaDevice, SoftDmaStats};
    use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
    use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PAGE_SIZE};

    use crate::{Dmirror, DmirrorConfig, DmirrorError};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
    const IOVA_BASE: u64 = 0x10_0000_0000;

    fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
        let config = KernelConfig { ram_bytes: 64 << 20, thp: ThpMode::Never, ..KernelConfig::default() };
        let kernel = Kernel::new(config).unwrap();
        let dmirror = Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 1024, ..DmirrorConfig::default() }).unwrap();
        let mm = kernel.create_mm().unwrap();
        (kernel, dmirror, mm)
    }

    fn iommu() -> Arc<SoftDmaDevice> {
        Arc::new(SoftDmaDevice::new(SoftDmaConfig {
            iommu: Some((IOVA_BASE, 1024 * PAGE_SIZE)),
            ..SoftDmaConfig::default()
        }))
    }

    /// The physical address of the CPU's page at `va` (through a fault-free
    /// SNAPSHOT-like walk is overkill: the device table names the frame).
    fn device_frame(file: &crate::DmirrorFile, va: u64) -> u64 {
        let entries = file.device_entries();
        let (_, entry) = entries.iter().find(|(at, _)| *at == va).expect("the device maps the page");
        entry.pfn.0 << hmm_types::PAGE_SHIFT
    }

    #[test]
    fn faulted_pages_are_dma_mapped_and_invalidation_unmaps_them_before_they_change() {
        let (_kernel, dmirror, mm) = machine();
        let file = dmirror.device(0).unwrap().open(&mm).unwrap();
        let npages = 8;
        let va = mm.mmap(0, npages * PAGE_SIZE, Prot::RW, ANON).unwrap();
        for i in 0..npages {
            mm.write_u64(va + i * PAGE_SIZE, 0xd0 + i).unwrap();
        }
        let dev = iommu();
        file.dma_attach(dev.clone(), va, npages).unwrap();
        let mut out = vec![0u8; (npages * PAGE_SIZE) as usize];
        file.read(va, npages, &mut out).unwrap();
        // Each page at its offset of the one IOVA reservation, reaching the
        // frame the device mirrors.
        let first = file.dma_address(va).unwrap();
        for i in 0..npages {
            let at = va + i * PAGE_SIZE;
            let dma = file.dma_address(at).unwrap();
            assert_eq!(dma, first + i * PAGE_SIZE);
            assert_eq!(dev.translate(dma), Some(device_frame(&file, at)));
        }
        assert_eq!(dev.stats().links, npages as usize);
        // A second read maps nothing new (the pages are already mapped).
        file.read(va, npages, &mut out).unwrap();
        assert_eq!(dev.stats().links, npages as usize);

        // The CPU side discards two pages: the invalidation unmaps them
        // before the frames are freed.
        mm.madvise(va + 2 * PAGE_SIZE, 2 * PAGE_SIZE, MadviseAdvice::DontNeed).unwrap();
        assert_eq!(file.dma_address(va + 2 * PAGE_SIZE), None);
        assert_eq!(file.dma_address(va + 3 * PAGE_SIZE), None);
        // Linux's dmirror clears one page past the range: so does its DMA.
        assert_eq!(file.dma_address(va + 4 * PAGE_SIZE), None);
        assert_eq!(dev.stats().links, npages as usize - 3);
        // The next device access faults the new pages in and maps them.
        file.read(va, npages, &mut out).unwrap();
        let dma = file.dma_address(va + 2 * PAGE_SIZE).unwrap();
        assert_eq!(dma, first + 2 * PAGE_SIZE);
        assert_eq!(dev.translate(dma), Some(device_frame(&file, va + 2 * PAGE_SIZE)));
        assert_eq!(dev.stats().links, npages as usize);
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 0xd0);

        // Migrating a page to device memory replaces its entry: unmapped.
        let mut one = vec![0u8; PAGE_SIZE as usize];
        file.migrate_to_dev(va, 1, &mut one).unwrap();
        assert_eq!(file.dma_address(va), None);
        assert_eq!(dev.stats().links, npages as usize - 1);

        file.dma_detach().unwrap();
        assert_eq!(dev.stats(), SoftDmaStats::default(), "nothing left mapped or reserved");
        // Without a window the device works as before.
        file.read(va, npages, &mut out).unwrap();
        assert_eq!(file.dma_address(va + PAGE_SIZE), None);
    }

    #[test]
    fn closing_the_file_unmaps_and_frees_and_bad_attachments_are_refused() {
        let (_kernel, dmirror, mm) = machine();
        let file = dmirror.device(0).unwrap().open(&mm).unwrap();
        let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        let dev = iommu();
        let syncing: Arc<dyn DmaDevice> =
            Arc::new(SoftDmaDevice::new(SoftDmaConfig { needs_sync: true, ..SoftDmaConfig::default() }));
        assert_eq!(file.dma_attach(syncing, va, 4).unwrap_err().errno(), Errno::OpNotSupp);
        assert_eq!(file.dma_attach(dev.clone(), va + 1, 4).unwrap_err().errno(), Errno::Inval);
        assert_eq!(file.dma_attach(dev.clone(), va, 1 << 40).unwrap_err().errno(), Errno::NoMem);
        file.dma_attach(dev.clone(), va, 4).unwrap();
        assert_eq!(file.dma_attach(dev.clone(), va, 4), Err(DmirrorError::DmaAttached));
        file.write(va, 4, &vec![7u8; 4 * PAGE_SIZE as usize]).unwrap();
        assert_eq!(dev.stats().links, 4);
        drop(file);
        assert_eq!(dev.stats(), SoftDmaStats::default());
    }

    #[test]
    fn dma_direct_devices_map_page_by_page() {
        let (_kernel, dmirror, mm) = machine();
        let file = dmirror.device(0).unwrap().open(&mm).unwrap();
        let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        let dev = Arc::new(SoftDmaDevice::new(SoftDmaConfig {
            direct_needs_unmap: true,
            dma_offset: 0x4000_0000_0000,
            ..SoftDmaConfig::default()
        }));
        file.dma_attach(dev.clone(), va, 2).unwrap();
        file.read(va, 2, &mut vec![0u8; 2 * PAGE_SIZE as usize]).unwrap();
        let dma = file.dma_address(va).unwrap();
        assert_eq!(dma, device_frame(&file, va) + 0x4000_0000_0000);
        assert_eq!(dev.stats().direct, 2);
        mm.munmap(va, 2 * PAGE_SIZE).unwrap();
        assert_eq!(dev.stats().direct, 0);
    }

    #[test]
    fn a_page_that_cannot_be_dma_mapped_fails_the_fault_and_is_not_mapped_by_the_device() {
        let (_kernel, dmirror, mm) = machine();
        let file = dmirror.device(0).unwrap().open(&mm).unwrap();
        let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        let dev = Arc::new(SoftDmaDevice::new(SoftDmaConfig { direct_needs_unmap: true, ..SoftDmaConfig::default() }));
        file.dma_attach(dev.clone(), va, 2).unwrap();
        dev.fail_next_map();
        let error = file.read(va, 2, &mut vec![0u8; 2 * PAGE_SIZE as usize]).unwrap_err();
        assert_eq!(error.errno(), Errno::NoMem);
        assert_eq!(file.mapped_pages(), 0, "the page that failed is not left in the device table");
        // The next read maps everything.
        file.read(va, 2, &mut vec![0u8; 2 * PAGE_SIZE as usize]).unwrap();
        assert_eq!(dev.stats().direct, 2);
    }
}
