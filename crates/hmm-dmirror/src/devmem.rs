//! A device's memory: chunks of device frames registered with the memory
//! manager (one pagemap each, owned by the device), free lists of 4K pages
//! and 2 MiB folios, the allocation counters, and eviction of whole chunks
//! back to system RAM (spec §5.1, RELEASE in §5.5).
//!
//! Deliberate difference from Linux's test device: a device-private page
//! here holds its data itself. Linux's test device has no real device
//! memory, so it pairs each device page with a hidden system page (its
//! "backing page"); the model has device frames with bytes, so the device
//! reads and writes its own frames and the device table maps them directly.
//! Nothing a user of the commands sees depends on it.
//!
//! Linux: `dmirror_allocate_chunk`, `dmirror_devmem_alloc_page`,
//! `dmirror_devmem_free`, `dmirror_device_evict_chunk`,
//! `dmirror_device_remove_chunks` (`lib/test_hmm.c`).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use hmm_mm::device::{DeviceFault, MigrateDevice};
use hmm_mm::phys::{MemoryType, Pagemap, PagemapOps, PhysMem};
use hmm_mm::{FaultError, Kernel};
use hmm_types::{Owner, Pfn};

use crate::device::DmirrorDevice;
use crate::uapi::MemoryKind;

/// Pages of a 2 MiB folio.
pub(crate) const FOLIO_PAGES: u64 = 512;

/// One registered range of device frames (`struct dmirror_chunk`).
#[derive(Debug)]
struct Chunk {
    base: Pfn,
    /// Being evicted or retired: freed pages do not return to the lists.
    removed: bool,
}

/// Free lists and counters, under one lock (`mdevice->lock`).
#[derive(Debug, Default)]
struct Pools {
    chunks: Vec<Chunk>,
    /// Regions of released chunks, reused for new chunks once idle (the
    /// model cannot unregister a region).
    retired: Vec<Pfn>,
    free_pages: Vec<Pfn>,
    free_folios: Vec<Pfn>,
    calloc: u64,
    cfree: u64,
}

/// The memory of one device.
#[derive(Debug)]
pub(crate) struct DeviceMemory {
    kind: MemoryKind,
    owner: Owner,
    kernel: Arc<Kernel>,
    chunk_pages: u64,
    max_chunks: usize,
    pools: Mutex<Pools>,
}

/// The pagemap operations of a chunk (`dmirror_devmem_ops`).
struct ChunkOps(Weak<DmirrorDevice>);

impl PagemapOps for ChunkOps {
    fn folio_free(&self, head: Pfn) {
        if let Some(device) = self.0.upgrade() {
            device.memory().free(head);
        }
    }

    fn migrate_to_ram(&self, fault: &DeviceFault<'_>) -> Result<(), FaultError> {
        let device = self.0.upgrade().ok_or(FaultError::Sigbus("the device is gone"))?;
        crate::migrate::devmem_fault(&device, fault)
    }
}

impl DeviceMemory {
    pub(crate) fn new(
        kind: MemoryKind,
        owner: Owner,
        kernel: Arc<Kernel>,
        chunk_pages: u64,
        max_chunks: usize,
    ) -> Self {
        Self { kind, owner, kernel, chunk_pages, max_chunks, pools: Mutex::new(Pools::default()) }
    }

    pub(crate) fn phys(&self) -> &Arc<PhysMem> {
        self.kernel.phys()
    }

    /// (pages handed out, pages freed back) since the device came up.
    pub(crate) fn counters(&self) -> (u64, u64) {
        let pools = self.pools.lock();
        (pools.calloc, pools.cfree)
    }

    /// Free device pages (4K pages plus the pages of free folios).
    pub(crate) fn free_pages(&self) -> u64 {
        let pools = self.pools.lock();
        pools.free_pages.len() as u64 + FOLIO_PAGES * pools.free_folios.len() as u64
    }

    /// Registers one more chunk (`dmirror_allocate_chunk`): its aligned
    /// 2 MiB blocks become folios when `large`, the rest 4K pages.
    pub(crate) fn add_chunk(&self, device: &Weak<DmirrorDevice>, large: bool) -> bool {
        let mut pools = self.pools.lock();
        self.add_chunk_locked(&mut pools, device, large)
    }

    fn add_chunk_locked(&self, pools: &mut Pools, device: &Weak<DmirrorDevice>, large: bool) -> bool {
        if pools.chunks.len() >= self.chunk_limit() {
            return false;
        }
        let phys = self.phys();
        let idle = |base: Pfn| (0..self.chunk_pages).all(|i| phys.folio_counts(base.add(i)).0 == 0);
        let base = match pools.retired.iter().position(|&base| idle(base)) {
            Some(index) => pools.retired.swap_remove(index),
            None => {
                let memory_type = match self.kind {
                    MemoryKind::DevicePrivate => MemoryType::DevicePrivate,
                    MemoryKind::DeviceCoherent => MemoryType::DeviceCoherent,
                };
                let pagemap = Pagemap::new(memory_type, Some(self.owner)).with_ops(Arc::new(ChunkOps(device.clone())));
                match phys.add_device_region(Arc::new(pagemap), self.chunk_pages, None) {
                    Ok(base) => base,
                    Err(_) => return false,
                }
            }
        };
        pools.chunks.push(Chunk { base, removed: false });
        let mut i = self.chunk_pages;
        // Pushed in reverse so pages are handed out in address order.
        while i > 0 {
            let folio = large && i >= FOLIO_PAGES && (base.0 + i - FOLIO_PAGES) % FOLIO_PAGES == 0;
            if folio {
                i -= FOLIO_PAGES;
                pools.free_folios.push(base.add(i));
            } else {
                i -= 1;
                pools.free_pages.push(base.add(i));
            }
        }
        true
    }

