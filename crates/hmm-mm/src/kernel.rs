//! The machine: physical memory, configuration, and the address spaces
//! created on it.

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmm_types::{MmId, PageSize};

use crate::error::MmError;
use crate::fs::Tmpfs;
use crate::mm::Mm;
use crate::phys::PhysMem;

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
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 1 << 30,
            thp: ThpMode::Always,
            use_huge_zero_page: true,
            hugetlb_2m_pages: 0,
            hugetlb_1g_pages: 0,
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
}

impl Kernel {
    /// Boots a machine.
    pub fn new(config: KernelConfig) -> Result<Arc<Self>, MmError> {
        let phys = PhysMem::new(config.ram_bytes).map_err(|_| MmError::Invalid("RAM size must be 4 MiB to 1 TiB"))?;
        for (size, count) in [(PageSize::Size1G, config.hugetlb_1g_pages), (PageSize::Size2M, config.hugetlb_2m_pages)]
        {
            phys.hugetlb_grow(size, count).map_err(|_| MmError::Invalid("the hugetlb pools do not fit in RAM"))?;
        }
        let tmpfs = Tmpfs::new(phys.clone());
        Ok(Arc::new(Self { phys, config, tmpfs, next_mm_id: AtomicU64::new(1) }))
    }

    /// Physical memory.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }

    /// The tmpfs mount.
    pub fn tmpfs(&self) -> &Tmpfs {
        &self.tmpfs
    }

    /// The configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    pub(crate) fn next_mm_id(&self) -> MmId {
        MmId(self.next_mm_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A new, empty address space (a process after exec).
    pub fn create_mm(self: &Arc<Self>) -> Result<Arc<Mm>, MmError> {
        Mm::new(self.clone())
    }
}
