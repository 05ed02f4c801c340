//! Device-DAX: a character device (`/dev/daxX.Y`) whose memory is mapped
//! directly, whole, with leaves of the device's alignment: 1 GiB (PUD) or
//! 2 MiB (PMD) or 4 KiB. Mappings must be shared and aligned, and cannot be
//! split at unaligned addresses.
//!
//! Owns the device region (`MEMORY_DEVICE_GENERIC` pagemap) and its folio
//! layout (one idle folio per alignment unit).
//!
//! Linux: `drivers/dax/device.c` (`dev_dax_mmap`, `dev_dax_huge_fault`,
//! `check_vma`, `dev_dax_may_split`).

use std::path::Path;
use std::sync::Arc;

use hmm_types::{PageSize, Pfn, PAGE_SIZE};

use crate::error::MmError;
use crate::fs::dax::BackingFile;
use crate::fs::PmemError;
use crate::kernel::Kernel;
use crate::phys::{MemoryType, Pagemap, PhysMem, MAX_DEVICE_FRAMES};

/// A device-DAX instance.
pub struct DevDax {
    phys: Arc<PhysMem>,
    base: Pfn,
    nr_frames: u64,
    align: PageSize,
    pagemap: Arc<Pagemap>,
    // Holds the backing file's lock while the device lives.
    _file: Option<BackingFile>,
}

impl core::fmt::Debug for DevDax {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DevDax")
            .field("base", &self.base)
            .field("nr_frames", &self.nr_frames)
            .field("align", &self.align)
            .finish()
    }
}

