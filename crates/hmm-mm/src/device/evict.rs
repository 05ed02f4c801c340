//! Evicting device memory by frame number, without knowing where it is
//! mapped (`migrate_device_range`): used when a driver releases its memory.
//! The model has no reverse map, so the unmap step scans the page tables of
//! every live address space for entries naming the frames (eviction is
//! rare; the scan is proportional to what is mapped).
//!
//! Linux: `migrate_device_range`, `migrate_device_pages`,
//! `migrate_device_finalize` (`mm/migrate_device.c`).

use core::ops::ControlFlow;
use std::sync::{Arc, Weak};

use hmm_pagetable::{Entry, SwapKind, Visit};
use hmm_types::{Event, Pfn, TASK_SIZE};

use crate::error::MmError;
use crate::kernel::Kernel;
use crate::mm::Mm;

use super::finalize::restore;
use super::migrate_vma::{migrate_pfn, migrate_pfn_to_pfn, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE};

/// An eviction in progress: `src` and `dst` as in `MigrateVma`, one word
/// per frame of the range.
#[derive(Debug)]
pub struct MigrateDevice {
    /// One word per frame: the frame (if in use) and MIGRATE.
    pub src: Vec<u64>,
    /// Filled by the driver: the destination pages (system RAM).
    pub dst: Vec<u64>,
    kernel: Arc<Kernel>,
    /// Every CPU mapping of a collected frame: `(index, space, address)`.
    mappings: Vec<(usize, Weak<Mm>, u64)>,
}

impl MigrateDevice {
    /// Collects the in-use frames of `[start, start + npages)` and replaces
    /// every CPU entry naming them by a migration entry
    /// (`migrate_device_range`). `EINVAL` unless the frames are device
    /// memory (private or coherent) of one region.
    pub fn setup(kernel: &Arc<Kernel>, start: Pfn, npages: u64) -> Result<Self, MmError> {
        let phys = kernel.phys();
        let last = start.0.checked_add(npages.saturating_sub(1)).map(Pfn);
        let device = |pfn: Pfn| phys.is_valid_pfn(pfn) && phys.memory_type(pfn).is_zone_device();
        if npages == 0 || !device(start) || !last.is_some_and(device) || last.map(|l| l.0 >> 28) != Some(start.0 >> 28)
        {
            return Err(MmError::Invalid("eviction needs a non-empty range of one device region"));
        }
        let mut this = Self {
            src: vec![0; npages as usize],
            dst: vec![0; npages as usize],
            kernel: kernel.clone(),
            mappings: Vec::new(),
        };
        for i in 0..npages {
            let pfn = start.add(i);
            if phys.try_get(pfn) {
                if phys.meta(pfn).try_lock() {
                    this.src[i as usize] = migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE;
                } else {
                    phys.put(pfn);
                }
            }
        }
        this.unmap(start, npages);
        this.unmap_pinned();
        Ok(this)
    }

    /// Moves every in-use frame of `[start, start + npages)` to a new
    /// system page wherever it is mapped, with the core doing the copy
    /// (`migrate_device_coherent_folio`, and the loop a driver runs to
    /// release its memory): setup, a RAM page per collected frame, pages,
    /// finalize. A frame without a RAM page (out of memory) stays; returns
    /// the frames moved.
    pub fn to_ram(kernel: &Arc<Kernel>, start: Pfn, npages: u64) -> Result<u64, MmError> {
        let phys = kernel.phys();
        let mut migrate = Self::setup(kernel, start, npages)?;
        let mut moved = 0;
        for i in 0..migrate.src.len() {
            let Some(src) = migrate_pfn_to_pfn(migrate.src[i]) else { continue };
            let Ok(dst) = phys.alloc_folio(0, false) else { continue };
            phys.meta(dst).try_lock();
            phys.copy_frames(dst, src, 1);
            migrate.dst[i] = migrate_pfn(dst);
            moved += 1;
        }
        migrate.pages();
        migrate.finalize();
        Ok(moved)
    }

