//! The mappings drivers make: `remap_pfn_range` (raw frames, special
//! entries) and `vm_insert_page` (allocated pages with a reference each),
//! their entries installed at mmap time.
//!
//! Linux: `mm/memory.c` (`remap_pfn_range`, `vm_insert_page`).

use hmm_pagetable::{Entry, LeafFlags, Level};
use hmm_types::{MapFlags, Pfn, Prot, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;

use super::Source;

impl Mm {
    /// A driver's `remap_pfn_range`: maps the raw frames from `base` at a
    /// free address, `VM_IO | VM_PFNMAP | VM_DONTEXPAND`, entries installed
    /// now and marked special (no `struct page` semantics). HMM refuses to
    /// mirror such a range.
    ///
    /// Every frame must exist (`EINVAL` otherwise): Linux maps any frame
    /// number, MMIO included, but the model has bytes only behind the
    /// frames of its regions, so a frame beyond them could never be read.
    pub fn mmap_pfn_range(&self, len: u64, prot: Prot, base: Pfn) -> Result<u64, MmError> {
        if len != 0 && !self.phys().is_valid_pfn_range(base, len.div_ceil(PAGE_SIZE)) {
            return Err(MmError::Invalid("remap_pfn_range of frames that do not exist"));
        }
        self.do_mmap(0, len, prot, MapFlags::SHARED, Source::Pfns(base))
    }

    /// A driver's `vm_insert_page` over a new `VM_MIXEDMAP` mapping: each
    /// page (which must be allocated) is mapped with a reference. `flags`
    /// is `MAP_SHARED` or `MAP_PRIVATE`; in a private mapping the entries
    /// are read-only even when the mapping is writable, so a write copies
    /// (`vm_insert_page` protects COW mappings so).
    pub fn mmap_pages(&self, prot: Prot, flags: MapFlags, pages: &[Pfn]) -> Result<u64, MmError> {
        if pages.iter().any(|&pfn| !self.phys().is_valid_pfn(pfn) || self.phys().folio_counts(pfn).0 == 0) {
            return Err(MmError::Invalid("vm_insert_page of a frame that is not allocated"));
        }
        if flags.difference(MapFlags::SHARED | MapFlags::PRIVATE).bits() != 0 {
            return Err(MmError::Invalid("a driver mapping takes only MAP_SHARED or MAP_PRIVATE"));
        }
        self.do_mmap(0, pages.len() as u64 * PAGE_SIZE, prot, flags, Source::Pages(pages))
    }
}

/// Installs `frames` from `start`, as `remap_pfn_range` (special entries,
/// no references) or `vm_insert_page` (a reference and mapcount each) do.
/// The range is free and the mmap write lock is held; on failure the
/// entries installed so far are removed again.
pub(super) fn insert_frames(mm: &Mm, start: u64, frames: &[Pfn], special: bool, write: bool) -> Result<(), MmError> {
    let phys = mm.phys();
    for (i, &pfn) in frames.iter().enumerate() {
        let va = start + i as u64 * PAGE_SIZE;
        let Ok(slot) = mm.pgtable().ensure(va, Level::Pte) else {
            let mut gather = crate::zap::Gather::new();
            crate::zap::zap_range(mm, start, va, &mut gather)?;
            gather.free_now(phys);
            return Err(MmError::NoMem);
        };
        if !special {
            phys.get(pfn);
            phys.map_add(pfn, 1);
        }
        slot.store(Entry::present(pfn, LeafFlags { write, dirty: false, accessed: false, special }, false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmm_types::{MapFlags, Owner, Prot, VmFlags};

    use crate::phys::{MemoryType, Pagemap};
    use crate::testing::{kernel, leaf};
    use crate::ThpMode;

    #[test]
    fn pfn_ranges_are_special_io_mappings() {
        let k = kernel(64, ThpMode::Never);
        let bar = k
            .phys()
            .add_device_region(Arc::new(Pagemap::new(MemoryType::PciP2pDma, Some(Owner(1)))), 16, None)
            .unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_pfn_range(4 * 4096, Prot::RW, bar).unwrap();
        let flags = mm.mmap_read().lookup(va).unwrap().flags;
        assert!(flags.contains(VmFlags::IO | VmFlags::PFNMAP));
        let (_, entry) = leaf(&mm, va + 4096);
        assert!(entry.is_special() && entry.pfn() == bar.add(1));
        mm.write_u64(va + 4096, 3).unwrap();
        let child = mm.fork().unwrap();
        assert_eq!(child.read_u64(va + 4096).unwrap(), 3, "pfn mappings are copied at fork");
        child.exit();
        mm.munmap(va, 4 * 4096).unwrap();
    }

    #[test]
    fn inserted_pages_are_referenced() {
        let k = kernel(64, ThpMode::Never);
        let page = k.phys().alloc_folio(0, true).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_pages(Prot::RW, MapFlags::SHARED, &[page]).unwrap();
        assert!(mm.mmap_read().lookup(va).unwrap().flags.contains(VmFlags::MIXEDMAP));
        assert_eq!(k.phys().folio_counts(page), (2, 1));
        mm.write_u64(va, 1).unwrap();
        mm.munmap(va, 4096).unwrap();
        assert_eq!(k.phys().folio_counts(page), (1, 0));
        let shared = MapFlags::SHARED;
        assert!(mm.mmap(0, 4096, Prot::RW, shared).is_err());
        k.phys().put(page);
        assert!(mm.mmap_pages(Prot::RW, MapFlags::SHARED, &[page]).is_err(), "a free frame cannot be inserted");
        let page = k.phys().alloc_folio(0, true).unwrap();
        let private = mm.mmap_pages(Prot::RW, MapFlags::PRIVATE, &[page]).unwrap();
        let entry = mm.pgtable().find(private).load();
        assert!(entry.is_present() && !entry.is_write(), "a private driver mapping is write-protected: {entry:?}");
        let fixed = MapFlags::PRIVATE | MapFlags::FIXED;
        assert!(mm.mmap_pages(Prot::RW, fixed, &[page]).is_err(), "only SHARED or PRIVATE");
        k.phys().put(page);
    }
}
