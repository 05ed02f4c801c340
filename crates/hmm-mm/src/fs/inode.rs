//! An inode: a file's size, its pages (the page cache) and who maps it
//! (`i_mmap`, as weak references to address spaces).
//!
//! Owns the page-cache references (one per cached page) and the size. It
//! never takes an mmap lock while holding its own lock: truncation sets the
//! size, drops its lock, then visits the mappers (`fs/truncate.rs`).
//!
//! Linux: `struct inode`, `struct address_space` (`i_pages`, `i_mmap`),
//! `mm/filemap.c`, `mm/shmem.c`.

use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use hmm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;
use crate::phys::{PageFlags, PhysMem};

use super::dax::{DaxEntry, DaxShared};

static NEXT_INODE_ID: AtomicU64 = AtomicU64::new(1);

/// Live inodes by identity, so the reverse map gets from a page's
/// `mapping` word to its file (the model's `folio->mapping` is a number).
/// Held only to add, remove or look up one inode.
static INODES: Mutex<BTreeMap<u64, Weak<Inode>>> = parking_lot::const_mutex(BTreeMap::new());

/// What stores the file's data.
#[derive(Debug)]
pub enum InodeKind {
    /// Pages of system RAM in a page cache (tmpfs, shmem).
    PageCache,
    /// Blocks of a persistent-memory device, mapped directly (fs-dax).
    Dax(Arc<DaxShared>),
}

#[derive(Debug, Default)]
pub(crate) struct InodeState {
    pub(crate) size: u64,
    /// File page → frame: cached RAM pages (each holding a reference), or
    /// the DAX device blocks (owned by the filesystem, not referenced).
    pub(crate) pages: BTreeMap<u64, Pfn>,
    /// DAX only: how each 2 MiB block is mapped.
    pub(crate) dax_entries: BTreeMap<u64, DaxEntry>,
    /// DAX only: file pages `fallocate` reserved that were never written
    /// (ext4's unwritten extents): they read as zeros like a hole, but a
    /// PMD fault sees their extent's edges.
    pub(crate) dax_unwritten: std::collections::BTreeSet<u64>,
    /// 2 MiB blocks held locked: by a DAX truncation (the DAX entry lock),
    /// so a refault cannot make a block busy again while the filesystem
    /// waits for it to become idle; by a shmem MADV_COLLAPSE (its pages'
    /// folio locks), so no one maps or writes an old page while it is
    /// copied. Faults and writes wait; fault-around skips the block.
    pub(crate) dax_locked: std::collections::BTreeSet<u64>,
    /// DAX only: the holes ext4's extent status cache remembers from a
    /// punch (first page → end page). A read PMD fault at a block's start
    /// inside one sees a hole only as long as that entry, not the whole
    /// 2 MiB, and maps by PTEs; a lookup elsewhere in the hole caches the
    /// whole hole instead, and an allocation splits the entry.
    pub(crate) dax_es_holes: BTreeMap<u64, u64>,
}

/// A file's metadata and data.
pub struct Inode {
    id: u64,
    phys: Arc<PhysMem>,
    kind: InodeKind,
    pub(crate) state: Mutex<InodeState>,
    mappers: Mutex<Vec<Weak<Mm>>>,
}

impl core::fmt::Debug for Inode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inode").field("id", &self.id).field("kind", &self.kind).field("size", &self.size()).finish()
    }
}

impl Inode {
    /// An empty file of the given kind.
    pub(crate) fn new(phys: Arc<PhysMem>, kind: InodeKind) -> Arc<Self> {
        let inode = Arc::new(Self {
            id: NEXT_INODE_ID.fetch_add(1, Ordering::Relaxed),
            phys,
            kind,
            state: Mutex::new(InodeState::default()),
            mappers: Mutex::new(Vec::new()),
        });
        INODES.lock().insert(inode.id, Arc::downgrade(&inode));
        inode
    }

    /// The live inode with identity `id` (the reverse map's way from a
    /// page to its file).
    pub(crate) fn lookup(id: u64) -> Option<Arc<Inode>> {
        INODES.lock().get(&id).and_then(Weak::upgrade)
    }

