//! mmap: anonymous memory (private, or shared through an unnamed tmpfs
//! file), files (page cache or fs-dax), hugetlbfs (`MAP_HUGETLB`),
//! device-DAX, and the special mappings drivers make (`remap_pfn_range`,
//! `vm_insert_page`).
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `mmap_region`), `mm/shmem.c`
//! (`shmem_zero_setup`), `mm/hugetlb.c`, `drivers/dax/device.c`,
//! `mm/memory.c` (`remap_pfn_range`, `vm_insert_page`).

use std::sync::Arc;

use hmm_pagetable::{Entry, LeafFlags, Level};
use hmm_types::{MapFlags, PageSize, Pfn, Prot, VaRange, VmFlags, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE};

use crate::devdax::DevDax;
use crate::error::MmError;
use crate::fs::{File, InodeKind};
use crate::hugetlb::HugetlbFile;
use crate::mm::Mm;
use crate::vma::{Vma, VmaBacking, VmaTree};

use super::{populate_locked, unmap_locked};

/// What a new mapping maps.
enum Source<'a> {
    Anonymous,
    File(&'a File, u64),
    DevDax(&'a Arc<DevDax>, u64),
    Pfns(Pfn),
    Pages(&'a [Pfn]),
}

impl Mm {
    /// Maps `len` bytes of anonymous memory (`mmap(addr, len, prot, flags,
    /// -1, 0)`); returns the address. `addr` is a hint unless `MAP_FIXED`
    /// (replace what is there) or `MAP_FIXED_NOREPLACE` (`EEXIST` if
    /// anything is there). With `MAP_HUGETLB` the memory comes from the
    /// hugetlbfs pool (`MAP_HUGE_2MB`, the default, or `MAP_HUGE_1GB`).
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, MmError> {
        if !flags.contains(MapFlags::ANONYMOUS) {
            return Err(MmError::Invalid("a mapping without MAP_ANONYMOUS needs a file: use mmap_file"));
        }
        self.do_mmap(addr, len, prot, flags, Source::Anonymous)
    }

    /// Maps `len` bytes of `file` from byte `offset` (`mmap(addr, len,
    /// prot, flags, fd, offset)`). A shared writable mapping needs a file
    /// open for writing (`EACCES`); pages beyond end of file fault SIGBUS.
    pub fn mmap_file(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        file: &File,
        offset: u64,
    ) -> Result<u64, MmError> {
        if flags.intersects(MapFlags::ANONYMOUS | MapFlags::HUGETLB) {
            return Err(MmError::Invalid("MAP_ANONYMOUS or MAP_HUGETLB with a file"));
        }
        if offset % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("file offset not page aligned"));
        }
        self.do_mmap(addr, len, prot, flags, Source::File(file, offset))
    }

    /// Maps a device-DAX device from byte `offset`: shared only, with
    /// address, length and offset multiples of the device alignment.
    pub fn mmap_devdax(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        dev: &Arc<DevDax>,
        offset: u64,
    ) -> Result<u64, MmError> {
        if flags.intersects(MapFlags::ANONYMOUS | MapFlags::HUGETLB) {
            return Err(MmError::Invalid("MAP_ANONYMOUS or MAP_HUGETLB with a device"));
        }
        self.do_mmap(addr, len, prot, flags, Source::DevDax(dev, offset))
    }

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

    fn do_mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags, source: Source<'_>) -> Result<u64, MmError> {
        let result = self.do_mmap_locking(addr, len, prot, flags, source);
        // A MAP_FIXED over registered memory sends UNMAP, lock dropped.
        crate::uffd::complete_events();
        result
    }

    fn do_mmap_locking(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        source: Source<'_>,
    ) -> Result<u64, MmError> {
        self.check_alive()?;
        // ksys_mmap_pgoff: anonymous MAP_HUGETLB picks its page size (EINVAL
        // for an unknown one) and rounds the length to it before do_mmap
        // sees it, so a length near 2^64 wraps to 0 and is EINVAL there.
        let hugetlb = flags.contains(MapFlags::HUGETLB).then(|| huge_size(flags)).transpose()?;
        let len = match hugetlb {
            Some(size) => len.wrapping_add(size.bytes() - 1) & !(size.bytes() - 1),
            None => len,
        };
        if len == 0 {
            return Err(MmError::Invalid("mmap of zero length"));
        }
        // do_mmap rounds the length to pages before it looks at the sharing
        // type or anything else: a length within a page of 2^64 is ENOMEM
        // first.
        if len.checked_add(PAGE_SIZE - 1).is_none() {
            return Err(MmError::NoSpace(len));
        }
        let granule = match (&source, hugetlb) {
            (_, Some(size)) => size.bytes(),
            (Source::DevDax(dev, _), _) => dev.align().bytes(),
            _ => PAGE_SIZE,
        };
        // Lengths round up to the granule, as hugetlbfs rounds to its page;
        // a device-DAX length only to pages (its mmap hook refuses an
        // unaligned end).
        let round = if matches!(source, Source::DevDax(..)) { PAGE_SIZE } else { granule };
        let len = len.checked_add(round - 1).ok_or(MmError::NoSpace(len))? & !(round - 1);
        // get_unmapped_area: any length past the address space is ENOMEM
        // (before the sharing type is looked at), a fixed range past it too,
        // an unaligned fixed address EINVAL.
        if len > hmm_types::TASK_SIZE {
            return Err(MmError::NoSpace(len));
        }
        // get_unmapped_area: a fixed range past the address space is
        // ENOMEM, an unaligned fixed address EINVAL.
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        if fixed && addr.checked_add(len).is_none_or(|end| end > hmm_types::TASK_SIZE) {
            return Err(MmError::OutOfRange("MAP_FIXED range ends past the user address space"));
        }
        if fixed && addr % granule != 0 {
            return Err(MmError::Invalid("MAP_FIXED address not aligned to the mapping's page size"));
        }
        // MAP_FIXED_NOREPLACE over a mapping is EEXIST before the sharing
        // type and the flags are validated (checked again under the write
        // lock below).
        if flags.contains(MapFlags::FIXED_NOREPLACE) && self.mmap_read().overlapping(addr, addr + len).next().is_some()
        {
            return Err(MmError::Exists(VaRange::new(addr, len).map_err(|_| MmError::NoSpace(len))?));
        }
        // The device-DAX node offers MAP_SYNC too (`mmap_supported_flags`).
        let is_dax_file = matches!(&source, Source::File(f, _) if matches!(f.inode().kind(), InodeKind::Dax(_)))
            || matches!(source, Source::DevDax(..));
        let shared = map_type_shared(flags, !matches!(source, Source::Anonymous) || hugetlb.is_some(), is_dax_file)?;
        // MAP_SYNC is only validated with MAP_SHARED_VALIDATE, where only a
        // DAX file accepts it; but `calc_vm_flag_bits` turns it into
        // VM_SYNC whatever the type (Linux 6.18 on the host: a private or
        // legacy MAP_SHARED mapping with MAP_SYNC does not merge with its
        // neighbours without it). Only DAX faults act on it.
        let sync = flags.contains(MapFlags::SYNC);
        let mut vm_flags = VmFlags::from_prot(prot) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if flags.contains(MapFlags::NORESERVE) {
            vm_flags |= VmFlags::NORESERVE;
        }
        if shared {
            vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        if sync {
            vm_flags |= VmFlags::SYNC;
        }
        // `accountable_mapping`: a private writable mapping is charged
        // against the commit limit and marked VM_ACCOUNT (not hugetlb, not
        // MAP_NORESERVE); the flag takes part in merging.
        let charged = VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE;
        if hugetlb.is_none() && vm_flags & charged == VmFlags::WRITE {
            vm_flags |= VmFlags::ACCOUNT;
        }
        let inserted: Option<(Vec<Pfn>, bool)> = match &source {
            Source::Pfns(base) => Some(((0..len / PAGE_SIZE).map(|i| base.add(i)).collect(), true)),
            Source::Pages(pages) => Some((pages.to_vec(), false)),
            _ => None,
        };
        let backing = match source {
            Source::Anonymous => match hugetlb {
                Some(size) => {
                    vm_flags |= VmFlags::HUGETLB;
                    let object = match HugetlbFile::new(self.phys().clone(), size, len / size.bytes(), shared) {
                        Ok(object) => object,
                        Err(error) => {
                            // Linux 6.18 on the host: the reservation fails
                            // in the file's mmap hook, after MAP_FIXED has
                            // cleared the range, so the old mappings are
                            // gone and nothing replaces them.
                            if flags.contains(MapFlags::FIXED) && !flags.contains(MapFlags::FIXED_NOREPLACE) {
                                let mut guard = self.mmap_write();
                                self.check_alive()?;
                                unmap_locked(&mut guard, addr, addr + len)?;
                            }
                            return Err(error);
                        }
                    };
                    Some((VmaBacking::Hugetlb(object), 0))
                }
                None if shared => Some((VmaBacking::File(self.kernel().tmpfs().anonymous(len)), 0)),
                None => None,
            },
            Source::File(file, offset) => {
                // `file_mmap_ok`: the mapping must end within the largest
                // file size (`EOVERFLOW`), which also keeps it from wrapping.
                let max = crate::fs::MAX_LFS_FILESIZE;
                if len > max || offset >> PAGE_SHIFT > (max - len) >> PAGE_SHIFT {
                    return Err(MmError::Overflow("file offset plus length past the largest file size"));
                }
                if shared && !file.is_writable() {
                    if prot.contains(Prot::WRITE) {
                        return Err(MmError::Access("shared writable mapping of a file not open for writing"));
                    }
                    vm_flags -= VmFlags::MAYWRITE;
                }
                Some((VmaBacking::File(file.inode().clone()), offset >> PAGE_SHIFT))
            }
            Source::DevDax(dev, offset) => {
                if !shared {
                    return Err(MmError::Invalid("device-dax mappings must be MAP_SHARED"));
                }
                // check_vma: both ends aligned. The offset need not be: a
                // fault maps the whole aligned unit holding it.
                if len % granule != 0 {
                    return Err(MmError::Invalid("device-dax mapping end not aligned to the device alignment"));
                }
                // A character device's limit is the whole `unsigned long`.
                if offset.checked_add(len).is_none() {
                    return Err(MmError::Overflow("device offset plus length wraps"));
                }
                vm_flags |= VmFlags::HUGEPAGE;
                Some((VmaBacking::DevDax(dev.clone()), offset >> PAGE_SHIFT))
            }
            Source::Pfns(base) => {
                vm_flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND;
                Some((VmaBacking::Pfnmap, base.0))
            }
            Source::Pages(_) => {
                vm_flags |= VmFlags::MIXEDMAP;
                Some((VmaBacking::Mixed, 0))
            }
        };

        let mut guard = self.mmap_write();
        // exit marks the address space under this lock: checking again here
        // keeps a racing mmap from mapping into a torn-down space.
        self.check_alive()?;
        let start = if fixed {
            let range = VaRange::new(addr, len).map_err(|_| MmError::NoSpace(len))?;
            if guard.overlapping(range.start(), range.end()).next().is_some() {
                if flags.contains(MapFlags::FIXED_NOREPLACE) {
                    return Err(MmError::Exists(range));
                }
                unmap_locked(&mut guard, range.start(), range.end())?;
            }
            range.start()
        } else {
            // do_mmap's `round_hint_to_min`: down to a page, and a hint
            // below mmap_min_addr raised to it; hugetlb_get_unmapped_area
            // then rounds it up to the huge page size (`ALIGN`).
            let min_addr = self.kernel().mmap_min_addr();
            let hint = match addr & !(PAGE_SIZE - 1) {
                hint if hint != 0 && hint < min_addr => min_addr.checked_next_multiple_of(PAGE_SIZE),
                hint => Some(hint),
            };
            let hint = match hugetlb {
                Some(_) => hint.and_then(|hint| hint.checked_next_multiple_of(granule)),
                None => hint,
            }
            .filter(|&hint| hint != 0);
            let (object, pgoff) = backing.as_ref().map_or((&VmaBacking::Anon, 0), |(b, pgoff)| (b, *pgoff));
            get_unmapped_area(&guard, len, hint, object, pgoff, granule).ok_or(MmError::NoSpace(len))?
        };
        let (backing, pgoff) = backing.unwrap_or((VmaBacking::Anon, start >> PAGE_SHIFT));
        if let VmaBacking::File(inode) = &backing {
            inode.add_mapper(self.weak());
        }
        let end = start + len;
        if let Some((frames, special)) = inserted {
            let write = vm_flags.contains(VmFlags::WRITE) && (special || shared);
            insert_frames(self, start, &frames, special, write)?;
        }
        guard.vmas_mut().insert(Vma::new(start, end, vm_flags, pgoff, backing));
        guard.vmas_mut().merge_range(start, end);
        if flags.contains(MapFlags::POPULATE) {
            // Like Linux, a failed populate does not fail the mmap.
            // `populate_vma_page_range`: write faults only where a write
            // must break COW (private and writable); a shared mapping
            // takes read faults.
            let cow = prot.contains(Prot::WRITE) && !flags.contains(MapFlags::SHARED);
            let _ = populate_locked(self, &guard, start, end, cow);
        }
        Ok(start)
    }
}

