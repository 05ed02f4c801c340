//! Virtual memory areas and the per-address-space tree of them.
//!
//! Owns the `[start, end)` → (flags, backing, page offset) map, splitting,
//! merging and the search for free ranges. It never touches page tables:
//! the operations in `ops/` pair each VMA change with the page-table work.
//!
//! Linux: `struct vm_area_struct`, `mm/vma.c` (`__split_vma`, `vma_merge`),
//! `mm/mmap.c` (`get_unmapped_area`, top-down).

use std::collections::BTreeMap;
use std::sync::Arc;

use hmm_types::{VaRange, VmFlags, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, TASK_SIZE};

use crate::anon_vma::mergeable;
use crate::devdax::DevDax;
use crate::fs::{Inode, InodeKind};
use crate::hugetlb::HugetlbFile;
use crate::rmap::AnonVmaSlot;

/// What backs a VMA's pages.
#[derive(Clone, Debug)]
pub enum VmaBacking {
    /// Private anonymous memory.
    Anon,
    /// A file (shared anonymous memory is an unnamed tmpfs file).
    File(Arc<Inode>),
    /// A device-DAX character device.
    DevDax(Arc<DevDax>),
    /// hugetlbfs memory (`MAP_HUGETLB`).
    Hugetlb(Arc<HugetlbFile>),
    /// Raw frames inserted at mmap time (`remap_pfn_range`: VM_IO|VM_PFNMAP).
    Pfnmap,
    /// Refcounted pages inserted at mmap time (`vm_insert_page`: VM_MIXEDMAP).
    Mixed,
}

