//! An emulated persistent-memory device: a region of physical memory whose
//! bytes live in a file on disk (mapped shared, so writes reach the file),
//! described by an fs-dax pagemap, plus the block allocator of the
//! filesystem on it.
//!
//! The first [`META_PAGES`] frames hold the filesystem's metadata; data
//! blocks follow. The allocator prefers whole 2 MiB-aligned chunks so files
//! can be mapped with PMD leaves.
//!
//! Linux: `drivers/nvdimm/pmem.c`, `MEMORY_DEVICE_FS_DAX`, the block
//! allocators of ext4/xfs (for the preference only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use hmm_types::{Pfn, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::phys::{MemoryType, Pagemap, PhysMem, MAX_DEVICE_FRAMES};

use super::backing::Backing;
use super::error::{Corruption, PmemError};

/// Frames reserved for metadata at the start of the device (2 MiB).
pub const META_PAGES: u64 = 512;
const CHUNK: u64 = PMD_SIZE / PAGE_SIZE;

/// The persistent-memory device.
pub struct PmemDevice {
    phys: Arc<PhysMem>,
    path: PathBuf,
    // Holds the file's lock while the device lives.
    _backing: Backing,
    base: Pfn,
    nr_frames: u64,
    pagemap: Arc<Pagemap>,
    used: Mutex<Vec<bool>>,
}

impl core::fmt::Debug for PmemDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PmemDevice")
            .field("path", &self.path)
            .field("base", &self.base)
            .field("nr_frames", &self.nr_frames)
            .finish()
    }
}

impl PmemDevice {
    /// The frames of a device of `size_bytes` (rounded down to 2 MiB),
    /// which must leave room for data after the metadata and fit a device
    /// memory range.
    pub(crate) fn frames_for(size_bytes: u64) -> Result<u64, PmemError> {
        let nr_frames = (size_bytes / PMD_SIZE) * CHUNK;
        if nr_frames < META_PAGES + CHUNK {
            return Err(PmemError::TooSmall { bytes: size_bytes, min: (META_PAGES + CHUNK) * PAGE_SIZE });
        }
        if nr_frames > MAX_DEVICE_FRAMES {
            return Err(PmemError::TooLarge { bytes: size_bytes, max: MAX_DEVICE_FRAMES * PAGE_SIZE });
        }
        Ok(nr_frames)
    }

    /// Plugs in `nr_frames` frames whose bytes live in `backing` (already
    /// checked, locked, and at least that long) as device memory.
    pub(crate) fn attach(phys: &Arc<PhysMem>, backing: Backing, nr_frames: u64) -> Result<Self, MmError> {
        let pagemap = Arc::new(Pagemap::new(MemoryType::FsDax, None));
        let base = phys
            .add_device_region(pagemap.clone(), nr_frames, Some(backing.file()))
            .map_err(|e| PmemError::Map { bytes: nr_frames * PAGE_SIZE, source: e.into() })?;
        let mut used = vec![false; nr_frames as usize];
        used[..META_PAGES as usize].fill(true);
        Ok(Self {
            phys: phys.clone(),
            path: backing.path().to_path_buf(),
            _backing: backing,
            base,
            nr_frames,
            pagemap,
            used: Mutex::new(used),
        })
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// First frame of the device.
    pub fn base(&self) -> Pfn {
        self.base
    }
    /// Frames on the device.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }
    /// Its pagemap.
    pub fn pagemap(&self) -> &Arc<Pagemap> {
        &self.pagemap
    }
    pub(crate) fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }
    /// Frame of device page `page`.
    pub fn pfn(&self, page: u64) -> Pfn {
        self.base.add(page)
    }
    /// Device page of a frame on this device.
    pub(crate) fn page_of(&self, pfn: Pfn) -> u64 {
        pfn.0 - self.base.0
    }
    /// Writes the device's bytes to its backing file.
    pub(crate) fn flush(&self) -> Result<(), MmError> {
        Ok(self.phys.flush_region(self.base).map_err(|e| PmemError::File {
            path: self.path.clone(),
            what: "write back",
            source: e.into(),
        })?)
    }
    /// Free data pages.
    pub fn free_pages(&self) -> u64 {
        self.used.lock().iter().filter(|&&u| !u).count() as u64
    }

    /// Marks pages as used (when mounting an existing filesystem, whose
    /// extents were validated against the device and each other).
    pub(crate) fn claim(&self, name: &str, (file_page, first, count): (u64, u64, u64)) -> Result<(), MmError> {
        let mut used = self.used.lock();
        let range = usize::try_from(first).ok().zip(first.checked_add(count).and_then(|e| usize::try_from(e).ok()));
        match range {
            Some((start, end)) if end <= used.len() && !used[start..end].iter().any(|&u| u) => {
                used[start..end].fill(true);
                Ok(())
            }
            _ => Err(PmemError::Corrupt {
                path: self.path.clone(),
                what: Corruption::Extent {
                    name: name.to_string(),
                    file_page,
                    dev_page: first,
                    pages: count,
                    why: "is outside the device or already in use",
                },
            }
            .into()),
        }
    }

    /// A free, 2 MiB-aligned chunk of 512 pages, zeroed.
    pub(crate) fn alloc_chunk(&self) -> Option<u64> {
        let mut used = self.used.lock();
        let first = (META_PAGES..self.nr_frames)
            .step_by(CHUNK as usize)
            .find(|&c| used[c as usize..(c + CHUNK) as usize].iter().all(|&u| !u))?;
        used[first as usize..(first + CHUNK) as usize].fill(true);
        drop(used);
        self.phys.zero_frames(self.pfn(first), CHUNK);
        Some(first)
    }

    /// One free page, zeroed, taken from a partly used chunk when possible
    /// so whole chunks stay available for PMD mappings.
    pub(crate) fn alloc_page(&self) -> Option<u64> {
        let mut used = self.used.lock();
        let partly_used = |c: u64| {
            let chunk = &used[c as usize..(c + CHUNK) as usize];
            chunk.iter().any(|&u| u) && chunk.iter().any(|&u| !u)
        };
        let chunk = (META_PAGES..self.nr_frames).step_by(CHUNK as usize).find(|&c| partly_used(c));
        let search = chunk.map_or(META_PAGES..self.nr_frames, |c| c..c + CHUNK);
        let page = search.into_iter().find(|&p| !used[p as usize])?;
        used[page as usize] = true;
        drop(used);
        self.phys.zero_frames(self.pfn(page), 1);
        Some(page)
    }

    /// Returns a data page to the allocator.
    pub(crate) fn free_page(&self, page: u64) {
        let mut used = self.used.lock();
        debug_assert!(page >= META_PAGES && used[page as usize], "double free of pmem page {page}");
        used[page as usize] = false;
    }
}
