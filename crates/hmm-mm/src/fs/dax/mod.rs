//! A DAX filesystem on an emulated persistent-memory device: file pages
//! *are* device frames (no page cache), mapped directly, with PMD leaves
//! where a file's 2 MiB block is one aligned chunk.
//!
//! Owns the namespace and the metadata (persisted to the device on every
//! change, so a later run mounts the same files with the same data), block
//! allocation for files, the per-block mapping-entry size (a 2 MiB block is
//! mapped by PMD or by PTE entries, the same for every process, as Linux's
//! DAX xarray entries are), and the busy-page wait of truncation: blocks are
//! freed only once no mapping and no pin references them.
//!
//! Linux: `fs/dax.c` (`dax_iomap_fault`, `dax_layout_busy_page_range`,
//! `dax_break_layout`), `ext4_break_layouts`, `MEMORY_DEVICE_FS_DAX`.

mod backing;
mod error;
mod es_cache;
#[cfg(test)]
mod hole_tests;
#[cfg(test)]
mod image_tests;
mod layout;
mod pmem;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hmm_types::{Pfn, PAGE_SIZE};

use crate::error::MmError;
use crate::kernel::Kernel;

use super::inode::InodeState;
use super::{File, Inode, InodeKind, OpenMode};
use backing::Backing;
use layout::{FileRecord, Probe, HEADER_LEN};

pub(crate) use backing::Backing as BackingFile;
pub use error::{Corruption, Found, IoCause, PmemError};
pub use pmem::{PmemDevice, META_PAGES};

/// What `format` may do to a backing file that already holds bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum FormatMode {
    /// Format only a new or empty file; refuse anything else (someone's
    /// data, an image to keep, an image of another version).
    #[default]
    OnlyEmpty,
    /// Erase whatever the file holds (the CLI's `--format`, `mkfs -f`).
    Overwrite,
}

const CHUNK: u64 = 512;

/// How a file's 2 MiB block is mapped by every process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DaxEntry {
    /// By 4K entries; each page is its own folio.
    Pte,
    /// By PMD leaves (4K entries may map parts of it); one order-9 folio.
    Pmd,
    /// A whole hole read through PMD faults: the huge zero page maps it
    /// read-only and no block is allocated (`DAX_PMD | DAX_ZERO_PAGE`).
    PmdZero,
}

/// What a PMD fault maps ([`DaxShared::pmd_entry`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PmdMapping {
    /// The block's aligned chunk from `head` (an order-9 folio);
    /// `replaced_zero`: the huge zero page stood for it until this write,
    /// and must go from every mapping before the block is mapped.
    Block { head: Pfn, replaced_zero: bool },
    /// A read of a whole hole: the huge zero page, read-only.
    HugeZero,
    /// Map it with 4K entries.
    Fallback,
}

/// The filesystem state shared by its inodes.
pub struct DaxShared {
    pmem: PmemDevice,
    files: Mutex<BTreeMap<String, Arc<Inode>>>,
    busy_timeout: Mutex<Duration>,
}

impl core::fmt::Debug for DaxShared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DaxShared").field("pmem", &self.pmem).finish_non_exhaustive()
    }
}

/// A mounted DAX filesystem. Dropping the last handle unmounts it when no
/// file of it is open or mapped any more: the device is released and its
/// backing file unlocked. Otherwise (as `umount` fails with `EBUSY`) it
/// stays mounted, and its backing file locked, until the process ends.
#[derive(Debug, Clone)]
pub struct DaxFs {
    shared: Arc<DaxShared>,
    _mount: Arc<Unmount>,
}

/// Unmounts on drop (of the last [`DaxFs`] handle).
#[derive(Debug)]
struct Unmount(Arc<DaxShared>);

impl Drop for Unmount {
    fn drop(&mut self) {
        // Inodes point back at the filesystem, so the namespace keeps it
        // alive: empty the namespace if the handle's holders were the only
        // users, which lets the device (and its file lock) go.
        let mut files = self.0.files.lock();
        if files.values().all(|inode| Arc::strong_count(inode) == 1) {
            files.clear();
            drop(files);
            // Best effort, as a sync at unmount: the metadata is already
            // written; this writes the bytes back to the backing file.
            let _ = self.0.pmem.flush();
        }
    }
}