impl DevDax {
    /// A device of `size_bytes` (a multiple of `align`) in anonymous host
    /// memory, or in `backing` if given (persistent across runs; created or
    /// grown as needed, and locked while the device lives). `EINVAL` for a
    /// size that is not a multiple of `align` or larger than a device
    /// memory range ([`PmemError::TooLarge`]); the backing file's own
    /// errors as [`PmemError`].
    pub fn create(
        kernel: &Kernel,
        size_bytes: u64,
        align: PageSize,
        backing: Option<&Path>,
    ) -> Result<Arc<Self>, MmError> {
        if size_bytes == 0 || size_bytes % align.bytes() != 0 {
            return Err(MmError::Invalid("device-dax size must be a non-zero multiple of its alignment"));
        }
        let nr_frames = size_bytes / PAGE_SIZE;
        if nr_frames > MAX_DEVICE_FRAMES {
            // Linux: memremap_pages refuses a range past the addressable
            // physical space with EINVAL.
            return Err(PmemError::TooLarge { bytes: size_bytes, max: MAX_DEVICE_FRAMES * PAGE_SIZE }.into());
        }
        let file = match backing {
            Some(path) => {
                let mut file = BackingFile::open(path, true)?;
                file.grow_to(size_bytes)?;
                Some(file)
            }
            None => None,
        };
        let pagemap = Arc::new(Pagemap::new(MemoryType::Generic, None));
        let base = kernel
            .phys()
            .add_device_region(pagemap.clone(), nr_frames, file.as_ref().map(BackingFile::file))
            .map_err(|e| PmemError::Map { bytes: size_bytes, source: e.into() })?;
        let phys = kernel.phys().clone();
        for unit in (0..nr_frames).step_by(align.nr_pages() as usize) {
            phys.init_device_folio(base.add(unit), align.order());
        }
        Ok(Arc::new(Self { phys, base, nr_frames, align, pagemap, _file: file }))
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.nr_frames * PAGE_SIZE
    }
    /// The mapping alignment (and leaf size).
    pub fn align(&self) -> PageSize {
        self.align
    }
    /// First frame.
    pub fn base(&self) -> Pfn {
        self.base
    }
    /// Its pagemap.
    pub fn pagemap(&self) -> &Arc<Pagemap> {
        &self.pagemap
    }
    /// Physical memory it lives in.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.phys
    }
    /// The frame at byte `offset`, if inside the device.
    pub(crate) fn pfn_at(&self, offset: u64) -> Option<Pfn> {
        (offset < self.size()).then(|| self.base.add(offset / PAGE_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, Event, MapFlags, PageSize, Prot, PMD_SIZE, PUD_SIZE};

    use super::DevDax;
    use crate::phys::MemoryType;
    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    #[test]
    fn a_1g_device_maps_with_pud_leaves() {
        let k = kernel(64, ThpMode::Never);
        let dev = DevDax::create(&k, 2 * PUD_SIZE, PageSize::Size1G, None).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_devdax(0, 2 * PUD_SIZE, Prot::RW, MapFlags::SHARED, &dev, 0).unwrap();
        assert_eq!(va % PUD_SIZE, 0);
        mm.write_u64(va + PUD_SIZE + 12345 * 8, 99).unwrap();
        let (level, entry) = leaf(&mm, va + PUD_SIZE);
        assert_eq!(level, Level::Pud);
        assert_eq!(entry.pfn(), dev.base().add(PUD_SIZE / 4096));
        assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::Generic);
        assert_eq!(k.phys().folio_order(entry.pfn()), 18);
        assert_eq!(mm.read_u64(va + PUD_SIZE + 12345 * 8).unwrap(), 99);
        let rec = record(&mm);
        mm.munmap(va, PUD_SIZE).unwrap();
        assert_eq!(rec.take_events(), [(Event::Unmap, va, va + PUD_SIZE)]);
        assert_eq!(
            mm.munmap(va + PUD_SIZE + PMD_SIZE, PMD_SIZE).unwrap_err().errno(),
            Errno::Inval,
            "no unaligned split"
        );
    }

    #[test]
    fn a_2m_device_maps_with_pmd_leaves_and_checks_its_arguments() {
        let k = kernel(64, ThpMode::Never);
        let dev = DevDax::create(&k, 8 << 20, PageSize::Size2M, None).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_devdax(0, 4 << 20, Prot::RW, MapFlags::SHARED, &dev, 2 << 20).unwrap();
        mm.write_u64(va, 1).unwrap();
        let (level, entry) = leaf(&mm, va);
        assert_eq!((level, entry.pfn()), (Level::Pmd, dev.base().add(512)));
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mmap_devdax(0, 2 << 20, Prot::RW, MapFlags::PRIVATE, &dev, 0)), Errno::Inval);
        // As 7.3.4 in the guest: the offset is not checked, the fault maps
        // the folio holding it from its head; an unaligned end is EINVAL.
        let off = mm.mmap_devdax(0, 2 << 20, Prot::RW, MapFlags::SHARED, &dev, (2 << 20) + 4096).unwrap();
        assert_eq!(mm.read_u64(off).unwrap(), 1, "offset 2M + 4K maps from 2M");
        assert_eq!(errno(mm.mmap_devdax(0, 3 << 20, Prot::RW, MapFlags::SHARED, &dev, 0)), Errno::Inval);
        let fixed = MapFlags::SHARED | MapFlags::FIXED;
        assert_eq!(errno(mm.mmap_devdax(0x4000_1000, 2 << 20, Prot::RW, fixed, &dev, 0)), Errno::Inval);
        assert_eq!(DevDax::create(&k, 3 << 20, PageSize::Size2M, None).unwrap_err().errno(), Errno::Inval);
        let beyond = mm.mmap_devdax(0, 4 << 20, Prot::RW, MapFlags::SHARED, &dev, 6 << 20).unwrap();
        assert!(mm.read_u64(beyond + (2 << 20)).is_err(), "past the device end is SIGBUS");
        let sync = MapFlags::SHARED_VALIDATE | MapFlags::SYNC;
        assert!(mm.mmap_devdax(0, 2 << 20, Prot::RW, sync, &dev, 0).is_ok(), "MAP_SYNC is accepted");
    }

    #[test]
    fn a_read_fault_maps_writable_and_nohugepage_leaves_only_sigbus() {
        let k = kernel(64, ThpMode::Never);
        let dev = DevDax::create(&k, 8 << 20, PageSize::Size2M, None).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_devdax(0, 4 << 20, Prot::RW, MapFlags::SHARED, &dev, 0).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0);
        let (_, entry) = leaf(&mm, va);
        assert!(entry.is_write() && !entry.is_dirty(), "no write notification: writable, clean");
        mm.madvise(va, 4 << 20, hmm_types::MadviseAdvice::NoHugePage).unwrap();
        assert!(mm.read_u64(va + (2 << 20)).is_err(), "the 4K fault refuses a 2 MiB-aligned device");
        assert_eq!(mm.read_u64(va).unwrap(), 0, "the leaf already there stays");
    }

    #[test]
    fn a_vma_grown_off_the_alignment_faults_nowhere_until_cut_back() {
        // Linux 7.3 (the guest, `devdax_unaligned_vma.hmm`): mremap grows
        // the last page in place, the end leaves the 2 MiB alignment, and
        // every fault in the VMA is SIGBUS until the tail goes again.
        let k = kernel(64, ThpMode::Never);
        let dev = DevDax::create(&k, 8 << 20, PageSize::Size2M, None).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap_devdax(0x4000_0000, PMD_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &dev, 0).unwrap();
        let last = va + PMD_SIZE - 4096;
        assert_eq!(mm.mremap(last, 4096, 7 * 4096, hmm_types::MremapFlags::MAYMOVE, 0).unwrap(), last);
        assert!(mm.read_u64(va).is_err(), "SIGBUS in the aligned unit too");
        mm.munmap(va + PMD_SIZE, PMD_SIZE).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0);
        assert_eq!(leaf(&mm, va).0, Level::Pmd);
    }
}
