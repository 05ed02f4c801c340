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
    /// Mappings of collected pages in other address spaces (after fork),
    /// also turned into migration entries: `(index, address space)`.
    pub(super) others: Vec<(usize, Weak<Mm>)>,
}

impl MigrateVma {
    /// A migration of `[start, end)` with `src` and `dst` sized to the range
    /// (an empty or inverted range gets empty arrays; `setup` rejects it).
    pub fn new(start: u64, end: u64, pgmap_owner: Owner, flags: MigrateSelect) -> Self {
        let npages = end.saturating_sub(start) >> PAGE_SHIFT;
        Self {
            start,
            end,
            src: vec![0; npages as usize],
            dst: vec![0; npages as usize],
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
    /// special (I/O, pfn-map, mixed-map, DONTEXPAND) or DAX VMA, arrays of
    /// the wrong length, or a `fault_page` that is not a locked
    /// device-private page. Returns `Ok` even when nothing can migrate.
    pub fn setup(&mut self, locked: MmapLocked<'_>) -> Result<(), MmError> {
        let vma = self.validate(locked)?;
        let mm = locked.mm();
        self.src.fill(0);
        self.dst.fill(0);
        self.npages = (self.end - self.start) >> PAGE_SHIFT;
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

    fn validate<'a>(&self, locked: MmapLocked<'a>) -> Result<&'a Vma, MmError> {
        if self.start >= self.end || (self.start | self.end) % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("migrate range empty, inverted or unaligned"));
        }
        let npages = ((self.end - self.start) >> PAGE_SHIFT) as usize;
        if self.src.len() != npages || self.dst.len() != npages {
            return Err(MmError::Invalid("src and dst need one word per page of the range"));
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

    /// `try_to_migrate` for pages other processes map too. Without a
    /// reverse map, the model looks where fork put them: the same address
    /// in every other live address space.
    fn unmap_others(&mut self, mm: &Mm) {
        let phys = mm.phys();
        let shared: Vec<usize> = (0..self.src.len())
            .filter(|&i| migrate_pfn_to_pfn(self.src[i]).is_some_and(|pfn| phys.folio_counts(pfn).1 > 0))
            .collect();
        if shared.is_empty() {
            return;
        }
        for other in mm.kernel().live_mms() {
            if other.id() == mm.id() || other.has_exited() {
                continue;
            }
            // Recursive: a reader there may be waiting for this migration.
            let _guard = other.mmap_read_recursive();
            for &i in &shared {
                let pfn = migrate_pfn_to_pfn(self.src[i]).expect("collected");
                let va = self.start + ((i as u64) << PAGE_SHIFT);
                let slot = other.pgtable().find(va);
                let entry = slot.load();
                let maps = entry.pfn() == pfn
                    && slot.level() == hmm_pagetable::Level::Pte
                    && (entry.is_present() || entry.swap_kind().is_some_and(|k| k.is_device_private()));
                if !maps {
                    continue;
                }
                let write = entry.is_write() || entry.swap_kind() == Some(SwapKind::DevicePrivateWrite);
                let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
                // As `try_to_migrate_one` announces it: CLEAR with no owner,
                // so no mirror of the other process may skip it.
                let invalidation = other.notifiers().start(other.id(), va, va + PAGE_SIZE, Event::Clear);
                let swapped = slot.compare_exchange(entry, Entry::swap(kind, pfn.0, false)).is_ok();
                invalidation.end();
                if swapped {
                    phys.map_sub(pfn, 1);
                    self.others.push((i, Arc::downgrade(&other)));
                }
            }
        }
    }

    /// `migrate_vma_unmap`'s pin check: a page with references beyond the
    /// collection's and its (now migration-entry) mapping's stays put.
    fn unmap_pinned(&mut self, mm: &Mm) {
        let phys = mm.phys();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let others = self.others.iter().filter(|(j, _)| *j == i).count() as u32;
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

/// Splits the large folios mapped by PTEs in `[start, end)` (a THP whose
/// PMD was split by mprotect, mremap or munmap), so their pages can be
/// collected one by one; best effort, as Linux's `split_folio` in the
/// collection.
fn split_pte_mapped_folios(mm: &Mm, start: u64, end: u64) {
    let phys = mm.phys();
    // Count every PTE of this space naming each folio, over the whole
    // 2 MiB blocks around the range: a folio splits only when they are all
    // of its mappings (see `PhysMem::split_folio`).
    let block = hmm_types::PMD_SIZE;
    let (outer_start, outer_end) = (start & !(block - 1), end.checked_next_multiple_of(block).unwrap_or(end));
    let mut heads: Vec<(Pfn, u32, bool)> = Vec::new();
    let _ = mm.pgtable().walk(outer_start, outer_end, |visit| {
        if let Visit::Slot { slot, entry } = visit {
            let candidate = slot.level() == hmm_pagetable::Level::Pte
                && entry.is_present()
                && !entry.is_special()
                && !phys.is_zero_pfn(entry.pfn())
                && matches!(phys.memory_type(entry.pfn()), MemoryType::System | MemoryType::DeviceCoherent)
                && phys.folio_order(entry.pfn()) > 0;
            if candidate {
                let head = phys.folio_head(entry.pfn());
                let inside = (start..end).contains(&slot.va());
                match heads.iter_mut().find(|(h, _, _)| *h == head) {
                    Some((_, n, seen_inside)) => {
                        *n += 1;
                        *seen_inside |= inside;
                    }
                    None => heads.push((head, 1, inside)),
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    for (head, ptes, inside) in heads {
        if inside {
            phys.split_folio(head, ptes);
        }
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
        // The folio itself splits (best effort, as Linux's split_folio: a
        // folio that cannot split is skipped by the collection) once no
        // huge leaf is left, with the PTE-mapped ones.
        split_huge_leaf(mm, slot, entry)?;
    }
}
