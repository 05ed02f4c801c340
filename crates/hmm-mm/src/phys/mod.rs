//! Simulated physical memory: frames with real bytes and `struct page`-like
//! metadata, a buddy allocator for system RAM, the zero pages, and the
//! reference counting that decides when a frame is free.
//!
//! The physical address space is cut into regions of up to 2^28 frames
//! (1 TiB); region 0 is system RAM, later regions are device memory
//! (persistent memory, device-private, coherent). A frame number therefore
//! finds its region with one shift.
//!
//! Owns frames and their lifetime; knows nothing of address spaces. Page
//! tables of the CPU side are frames too ([`TableStore`]).
//!
//! Linux: `mm/page_alloc.c`, `include/linux/mm.h` (`get_page`, `put_page`,
//! `page_ref_*`), `mm/huge_memory.c` (huge zero page).

mod access;
mod audit;
mod buddy;
mod bytes;
mod frame;
mod free_batch;
mod hugetlb;
mod pagemap;
mod refcount;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use hmm_pagetable::{TableId, TableStore, TableStoreFull, ENTRIES_PER_TABLE};
use hmm_types::{Pfn, PAGE_SIZE};

pub use audit::{FrameAccountingError, FrameAudit};
pub use frame::{FrameMeta, PageFlags};
pub use free_batch::FreeBatch;
pub use hugetlb::HugetlbStats;
pub use pagemap::{MemoryType, Pagemap, PagemapOps};

use buddy::Buddy;
use bytes::FrameBytes;

/// log2 of the frames per region.
const REGION_SHIFT: u32 = 28;
const MAX_REGIONS: usize = 64;
/// The most frames one device memory range may have (1 TiB of 4 KiB
/// frames, less one): the model's addressable physical range per device.
pub const MAX_DEVICE_FRAMES: u64 = (1 << REGION_SHIFT) - 1;

/// Not enough free frames for the request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("out of memory: no free block of order {order}")]
pub struct OutOfMemory {
    /// Order that was asked for.
    pub order: u32,
}

/// One contiguous piece of the physical address space.
#[derive(Debug)]
struct Region {
    nr_frames: u64,
    bytes: FrameBytes,
    meta: Box<[FrameMeta]>,
    pagemap: Option<Arc<Pagemap>>,
}

/// Counters for tests and the memory-overhead report.
#[derive(Debug, Default)]
pub struct PhysStats {
    page_tables: AtomicU64,
    folio_allocs: AtomicU64,
    folio_frees: AtomicU64,
}

/// All simulated physical memory.
pub struct PhysMem {
    /// System RAM, region 0, reached without the `OnceLock` of device
    /// regions: every page-table step and every frame access goes here.
    ram: Region,
    /// Device regions 1.. (slot 0 unused).
    regions: Box<[OnceLock<Region>]>,
    buddy: Mutex<Buddy>,
    ram_frames: u64,
    zero_pfn: Pfn,
    huge_zero_pfn: Pfn,
    stats: PhysStats,
    next_region: AtomicU32,
    hugetlb: [Mutex<hugetlb::Pool>; 2],
}

impl core::fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PhysMem")
            .field("ram_frames", &self.ram_frames)
            .field("free_frames", &self.free_frames())
            .finish_non_exhaustive()
    }
}

impl PhysMem {
    /// System RAM of `ram_bytes` (rounded down to whole frames), with the
    /// zero page and the huge zero page carved out of it.
    pub fn new(ram_bytes: u64) -> std::io::Result<Arc<Self>> {
        let ram_frames = ram_bytes / PAGE_SIZE;
        if !(1024..1 << REGION_SHIFT).contains(&ram_frames) {
            return Err(std::io::Error::other("RAM must be between 4 MiB and 1 TiB"));
        }
        let regions: Box<[OnceLock<Region>]> = (0..MAX_REGIONS).map(|_| OnceLock::new()).collect();
        let ram = Region {
            nr_frames: ram_frames,
            bytes: FrameBytes::anonymous(ram_frames)?,
            meta: bytemuck::zeroed_slice_box(ram_frames as usize),
            pagemap: None,
        };
        let mut buddy = Buddy::new(ram_frames);
        let huge_zero = buddy.alloc(9).expect("RAM holds at least 4 MiB");
        let zero = buddy.alloc(0).expect("RAM holds at least 4 MiB");
        let mem = Self {
            ram,
            regions,
            buddy: Mutex::new(buddy),
            ram_frames,
            zero_pfn: Pfn(zero),
            huge_zero_pfn: Pfn(huge_zero),
            stats: PhysStats::default(),
            next_region: AtomicU32::new(1),
            hugetlb: Default::default(),
        };
        mem.init_folio(mem.zero_pfn, 0);
        mem.init_folio(mem.huge_zero_pfn, 9);
        mem.meta(mem.zero_pfn).set_flags(PageFlags::RESERVED | PageFlags::UPTODATE);
        mem.meta(mem.huge_zero_pfn).set_flags(PageFlags::RESERVED | PageFlags::UPTODATE);
        Ok(Arc::new(mem))
    }