    /// Identity (`i_ino`).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Size in bytes (`i_size`).
    pub fn size(&self) -> u64 {
        self.state.lock().size
    }
    /// What stores the data.
    pub fn kind(&self) -> &InodeKind {
        &self.kind
    }
    pub(crate) fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }
    /// Pages in the page cache.
    pub fn nr_cached_pages(&self) -> usize {
        self.state.lock().pages.len()
    }
    /// True when the cached page at `index` is dirty (`PG_dirty`).
    pub fn is_page_dirty(&self, index: u64) -> bool {
        let state = self.state.lock();
        state.pages.get(&index).is_some_and(|&pfn| self.phys.meta(pfn).flags().contains(PageFlags::DIRTY))
    }

    /// Records an address space that maps this file (`vma_link` into
    /// `i_mmap`).
    pub(crate) fn add_mapper(&self, mm: Weak<Mm>) {
        let mut mappers = self.mappers.lock();
        mappers.retain(|m| m.strong_count() > 0);
        if !mappers.iter().any(|m| m.ptr_eq(&mm)) {
            mappers.push(mm);
        }
    }
    /// The live address spaces that map (or mapped) this file.
    pub(crate) fn mappers(&self) -> Vec<Arc<Mm>> {
        self.mappers.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// The cached page at `index`, allocated zeroed if the file has a hole
    /// there; `None` beyond end of file. The cache keeps its own reference;
    /// the caller gets one more (for its mapping).
    pub(crate) fn get_page_for_map(&self, index: u64) -> Result<Option<Pfn>, MmError> {
        let mut state = self.lock_unlocked_block(index / 512);
        if index >= state.size.div_ceil(PAGE_SIZE) {
            return Ok(None);
        }
        let before = state.pages.len();
        let pfn = self.page_locked(&mut state, index)?;
        // shmem_fault fills a fallocated page (SGP_CACHE).
        self.mark_uptodate(pfn);
        if let InodeKind::Dax(_) = self.kind {
            // The first mapping of a DAX block decides: PTE entries.
            state.dax_entries.entry(index / 512).or_insert(DaxEntry::Pte);
        }
        self.phys.get(pfn);
        let allocated = state.pages.len() != before;
        drop(state);
        self.after_allocation(allocated)?;
        Ok(Some(pfn))
    }

    /// A DAX file's frame at `index` for a fault that must not allocate (a
    /// read, or a private mapping's copy): `None` beyond end of file,
    /// `Some(None)` for a hole, which the fault maps as the zero page
    /// (`dax_load_hole`); a frame comes with a reference for the mapping.
    /// Either way the block is mapped by PTEs from now on (a 4K entry,
    /// maybe a zero-page one, stands in Linux's DAX xarray).
    pub(crate) fn dax_page_or_hole(&self, index: u64) -> Option<Option<Pfn>> {
        let mut state = self.lock_unlocked_block(index / 512);
        if index >= state.size.div_ceil(PAGE_SIZE) {
            return None;
        }
        state.dax_entries.entry(index / 512).or_insert(DaxEntry::Pte);
        let pfn = state.pages.get(&index).copied();
        if let Some(pfn) = pfn {
            self.phys.get(pfn);
        } else {
            state.es_lookup(index);
        }
        Some(pfn)
    }

    /// True if the DAX file has no block at `index` (a hole).
    pub(crate) fn is_hole(&self, index: u64) -> bool {
        !self.state.lock().pages.contains_key(&index)
    }

    /// The state, once DAX block `block` is not held by a truncation.
    pub(crate) fn lock_unlocked_block(&self, block: u64) -> parking_lot::MutexGuard<'_, InodeState> {
        loop {
            let state = self.state.lock();
            if !state.dax_locked.contains(&block) {
                return state;
            }
            drop(state);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// DAX block allocations are metadata changes: persist them.
    fn after_allocation(&self, allocated: bool) -> Result<(), MmError> {
        match &self.kind {
            InodeKind::Dax(fs) if allocated => fs.persist(),
            _ => Ok(()),
        }
    }

    fn page_locked(&self, state: &mut InodeState, index: u64) -> Result<Pfn, MmError> {
        if let Some(&pfn) = state.pages.get(&index) {
            return Ok(pfn);
        }
        if let InodeKind::Dax(fs) = &self.kind {
            return fs.alloc_page_for(state, index);
        }
        let pfn = self.phys.alloc_folio(0, true)?;
        let meta = self.phys.meta(pfn);
        meta.set_flags(PageFlags::SHMEM | PageFlags::SWAPBACKED | PageFlags::UPTODATE);
        meta.index.store(index, Ordering::Relaxed);
        meta.mapping.store(self.id, Ordering::Relaxed);
        state.pages.insert(index, pfn);
        Ok(pfn)
    }

    /// Reclaim of a clean cached page (`__remove_mapping`): drops `pfn`
    /// from the cache at `index` if it is still there, clean, unmapped and
    /// held by nothing but the cache and `extra` references of the caller.
    /// True if it was dropped. A fault takes its reference under the same
    /// lock, so it either finds the page before this check or misses it
    /// (and reads zeros: a clean page never held anything else).
    pub(crate) fn remove_clean_page(&self, index: u64, pfn: Pfn, extra: u32) -> bool {
        let mut state = self.state.lock();
        if state.pages.get(&index) != Some(&pfn) {
            return false;
        }
        let (refs, maps) = self.phys.folio_counts(pfn);
        let dirty = self.phys.meta(pfn).flags().contains(PageFlags::DIRTY);
        if dirty || maps != 0 || refs != 1 + extra || self.phys.maybe_pinned(pfn) {
            return false;
        }
        state.pages.remove(&index);
        drop(state);
        self.phys.put(pfn);
        true
    }

    /// Reads at `offset`; returns the bytes read (short at end of file).
    /// A page that is not uptodate reads as the zeros it holds and stays
    /// so (`SGP_READ` treats a fallocated page as a hole). On fs-dax each
    /// hole read is a block lookup, which caches the whole hole around it
    /// (`dax_iomap_rw` → `ext4_map_blocks`): a later PMD fault inside that
    /// hole, once a truncation shortened it, falls back to 4K entries.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let dax = matches!(self.kind, InodeKind::Dax(_));
        let mut state = self.state.lock();
        let end = offset.saturating_add(buf.len() as u64).min(state.size);
        let mut pos = offset;
        while pos < end {
            let in_page = pos % PAGE_SIZE;
            let chunk = (PAGE_SIZE - in_page).min(end - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..][..chunk];
            match state.pages.get(&(pos >> PAGE_SHIFT)) {
                Some(&pfn) => self.phys.read(pfn, in_page, out),
                None => {
                    if dax {
                        state.es_lookup(pos >> PAGE_SHIFT);
                    }
                    out.fill(0)
                }
            }
            pos += chunk as u64;
        }
        end.saturating_sub(offset) as usize
    }

    /// Writes at `offset`, extending the file; returns the bytes written.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize, MmError> {
        // rw_verify_area: a position or end past the largest loff_t is EINVAL.
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= super::MAX_LFS_FILESIZE)
            .ok_or(MmError::Invalid("write past the largest offset"))?;
        let mut state = self.state.lock();
        while state
            .dax_locked
            .range(offset / PAGE_SIZE / 512..=end.saturating_sub(1) / PAGE_SIZE / 512)
            .next()
            .is_some()
        {
            drop(state);
            std::thread::sleep(std::time::Duration::from_millis(1));
            state = self.state.lock();
        }
        let old_size = state.size;
        state.size = state.size.max(end);
        let mut pos = offset;
        // DAX pages this write allocates: [first, last] (file pages).
        let mut allocated: Option<(u64, u64)> = None;
        while pos < end {
            let in_page = pos % PAGE_SIZE;
            let chunk = (PAGE_SIZE - in_page).min(end - pos) as usize;
            let index = pos >> PAGE_SHIFT;
            if matches!(self.kind, InodeKind::Dax(_)) && !state.pages.contains_key(&index) {
                allocated = Some(allocated.map_or((index, index), |(first, _)| (first, index)));
            }
            let pfn = match self.page_locked(&mut state, index) {
                Ok(pfn) => pfn,
                Err(error) => {
                    state.size = old_size.max(pos);
                    return Err(error);
                }
            };
            self.phys.write(pfn, in_page, &data[(pos - offset) as usize..][..chunk]);
            // A DAX write goes straight to the device: no folio becomes
            // dirty (smaps counts the page clean until a PTE dirties it).
            if !matches!(self.kind, InodeKind::Dax(_)) {
                self.phys.meta(pfn).set_flags(PageFlags::DIRTY);
            }
            // shmem_write_end: the rest of a fallocated page reads as the
            // zeros it holds.
            self.mark_uptodate(pfn);
            pos += chunk as u64;
        }
        drop(state);
        self.after_allocation(true)?;
        if let (InodeKind::Dax(fs), Some((first, last))) = (&self.kind, allocated) {
            // The new blocks were holes, which mappings may show as the
            // (huge) zero page: those go, so the next access maps the
            // block (dax_iomap_iter's invalidate_inode_pages2_range of a
            // new extent; a huge zero entry goes whole).
            for block in first / 512..=last / 512 {
                if fs.downgrade_zero_pmd(self, block) {
                    super::truncate::unmap_mapping_pages(self, block * 512, (block + 1) * 512, false)?;
                }
            }
            super::truncate::unmap_mapping_pages(self, first, last + 1, false)?;
        }
        Ok(data.len())
    }
}

impl Drop for Inode {
    fn drop(&mut self) {
        INODES.lock().remove(&self.id);
        // DAX blocks belong to the filesystem; only cached RAM pages hold a
        // reference of the inode's.
        if let InodeKind::PageCache = self.kind {
            for (_, pfn) in core::mem::take(&mut self.state.get_mut().pages) {
                self.phys.put(pfn);
            }
        }
    }
}
