//! `MigrateVma` and its first step, `setup`: validate the range, then
//! collect its pages (`collect.rs`, `compound.rs`) and unmap them behind
//! migration entries (`unmap.rs`) for the driver (spec §4.3–4.4, delta
//! §3.2).
//!
//! Linux: `struct migrate_vma`, `migrate_vma_setup`.

use std::sync::Weak;

use bitflags::bitflags;

use hmm_types::{Event, Owner, Pfn, VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::{Mm, MmapLocked};
use crate::phys::{MemoryType, PageFlags};
use crate::vma::Vma;

/// The pfn field is valid (`MIGRATE_PFN_VALID`).
pub const MIGRATE_PFN_VALID: u64 = 1 << 0;
/// The entry is (still) migrating (`MIGRATE_PFN_MIGRATE`).
pub const MIGRATE_PFN_MIGRATE: u64 = 1 << 1;
/// The source was mapped writable (`MIGRATE_PFN_WRITE`).
pub const MIGRATE_PFN_WRITE: u64 = 1 << 3;
/// A PMD-sized folio (`MIGRATE_PFN_COMPOUND`).
pub const MIGRATE_PFN_COMPOUND: u64 = 1 << 4;
/// Where the pfn starts (`MIGRATE_PFN_SHIFT`).
pub const MIGRATE_PFN_SHIFT: u32 = 6;

/// `migrate_pfn(pfn)`: the word naming a page.
pub const fn migrate_pfn(pfn: Pfn) -> u64 {
    (pfn.0 << MIGRATE_PFN_SHIFT) | MIGRATE_PFN_VALID
}

/// The page a word names, `None` without VALID (`migrate_pfn_to_page`).
pub const fn migrate_pfn_to_pfn(word: u64) -> Option<Pfn> {
    if word & MIGRATE_PFN_VALID == 0 {
        None
    } else {
        Some(Pfn(word >> MIGRATE_PFN_SHIFT))
    }
}

bitflags! {
    /// What `setup` collects (`enum migrate_vma_direction`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct MigrateSelect: u32 {
        /// System RAM pages, the zero page and PMD-mapped THPs. (Holes of
        /// anonymous VMAs are collected whatever the selection.)
        const SYSTEM = 1 << 0;
        /// Device-private pages of `pgmap_owner`.
        const DEVICE_PRIVATE = 1 << 1;
        /// Device-coherent pages of `pgmap_owner`.
        const DEVICE_COHERENT = 1 << 2;
        /// PMD-sized collection where the range covers a whole aligned PMD.
        const COMPOUND = 1 << 3;
    }
}

/// A migration of `[start, end)` of one VMA (`struct migrate_vma`).
#[derive(Clone, Debug)]
pub struct MigrateVma {
    /// First address (page aligned).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// One word per page, filled by `setup`: the source page and flags.
    pub src: Vec<u64>,
    /// One word per page, filled by the driver: the destination page.
    pub dst: Vec<u64>,
    /// Pages collected by `setup`.
    pub npages: u64,
    /// Pages still migrating.
    pub cpages: u64,
    /// Owner used to select device pages and carried by the invalidation.
    pub pgmap_owner: Owner,
    /// What to collect.
    pub flags: MigrateSelect,
    /// The locked device page of a `migrate_to_ram` fault, if any.
    pub fault_page: Option<Pfn>,
    /// Mappings of collected pages elsewhere (other processes after fork,
    /// found through the reverse map), also turned into migration entries:
    /// `(index, address space, address)`.
    pub(super) others: Vec<(usize, Weak<Mm>, u64)>,
}

impl MigrateVma {
    /// A migration of `[start, end)` with `src` and `dst` sized to the range
    /// (an empty or inverted range gets empty arrays; `setup` rejects it).
    pub fn new(start: u64, end: u64, pgmap_owner: Owner, flags: MigrateSelect) -> Self {
        Self {
            start,
            end,
            // Sized by `setup`, fallibly: the range is the caller's.
            src: Vec::new(),
            dst: Vec::new(),
            npages: 0,
            cpages: 0,
            pgmap_owner,
            flags,
            fault_page: None,
            others: Vec::new(),
        }
    }

