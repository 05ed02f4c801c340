//! `MigrateVma` and its first step, `setup`: collect the pages of a range,
//! unmap them behind migration entries, and report them to the driver
//! (spec §4.3–4.4).
//!
//! Linux: `struct migrate_vma`, `migrate_vma_setup`,
//! `migrate_vma_collect_pmd`, `migrate_vma_unmap`.

use core::ops::ControlFlow;
use std::sync::{Arc, Weak};

use bitflags::bitflags;

use hmm_pagetable::{Entry, SwapKind, Visit};
use hmm_types::{Event, Owner, Pfn, VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_leaf;
use crate::mm::{Mm, MmapLocked};
use crate::phys::{MemoryType, PageFlags};
use crate::rmap::{migration_entry_installed, rmap_walk, split_folio_if_uniform};
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
        /// System RAM pages, the zero page and, in anonymous VMAs, holes.
        const SYSTEM = 1 << 0;
        /// Device-private pages of `pgmap_owner`.
        const DEVICE_PRIVATE = 1 << 1;
        /// Device-coherent pages of `pgmap_owner`.
        const DEVICE_COHERENT = 1 << 2;
        /// PMD-sized collection where aligned (accepted; collected as 4K).
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
        let whole = self.compound_blocks(mm, vma);
        split_leaves(mm, self.start, self.end, &whole)?;
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
        if vma.file().is_some_and(|inode| matches!(inode.kind(), crate::fs::InodeKind::Dax(_))) {
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

    /// `migrate_vma_collect`: one word per page; collected pages get a
    /// reference, the page lock and a migration entry.
    fn collect(&mut self, mm: &Mm, vma: &Vma, whole: &[u64]) {
        let anon = vma.is_anonymous();
        let (start, end) = (self.start, self.end);
        let _ = mm.pgtable().walk(start, end, |visit| {
            let va = match &visit {
                Visit::Hole { start, .. } => *start,
                Visit::Slot { slot, .. } => slot.va(),
            };
            if whole.contains(&(va & !(hmm_types::PMD_SIZE - 1))) {
                return ControlFlow::Continue(());
            }
            match visit {
                Visit::Hole { start: a, end: b, .. } => {
                    for va in (a..b).step_by(PAGE_SIZE as usize) {
                        self.collect_hole(va, anon);
                    }
                }
                Visit::Slot { slot, entry } => {
                    let va = slot.va();
                    if entry.is_none() {
                        self.collect_hole(va, anon);
                    } else if let Some(word) = self.isolate(mm, slot, entry) {
                        let i = self.index(va);
                        self.src[i] = word;
                        self.cpages += 1;
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }

    fn collect_hole(&mut self, va: u64, anon: bool) {
        if anon && self.flags.contains(MigrateSelect::SYSTEM) {
            let i = self.index(va);
            self.src[i] = MIGRATE_PFN_MIGRATE;
            self.cpages += 1;
        }
    }

    /// Takes one mapped page for migration: the src word, or `None`.
    fn isolate(&self, mm: &Mm, slot: hmm_pagetable::Slot<'_>, entry: Entry) -> Option<u64> {
        let phys = mm.phys();
        let (pfn, write) = if entry.is_present() {
            let pfn = entry.pfn();
            if phys.is_zero_pfn(pfn) {
                return self.flags.contains(MigrateSelect::SYSTEM).then_some(MIGRATE_PFN_MIGRATE);
            }
            if entry.is_special() {
                return None;
            }
            let wanted = match phys.memory_type(pfn) {
                MemoryType::System => self.flags.contains(MigrateSelect::SYSTEM),
                MemoryType::DeviceCoherent => {
                    self.flags.contains(MigrateSelect::DEVICE_COHERENT) && self.owned(mm, pfn)
                }
                _ => false,
            };
            if !wanted || phys.folio_order(pfn) != 0 {
                return None;
            }
            (pfn, entry.is_write())
        } else {
            let kind = entry.swap_kind()?;
            let wanted = kind.is_device_private()
                && self.flags.contains(MigrateSelect::DEVICE_PRIVATE)
                && self.owned(mm, entry.pfn());
            if !wanted {
                return None;
            }
            (entry.pfn(), kind.is_write())
        };
        if !phys.try_get(pfn) {
            return None;
        }
        let is_fault_page = self.fault_page == Some(pfn);
        if !is_fault_page && !phys.meta(pfn).try_lock() {
            phys.put(pfn);
            return None;
        }
        let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
        if slot.compare_exchange(entry, Entry::swap(kind, pfn.0, false)).is_err() {
            if !is_fault_page {
                phys.meta(pfn).unlock();
            }
            phys.put(pfn);
            return None;
        }
        if entry.is_dirty() {
            phys.meta(pfn).set_flags(PageFlags::DIRTY);
        }
        // The mapping's reference now belongs to the migration entry.
        phys.map_sub(pfn, 1);
        Some(migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE | if write { MIGRATE_PFN_WRITE } else { 0 })
    }

    fn owned(&self, mm: &Mm, pfn: Pfn) -> bool {
        mm.phys().pagemap(pfn).and_then(|p| p.owner()) == Some(self.pgmap_owner)
    }

    /// `try_to_migrate` for pages mapped elsewhere too (other processes
    /// after fork, at whatever address mremap moved them to): each is
    /// found through the reverse map and replaced by a migration entry.
    fn unmap_others(&mut self, mm: &Mm) {
        let phys = mm.phys();
        let kernel = mm.kernel();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            // The collection dropped this range's mapping: any left is elsewhere.
            if phys.folio_counts(pfn).1 == 0 {
                continue;
            }
            let own = (mm.id(), self.start + ((i as u64) << PAGE_SHIFT));
            let others = &mut self.others;
            let _ = rmap_walk(kernel, pfn, |other, _vma, va| {
                kernel.count_device_scan(1);
                if (other.id(), va) != own && unmap_one(other, va, pfn, false).is_some() {
                    others.push((i, Arc::downgrade(other), va));
                }
                if phys.folio_counts(pfn).1 == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        }
    }

    /// `migrate_vma_unmap`'s pin check: a page with references beyond the
    /// collection's and its (now migration-entry) mapping's stays put.
    fn unmap_pinned(&mut self, mm: &Mm) {
        let phys = mm.phys();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let others = self.others.iter().filter(|(j, _, _)| *j == i).count() as u32;
            let expected = 2 + others + u32::from(self.fault_page == Some(pfn));
            if phys.folio_counts(pfn).0 > expected {
                let va = self.start + ((i as u64) << PAGE_SHIFT);
                super::finalize::restore(mm, va, pfn, pfn);
                self.restore_others(mm, i, pfn, pfn);
                if self.fault_page != Some(pfn) {
                    phys.meta(pfn).unlock();
                }
                phys.put(pfn);
                self.src[i] = 0;
            }
        }
        self.cpages = self.src.iter().filter(|&&w| w & MIGRATE_PFN_MIGRATE != 0).count() as u64;
    }
}

/// Replaces the entry at `va` of `mm` (whose mmap lock the caller holds)
/// by a migration entry if it maps the order-0 page `pfn` (present or
/// device-private) with a PTE or, with `whole_pmd`, maps the 2 MiB folio
/// headed by `pfn` with a PMD; announced as `try_to_migrate_one` does:
/// CLEAR with no owner, so no mirror of that process may skip it. The
/// mapping's share of the page goes; its reference now belongs to the
/// migration entry, which is counted as in flight in `mm`. Returns whether
/// the mapping was writable, or `None` if nothing was replaced.
pub(super) fn unmap_one(mm: &Mm, va: u64, pfn: Pfn, whole_pmd: bool) -> Option<bool> {
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    let huge = slot.level() == hmm_pagetable::Level::Pmd;
    // A PTE naming part of a large folio is left alone: moving one part
    // would leave the others mapping a folio about to be freed.
    let small = slot.level() == hmm_pagetable::Level::Pte && mm.phys().folio_order(pfn) == 0;
    let maps = entry.pfn() == pfn
        && (small || (huge && whole_pmd && slot.va() == va))
        && (entry.is_present() || entry.swap_kind().is_some_and(|k| k.is_device_private()));
    if !maps {
        return None;
    }
    let write = entry.is_write() || entry.swap_kind() == Some(SwapKind::DevicePrivateWrite);
    let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
    let invalidation = mm.notifiers().start(mm.id(), va, va + slot.level().entry_bytes(), Event::Clear);
    let swapped = slot.compare_exchange(entry, Entry::swap(kind, pfn.0, huge)).is_ok();
    invalidation.end();
    if !swapped {
        return None;
    }
    if entry.is_dirty() {
        mm.phys().meta(pfn).set_flags(PageFlags::DIRTY);
    }
    mm.phys().map_sub(pfn, 1);
    migration_entry_installed(mm);
    Some(write)
}

/// Splits the large folios mapped by PTEs in `[start, end)` (a THP whose
/// PMD was split by mprotect, mremap or munmap), so their pages can be
/// collected one by one; best effort, as Linux's `split_folio` in the
/// collection.
fn split_pte_mapped_folios(mm: &Mm, start: u64, end: u64) {
    let phys = mm.phys();
    let mut heads = Vec::new();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            let candidate = slot.level() == hmm_pagetable::Level::Pte
                && entry.is_present()
                && !entry.is_special()
                && !phys.is_zero_pfn(entry.pfn())
                && matches!(phys.memory_type(entry.pfn()), MemoryType::System | MemoryType::DeviceCoherent)
                && phys.folio_order(entry.pfn()) > 0;
            if candidate {
                let head = phys.folio_head(entry.pfn());
                if heads.last() != Some(&head) {
                    heads.push(head);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    for head in heads {
        split_folio_if_uniform(mm.kernel(), head);
    }
}

/// Splits every huge leaf in `[start, end)` so pages are collected one by
/// one: a PMD-mapped THP becomes 512 PTEs and, if nothing else holds it,
/// 512 order-0 pages (a folio that cannot split is skipped, as Linux skips
/// it); the huge zero page becomes zero-page PTEs.
fn split_leaves(mm: &Mm, start: u64, end: u64, whole: &[u64]) -> Result<(), MmError> {
    loop {
        let mut huge = None;
        let _ = mm.pgtable().walk(start, end, |visit| match visit {
            Visit::Slot { slot, entry }
                if slot.level() > hmm_pagetable::Level::Pte && !entry.is_none() && !whole.contains(&slot.va()) =>
            {
                huge = Some((slot.va(), entry));
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        let Some((va, entry)) = huge else {
            split_pte_mapped_folios(mm, start, end);
            return Ok(());
        };
        let slot = mm.pgtable().find(va);
        split_huge_leaf(mm, slot, entry)?;
        if entry.is_present() && !mm.phys().is_zero_pfn(entry.pfn()) {
            // Best effort, as Linux's split_folio: a folio that cannot
            // split is skipped by the collection.
            split_folio_if_uniform(mm.kernel(), mm.phys().folio_head(entry.pfn()));
        }
    }
}
