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
    /// The lowest address a hint may name (the kernel's `mmap_min_addr`:
    /// the larger of the `vm.mmap_min_addr` sysctl, whose default is
    /// `CONFIG_DEFAULT_MMAP_MIN_ADDR`, 4096 on x86, and with
    /// `CONFIG_SECURITY` `CONFIG_LSM_MMAP_MIN_ADDR`, 65536 in Debian's
    /// kernels: the host's 6.18 uses 0x10000, the kernel-lab guest, built
    /// without `CONFIG_SECURITY`, 0x1000). A lower hint is raised to it
    /// (`round_hint_to_min`); MAP_FIXED below it needs `CAP_SYS_RAWIO`,
    /// which the model has, as the runners (root) do.
    pub mmap_min_addr: u64,
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
            mmap_min_addr: crate::vma::MMAP_MIN_ADDR,
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
    /// `vm.mmap_min_addr` as in force (see [`KernelConfig::mmap_min_addr`]).
    mmap_min_addr: AtomicU64,
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
            tmpfs,
            swap,
            next_mm_id: AtomicU64::new(1),
            migration: MigrationShared::default(),
            mms: Mutex::new(Vec::new()),
            anon_registry: Arc::default(),
            device_scan: AtomicU64::new(0),
            mmap_min_addr: AtomicU64::new(config.mmap_min_addr),
            config,
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

    /// The lowest address a mmap hint may name (`mmap_min_addr`).
    pub fn mmap_min_addr(&self) -> u64 {
        self.mmap_min_addr.load(Ordering::Relaxed)
    }

    /// Writes `vm.mmap_min_addr` (the value in force: the caller takes
    /// the larger of the sysctl and the LSM's floor, as Linux's
    /// `update_mmap_min_addr` does). Later mmap calls use it.
    pub fn set_mmap_min_addr(&self, addr: u64) {
        self.mmap_min_addr.store(addr, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot};

    use crate::testing::kernel;
    use crate::ThpMode;

    #[test]
    fn a_hint_below_mmap_min_addr_is_raised_to_it() {
        // Linux 6.18 on the host (effective 0x10000) and the 7.3.4 guest
        // (0x1000): scenarios/corpus/mmap_min_addr_hint.hmm.
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        assert_eq!(k.mmap_min_addr(), 0x10000, "Debian's kernels");
        assert_eq!(mm.mmap(0x8000, 4096, Prot::RW, anon).unwrap(), 0x10000);
        let taken = mm.mmap(0x1000, 4096, Prot::RW, anon).unwrap();
        assert!(taken > 0x1_0000_0000, "taken: top-down, {taken:#x}");
        assert_eq!(mm.mmap(0x1000, 4096, Prot::RW, anon | MapFlags::FIXED).unwrap(), 0x1000, "CAP_SYS_RAWIO");
        k.set_mmap_min_addr(0x1000);
        assert_eq!(mm.mmap(0x2800, 4096, Prot::RW, anon).unwrap(), 0x2000, "page-aligned down, above the floor");
        mm.munmap(0x1000, 4096).unwrap();
        assert!(mm.mmap(0x800, 4096, Prot::RW, anon).unwrap() > 0x1_0000_0000, "0x800 is no hint (0)");
        assert!(mm.mmap(0xfff, 4096, Prot::RW, anon).unwrap() > 0x1_0000_0000);
        assert_eq!(mm.mmap(0x1800, 4096, Prot::RW, anon).unwrap(), 0x1000);
    }
}