    pub(super) fn index(&self, va: u64) -> usize {
        ((va - self.start) >> PAGE_SHIFT) as usize
    }

    /// Collects and unmaps the range (`migrate_vma_setup`). `EINVAL` for
    /// an empty or unaligned range, a range not inside one VMA, a hugetlb,
    /// special (I/O, pfn-map, mixed-map, DONTEXPAND) or DAX VMA, or a `fault_page` that is not a locked
    /// device-private page. `ENOMEM` when the `src`/`dst` arrays
    /// for the range cannot be allocated. Returns `Ok` even when nothing can
    /// migrate.
    pub fn setup(&mut self, locked: MmapLocked<'_>) -> Result<(), MmError> {
        let vma = self.validate(locked)?;
        let mm = locked.mm();
        self.npages = (self.end - self.start) >> PAGE_SHIFT;
        self.size_arrays(mm)?;
        mm.kernel().count_device_scan(self.npages);
        self.cpages = 0;
        self.others.clear();
        let whole = self.compound_blocks(mm);
        self.split_leaves(mm, &whole)?;
        let invalidation = mm.notifiers().start_owned(mm.id(), self.start, self.end, Event::Migrate, self.pgmap_owner);
        for &block in &whole {
            self.collect_block(mm, block);
        }
        self.collect(mm, vma, &whole);
        invalidation.end();
        self.unmap_others(mm);
        self.unmap_pinned(mm);
        Ok(())
    }

    /// One zeroed `src` and `dst` word per page, reserved fallibly: arrays
    /// larger than the machine's RAM are `ENOMEM` (the caller's kvmalloc
    /// of them would fail on Linux), never an abort.
    fn size_arrays(&mut self, mm: &Mm) -> Result<(), MmError> {
        let array_bytes = self.npages.saturating_mul(2 * 8);
        if array_bytes > mm.phys().ram_frames().saturating_mul(PAGE_SIZE) {
            return Err(MmError::NoMem);
        }
        let npages = usize::try_from(self.npages).map_err(|_| MmError::NoMem)?;
        for words in [&mut self.src, &mut self.dst] {
            words.clear();
            words.try_reserve_exact(npages).map_err(|_| MmError::NoMem)?;
            words.resize(npages, 0);
        }
        Ok(())
    }

    fn validate<'a>(&self, locked: MmapLocked<'a>) -> Result<&'a Vma, MmError> {
        if self.start >= self.end || (self.start | self.end) % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("migrate range empty, inverted or unaligned"));
        }
        let vma = locked.vmas().lookup(self.start).ok_or(MmError::Invalid("no VMA at the start of the range"))?;
        if self.end > vma.end {
            return Err(MmError::Invalid("the range crosses the end of its VMA"));
        }
        if vma.flags.intersects(VmFlags::HUGETLB | VmFlags::SPECIAL) {
            return Err(MmError::Invalid("hugetlb and special mappings cannot migrate"));
        }
        // vma_is_dax: fs-dax files and the device-DAX node alike.
        let dax = vma.file().is_some_and(|inode| matches!(inode.kind(), crate::fs::InodeKind::Dax(_)))
            || matches!(vma.backing, crate::vma::VmaBacking::DevDax(_));
        if dax {
            return Err(MmError::Invalid("DAX mappings cannot migrate"));
        }
        if let Some(page) = self.fault_page {
            let phys = locked.mm().phys();
            let private = phys.is_valid_pfn(page) && phys.memory_type(page) == MemoryType::DevicePrivate;
            if !private || !phys.meta(page).flags().contains(PageFlags::LOCKED) {
                return Err(MmError::Invalid("fault_page must be a locked device-private page"));
            }
        }
        Ok(vma)
    }
}