    #[inline]
    fn region(&self, pfn: Pfn) -> &Region {
        if pfn.0 >> REGION_SHIFT == 0 {
            return &self.ram;
        }
        let region = self.regions[(pfn.0 >> REGION_SHIFT) as usize % MAX_REGIONS]
            .get()
            .unwrap_or_else(|| panic!("{pfn:?} is in no region"));
        debug_assert!(pfn.0 & ((1 << REGION_SHIFT) - 1) < region.nr_frames);
        region
    }

    #[inline]
    fn local(pfn: Pfn) -> u64 {
        pfn.0 & ((1 << REGION_SHIFT) - 1)
    }

    /// True for a frame of system RAM (no pagemap), without a lookup.
    #[inline]
    pub fn is_ram(&self, pfn: Pfn) -> bool {
        pfn.0 < self.ram_frames
    }

    /// True when the frame number belongs to some region.
    pub fn is_valid_pfn(&self, pfn: Pfn) -> bool {
        if pfn.0 >> REGION_SHIFT == 0 {
            return pfn.0 < self.ram_frames;
        }
        self.regions
            .get((pfn.0 >> REGION_SHIFT) as usize)
            .and_then(OnceLock::get)
            .is_some_and(|r| Self::local(pfn) < r.nr_frames)
    }

    /// True when `npages` (at least one) frames from `base` all exist:
    /// regions are contiguous, so the first and the last frame must be in
    /// the same one.
    pub fn is_valid_pfn_range(&self, base: Pfn, npages: u64) -> bool {
        let last = npages.checked_sub(1).and_then(|n| base.0.checked_add(n)).map(Pfn);
        last.is_some_and(|last| {
            self.is_valid_pfn(base) && self.is_valid_pfn(last) && base.0 >> REGION_SHIFT == last.0 >> REGION_SHIFT
        })
    }

    /// Adds a device region of `nr_frames` described by `pagemap`, backed by
    /// anonymous memory or by `file` (persistent memory). Returns its first
    /// frame. Its frames start unallocated: the device manages them.
    pub fn add_device_region(
        &self,
        pagemap: Arc<Pagemap>,
        nr_frames: u64,
        file: Option<&std::fs::File>,
    ) -> std::io::Result<Pfn> {
        if nr_frames == 0 || nr_frames >= 1 << REGION_SHIFT {
            return Err(std::io::Error::other("device region must hold 1 frame to 1 TiB"));
        }
        let index = self.next_region.fetch_add(1, Ordering::AcqRel) as usize;
        if index >= MAX_REGIONS {
            return Err(std::io::Error::other("too many device regions"));
        }
        let bytes = match file {
            Some(file) => FrameBytes::file(file, nr_frames)?,
            None => FrameBytes::anonymous(nr_frames)?,
        };
        let region =
            Region { nr_frames, bytes, meta: bytemuck::zeroed_slice_box(nr_frames as usize), pagemap: Some(pagemap) };
        self.regions[index].set(region).map_err(|_| std::io::Error::other("region slot taken"))?;
        Ok(Pfn((index as u64) << REGION_SHIFT))
    }

    /// The pagemap of a device frame, `None` for system RAM.
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device).
    pub fn pagemap(&self, pfn: Pfn) -> Option<&Arc<Pagemap>> {
        self.region(pfn).pagemap.as_ref()
    }

    /// The memory type of a frame.
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device).
    pub fn memory_type(&self, pfn: Pfn) -> MemoryType {
        self.pagemap(pfn).map_or(MemoryType::System, |p| p.memory_type())
    }

    /// Metadata of one frame.
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device).
    #[inline]
    pub fn meta(&self, pfn: Pfn) -> &FrameMeta {
        &self.region(pfn).meta[Self::local(pfn) as usize]
    }

    /// The head frame of the folio containing `pfn`.
    #[inline]
    pub fn folio_head(&self, pfn: Pfn) -> Pfn {
        Pfn(pfn.0 - self.meta(pfn).head_offset())
    }

    /// Order of the folio containing `pfn`.
    pub fn folio_order(&self, pfn: Pfn) -> u32 {
        self.meta(self.folio_head(pfn)).order()
    }

    /// The shared zero page.
    pub fn zero_pfn(&self) -> Pfn {
        self.zero_pfn
    }

    /// The head of the huge (2 MiB) zero page.
    pub fn huge_zero_pfn(&self) -> Pfn {
        self.huge_zero_pfn
    }

    /// True for the zero page and every frame of the huge zero page
    /// (`is_zero_pfn`, `is_huge_zero_pfn`).
    #[inline]
    pub fn is_zero_pfn(&self, pfn: Pfn) -> bool {
        pfn == self.zero_pfn || (self.huge_zero_pfn.0..self.huge_zero_pfn.0 + 512).contains(&pfn.0)
    }

    /// Frames of system RAM.
    pub fn ram_frames(&self) -> u64 {
        self.ram_frames
    }

    /// Free frames of system RAM.
    pub fn free_frames(&self) -> u64 {
        self.buddy.lock().free_frames()
    }

    /// Page-table pages in use.
    pub fn page_table_frames(&self) -> u64 {
        self.stats.page_tables.load(Ordering::Relaxed)
    }

    /// Bytes of bookkeeping the model keeps for every frame of system RAM,
    /// in use or not: its [`FrameMeta`] (Linux's `struct page`) and the
    /// buddy allocator's free-order byte. Page tables come on top, as
    /// frames ([`Self::page_table_frames`]).
    pub const fn ram_metadata_bytes_per_frame() -> u64 {
        (core::mem::size_of::<FrameMeta>() + Buddy::BYTES_PER_FRAME) as u64
    }

    fn init_folio(&self, head: Pfn, order: u32) {
        self.meta(head).init_head(order);
        for i in 1..(1u64 << order) {
            self.meta(head.add(i)).init_tail(i);
        }
    }

    /// A folio of `1 << order` frames of system RAM with one reference,
    /// zeroed if asked.
    pub fn alloc_folio(&self, order: u32, zeroed: bool) -> Result<Pfn, OutOfMemory> {
        let (head, fresh) = self.buddy.lock().alloc_fresh(order).ok_or(OutOfMemory { order })?;
        let head = Pfn(head);
        self.init_folio(head, order);
        if zeroed && !fresh {
            self.zero_frames(head, 1 << order);
        }
        self.stats.folio_allocs.fetch_add(1, Ordering::Relaxed);
        Ok(head)
    }
}

