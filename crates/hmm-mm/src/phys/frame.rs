//! Per-frame metadata, the counterpart of Linux's `struct page`.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use bitflags::bitflags;

bitflags! {
    /// `PG_*`-like frame flags.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct PageFlags: u32 {
        /// Locked (`PG_locked`): someone owns the page for I/O or migration.
        const LOCKED = 1 << 0;
        /// Data differs from the backing store (`PG_dirty`).
        const DIRTY = 1 << 1;
        /// Recently accessed (`PG_referenced`).
        const REFERENCED = 1 << 2;
        /// Contents valid (`PG_uptodate`).
        const UPTODATE = 1 << 3;
        /// Anonymous memory (`PageAnon`).
        const ANON = 1 << 4;
        /// Backed by swap or shmem (`PG_swapbacked`).
        const SWAPBACKED = 1 << 5;
        /// Never freed: the zero pages (`PG_reserved`).
        const RESERVED = 1 << 6;
        /// A page-table page (`PageTable`).
        const PGTABLE = 1 << 7;
        /// Lazily freeable after MADV_FREE (`!PG_swapbacked` on anon).
        const LAZYFREE = 1 << 8;
        /// Exclusively owned by one address space (`PageAnonExclusive`).
        const ANON_EXCLUSIVE = 1 << 9;
        /// Shared-memory (shmem/tmpfs) page.
        const SHMEM = 1 << 10;
        /// A hugetlbfs page: returns to its pool, not to the allocator.
        const HUGETLB = 1 << 11;
    }
}

/// `compound` word: bit 31 marks a head, bit 30 a tail; a head keeps its
/// order in the low bits, a tail its distance to the head.
const HEAD: u32 = 1 << 31;
const TAIL: u32 = 1 << 30;
const LOW: u32 = TAIL - 1;

/// Metadata of one 4 KiB frame (32 bytes: 0.8% of the frame).
#[derive(Default, bytemuck::Zeroable)]
#[repr(C)]
pub struct FrameMeta {
    /// References (`_refcount`); kept on the head of a compound folio.
    pub(crate) refcount: AtomicU32,
    /// Mappings of the folio by page tables (`_large_mapcount`/`_mapcount`,
    /// 0-based); kept on the head.
    pub(crate) mapcount: AtomicI32,
    flags: AtomicU32,
    compound: AtomicU32,
    /// Page index in its file or shmem object, or swap slot.
    pub(crate) index: AtomicU64,
    /// Identity of the owning object (file, shmem object), 0 for none.
    pub(crate) mapping: AtomicU64,
}

impl core::fmt::Debug for FrameMeta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameMeta")
            .field("refcount", &self.refcount.load(Ordering::Relaxed))
            .field("mapcount", &self.mapcount.load(Ordering::Relaxed))
            .field("flags", &self.flags())
            .field("compound", &format_args!("{:#x}", self.compound.load(Ordering::Relaxed)))
            .finish()
    }
}

impl FrameMeta {
    /// Current flags.
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.load(Ordering::Acquire))
    }
    /// Sets flags; returns the previous ones.
    pub fn set_flags(&self, flags: PageFlags) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.fetch_or(flags.bits(), Ordering::AcqRel))
    }
    /// Clears flags; returns the previous ones.
    pub fn clear_flags(&self, flags: PageFlags) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.fetch_and(!flags.bits(), Ordering::AcqRel))
    }
    /// Tries to take the page lock (`trylock_page`).
    pub fn try_lock(&self) -> bool {
        !self.set_flags(PageFlags::LOCKED).contains(PageFlags::LOCKED)
    }
    /// Releases the page lock (`unlock_page`).
    pub fn unlock(&self) {
        self.clear_flags(PageFlags::LOCKED);
    }
    /// Copies the page state a migrated folio keeps (`folio_migrate_flags`):
    /// every flag but the lock, and the index and owner.
    pub(crate) fn copy_state_from(&self, src: &FrameMeta) {
        self.set_flags(src.flags() - PageFlags::LOCKED);
        self.index.store(src.index.load(Ordering::Acquire), Ordering::Release);
        self.mapping.store(src.mapping.load(Ordering::Acquire), Ordering::Release);
    }
    /// Reference count.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }
    /// Number of page-table mappings.
    pub fn mapcount(&self) -> i32 {
        self.mapcount.load(Ordering::Acquire)
    }
    /// True for the head of a compound folio.
    pub fn is_head(&self) -> bool {
        self.compound.load(Ordering::Acquire) & HEAD != 0
    }
    /// Order of the folio this frame heads (0 when not a head).
    pub fn order(&self) -> u32 {
        let c = self.compound.load(Ordering::Acquire);
        if c & HEAD != 0 {
            c & LOW
        } else {
            0
        }
    }
    /// Distance to the folio head (0 for heads and single frames).
    pub fn head_offset(&self) -> u64 {
        let c = self.compound.load(Ordering::Acquire);
        if c & TAIL != 0 {
            u64::from(c & LOW)
        } else {
            0
        }
    }
    pub(crate) fn init_head(&self, order: u32) {
        self.compound.store(if order > 0 { HEAD | order } else { 0 }, Ordering::Release);
        self.flags.store(0, Ordering::Relaxed);
        self.mapcount.store(0, Ordering::Relaxed);
        self.index.store(0, Ordering::Relaxed);
        self.mapping.store(0, Ordering::Relaxed);
        self.refcount.store(1, Ordering::Release);
    }
    /// Makes the frame the head of a folio of `order` (order 0: a folio of
    /// its own), keeping its counts, flags and identity.
    pub(crate) fn make_head(&self, order: u32) {
        self.compound.store(if order > 0 { HEAD | order } else { 0 }, Ordering::Release);
    }
    /// Makes the frame a folio of its own (order 0), keeping its counts.
    pub(crate) fn init_single(&self) {
        self.compound.store(0, Ordering::Release);
    }
    pub(crate) fn init_tail(&self, offset: u64) {
        self.compound.store(TAIL | offset as u32, Ordering::Release);
        self.flags.store(0, Ordering::Relaxed);
        self.refcount.store(0, Ordering::Relaxed);
        self.mapcount.store(0, Ordering::Relaxed);
    }
    pub(crate) fn reset(&self) {
        self.compound.store(0, Ordering::Relaxed);
        self.flags.store(0, Ordering::Relaxed);
        self.mapcount.store(0, Ordering::Relaxed);
        self.refcount.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_32_bytes() {
        assert_eq!(core::mem::size_of::<FrameMeta>(), 32);
    }

    #[test]
    fn compound_encoding() {
        let head = FrameMeta::default();
        head.init_head(9);
        assert!(head.is_head());
        assert_eq!((head.order(), head.refcount()), (9, 1));
        let tail = FrameMeta::default();
        tail.init_tail(37);
        assert_eq!((tail.head_offset(), tail.order()), (37, 0));
    }

    #[test]
    fn page_lock_is_exclusive() {
        let meta = FrameMeta::default();
        assert!(meta.try_lock());
        assert!(!meta.try_lock());
        meta.unlock();
        assert!(meta.try_lock());
    }
}
