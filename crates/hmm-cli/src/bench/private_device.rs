//! A small device-private memory driver for category 4, as in
//! `hmm-mm/benches/migrate.rs`: two pools of device pages (4 KiB pages and
//! 2 MiB folios), a pagemap whose `folio_free` returns pages to their
//! pool, and the driver's side of `MigrateVma` (setup, allocate and copy,
//! pages, finalize) in both directions. To be replaced by `hmm-dmirror`
//! once the reference device lands.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use hmm::{migrate_pfn, migrate_pfn_to_pfn, MigrateSelect, MigrateVma};
use hmm_mm::device::{MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE};
use hmm_mm::phys::{MemoryType, Pagemap, PagemapOps, PhysMem};
use hmm_mm::{Kernel, MmError, MmapLocked};
use hmm_types::{Owner, Pfn};

const OWNER: Owner = Owner(0xbe);

/// Device-private memory with a pool of 4 KiB pages and one of 2 MiB folios.
pub struct Driver {
    phys: Arc<PhysMem>,
    small: Mutex<Vec<Pfn>>,
    huge: Mutex<Vec<Pfn>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("free_pages", &self.free_pages()).finish_non_exhaustive()
    }
}

struct Ops(Weak<Driver>);

impl PagemapOps for Ops {
    fn folio_free(&self, head: Pfn) {
        if let Some(driver) = self.0.upgrade() {
            let pool = if driver.phys.folio_order(head) == 9 { &driver.huge } else { &driver.small };
            pool.lock().push(head);
        }
    }
}

impl Driver {
    /// `nr_pages` 4 KiB pages and `nr_pages / 512` 2 MiB folios.
    pub fn new(kernel: &Kernel, nr_pages: u64) -> Result<Arc<Self>, std::io::Error> {
        let driver =
            Arc::new(Self { phys: kernel.phys().clone(), small: Mutex::new(Vec::new()), huge: Mutex::new(Vec::new()) });
        let pagemap =
            Pagemap::new(MemoryType::DevicePrivate, Some(OWNER)).with_ops(Arc::new(Ops(Arc::downgrade(&driver))));
        let base = kernel.phys().add_device_region(Arc::new(pagemap), 2 * nr_pages, None)?;
        *driver.small.lock() = (0..nr_pages).rev().map(|i| base.add(i)).collect();
        *driver.huge.lock() = (0..nr_pages / 512).rev().map(|i| base.add(nr_pages + 512 * i)).collect();
        Ok(driver)
    }

    /// Device pages free, counting a folio as 512.
    pub fn free_pages(&self) -> u64 {
        self.small.lock().len() as u64 + 512 * self.huge.lock().len() as u64
    }

    /// Moves `[start, end)` to device memory; returns the pages moved.
    pub fn to_device(&self, locked: MmapLocked<'_>, start: u64, end: u64, compound: bool) -> Result<u64, MmError> {
        let select = MigrateSelect::SYSTEM | if compound { MigrateSelect::COMPOUND } else { MigrateSelect::empty() };
        self.migrate(locked, MigrateVma::new(start, end, OWNER, select), |phys, order| {
            let pool = if order == 9 { &self.huge } else { &self.small };
            let page = pool.lock().pop().ok_or(MmError::NoMem)?;
            phys.zone_device_folio_init(page, order);
            Ok(page)
        })
    }

    /// Evicts this device's pages of `[start, end)` to RAM; returns the
    /// pages moved.
    pub fn to_ram(&self, locked: MmapLocked<'_>, start: u64, end: u64, compound: bool) -> Result<u64, MmError> {
        let select =
            MigrateSelect::DEVICE_PRIVATE | if compound { MigrateSelect::COMPOUND } else { MigrateSelect::empty() };
        self.migrate(locked, MigrateVma::new(start, end, OWNER, select), |phys, order| {
            let page = phys.alloc_folio(order, false).map_err(|_| MmError::NoMem)?;
            phys.meta(page).try_lock();
            Ok(page)
        })
    }

    /// setup → a locked destination per entry (from `alloc`) → the copies →
    /// pages → finalize.
    fn migrate(
        &self,
        locked: MmapLocked<'_>,
        mut migrate: MigrateVma,
        alloc: impl Fn(&PhysMem, u32) -> Result<Pfn, MmError>,
    ) -> Result<u64, MmError> {
        migrate.setup(locked)?;
        let mut i = 0;
        let mut failed = None;
        while i < migrate.src.len() {
            let word = migrate.src[i];
            let (order, nr, flag) =
                if word & MIGRATE_PFN_COMPOUND != 0 { (9, 512, MIGRATE_PFN_COMPOUND) } else { (0, 1, 0) };
            if word & MIGRATE_PFN_MIGRATE != 0 && failed.is_none() {
                match alloc(&self.phys, order) {
                    Ok(page) => migrate.dst[i] = migrate_pfn(page) | flag,
                    Err(error) => failed = Some(error),
                }
            }
            i += nr;
        }
        for (&word, &dst) in migrate.src.iter().zip(&migrate.dst) {
            let Some(dst) = migrate_pfn_to_pfn(dst) else { continue };
            let nr = if word & MIGRATE_PFN_COMPOUND != 0 { 512 } else { 1 };
            match migrate_pfn_to_pfn(word) {
                Some(src) => self.phys.copy_frames(dst, src, nr),
                None => self.phys.zero_frames(dst, nr),
            }
        }
        migrate.pages(locked);
        migrate.finalize(locked);
        if let Some(error) = failed {
            return Err(error);
        }
        let moved = |w: &&u64| **w & MIGRATE_PFN_MIGRATE != 0;
        Ok(migrate.src.iter().filter(moved).map(|w| if w & MIGRATE_PFN_COMPOUND != 0 { 512 } else { 1 }).sum())
    }
}