/// `get_unmapped_area` without MAP_FIXED: where a new mapping of `len`
/// bytes of `backing` from page `pgoff` goes, `hint` first; starts are
/// multiples of `granule` (the huge page of hugetlbfs, a device-DAX
/// device's alignment). mmap and mremap's moves ask it.
///
/// THP placement (`__thp_get_unmapped_area`, `VmaTree::find_free_thp`)
/// applies to private anonymous memory without a hint whose length is a
/// multiple of 2 MiB (Linux 6.12's d4148aeab412 "mm, mmap: limit THP
/// alignment of anonymous mappings to PMD-aligned sizes" and 6.13's
/// 249608ee4713 "mm: respect mmap hint address when aligning for THP",
/// both in 6.18; its file offset counts as 0), and to fs-dax files, whose
/// filesystem (ext4) places every mapping with `thp_get_unmapped_area`, by
/// file offset. Shared anonymous memory and tmpfs files go through
/// `shmem_get_unmapped_area`, which aligns only where shmem may use huge
/// pages (never in the model; `shmem_enabled=never` on the host).
pub(crate) fn get_unmapped_area(
    tree: &VmaTree,
    len: u64,
    hint: Option<u64>,
    backing: &VmaBacking,
    pgoff: u64,
    granule: u64,
) -> Option<u64> {
    let hint = hint.filter(|&hint| hint != 0);
    let thp = match backing {
        VmaBacking::Anon if hint.is_none() && len % PMD_SIZE == 0 => tree.find_free_thp(len, None, 0),
        VmaBacking::File(inode) if matches!(inode.kind(), InodeKind::Dax(_)) => {
            tree.find_free_thp(len, hint, pgoff << PAGE_SHIFT)
        }
        _ => None,
    };
    thp.or_else(|| tree.find_free_aligned(len, hint, granule))
}