impl TableStore for PhysMem {
    fn alloc_table(&self) -> Result<TableId, TableStoreFull> {
        let pfn = self.alloc_folio(0, true).map_err(|_| TableStoreFull)?;
        self.meta(pfn).set_flags(PageFlags::PGTABLE);
        self.stats.page_tables.fetch_add(1, Ordering::Relaxed);
        Ok(pfn.0)
    }
    fn table(&self, id: TableId) -> &[AtomicU64; ENTRIES_PER_TABLE] {
        let (bytes, base) = self.bytes_of(Pfn(id));
        bytes.table(base)
    }
    fn free_table(&self, id: TableId) {
        self.stats.page_tables.fetch_sub(1, Ordering::Relaxed);
        self.put(Pfn(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_per_frame_is_frame_meta_plus_the_buddy_byte() {
        assert_eq!(core::mem::size_of::<FrameMeta>(), 32);
        assert_eq!(PhysMem::ram_metadata_bytes_per_frame(), 33);
    }

    #[test]
    fn alloc_put_returns_frames() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let baseline = mem.free_frames();
        let thp = mem.alloc_folio(9, true).unwrap();
        assert_eq!(mem.folio_head(thp.add(100)), thp);
        assert_eq!(mem.folio_order(thp.add(100)), 9);
        mem.get(thp.add(3));
        mem.put(thp);
        assert_eq!(mem.free_frames(), baseline - 512);
        mem.put(thp.add(511));
        assert_eq!(mem.free_frames(), baseline);
    }

    #[test]
    fn try_get_fails_on_free_frames() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let page = mem.alloc_folio(0, false).unwrap();
        assert!(mem.try_get(page));
        mem.put(page);
        mem.put(page);
        assert!(!mem.try_get(page));
    }

    #[test]
    fn out_of_memory_is_an_error() {
        let mem = PhysMem::new(4 << 20).unwrap();
        let mut held = Vec::new();
        while let Ok(p) = mem.alloc_folio(0, false) {
            held.push(p);
        }
        assert_eq!(mem.alloc_folio(0, false), Err(OutOfMemory { order: 0 }));
        assert_eq!(held.len() as u64, 1024 - 513);
        for p in held {
            mem.put(p);
        }
    }

    #[test]
    fn zero_pages_are_reserved_and_zero() {
        let mem = PhysMem::new(8 << 20).unwrap();
        assert!(mem.is_zero_pfn(mem.zero_pfn()));
        assert!(mem.is_zero_pfn(mem.huge_zero_pfn().add(511)));
        let mut buf = [1u8; 16];
        mem.read(mem.huge_zero_pfn().add(7), 100, &mut buf);
        assert_eq!(buf, [0; 16]);
        assert!(mem.meta(mem.zero_pfn()).flags().contains(PageFlags::RESERVED));
    }

    #[test]
    fn page_tables_are_frames() {
        let mem = PhysMem::new(8 << 20).unwrap();
        let free = mem.free_frames();
        let pt = hmm_pagetable::PageTable::new(mem.clone()).unwrap();
        pt.ensure(0x1000, hmm_pagetable::Level::Pte).unwrap();
        assert_eq!(mem.page_table_frames(), 4);
        assert_eq!(mem.free_frames(), free - 4);
        pt.free_empty_tables(0, 1 << 47);
        drop(pt);
        assert_eq!(mem.free_frames(), free);
    }
}
