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
use crate::phys::{MemoryType, Pagemap, PhysMem};

/// Frames reserved for metadata at the start of the device (2 MiB).
pub const META_PAGES: u64 = 512;
const CHUNK: u64 = PMD_SIZE / PAGE_SIZE;

/// The persistent-memory device.
pub struct PmemDevice {
    phys: Arc<PhysMem>,
    path: PathBuf,
    _file: std::fs::File,
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
    /// Opens (creating if needed) a backing file of `size_bytes` and plugs
    /// it in as device memory. The size is rounded down to 2 MiB and must
    /// leave room for data after the metadata.
    pub fn attach(phys: &Arc<PhysMem>, path: &Path, size_bytes: u64) -> Result<Self, MmError> {
        let nr_frames = (size_bytes / PMD_SIZE) * CHUNK;
        if nr_frames < META_PAGES + CHUNK {
            return Err(MmError::Invalid("a pmem device needs at least 4 MiB"));
        }
        let file = open_backing_file(path, nr_frames * PAGE_SIZE)?;
        let pagemap = Arc::new(Pagemap::new(MemoryType::FsDax, None));
        let base = phys
            .add_device_region(pagemap.clone(), nr_frames, Some(&file))
            .map_err(|_| MmError::Io("cannot map the pmem backing file"))?;
        let mut used = vec![false; nr_frames as usize];
        used[..META_PAGES as usize].fill(true);
        Ok(Self {
            phys: phys.clone(),
            path: path.to_path_buf(),
            _file: file,
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
        self.phys.flush_region(self.base).map_err(|_| MmError::Io("cannot flush the pmem backing file"))
    }
    /// Free data pages.
    pub fn free_pages(&self) -> u64 {
        self.used.lock().iter().filter(|&&u| !u).count() as u64
    }

    /// Marks pages as used (when mounting an existing filesystem).
    pub(crate) fn claim(&self, first: u64, count: u64) -> Result<(), MmError> {
        let mut used = self.used.lock();
        let range = first as usize..(first + count) as usize;
        if range.end > used.len() || used[range.clone()].iter().any(|&u| u) {
            return Err(MmError::Io("corrupt DAX metadata: overlapping or out-of-range extents"));
        }
        used[range].fill(true);
        Ok(())
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

/// Opens (creating it if needed) the file that holds a device's bytes,
/// grown to at least `len` bytes; existing contents are kept.
pub(crate) fn open_backing_file(path: &Path, len: u64) -> Result<std::fs::File, MmError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|_| MmError::Io("cannot open the device's backing file"))?;
    let current = file.metadata().map_err(|_| MmError::Io("cannot stat the device's backing file"))?.len();
    if current < len {
        file.set_len(len).map_err(|_| MmError::Io("cannot size the device's backing file"))?;
    }
    Ok(file)
}