impl VmaBacking {
    fn same_object(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Anon, Self::Anon) => true,
            (Self::File(a), Self::File(b)) => Arc::ptr_eq(a, b),
            (Self::DevDax(a), Self::DevDax(b)) => Arc::ptr_eq(a, b),
            (Self::Hugetlb(a), Self::Hugetlb(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// One mapping (`struct vm_area_struct`).
#[derive(Clone, Debug)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `VM_*` flags.
    pub flags: VmFlags,
    /// Page offset of `start` in the backing object (`vm_pgoff`).
    pub pgoff: u64,
    /// What backs it.
    pub backing: VmaBacking,
    /// The userfaultfd context it is registered with
    /// (`vm_userfaultfd_ctx`); the `VM_UFFD_*` flags say for what.
    pub uffd: Option<crate::uffd::UffdBinding>,
    /// Its anon_vma (`vm_area_struct::anon_vma`), once it has private
    /// anonymous pages: the reverse map's root and, for merging, its
    /// identity; kept across split, merge, mremap and fork (`crate::rmap`).
    pub(crate) anon_vma: AnonVmaSlot,
}

impl Vma {
    /// The range it covers.
    pub fn range(&self) -> VaRange {
        VaRange::from_bounds(self.start, self.end).expect("a VMA is a valid range")
    }
    /// True for private anonymous memory (`vma_is_anonymous`).
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backing, VmaBacking::Anon)
    }
    /// The file behind the VMA, if any.
    pub fn file(&self) -> Option<&Arc<Inode>> {
        match &self.backing {
            VmaBacking::File(inode) => Some(inode),
            _ => None,
        }
    }
    /// Whether a page of this shared writable mapping must take a write
    /// fault before its entry becomes writable (`vma_wants_writenotify`):
    /// fs-dax tracks dirtiness (`pfn_mkwrite`), userfaultfd-wp must see
    /// the writes. Shared memory (tmpfs, memfd, shared anonymous) needs
    /// neither, so its entries take the VMA's write permission on any
    /// fault, a read included, and on an mprotect that grants it.
    pub fn wants_writenotify(&self) -> bool {
        if !self.flags.is_shared() || !self.flags.contains(VmFlags::WRITE) {
            return false;
        }
        if self.flags.contains(VmFlags::UFFD_WP) {
            return true;
        }
        self.file().is_some_and(|inode| matches!(inode.kind(), InodeKind::Dax(_)))
    }
    /// Whether a read fault of this mapping's page cache maps the page
    /// writable: shared, writable, and no write notification wanted.
    pub fn maps_page_cache_writable(&self) -> bool {
        self.flags.is_shared() && self.flags.contains(VmFlags::WRITE) && !self.wants_writenotify()
    }
    /// The granule this VMA may be split at (`vm_ops->may_split`): the huge
    /// page size for hugetlb, the device alignment for device-DAX.
    pub fn split_granule(&self) -> u64 {
        match &self.backing {
            VmaBacking::DevDax(dev) => dev.align().bytes(),
            VmaBacking::Hugetlb(object) => object.page_size().bytes(),
            _ => PAGE_SIZE,
        }
    }
    /// True when writes must copy (`is_cow_mapping`: private and may write).
    pub fn is_cow_mapping(&self) -> bool {
        !self.flags.contains(VmFlags::SHARED) && self.flags.contains(VmFlags::MAYWRITE)
    }
    /// Page offset in the backing object of `va` (`linear_page_index`).
    pub fn page_index(&self, va: u64) -> u64 {
        self.pgoff + ((va - self.start) >> PAGE_SHIFT)
    }
    /// True when the VMA covers `[start, end)` entirely.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end
    }
    fn split_off(&mut self, at: u64) -> Vma {
        debug_assert!(self.start < at && at < self.end);
        let tail = Vma {
            start: at,
            end: self.end,
            flags: self.flags,
            pgoff: self.page_index(at),
            backing: self.backing.clone(),
            uffd: self.uffd.clone(),
            anon_vma: self.anon_vma.clone(),
        };
        self.end = at;
        tail
    }
    /// True when both map the same object (or both anonymous memory).
    pub(crate) fn same_object(&self, other: &Vma) -> bool {
        self.backing.same_object(&other.backing)
    }
    /// Linux merges neighbours with equal flags, the same object, page
    /// offsets that line up (anonymous memory included: its offset is the
    /// address it was first mapped at, and a moved VMA with pages keeps
    /// it) and compatible anon_vmas (`can_vma_merge_after`). A `VM_SPECIAL`
    /// VMA (hugetlb has `VM_DONTEXPAND`) never merges (7.3.4 guest: a
    /// hugetlb mapping split by mprotect stays split when its protection
    /// is restored).
    pub(crate) fn can_merge_with_next(&self, next: &Vma) -> bool {
        self.end == next.start
            && !self.flags.intersects(VmFlags::SPECIAL)
            && self.flags - VmFlags::STICKY == next.flags - VmFlags::STICKY
            && self.backing.same_object(&next.backing)
            && self.uffd == next.uffd
            && self.page_index(self.end) == next.pgoff
            && mergeable(self.anon_vma.get(), next.anon_vma.get())
    }
    /// A new VMA with no anonymous page yet and no userfaultfd.
    pub fn new(start: u64, end: u64, flags: VmFlags, pgoff: u64, backing: VmaBacking) -> Self {
        Self { start, end, flags, pgoff, backing, uffd: None, anon_vma: AnonVmaSlot::default() }
    }
}

/// Lowest address handed out by the free-range search, and the default of
/// the kernel's `mmap_min_addr` (Debian's kernels: `CONFIG_LSM_MMAP_MIN_ADDR`
/// over the 4096 of the sysctl; see `KernelConfig::mmap_min_addr`).
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// Top of the top-down free-range search (`mmap_base`, below the stack gap).
pub const MMAP_BASE: u64 = TASK_SIZE - (128 << 20);