impl DaxFs {
    /// Creates an empty filesystem on a pmem device of `size_bytes`
    /// (rounded down to 2 MiB) backed by `path`, a new or empty file:
    /// anything else is refused with [`PmemError::NotEmpty`] and left
    /// untouched. The file stays locked while the filesystem lives.
    pub fn format(kernel: &Kernel, path: &Path, size_bytes: u64) -> Result<Self, MmError> {
        Self::format_with(kernel, path, size_bytes, FormatMode::OnlyEmpty)
    }

    /// [`Self::format`], erasing a non-empty file if `mode` says so.
    pub fn format_with(kernel: &Kernel, path: &Path, size_bytes: u64, mode: FormatMode) -> Result<Self, MmError> {
        let nr_frames = PmemDevice::frames_for(size_bytes)?;
        let backing = Backing::open(path, true)?;
        Self::format_backing(kernel, backing, nr_frames, mode)
    }

    /// Mounts the filesystem a previous run left in `path`, after checking
    /// the whole image: magic, version, checksums, every count, name,
    /// size and extent against the device. A corrupt image is refused with
    /// [`PmemError::Corrupt`] saying what is wrong.
    pub fn mount(kernel: &Kernel, path: &Path, size_bytes: u64) -> Result<Self, MmError> {
        let nr_frames = PmemDevice::frames_for(size_bytes)?;
        let backing = Backing::open(path, false)?;
        Self::mount_backing(kernel, backing, nr_frames)
    }

    /// Mounts the image in `path`, or formats it if the file is new or
    /// empty; refuses anything else, as [`Self::mount`] does.
    pub fn mount_or_format(kernel: &Kernel, path: &Path, size_bytes: u64) -> Result<Self, MmError> {
        let nr_frames = PmemDevice::frames_for(size_bytes)?;
        let backing = Backing::open(path, true)?;
        if backing.len() == 0 {
            Self::format_backing(kernel, backing, nr_frames, FormatMode::OnlyEmpty)
        } else {
            Self::mount_backing(kernel, backing, nr_frames)
        }
    }

    fn format_backing(
        kernel: &Kernel,
        mut backing: Backing,
        nr_frames: u64,
        mode: FormatMode,
    ) -> Result<Self, MmError> {
        if backing.len() != 0 && mode == FormatMode::OnlyEmpty {
            let mut first = [0u8; HEADER_LEN];
            let n = backing.read_at(0, &mut first)?;
            let found = match layout::probe(&first[..n]) {
                Probe::Image => Found::Image,
                Probe::OtherVersion(v) => Found::OtherVersion(v),
                Probe::Data => Found::Data,
            };
            let path = backing.path().to_path_buf();
            return Err(PmemError::NotEmpty { path, len: backing.len(), found }.into());
        }
        backing.grow_to(nr_frames * PAGE_SIZE)?;
        let fs = Self::attach(kernel, backing, nr_frames)?;
        fs.shared.persist()?;
        Ok(fs)
    }

    fn mount_backing(kernel: &Kernel, backing: Backing, nr_frames: u64) -> Result<Self, MmError> {
        let records = read_image(&backing, nr_frames)?;
        let fs = Self::attach(kernel, backing, nr_frames)?;
        let pmem = &fs.shared.pmem;
        let mut files = fs.shared.files.lock();
        for record in records {
            let inode = Inode::new(pmem.phys().clone(), InodeKind::Dax(fs.shared.clone()));
            {
                let mut state = inode.state.lock();
                state.size = record.size;
                for &(file_page, dev_page, pages) in &record.extents {
                    pmem.claim(&record.name, (file_page, dev_page, pages))?;
                    for i in 0..pages {
                        state.pages.insert(file_page + i, pmem.pfn(dev_page + i));
                    }
                }
            }
            files.insert(record.name, inode);
        }
        drop(files);
        Ok(fs)
    }

    fn attach(kernel: &Kernel, backing: Backing, nr_frames: u64) -> Result<Self, MmError> {
        let pmem = PmemDevice::attach(kernel.phys(), backing, nr_frames)?;
        let shared = Arc::new(DaxShared {
            pmem,
            files: Mutex::new(BTreeMap::new()),
            busy_timeout: Mutex::new(Duration::from_secs(1)),
        });
        Ok(Self { _mount: Arc::new(Unmount(shared.clone())), shared })
    }

    /// The device.
    pub fn device(&self) -> &PmemDevice {
        &self.shared.pmem
    }