/// Installs `frames` from `start`, as `remap_pfn_range` (special entries,
/// no references) or `vm_insert_page` (a reference and mapcount each) do.
/// The range is free and the mmap write lock is held; on failure the
/// entries installed so far are removed again.
fn insert_frames(mm: &Mm, start: u64, frames: &[Pfn], special: bool, write: bool) -> Result<(), MmError> {
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

/// do_mmap's switch on the sharing type: whether the mapping is shared.
/// A file (hugetlb's included) takes `MAP_SHARED_VALIDATE` but refuses any
/// flag outside the legacy mask (`EOPNOTSUPP`; `MAP_SYNC` is allowed on a
/// DAX file). Anonymous memory has no file yet, so `MAP_SHARED_VALIDATE`
/// is just an unknown type there (`EINVAL`).
fn map_type_shared(flags: MapFlags, file: bool, dax: bool) -> Result<bool, MmError> {
    const SHARED: u32 = MapFlags::SHARED.bits();
    const VALIDATE: u32 = MapFlags::SHARED_VALIDATE.bits();
    const PRIVATE: u32 = MapFlags::PRIVATE.bits();
    match flags.map_type() {
        SHARED => Ok(true),
        PRIVATE => Ok(false),
        VALIDATE if file => {
            let mut accepted = MapFlags::LEGACY_MASK;
            if dax {
                accepted |= MapFlags::SYNC;
            }
            if flags.difference(accepted).is_empty() {
                Ok(true)
            } else if flags.contains(MapFlags::SYNC) && !dax {
                Err(MmError::NotSupported("MAP_SYNC needs a DAX file"))
            } else {
                Err(MmError::NotSupported("a flag MAP_SHARED_VALIDATE does not know"))
            }
        }
        _ => Err(MmError::Invalid("exactly one of MAP_SHARED, MAP_PRIVATE and MAP_SHARED_VALIDATE is required")),
    }
}

/// The hugetlb page size a `MAP_HUGE_*` encoding asks for (2 MiB by
/// default); other sizes are `EINVAL`.
fn huge_size(flags: MapFlags) -> Result<PageSize, MmError> {
    let log2 = (flags.bits() >> 26) & 0x3f;
    match log2 {
        0 | 21 => Ok(PageSize::Size2M),
        30 => Ok(PageSize::Size1G),
        _ => Err(MmError::Invalid("unsupported MAP_HUGE_* size")),
    }
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, MapFlags, Prot, VmFlags, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::{MmError, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_length_that_rounds_past_2_pow_64_is_enomem_before_a_bad_sharing_type() {
        // Regression (found by the API fuzzer): the sharing type was checked
        // first (EINVAL). Linux 6.18 answers ENOMEM for MAP_ANONYMOUS |
        // MAP_FIXED without a type and for an unknown bit with
        // MAP_SHARED_VALIDATE alike.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let len = u64::MAX - 4094;
        let unknown = MapFlags::from_bits_retain(0x400);
        for flags in
            [MapFlags::ANONYMOUS | MapFlags::FIXED, ANON | MapFlags::SHARED_VALIDATE | MapFlags::FIXED | unknown]
        {
            assert_eq!(mm.mmap(0x4000_0000, len, Prot::RW, flags).unwrap_err().errno(), Errno::NoMem);
        }
        assert_eq!(mm.mmap(0x4000_0000, 4096, Prot::RW, MapFlags::ANONYMOUS).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn private_anonymous_round_trip() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let va = mm.mmap(0, 3 * 4096, Prot::RW, ANON).unwrap();
        mm.write_bytes(va + 4000, b"hello across a page edge").unwrap();
        let mut buf = [0u8; 24];
        mm.read_bytes(va + 4000, &mut buf).unwrap();
        assert_eq!(&buf, b"hello across a page edge");
        assert_eq!(mm.read_u64(va + 2 * 4096).unwrap(), 0, "untouched memory reads zero");
    }

    #[test]
    fn large_mappings_are_pmd_aligned_and_hints_are_honoured() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let big = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
        assert_eq!(big % PMD_SIZE, 0);
        let hinted = mm.mmap(0x4000_0000, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(hinted, 0x4000_0000);
    }

    #[test]
    fn only_private_anonymous_multiples_of_2m_without_a_hint_are_thp_aligned() {
        // As Linux 6.18 on the host (eight tries each after an unaligned
        // small mapping; scenarios cannot see placements outside their
        // window).
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let small = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap() % PMD_SIZE, 0);
        mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        for len in [PMD_SIZE + 4096, 2 * PMD_SIZE + 4096] {
            assert_ne!(mm.mmap(0, len, Prot::RW, ANON).unwrap() % PMD_SIZE, 0, "{len:#x}");
        }
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
        assert_ne!(mm.mmap(0, 2 * PMD_SIZE, Prot::RW, shared).unwrap() % PMD_SIZE, 0);
        let file = k.tmpfs().create("big").unwrap();
        file.ftruncate(2 * PMD_SIZE).unwrap();
        assert_ne!(mm.mmap_file(0, 2 * PMD_SIZE, Prot::RW, MapFlags::SHARED, &file, 0).unwrap() % PMD_SIZE, 0);
        // A hint that is taken: no THP placement (the next free range).
        let taken = 0x1000_0000;
        mm.mmap(taken, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let placed = mm.mmap(taken, PMD_SIZE, Prot::RW, ANON).unwrap();
        assert!(placed != taken && placed % PMD_SIZE != 0 && placed < small);
    }

    #[test]
    fn fixed_replaces_and_announces_the_unmap() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, 4 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va + 4096, 7).unwrap();
        let rec = record(&mm);
        let again = mm.mmap(va + 4096, 4096, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        assert_eq!(again, va + 4096);
        assert_eq!(rec.take_events(), [(hmm_types::Event::Unmap, va + 4096, va + 8192)]);
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 0, "the new mapping is fresh");
    }

    #[test]
    fn fixed_noreplace_refuses_without_changing_anything() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 42).unwrap();
        let err = mm.mmap(va, 4096, Prot::RW, ANON | MapFlags::FIXED_NOREPLACE).unwrap_err();
        assert_eq!(err.errno(), Errno::Exist);
        assert_eq!(mm.read_u64(va).unwrap(), 42);
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let errno = |r: Result<u64, MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mmap(0, 0, Prot::RW, ANON)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0x1001, 4096, Prot::RW, ANON | MapFlags::FIXED)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::ANONYMOUS)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, u64::MAX, Prot::RW, ANON)), Errno::NoMem);
        assert_eq!(errno(mm.mmap(0, 1 << 48, Prot::RW, ANON)), Errno::NoMem);
        // Anonymous memory has no file when do_mmap checks the type:
        // MAP_SHARED_VALIDATE is EINVAL there, MAP_SYNC or not.
        let sync = MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS | MapFlags::SYNC;
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, sync)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS)), Errno::Inval);
        assert!(mm.mmap_read().is_empty(), "no failed call left a mapping behind");
    }

    #[test]
    fn do_mmap_checks_in_linux_order() {
        // Regressions (scenarios/found, Linux 6.18 on x86): EEXIST of
        // MAP_FIXED_NOREPLACE comes before the sharing type, the flag
        // validation and the hugetlb reservation; a hugetlb length that
        // rounds past 2^64 becomes 0 (EINVAL); MAP_SHARED_VALIDATE on
        // hugetlb (a file) refuses MAP_FIXED_NOREPLACE with EOPNOTSUPP.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let errno = |r: Result<u64, MmError>| r.unwrap_err().errno();
        let va = mm.mmap(0x4000_0000 - 0x5000, 0x6000, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let noreplace = MapFlags::ANONYMOUS | MapFlags::FIXED_NOREPLACE;
        let huge = noreplace | MapFlags::HUGETLB;
        assert_eq!(errno(mm.mmap(0x4000_0000, 1, Prot::RW, huge | MapFlags::PRIVATE)), Errno::Exist);
        assert_eq!(errno(mm.mmap(va, 1, Prot::RW, noreplace | MapFlags::SHARED_VALIDATE)), Errno::Exist);
        assert_eq!(errno(mm.mmap(va, 1, Prot::RW, noreplace)), Errno::Exist);
        let free = 0x8000_0000;
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, huge | MapFlags::SHARED_VALIDATE)), Errno::OpNotSupp);
        let fixed_huge = ANON | MapFlags::FIXED | MapFlags::HUGETLB;
        assert_eq!(errno(mm.mmap(free, u64::MAX, Prot::RW, fixed_huge)), Errno::Inval);
        let validate_anon = MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS;
        assert_eq!(errno(mm.mmap(0, u64::MAX - 4095, Prot::RW, validate_anon)), Errno::NoMem);
        // Without a pool the hugetlb reservation itself fails: ENOMEM, and
        // the range MAP_FIXED was to replace is left unmapped.
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, fixed_huge)), Errno::NoMem);
        mm.mmap(free, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.write_u64(free + PMD_SIZE, 1).unwrap();
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, fixed_huge)), Errno::NoMem);
        assert!(mm.read_u64(free).is_err(), "the first 2 MiB were unmapped");
        assert_eq!(mm.read_u64(free + PMD_SIZE), Ok(1), "the rest is kept");
    }

    #[test]
    fn map_sync_sets_vm_sync_whatever_the_type() {
        // Regression (hmm fuzz), Linux 6.18: MAP_SYNC on a private mapping
        // is accepted and makes the VMA VM_SYNC, so it does not merge with
        // an identical neighbour mapped without it.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x4000_0000, 8 * 4096, Prot::NONE, ANON | MapFlags::FIXED).unwrap();
        mm.mmap(va + 4096, 4096, Prot::NONE, ANON | MapFlags::FIXED | MapFlags::SYNC).unwrap();
        let guard = mm.mmap_read();
        let vmas: Vec<(u64, u64, bool)> =
            guard.iter().map(|v| (v.start - va, v.end - va, v.flags.contains(VmFlags::SYNC))).collect();
        assert_eq!(vmas, [(0, 4096, false), (4096, 8192, true), (8192, 8 * 4096, false)]);
    }

    #[test]
    fn populate_prefaults_writable_pages() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 8 * 4096, Prot::RW, ANON | MapFlags::POPULATE).unwrap();
        for i in 0..8 {
            let (level, entry) = leaf(&mm, va + i * 4096);
            assert_eq!(level, Level::Pte);
            assert!(entry.is_write(), "page {i} populated writable");
        }
    }

    #[test]
    fn shared_anonymous_is_one_object() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
        let va = mm.mmap(0, 4 << 20, Prot::RW, shared).unwrap();
        mm.write_u64(va + 8, 5).unwrap();
        let (level, _) = leaf(&mm, va);
        assert_eq!(level, Level::Pte, "shmem has no THP by default");
        assert_eq!(mm.read_u64(va + 8).unwrap(), 5);
    }
}

#[cfg(test)]
mod special_tests {
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
