//! Evicting device memory by frame number, without knowing where it is
//! mapped (`migrate_device_range`): used when a driver releases its memory
//! and by long-term GUP. The unmap step finds each frame's mappings through
//! the reverse map (`crate::rmap`), so its cost follows the frames in use.
//!
//! Linux: `migrate_device_range`, `migrate_device_pages`,
//! `migrate_device_finalize` (`mm/migrate_device.c`).

use core::ops::ControlFlow;
use std::sync::{Arc, Weak};

use hmm_types::Pfn;

use crate::error::MmError;
use crate::kernel::Kernel;
use crate::mm::Mm;
use crate::rmap::rmap_walk;

use super::finalize::restore_elsewhere;
use super::migrate_vma::{
    migrate_pfn, migrate_pfn_to_pfn, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE,
};
use super::unmap::unmap_one;

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
    /// (`migrate_device_range`). A large folio lying wholly in the range is
    /// collected whole (`MIGRATE_PFN_COMPOUND` on its head's word, zeros
    /// after it) and moves if PMDs map it; the frames of one starting
    /// before the range are tails (0), and one running past its end stops
    /// the collection there ([`MigrateDevice::setup_pfns`]'s rule).
    /// `EINVAL` unless the frames are device memory (private or coherent)
    /// of one region.
    pub fn setup(kernel: &Arc<Kernel>, start: Pfn, npages: u64) -> Result<Self, MmError> {
        let phys = kernel.phys();
        let last = start.0.checked_add(npages.saturating_sub(1)).map(Pfn);
        let device = |pfn: Pfn| phys.is_valid_pfn(pfn) && phys.memory_type(pfn).is_zone_device();
        if npages == 0 || !device(start) || !last.is_some_and(device) || last.map(|l| l.0 >> 28) != Some(start.0 >> 28)
        {
            return Err(MmError::Invalid("eviction needs a non-empty range of one device region"));
        }
        let len = usize::try_from(npages).map_err(|_| MmError::NoMem)?;
        Self::collect(kernel, len, |i| start.add(i as u64))
    }

    /// Collects the frames listed in `pfns`, which need not be contiguous
    /// (`migrate_device_pfns`): `src[i]` is the encoded word for `pfns[i]`
    /// (Linux overwrites the caller's array in place). A large folio's head
    /// gets `COMPOUND` and the next `nr - 1` words are zeroed whatever
    /// `pfns` holds there (they are taken to be its tails); a folio that
    /// would run past the end of the list is dropped, every remaining word
    /// zeroed and collection stops; a tail or free frame, or one whose lock
    /// is taken, is 0. `EINVAL` if a frame that is looked at is not device
    /// memory (Linux does not check; a model must not guess).
    pub fn setup_pfns(kernel: &Arc<Kernel>, pfns: &[Pfn]) -> Result<Self, MmError> {
        Self::collect(kernel, pfns.len(), |i| pfns[i])
    }

    /// `migrate_device_pfn_lock` over `npages` slots, then the unmap step.
    fn collect(kernel: &Arc<Kernel>, npages: usize, pfn_at: impl Fn(usize) -> Pfn) -> Result<Self, MmError> {
        let phys = kernel.phys();
        let mut src = Vec::new();
        src.try_reserve_exact(npages).map_err(|_| MmError::NoMem)?;
        src.resize(npages, 0);
        let mut this = Self { dst: src.clone(), src, kernel: kernel.clone(), mappings: Vec::new() };
        let mut i = 0;
        while i < npages {
            let pfn = pfn_at(i);
            if !phys.is_valid_pfn(pfn) || !phys.memory_type(pfn).is_zone_device() {
                for word in &mut this.src {
                    if let Some(taken) = migrate_pfn_to_pfn(*word) {
                        phys.unlock_put(taken);
                    }
                    *word = 0;
                }
                return Err(MmError::Invalid("migrate_device_pfns needs device frames"));
            }
            // `folio_get_nontail_page`: a tail is 0, and so is a free frame.
            if phys.folio_head(pfn) != pfn || !phys.try_get(pfn) {
                i += 1;
                continue;
            }
            if !phys.meta(pfn).try_lock() {
                phys.put(pfn);
                i += 1;
                continue;
            }
            let nr = 1usize << phys.folio_order(pfn);
            if nr > npages - i {
                // Runs past the end: dropped, and nothing after it is taken.
                phys.unlock_put(pfn);
                break;
            }
            let compound = if nr > 1 { MIGRATE_PFN_COMPOUND } else { 0 };
            this.src[i] = migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE | compound;
            i += nr;
        }
        this.unmap();
        this.unmap_pinned();
        Ok(this)
    }

    /// Moves every in-use frame of `[start, start + npages)` to a new
    /// system page wherever it is mapped, with the core doing the copy
    /// (`migrate_device_coherent_folio`, and the loop a driver runs to
    /// release its memory): setup, a RAM folio of the same order per
    /// collected folio, pages, finalize. A folio without RAM (out of
    /// memory) stays; returns the frames moved.
    pub fn to_ram(kernel: &Arc<Kernel>, start: Pfn, npages: u64) -> Result<u64, MmError> {
        let phys = kernel.phys();
        let mut migrate = Self::setup(kernel, start, npages)?;
        let mut moved = 0;
        for i in 0..migrate.src.len() {
            let Some(src) = migrate_pfn_to_pfn(migrate.src[i]) else { continue };
            let order = phys.folio_order(src);
            let Ok(dst) = phys.alloc_folio(order, false) else { continue };
            phys.meta(dst).try_lock();
            phys.copy_frames(dst, src, 1 << order);
            migrate.dst[i] = migrate_pfn(dst) | (migrate.src[i] & MIGRATE_PFN_COMPOUND);
            moved += 1 << order;
        }
        migrate.pages();
        migrate.finalize();
        Ok(moved)
    }

    /// Replaces every CPU entry naming a collected frame by a migration
    /// entry, finding the entries through the reverse map: the cost
    /// follows the frames in use, not the size of the address spaces.
    fn unmap(&mut self) {
        for i in 0..self.src.len() {
            let Some(pfn) = migrate_pfn_to_pfn(self.src[i]) else { continue };
            let phys = self.kernel.phys().clone();
            let whole_pmd = self.src[i] & MIGRATE_PFN_COMPOUND != 0;
            let (src, mappings) = (&mut self.src[i], &mut self.mappings);
            let _ = rmap_walk(&self.kernel, pfn, |mm, _vma, va| {
                self.kernel.count_device_scan(1);
                if let Some(write) = unmap_one(mm, va, pfn, whole_pmd) {
                    if write {
                        *src |= MIGRATE_PFN_WRITE;
                    }
                    mappings.push((i, Arc::downgrade(mm), va));
                }
                if phys.folio_counts(pfn).1 == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
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
            restore_elsewhere(&phys, weak, *va, src, target);
            false
        });
    }

    /// The commit point (`migrate_device_pages`): a frame without a
    /// destination stays; so does a large folio given a small destination
    /// (with no VMA nothing can be split: `MIGRATE` and `COMPOUND` are
    /// cleared) and a small one given a large destination (`MIGRATE`
    /// cleared).
    pub fn pages(&mut self) {
        for i in 0..self.src.len() {
            let (src, dst) = (self.src[i], self.dst[i]);
            if migrate_pfn_to_pfn(dst).is_none() {
                self.src[i] &= !MIGRATE_PFN_MIGRATE;
            } else if src & MIGRATE_PFN_MIGRATE != 0 {
                let (big_src, big_dst) = (src & MIGRATE_PFN_COMPOUND != 0, dst & MIGRATE_PFN_COMPOUND != 0);
                if big_src && !big_dst {
                    self.src[i] &= !(MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
                } else if big_dst && !big_src {
                    self.src[i] &= !MIGRATE_PFN_MIGRATE;
                }
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
            if let Some(dst) = dst.filter(|_| moved) {
                let dirty = phys.meta(src).flags() & crate::phys::PageFlags::DIRTY;
                phys.meta(dst).set_flags(
                    crate::phys::PageFlags::ANON
                        | crate::phys::PageFlags::SWAPBACKED
                        | crate::phys::PageFlags::UPTODATE
                        | dirty,
                );
                crate::rmap::folio_copy_rmap(&phys, dst, src);
            }
            self.end_mappings(i, src, target);
            if let Some(dst) = dst {
                phys.unlock_put(dst);
            }
            phys.unlock_put(src);
        }
    }
}