    /// How long truncation waits for a busy (pinned) page before failing
    /// with `EBUSY` (default 1 s).
    pub fn set_busy_timeout(&self, timeout: Duration) {
        *self.shared.busy_timeout.lock() = timeout;
    }

    /// Creates an empty file, or opens and empties an existing one.
    pub fn create(&self, name: &str) -> Result<File, MmError> {
        if name.is_empty() || name.len() > 255 || name.contains('/') {
            return Err(MmError::Invalid("file names are 1 to 255 bytes without '/'"));
        }
        let existing = self.shared.files.lock().get(name).cloned();
        let inode = match existing {
            Some(inode) => {
                super::truncate::truncate(&inode, 0)?;
                inode
            }
            None => {
                let inode = Inode::new(self.shared.pmem.phys().clone(), InodeKind::Dax(self.shared.clone()));
                self.shared.files.lock().insert(name.to_string(), inode.clone());
                inode
            }
        };
        self.shared.persist()?;
        Ok(File::new(inode, OpenMode::ReadWrite))
    }

    /// Opens an existing file.
    pub fn open(&self, name: &str, mode: OpenMode) -> Result<File, MmError> {
        let inode = self.shared.files.lock().get(name).cloned().ok_or(MmError::NoEntry("no such file"))?;
        Ok(File::new(inode, mode))
    }

    /// Names of the files, sorted.
    pub fn list(&self) -> Vec<String> {
        self.shared.files.lock().keys().cloned().collect()
    }

    /// Writes everything to the backing file (`msync` of the device).
    pub fn sync(&self) -> Result<(), MmError> {
        self.shared.persist()?;
        self.shared.pmem.flush()
    }

    /// Unbinds the device: the pagemap dies (new faults get SIGBUS) and
    /// every mapping of every file is removed, as `kill_dax` and
    /// `unmap_mapping_range` do.
    pub fn unbind(&self) -> Result<(), MmError> {
        self.shared.pmem.pagemap().kill();
        let inodes: Vec<_> = self.shared.files.lock().values().cloned().collect();
        for inode in inodes {
            super::truncate::unmap_mapping_pages(&inode, 0, u64::MAX, false)?;
        }
        Ok(())
    }
}

impl DaxShared {
    /// The device.
    pub fn pmem(&self) -> &PmemDevice {
        &self.pmem
    }

    /// Writes the file table to the metadata area. Takes the namespace lock
    /// then each inode's: never call it holding an inode lock.
    pub(crate) fn persist(&self) -> Result<(), MmError> {
        let records: Vec<FileRecord> = self
            .files
            .lock()
            .iter()
            .map(|(name, inode)| {
                let state = inode.state.lock();
                let pages = state.pages.iter().map(|(&index, &pfn)| (index, self.pmem.page_of(pfn)));
                FileRecord { name: name.clone(), size: state.size, extents: layout::extents_of(pages) }
            })
            .collect();
        let bytes = layout::encode(self.pmem.nr_frames(), &records);
        if bytes.len() as u64 > META_PAGES * PAGE_SIZE {
            return Err(MmError::DeviceFull("DAX metadata area is full"));
        }
        self.pmem.phys().write(self.pmem.base(), 0, &bytes);
        Ok(())
    }

    /// Allocates the block backing file page `index` alone, as a write or
    /// a 4K write fault does (ext4 maps exactly the range asked for): the
    /// rest of its 2 MiB stays a hole.
    pub(crate) fn alloc_page_for(&self, state: &mut InodeState, index: u64) -> Result<Pfn, MmError> {
        // `ext4_map_blocks` looks the block up before it allocates: a hole
        // not cached yet is cached whole, then trimmed by the allocation.
        state.es_lookup(index);
        let page = self.pmem.alloc_page().ok_or(MmError::DeviceFull("pmem device full"))?;
        state.pages.insert(index, self.pmem.pfn(page));
        state.dax_unwritten.remove(&index);
        state.es_allocated(index);
        Ok(self.pmem.pfn(page))
    }

