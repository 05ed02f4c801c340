//! The machine: physical memory, the swap area, configuration, the address
//! spaces created on it (a registry of weak references, which reclaim
//! walks), and machine-wide migration state (the wait queue of
//! `crate::migrate`).

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use hmm_types::{MmId, PageSize};

use crate::error::MmError;
use crate::fs::Tmpfs;
use crate::migrate::{MigrationHook, MigrationShared};
use crate::mm::Mm;
use crate::phys::PhysMem;
use crate::rmap::AnonRegistry;
use crate::swap::{SwapArea, MAX_SWAP_PAGES};

/// Transparent huge page policy (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ThpMode {
    /// Every eligible anonymous range.
    Always,
    /// Only VMAs with MADV_HUGEPAGE.
    Madvise,
    /// Never.
    Never,
}

/// How the machine is built.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Bytes of system RAM (frames are committed lazily by the host).
    pub ram_bytes: u64,
    /// THP policy for anonymous memory.
    pub thp: ThpMode,
    /// Map the huge zero page on read faults of THP-eligible ranges
    /// (`transparent_hugepage/use_zero_page`).
    pub use_huge_zero_page: bool,
    /// 2 MiB pages set aside for hugetlbfs at boot (`hugepages=`).
    pub hugetlb_2m_pages: u64,
    /// 1 GiB pages set aside for hugetlbfs at boot (`hugepagesz=1G`).
    pub hugetlb_1g_pages: u64,
    /// 4 KiB slots of the swap area; 0 is a machine without swap.
    pub swap_pages: u64,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 1 << 30,
            thp: ThpMode::Always,
            use_huge_zero_page: true,
            hugetlb_2m_pages: 0,
            hugetlb_1g_pages: 0,
            swap_pages: 0,
        }
    }
}

/// A machine: physical memory plus the address spaces living on it.
#[derive(Debug)]
pub struct Kernel {
    phys: Arc<PhysMem>,
    config: KernelConfig,
    next_mm_id: AtomicU64,
    tmpfs: Tmpfs,
    migration: MigrationShared,
    swap: SwapArea,
    /// Every address space created here, for reclaim. Held only to add or
    /// to snapshot; nothing else is locked under it.
    mms: Mutex<Vec<Weak<Mm>>>,
    /// The anon roots, for the reverse map (`crate::rmap`).
    anon_registry: Arc<AnonRegistry>,
    /// CPU page-table entries examined by device migration (a diagnostic).
    device_scan: AtomicU64,
}

/// In debug builds the machine's last reference checks frame accounting
/// ([`PhysMem::check_frames`]): by then no address space is left and no
/// operation is in flight, so any inconsistency is a bug of the model (a
/// reference or mapping dropped twice, or one never dropped).
#[cfg(debug_assertions)]
impl Drop for Kernel {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if let Err(error) = self.phys.check_frames() {
                panic!("{error}");
            }
        }
    }
}

impl Kernel {
    /// Boots a machine.
    pub fn new(config: KernelConfig) -> Result<Arc<Self>, MmError> {
        let phys = PhysMem::new(config.ram_bytes).map_err(|_| MmError::Invalid("RAM size must be 4 MiB to 1 TiB"))?;
        for (size, count) in [(PageSize::Size1G, config.hugetlb_1g_pages), (PageSize::Size2M, config.hugetlb_2m_pages)]
        {
            phys.hugetlb_grow(size, count).map_err(|_| MmError::Invalid("the hugetlb pools do not fit in RAM"))?;
        }
        if config.swap_pages >= MAX_SWAP_PAGES {
            return Err(MmError::Invalid("swap must hold fewer than 2^40 pages"));
        }
        let tmpfs = Tmpfs::new(phys.clone());
        let swap = SwapArea::new(config.swap_pages);
        Ok(Arc::new(Self {
            phys,
            config,
            tmpfs,
            swap,
            next_mm_id: AtomicU64::new(1),
            migration: MigrationShared::default(),
            mms: Mutex::new(Vec::new()),
            anon_registry: Arc::default(),
            device_scan: AtomicU64::new(0),
        }))
    }

    /// Physical memory.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }

    /// The tmpfs mount.
    pub fn tmpfs(&self) -> &Tmpfs {
        &self.tmpfs
    }

    /// The swap area (empty when `swap_pages` is 0).
    pub fn swap(&self) -> &SwapArea {
        &self.swap
    }

    /// The configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Installs (or with `None` removes) the migration test hook: it runs
    /// for every folio [`Mm::migrate_pages`] moves, after the migration
    /// entries are installed and the invalidation has ended, with no lock
    /// held, just before the data is copied. A hook that blocks keeps the
    /// migration entries installed for as long as it blocks, which is how
    /// tests show accessors waiting. The hook must not touch the migrating
    /// pages itself (it would wait for its own migration). Not for
    /// production use.
    pub fn set_migration_hook(&self, hook: Option<MigrationHook>) {
        self.migration.set_hook(hook);
    }

    /// Threads currently waiting for a migration entry to go away (a
    /// diagnostic for tests).
    pub fn migration_waiters(&self) -> u64 {
        self.migration.waiters()
    }

    pub(crate) fn migration(&self) -> &MigrationShared {
        &self.migration
    }

    pub(crate) fn anon_registry(&self) -> &Arc<AnonRegistry> {
        &self.anon_registry
    }

    /// Address spaces visited by reverse-map walks since boot (a
    /// diagnostic: eviction and migration cost follows the pages they
    /// move, not the size of the address spaces).
    pub fn rmap_visits(&self) -> u64 {
        self.anon_registry.visits()
    }

    /// CPU page-table entries examined by device migration since boot:
    /// one per page of each `MigrateVma::setup` range, one per mapping the
    /// reverse map offers for a collected page (a diagnostic showing that
    /// eviction costs what is in use, not what is mapped).
    pub fn device_migration_scanned(&self) -> u64 {
        self.device_scan.load(Ordering::Relaxed)
    }

    pub(crate) fn count_device_scan(&self, entries: u64) {
        self.device_scan.fetch_add(entries, Ordering::Relaxed);
    }

    pub(crate) fn next_mm_id(&self) -> MmId {
        MmId(self.next_mm_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds a new address space to the registry, forgetting dead ones.
    pub(crate) fn register_mm(&self, mm: &Arc<Mm>) {
        let mut mms = self.mms.lock();
        mms.retain(|weak| weak.strong_count() > 0);
        mms.push(Arc::downgrade(mm));
    }

    /// The address spaces still alive, in creation order.
    pub(crate) fn live_mms(&self) -> Vec<Arc<Mm>> {
        self.mms.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// A new, empty address space (a process after exec).
    pub fn create_mm(self: &Arc<Self>) -> Result<Arc<Mm>, MmError> {
        Mm::new(self.clone())
    }
}
