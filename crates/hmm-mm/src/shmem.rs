//! Shared anonymous memory: the object behind `MAP_SHARED|MAP_ANONYMOUS`,
//! a page cache indexed by page offset that every sharer (and every fork
//! child) maps.
//!
//! Owns its pages (one reference each); frees them when the last mapping of
//! the object goes. Linux: `mm/shmem.c` (`shmem_zero_setup`,
//! `shmem_get_folio`).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use hmm_types::Pfn;

use crate::phys::{OutOfMemory, PageFlags, PhysMem};

/// The page cache of one shared anonymous object.
pub struct ShmemObject {
    phys: Arc<PhysMem>,
    id: u64,
    pages: Mutex<BTreeMap<u64, Pfn>>,
}

impl core::fmt::Debug for ShmemObject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShmemObject")
            .field("id", &self.id)
            .field("pages", &self.pages.lock().len())
            .finish()
    }
}

impl ShmemObject {
    pub(crate) fn new(phys: Arc<PhysMem>, id: u64) -> Self {
        Self {
            phys,
            id,
            pages: Mutex::new(BTreeMap::new()),
        }
    }

    /// Identity of the object (`folio->mapping`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The page at `index`, allocated zeroed on first use. The object keeps
    /// its own reference; the caller gets none.
    pub(crate) fn find_or_create(&self, index: u64) -> Result<Pfn, OutOfMemory> {
        let mut pages = self.pages.lock();
        if let Some(&pfn) = pages.get(&index) {
            return Ok(pfn);
        }
        let pfn = self.phys.alloc_folio(0, true)?;
        let meta = self.phys.meta(pfn);
        meta.set_flags(PageFlags::SHMEM | PageFlags::SWAPBACKED | PageFlags::UPTODATE);
        meta.index
            .store(index, core::sync::atomic::Ordering::Relaxed);
        meta.mapping
            .store(self.id, core::sync::atomic::Ordering::Relaxed);
        pages.insert(index, pfn);
        Ok(pfn)
    }

    /// Pages held.
    pub fn nr_pages(&self) -> usize {
        self.pages.lock().len()
    }
}

impl Drop for ShmemObject {
    fn drop(&mut self) {
        for (_, pfn) in core::mem::take(&mut *self.pages.lock()) {
            self.phys.put(pfn);
        }
    }
}