    /// `fallocate(FALLOC_FL_KEEP_SIZE)` of file pages `[first, last)`: the
    /// pages not allocated yet become unwritten (ENOSPC, and nothing
    /// changes, if the device could not hold them all). Their blocks are
    /// not taken from the device here: a write allocates as for a hole.
    pub(crate) fn fallocate_unwritten(&self, inode: &Inode, first: u64, last: u64) -> Result<(), MmError> {
        let mut state = inode.state.lock();
        let state = &mut *state;
        let wanted = (last - first).saturating_sub(state.pages.range(first..last).count() as u64);
        let reserved = state.dax_unwritten.len() as u64 - state.dax_unwritten.range(first..last).count() as u64;
        if wanted.saturating_add(reserved) > self.pmem.free_pages() {
            return Err(MmError::DeviceFull("fallocate: the pmem device cannot hold the range"));
        }
        let (pages, unwritten) = (&state.pages, &state.dax_unwritten);
        let new: Vec<u64> = (first..last).filter(|p| !pages.contains_key(p) && !unwritten.contains(p)).collect();
        // Each hole met is looked up first (cached whole, as for a
        // write), and what becomes unwritten is no hole any more.
        for &page in &new {
            state.es_lookup(page);
        }
        state.es_forget(first, last);
        state.dax_unwritten.extend(new);
        Ok(())
    }

    /// A PMD write fault of `block` that is not one 2 MiB extent: ext4 maps
    /// the 2 MiB asked for with `EXT4_GET_BLOCKS_CREATE_ZERO`, which
    /// allocates the hole the block starts with (up to the next allocated
    /// or unwritten page, or the end of the cached hole there, which trims
    /// the request) or converts the unwritten extent it starts with; a
    /// block starting with a written page changes nothing. True if pages
    /// were allocated (found in the 7.3.4 guest:
    /// `scenarios/device/dax_pmd_write_allocates_first_run.hmm`,
    /// `dax_allocation_caches_hole.hmm`).
    fn alloc_first_run(&self, state: &mut InodeState, block: u64) -> Result<bool, MmError> {
        let pages = block * CHUNK..(block + 1) * CHUNK;
        if state.pages.contains_key(&pages.start) {
            return Ok(false);
        }
        let unwritten = state.dax_unwritten.contains(&pages.start);
        let end = state.es_hole_end(pages.start).unwrap_or(pages.end).min(pages.end);
        let run: Vec<u64> = (pages.start..end)
            .take_while(|p| !state.pages.contains_key(p) && state.dax_unwritten.contains(p) == unwritten)
            .collect();
        for &page in &run {
            self.alloc_page_for(state, page)?;
        }
        Ok(!run.is_empty())
    }

    /// Allocates the file's 2 MiB `block`, a hole inside the file, for a
    /// PMD write fault: one aligned chunk if the device has one, else its
    /// first page alone (the fault then falls back to 4K entries).
    fn alloc_block(&self, state: &mut InodeState, block: u64) -> Result<(), MmError> {
        let block_pages = block * CHUNK..(block + 1) * CHUNK;
        if let Some(first) = self.pmem.alloc_chunk() {
            state.es_lookup(block_pages.start);
            state.es_forget(block_pages.start, block_pages.end);
            for (i, file_page) in block_pages.enumerate() {
                state.pages.insert(file_page, self.pmem.pfn(first + i as u64));
                state.dax_unwritten.remove(&file_page);
            }
            return Ok(());
        }
        self.alloc_page_for(state, block * CHUNK).map(|_| ())
    }