    /// Chunks the device may have registered at once. Linux maps a coherent
    /// device's chunk at its fixed `spm_addr`, so `memremap_pages` refuses a
    /// second one while the first is registered ("Conflicting mapping in
    /// same section", `ENOMEM`): one chunk, whose layout (folios or 4K
    /// pages) the allocation that registered it chose, until a RELEASE
    /// removes it.
    fn chunk_limit(&self) -> usize {
        match self.kind {
            MemoryKind::DevicePrivate => self.max_chunks,
            MemoryKind::DeviceCoherent => 1,
        }
    }

    /// A device page or, with `order` 9, a 2 MiB device folio: locked, one
    /// reference (`dmirror_devmem_alloc_page`). A new chunk is registered
    /// when the list runs dry.
    pub(crate) fn alloc(&self, device: &Weak<DmirrorDevice>, order: u32) -> Option<Pfn> {
        let mut pools = self.pools.lock();
        let large = order > 0;
        let empty = |p: &Pools| if large { p.free_folios.is_empty() } else { p.free_pages.is_empty() };
        if empty(&pools) && !self.add_chunk_locked(&mut pools, device, large) {
            return None;
        }
        let page = if large { pools.free_folios.pop()? } else { pools.free_pages.pop()? };
        pools.calloc += 1 << order;
        drop(pools);
        self.phys().zone_device_folio_init(page, order);
        Some(page)
    }

    /// Device pages still referenced, in live and released chunks alike: a
    /// diagnostic for leak checks (the counters stop at a release, as
    /// Linux's `cfree` ignores pages of a chunk being removed).
    pub(crate) fn pages_in_use(&self) -> u64 {
        let bases: Vec<Pfn> = {
            let pools = self.pools.lock();
            pools.chunks.iter().map(|c| c.base).chain(pools.retired.iter().copied()).collect()
        };
        let phys = self.phys();
        let in_use = |pfn: Pfn| phys.folio_counts(phys.folio_head(pfn)).0 > 0;
        bases.iter().map(|base| (0..self.chunk_pages).filter(|&j| in_use(base.add(j))).count() as u64).sum()
    }

    /// A folio came back (`dmirror_devmem_free`).
    fn free(&self, head: Pfn) {
        let order = self.phys().folio_order(head);
        let mut pools = self.pools.lock();
        let chunk_pages = self.chunk_pages;
        let live = pools.chunks.iter().any(|c| !c.removed && (c.base.0..c.base.0 + chunk_pages).contains(&head.0));
        if !live {
            return;
        }
        pools.cfree += 1 << order;
        if order > 0 {
            pools.free_folios.push(head);
        } else {
            pools.free_pages.push(head);
        }
    }

    /// The first frames of the registered chunks.
    pub(crate) fn live_chunks(&self) -> Vec<Pfn> {
        self.pools.lock().chunks.iter().filter(|c| !c.removed).map(|c| c.base).collect()
    }

    /// Takes every chunk away from the allocator (`dmirror_device_remove_chunks`
    /// up to the eviction): marks them removed and empties the free lists.
    /// Returns the chunks' first frames.
    pub(crate) fn retire_chunks(&self) -> Vec<Pfn> {
        let mut pools = self.pools.lock();
        for chunk in &mut pools.chunks {
            chunk.removed = true;
        }
        pools.free_pages.clear();
        pools.free_folios.clear();
        let bases: Vec<Pfn> = pools.chunks.drain(..).map(|c| c.base).collect();
        pools.retired.extend(&bases);
        bases
    }

    /// Migrates every in-use page and 2 MiB folio of the chunk at `base`
    /// back to system RAM wherever it is mapped (`dmirror_device_evict_chunk`,
    /// with `migrate_device_range`): the memory manager finds the mappings
    /// of each through its reverse map.
    pub(crate) fn evict_chunk(&self, base: Pfn) {
        let phys = self.phys();
        let in_use = (0..self.chunk_pages).any(|j| phys.folio_counts(base.add(j)).0 > 0);
        if in_use {
            // Linux's eviction cannot fail for want of RAM (__GFP_NOFAIL);
            // here a folio without RAM stays on the device.
            let _ = MigrateDevice::to_ram(&self.kernel, base, self.chunk_pages);
        }
    }
}