/// The VMAs of one address space, keyed by start address.
#[derive(Clone, Debug, Default)]
pub struct VmaTree {
    vmas: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }
    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }
    /// All VMAs in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.values()
    }
    /// The VMA containing `va` (`vma_lookup`).
    pub fn lookup(&self, va: u64) -> Option<&Vma> {
        self.vmas.range(..=va).next_back().map(|(_, v)| v).filter(|v| va < v.end)
    }
    /// The VMA containing `va`, mutable: for flag changes that do not
    /// split it (`vm_flags_set` of a sticky flag).
    pub(crate) fn lookup_mut(&mut self, va: u64) -> Option<&mut Vma> {
        self.vmas.range_mut(..=va).next_back().map(|(_, v)| v).filter(|v| va < v.end)
    }
    /// VMAs overlapping `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self.vmas.range(..start).next_back().filter(|(_, v)| v.end > start).map(|(_, v)| v);
        first.into_iter().chain(self.vmas.range(start..end).map(|(_, v)| v))
    }
    /// True when `[start, end)` is covered by VMAs with no gap.
    pub fn is_fully_mapped(&self, start: u64, end: u64) -> bool {
        let mut cursor = start;
        for vma in self.overlapping(start, end) {
            if vma.start > cursor {
                return false;
            }
            cursor = vma.end;
        }
        cursor >= end
    }
    /// Splits the VMA strictly containing `at`, if any, into two.
    pub fn split_at(&mut self, at: u64) {
        let Some(vma) = self.vmas.range_mut(..at).next_back().map(|(_, v)| v).filter(|v| at < v.end) else {
            return;
        };
        if vma.start == at {
            return;
        }
        let tail = vma.split_off(at);
        self.vmas.insert(tail.start, tail);
    }
    /// `EINVAL` if splitting at `at` would cut a VMA off its granule.
    pub fn check_split(&self, at: u64) -> Result<(), crate::error::MmError> {
        match self.lookup(at) {
            Some(vma) if vma.start != at && at % vma.split_granule() != 0 => {
                Err(crate::error::MmError::Invalid("address not aligned to the mapping's page size"))
            }
            _ => Ok(()),
        }
    }
    /// Removes and returns the VMAs inside `[start, end)` after splitting at
    /// both ends.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Vma> {
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.vmas.range(start..end).map(|(&k, _)| k).collect();
        keys.into_iter().filter_map(|k| self.vmas.remove(&k)).collect()
    }
    /// Inserts a VMA over a free range.
    pub fn insert(&mut self, vma: Vma) {
        debug_assert!(self.overlapping(vma.start, vma.end).next().is_none(), "inserting over a mapping");
        self.vmas.insert(vma.start, vma);
    }
    /// Mutable access to the VMAs inside `[start, end)` after splitting at
    /// both ends.
    pub fn split_range_mut(&mut self, start: u64, end: u64) -> impl Iterator<Item = &mut Vma> {
        self.split_at(start);
        self.split_at(end);
        self.vmas.range_mut(start..end).map(|(_, v)| v)
    }
    /// Merges compatible neighbours across `[start, end)` and its edges.
    pub fn merge_range(&mut self, start: u64, end: u64) {
        let from = self.vmas.range(..start).next_back().map_or(start, |(&k, _)| k);
        let keys: Vec<u64> = self.vmas.range(from..=end).map(|(&k, _)| k).collect();
        let mut prev: Option<u64> = None;
        for key in keys {
            if let Some(p) = prev {
                let mergeable = self.vmas[&p].can_merge_with_next(&self.vmas[&key]);
                if mergeable {
                    let next = self.vmas.remove(&key).expect("key from the map");
                    let prev = self.vmas.get_mut(&p).expect("key from the map");
                    prev.end = next.end;
                    prev.flags |= next.flags & VmFlags::STICKY;
                    prev.anon_vma.adopt(&next.anon_vma);
                    continue;
                }
            }
            prev = Some(key);
        }
    }
    /// A free range of `len` bytes: `hint` if it is free, else the highest
    /// free range below [`MMAP_BASE`] (top-down, as Linux). No alignment
    /// beyond the page: callers that want a THP-friendly start ask
    /// [`Self::find_free_thp`] first.
    pub fn find_free(&self, len: u64, hint: Option<u64>) -> Option<u64> {
        self.find_free_aligned(len, hint, PAGE_SIZE)
    }

    /// `__thp_get_unmapped_area`: a range of `len` bytes whose start is
    /// congruent with the file offset `off` modulo 2 MiB, so PMD leaves can
    /// map it. Linux asks for `len + 2 MiB` (the hint too) and moves the
    /// start up to the next congruent address; when the padded range's
    /// start is congruent already, top-down placement takes the one 2 MiB
    /// higher. `None` when the range's offsets, both ends rounded up to
    /// 2 MiB, span less than 2 MiB, or the padded range fits nowhere: the
    /// caller then places it as usual ([`Self::find_free`]).
    pub fn find_free_thp(&self, len: u64, hint: Option<u64>, off: u64) -> Option<u64> {
        let off_end = off.checked_add(len)?.checked_next_multiple_of(PMD_SIZE)?;
        let off_align = off.checked_next_multiple_of(PMD_SIZE)?;
        if off_end <= off_align || off_end - off_align < PMD_SIZE {
            return None;
        }
        let padded = self.find_free_aligned(len.checked_add(PMD_SIZE)?, hint, PAGE_SIZE)?;
        if Some(padded) == hint {
            return Some(padded);
        }
        match off.wrapping_sub(padded) & (PMD_SIZE - 1) {
            0 => Some(padded + PMD_SIZE),
            shift => Some(padded + shift),
        }
    }

    /// Like [`Self::find_free`], with placements (hint included) multiples
    /// of `align` (a power of two): huge-page mappings need their size.
    pub fn find_free_aligned(&self, len: u64, hint: Option<u64>, align: u64) -> Option<u64> {
        // A hint that does not fit (past the user address space, even
        // wrapping) is ignored, as Linux ignores it, not an error.
        if let Some(hint) = hint.filter(|h| h % align == 0) {
            let fits = hint.checked_add(len).is_some_and(|end| end <= TASK_SIZE);
            // x86's `mmap_address_hint_valid` asks only for the range to
            // fit: mmap raised a low hint to mmap_min_addr already.
            if fits && self.overlapping(hint, hint + len).next().is_none() {
                return Some(hint);
            }
        }
        let mut ceiling = MMAP_BASE;
        let mut gaps = self.vmas.range(..MMAP_BASE).rev().map(|(_, v)| (v.start, v.end)).peekable();
        loop {
            let floor = gaps.peek().map_or(MMAP_MIN_ADDR, |&(_, end)| end.max(MMAP_MIN_ADDR));
            if ceiling >= len {
                let start = (ceiling - len) & !(align - 1);
                if start >= floor {
                    return Some(start);
                }
            }
            let (start, _) = gaps.next()?;
            ceiling = ceiling.min(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64, flags: VmFlags) -> Vma {
        Vma::new(start, end, flags, start >> PAGE_SHIFT, VmaBacking::Anon)
    }

    const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

    #[test]
    fn split_remove_and_merge() {
        let mut tree = VmaTree::default();
        tree.insert(anon(0x10000, 0x20000, RW));
        let removed = tree.remove_range(0x14000, 0x15000);
        assert_eq!(removed.len(), 1);
        assert_eq!(tree.len(), 2);
        assert!(!tree.is_fully_mapped(0x10000, 0x20000));
        tree.insert(anon(0x14000, 0x15000, RW));
        tree.merge_range(0x14000, 0x15000);
        assert_eq!(tree.len(), 1);
        assert!(tree.is_fully_mapped(0x10000, 0x20000));
    }

    #[test]
    fn different_flags_do_not_merge() {
        let mut tree = VmaTree::default();
        tree.insert(anon(0x10000, 0x20000, RW));
        for vma in tree.split_range_mut(0x12000, 0x13000) {
            vma.flags = VmFlags::READ;
        }
        tree.merge_range(0x12000, 0x13000);
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.lookup(0x12fff).unwrap().flags, VmFlags::READ);
        assert_eq!(tree.lookup(0x13000).unwrap().flags, RW);
    }

    #[test]
    fn sticky_flags_do_not_stop_a_merge_and_survive_it() {
        // Linux 7.3 (VM_STICKY within VM_IGNORE_MERGE): a VMA that may hold
        // guard markers merges with a neighbour that may not, and the
        // merged VMA may.
        let mut tree = VmaTree::default();
        tree.insert(anon(0x10000, 0x20000, RW));
        tree.insert(anon(0x20000, 0x30000, RW | VmFlags::MAYBE_GUARD));
        tree.merge_range(0x10000, 0x30000);
        assert_eq!(tree.len(), 1);
        assert!(tree.lookup(0x10000).unwrap().flags.contains(VmFlags::MAYBE_GUARD));
        // A sealed VMA does not merge with an unsealed one.
        tree.insert(anon(0x30000, 0x40000, RW | VmFlags::SEALED));
        tree.merge_range(0x30000, 0x40000);
        assert_eq!(tree.len(), 2);
    }

    #[test]
    fn find_free_is_top_down_and_aligned() {
        let mut tree = VmaTree::default();
        let a = tree.find_free(0x3000, None).unwrap();
        assert_eq!(a, MMAP_BASE - 0x3000);
        tree.insert(anon(a, a + 0x3000, RW));
        let b = tree.find_free(4 << 20, None).unwrap();
        assert_eq!(b, a - (4 << 20), "no alignment beyond the page");
        assert_eq!(tree.find_free(0x1000, Some(0x40_0000)), Some(0x40_0000));
        assert_eq!(tree.find_free(0x1000, Some(a)), Some(a - 0x1000), "a taken hint falls back to top-down");
    }

    #[test]
    fn thp_placement_pads_by_2m_and_moves_up_to_the_file_offset() {
        let mut tree = VmaTree::default();
        let a = tree.find_free(0x3000, None).unwrap();
        tree.insert(anon(a, a + 0x3000, RW));
        // Below `a`: the padded range starts at a - 6 MiB, unaligned, and
        // moves up to the next 2 MiB boundary.
        let b = tree.find_free_thp(4 << 20, None, 0).unwrap();
        assert_eq!(b, (a - (6 << 20)).next_multiple_of(PMD_SIZE));
        assert!(b + (4 << 20) <= a);
        // An offset 4 KiB into a 2 MiB block: the start is 4 KiB past a
        // boundary.
        assert_eq!(tree.find_free_thp(4 << 20, None, 0x1000).unwrap() % PMD_SIZE, 0x1000);
        // A padded start that is congruent already: 2 MiB higher.
        tree.insert(anon(PMD_SIZE * 100, a, RW));
        assert_eq!(tree.find_free_thp(2 << 20, None, 0), Some(PMD_SIZE * 99));
        // The range's file offsets, rounded up to 2 MiB at both ends, hold
        // no block: no THP placement.
        assert_eq!(tree.find_free_thp((2 << 20) - 0x1000, None, 0x1000), None);
        assert!(tree.find_free_thp(2 << 20, None, 0x1000).is_some());
        // A free hint for the padded length is taken as it is.
        assert_eq!(tree.find_free_thp(2 << 20, Some(0x40_1000), 0), Some(0x40_1000));
    }

    #[test]
    fn overlapping_includes_the_vma_straddling_start() {
        let mut tree = VmaTree::default();
        tree.insert(anon(0x10000, 0x20000, RW));
        tree.insert(anon(0x30000, 0x40000, RW));
        let starts: Vec<u64> = tree.overlapping(0x18000, 0x31000).map(|v| v.start).collect();
        assert_eq!(starts, [0x10000, 0x30000]);
    }

    #[test]
    fn anonymous_vmas_merge_only_with_contiguous_pgoff() {
        let mut tree = VmaTree::default();
        tree.insert(anon(0x10000, 0x20000, RW));
        // What mremap leaves: a range whose pgoff is that of its old place.
        let mut moved = anon(0x20000, 0x30000, RW);
        moved.pgoff = 0x90;
        tree.insert(moved);
        tree.merge_range(0x20000, 0x30000);
        assert_eq!(tree.len(), 2, "the rmap computes addresses from pgoff");
        let mut next = anon(0x30000, 0x40000, RW);
        next.pgoff = 0x90 + 0x10;
        tree.insert(next);
        tree.merge_range(0x30000, 0x40000);
        assert_eq!(tree.len(), 2, "contiguous pgoff merges");
        assert_eq!(tree.lookup(0x3ffff).unwrap().page_index(0x3f000), 0x90 + 0x1f);
    }
}