    /// What a PMD fault of the file's 2 MiB `block` maps (`write`: a
    /// shared write fault), deciding the block's entry if nothing maps it
    /// yet: a read of a whole hole is the huge zero page and allocates
    /// nothing (`dax_pmd_load_hole`); a write of a whole hole, or of one
    /// the huge zero page maps, allocates one aligned chunk; a block that
    /// is partly allocated, not one aligned chunk, beyond end of file or
    /// already mapped by PTEs falls back to 4K entries (its extent or hole
    /// is shorter than 2 MiB, or the entry is a PTE one).
    pub(crate) fn pmd_entry(&self, inode: &Inode, block: u64, write: bool) -> Result<PmdMapping, MmError> {
        let mut state = inode.lock_unlocked_block(block);
        let pages = block * CHUNK..(block + 1) * CHUNK;
        if pages.end > state.size.div_ceil(PAGE_SIZE) {
            return Ok(PmdMapping::Fallback);
        }
        let replaced_zero = match state.dax_entries.get(&block) {
            Some(DaxEntry::Pte) => return Ok(PmdMapping::Fallback),
            Some(DaxEntry::Pmd) => {
                return Ok(PmdMapping::Block { head: state.pages[&pages.start], replaced_zero: false })
            }
            Some(DaxEntry::PmdZero) if !write => return Ok(PmdMapping::HugeZero),
            Some(DaxEntry::PmdZero) => true,
            None => false,
        };
        // The lookup at the block's start: a hole the extent status cache
        // holds from a punch is only as long as that entry, which is no
        // 2 MiB extent (found in the 7.3.4 guest:
        // `scenarios/device/dax_punch_at_block_start.hmm`).
        let short_cached_hole = state.es_hole_end(pages.start).is_some_and(|end| end < pages.end);
        if !state.pages.contains_key(&pages.start) {
            state.es_lookup(pages.start);
        }
        let hole = state.pages.range(pages.clone()).next().is_none();
        // ext4 answers a fault with one extent, a hole or an unwritten
        // one: a block holding both is not one 2 MiB extent, and the fault
        // falls back to 4K entries (read or write alike).
        let unwritten = state.dax_unwritten.range(pages.clone()).count() as u64;
        let written = state.pages.range(pages.clone()).count() as u64;
        let one_extent =
            !short_cached_hole && if hole { unwritten == 0 || unwritten == CHUNK } else { written == CHUNK };
        if write && !one_extent {
            // The write's `ext4_map_blocks` of the whole 2 MiB still
            // allocates (zeroed) or converts the run the block starts with
            // before the short extent sends the fault back to 4K.
            let persist = self.alloc_first_run(&mut state, block)?;
            state.dax_entries.insert(block, DaxEntry::Pte);
            drop(state);
            if persist {
                self.persist()?;
            }
            return Ok(PmdMapping::Fallback);
        }
        if hole && !one_extent {
            state.dax_entries.insert(block, DaxEntry::Pte);
            return Ok(PmdMapping::Fallback);
        }
        if hole && !write {
            state.dax_entries.insert(block, DaxEntry::PmdZero);
            return Ok(PmdMapping::HugeZero);
        }
        if hole {
            self.alloc_block(&mut state, block)?;
        }
        let head = state.pages.get(&pages.start).copied();
        let contiguous = head.is_some_and(|head| {
            self.pmem.page_of(head) % CHUNK == 0
                && pages.clone().all(|p| state.pages.get(&p) == Some(&head.add(p - pages.start)))
        });
        let mapping = match (head, contiguous) {
            (Some(head), true) => {
                self.pmem.phys().init_device_folio(head, 9);
                state.dax_entries.insert(block, DaxEntry::Pmd);
                PmdMapping::Block { head, replaced_zero }
            }
            _ => {
                state.dax_entries.insert(block, DaxEntry::Pte);
                PmdMapping::Fallback
            }
        };
        drop(state);
        if hole {
            self.persist()?;
        }
        Ok(mapping)
    }

    /// True if the huge zero page still stands for `block` (a fault that
    /// mapped it checks after installing: a writer that replaced it in the
    /// meantime may have unmapped it before the install).
    pub(crate) fn is_zero_pmd(&self, inode: &Inode, block: u64) -> bool {
        inode.state.lock().dax_entries.get(&block) == Some(&DaxEntry::PmdZero)
    }

    /// A 4K fault or a write of a block the huge zero page stands for: its
    /// entry becomes a PTE one; true if it was the huge zero page, which the
    /// caller then unmaps everywhere (`grab_mapping_entry`'s PMD downgrade,
    /// `invalidate_inode_pages2_range` after a write allocated blocks).
    pub(crate) fn downgrade_zero_pmd(&self, inode: &Inode, block: u64) -> bool {
        let mut state = inode.lock_unlocked_block(block);
        match state.dax_entries.get_mut(&block) {
            Some(entry @ DaxEntry::PmdZero) => {
                *entry = DaxEntry::Pte;
                true
            }
            _ => false,
        }
    }

    /// Takes the entry locks of the 2 MiB blocks holding file pages
    /// `[first, last)`; returns them for [`Self::unlock_blocks`].
    pub(crate) fn lock_blocks(&self, inode: &Inode, first: u64, last: u64) -> Vec<u64> {
        let mut state = inode.state.lock();
        // Every block a fault could map: the allocated ones and the holes
        // inside the file.
        let allocated_end = state.pages.keys().next_back().map_or(0, |&p| p + 1);
        let last_page = allocated_end.max(state.size.div_ceil(PAGE_SIZE)).min(last).max(first);
        let blocks: Vec<u64> = (first / CHUNK..last_page.div_ceil(CHUNK)).collect();
        state.dax_locked.extend(blocks.iter().copied());
        blocks
    }

