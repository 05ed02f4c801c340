//! mmap: anonymous memory (private, or shared through an unnamed tmpfs
//! file), files (page cache or fs-dax), hugetlbfs (`MAP_HUGETLB`),
//! device-DAX, and the special mappings drivers make (`remap_pfn_range`,
//! `vm_insert_page`).
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `mmap_region`), `mm/shmem.c`
//! (`shmem_zero_setup`), `mm/hugetlb.c`, `drivers/dax/device.c`,
//! `mm/memory.c` (`remap_pfn_range`, `vm_insert_page`).
//!
//! The entry points and the VMA creation are here; beside them
//! `args` the checks before anything is looked up and the sharing type,
//! `placement` where a mapping without MAP_FIXED goes
//! (`get_unmapped_area`), `special` the driver mappings.

use std::sync::Arc;

use hmm_types::{MapFlags, Pfn, Prot, VaRange, VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::devdax::DevDax;
use crate::error::MmError;
use crate::fs::{File, InodeKind};
use crate::hugetlb::HugetlbFile;
use crate::mm::Mm;
use crate::vma::{Vma, VmaBacking};

use super::{populate_locked, unmap_locked};

mod args;
mod placement;
mod special;

use args::Checked;
pub(crate) use placement::get_unmapped_area;

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
        let Checked { len, hugetlb, granule, fixed } = args::check_args(self, addr, len, flags, &source)?;
        // The device-DAX node offers MAP_SYNC too (`mmap_supported_flags`).
        let is_dax_file = matches!(&source, Source::File(f, _) if matches!(f.inode().kind(), InodeKind::Dax(_)))
            || matches!(source, Source::DevDax(..));
        let shared =
            args::map_type_shared(flags, !matches!(source, Source::Anonymous) || hugetlb.is_some(), is_dax_file)?;
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
        // ext4's mmap of a DAX file sets VM_HUGEPAGE itself
        // (`ext4_file_mmap_prepare`), so MADV_HUGEPAGE there changes no
        // flag and splits nothing; MADV_NOHUGEPAGE does.
        if matches!(&source, Source::File(f, _) if matches!(f.inode().kind(), InodeKind::Dax(_))) {
            vm_flags |= VmFlags::HUGEPAGE;
        }
        // `accountable_mapping`: a private writable mapping is charged
        // against the commit limit and marked VM_ACCOUNT (not hugetlb, not
        // MAP_NORESERVE); the flag takes part in merging.
        let charged = VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE;
        if hugetlb.is_none() && vm_flags & charged == VmFlags::WRITE {
            vm_flags |= VmFlags::ACCOUNT;
        }
        // What the device-DAX node's mmap hook (`check_vma`) refuses: Linux
        // calls it after a MAP_FIXED range was unmapped, so the refusal
        // leaves the range empty.
        let mut hook_refusal = None;
        let inserted: Option<(Vec<Pfn>, bool)> = match &source {
            Source::Pfns(base) => Some(((0..len / PAGE_SIZE).map(|i| base.add(i)).collect(), true)),
            Source::Pages(pages) => Some((pages.to_vec(), false)),
            _ => None,
        };
        let backing = match source {
            Source::Anonymous => match hugetlb {
                Some(size) => {
                    // hugetlbfs_file_mmap: a hugetlb VMA never grows
                    // (VM_DONTEXPAND, so VM_SPECIAL: MADV_DOFORK and
                    // MREMAP_DONTUNMAP refuse it).
                    vm_flags |= VmFlags::HUGETLB | VmFlags::DONTEXPAND;
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
                // check_vma: shared, both ends aligned (the start is checked
                // once placed). The offset need not be: a fault maps the
                // whole aligned unit holding it.
                if !shared {
                    hook_refusal = Some(MmError::Invalid("device-dax mappings must be MAP_SHARED"));
                } else if len % granule != 0 {
                    hook_refusal = Some(MmError::Invalid("device-dax mapping end not aligned to the device alignment"));
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
        if matches!(source, Source::DevDax(..)) && start % granule != 0 {
            hook_refusal = Some(MmError::Invalid("device-dax mapping start not aligned to the device alignment"));
        }
        if let Some(refusal) = hook_refusal {
            return Err(refusal);
        }
        let (backing, pgoff) = backing.unwrap_or((VmaBacking::Anon, start >> PAGE_SHIFT));
        if let VmaBacking::File(inode) = &backing {
            inode.add_mapper(self.weak());
        }
        let end = start + len;
        if let Some((frames, special)) = inserted {
            let write = vm_flags.contains(VmFlags::WRITE) && (special || shared);
            special::insert_frames(self, start, &frames, special, write)?;
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

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, MapFlags, Prot, VmFlags};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

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