    fn unmap(&mut self, start: Pfn, npages: u64) {
        let phys = self.kernel.phys().clone();
        for mm in self.kernel.live_mms() {
            if mm.has_exited() {
                continue;
            }
            let _guard = mm.mmap_read_recursive();
            let mut found = Vec::new();
            let _ = mm.pgtable().walk(0, TASK_SIZE, |visit| {
                if let Visit::Slot { slot, entry } = visit {
                    let named = entry.is_present() || entry.swap_kind().is_some_and(|k| k.is_device_private());
                    let i = entry.pfn().0.wrapping_sub(start.0);
                    if named && i < npages && self.src[i as usize] & MIGRATE_PFN_MIGRATE != 0 {
                        found.push((i as usize, slot.va(), entry));
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            for (i, va, entry) in found {
                let slot = mm.pgtable().find(va);
                let write = entry.is_write() || entry.swap_kind() == Some(SwapKind::DevicePrivateWrite);
                let kind = if write { SwapKind::MigrationWrite } else { SwapKind::MigrationRead };
                let invalidation = mm.notifiers().start(mm.id(), va, va + hmm_types::PAGE_SIZE, Event::Clear);
                let swapped = slot.compare_exchange(entry, Entry::swap(kind, entry.pfn().0, false)).is_ok();
                invalidation.end();
                if swapped {
                    phys.map_sub(entry.pfn(), 1);
                    if write {
                        self.src[i] |= MIGRATE_PFN_WRITE;
                    }
                    self.mappings.push((i, Arc::downgrade(&mm), va));
                }
            }
        }
    }

    /// Frames with references beyond ours and their mappings' stay.
    fn unmap_pinned(&mut self) {
        let phys = self.kernel.phys().clone();
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let mapped = self.mappings.iter().filter(|(j, _, _)| *j == i).count() as u32;
            if phys.folio_counts(pfn).0 > 1 + mapped {
                self.end_mappings(i, pfn, pfn);
                phys.unlock_put(pfn);
                self.src[i] = 0;
            }
        }
    }

    fn end_mappings(&mut self, i: usize, src: Pfn, target: Pfn) {
        let phys = self.kernel.phys().clone();
        self.mappings.retain(|(j, weak, va)| {
            if *j != i {
                return true;
            }
            match weak.upgrade() {
                Some(mm) => {
                    let _guard = mm.mmap_read_recursive();
                    restore(&mm, *va, src, target);
                }
                None => phys.put(src),
            }
            false
        });
    }

    /// The commit point (`migrate_device_pages`): a frame without a
    /// destination stays.
    pub fn pages(&mut self) {
        for i in 0..self.src.len() {
            if migrate_pfn_to_pfn(self.dst[i]).is_none() {
                self.src[i] &= !MIGRATE_PFN_MIGRATE;
            }
        }
    }

    /// Every migration entry becomes an entry for the destination (or the
    /// source again), pages are unlocked and released
    /// (`migrate_device_finalize`).
    pub fn finalize(&mut self) {
        let phys = self.kernel.phys().clone();
        for i in 0..self.src.len() {
            let Some(src) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let dst = migrate_pfn_to_pfn(self.dst[i]);
            let moved = self.src[i] & MIGRATE_PFN_MIGRATE != 0;
            let target = if moved { dst.expect("pages() cleared MIGRATE without dst") } else { src };
            if let Some(dst) = dst {
                let dirty = phys.meta(src).flags() & crate::phys::PageFlags::DIRTY;
                phys.meta(dst).set_flags(
                    crate::phys::PageFlags::ANON
                        | crate::phys::PageFlags::SWAPBACKED
                        | crate::phys::PageFlags::UPTODATE
                        | dirty,
                );
            }
            self.end_mappings(i, src, target);
            if let Some(dst) = dst {
                phys.unlock_put(dst);
            }
            phys.unlock_put(src);
        }
    }
}