    /// Releases entry locks taken by [`Self::lock_blocks`].
    pub(crate) fn unlock_blocks(&self, inode: &Inode, blocks: &[u64]) {
        let mut state = inode.state.lock();
        for block in blocks {
            state.dax_locked.remove(block);
        }
    }

    /// Frees the blocks of file pages `[first, last)` (maybe empty) once the
    /// file is idle: waits (up to the busy timeout) until no mapping or pin
    /// references any of its blocks, as `dax_break_layout` waits over the
    /// whole file; then every 2 MiB block loses its mapping entry (all
    /// refault afresh: `dax_delete_mapping_range(0, LLONG_MAX)`) and the
    /// range's blocks return to the allocator.
    pub(crate) fn release_pages(&self, inode: &Inode, first: u64, last: u64) -> Result<(), MmError> {
        let deadline = Instant::now() + *self.busy_timeout.lock();
        loop {
            let busy = {
                let state = inode.state.lock();
                let phys = self.pmem.phys();
                state.pages.values().any(|&pfn| phys.folio_counts(pfn).0 > 0)
            };
            if !busy {
                break;
            }
            if Instant::now() >= deadline {
                return Err(MmError::Busy(
                    "a DAX page is still referenced (pinned or mapped): the filesystem cannot free it",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut state = inode.state.lock();
        let freed: Vec<u64> = state.pages.range(first..last).map(|(&k, _)| k).collect();
        state.dax_unwritten.retain(|page| !(first..last).contains(page));
        let entries = core::mem::take(&mut state.dax_entries);
        for (block, entry) in entries {
            if entry == DaxEntry::Pmd {
                // The order-9 folio goes back to 512 idle order-0 frames.
                if let Some(&head) = state.pages.get(&(block * CHUNK)) {
                    for i in 0..CHUNK {
                        self.pmem.phys().init_device_folio(head.add(i), 0);
                    }
                }
            }
        }
        for page in freed {
            let pfn = state.pages.remove(&page).expect("collected above");
            self.pmem.free_page(self.pmem.page_of(pfn));
        }
        drop(state);
        self.persist()
    }
}

/// Reads and validates the image in `backing` for a device of `nr_frames`,
/// from the file itself, before anything is mapped: every allocation is
/// bounded by the metadata area, not by what the image claims.
fn read_image(backing: &Backing, nr_frames: u64) -> Result<Vec<FileRecord>, PmemError> {
    let path = || backing.path().to_path_buf();
    let corrupt = |what| PmemError::Corrupt { path: path(), what };
    let mut first = [0u8; HEADER_LEN];
    let n = backing.read_at(0, &mut first)?;
    match layout::probe(&first[..n]) {
        Probe::Image => {}
        Probe::OtherVersion(found) => {
            return Err(PmemError::Version { path: path(), found, expected: layout::VERSION });
        }
        Probe::Data => return Err(PmemError::NotAnImage { path: path() }),
    }
    let header = layout::decode_header(&first).map_err(corrupt)?;
    let valid_size = header.device_pages % CHUNK == 0
        && PmemDevice::frames_for(header.device_pages.saturating_mul(PAGE_SIZE)).is_ok();
    if !valid_size {
        return Err(corrupt(Corruption::DeviceSize { pages: header.device_pages }));
    }
    let device_bytes = header.device_pages * PAGE_SIZE;
    if backing.len() < device_bytes {
        return Err(corrupt(Corruption::Truncated { file_bytes: backing.len(), device_bytes }));
    }
    if header.device_pages != nr_frames {
        return Err(PmemError::SizeMismatch {
            path: path(),
            image_bytes: device_bytes,
            requested_bytes: nr_frames * PAGE_SIZE,
        });
    }
    let max = META_PAGES * PAGE_SIZE - HEADER_LEN as u64;
    if header.table_len > max {
        return Err(corrupt(Corruption::TableTooLarge { len: header.table_len, max }));
    }
    let mut table = vec![0u8; header.table_len as usize];
    backing.read_at(HEADER_LEN as u64, &mut table)?;
    layout::decode(&header, &table, META_PAGES).map_err(corrupt)
}
