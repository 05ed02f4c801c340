//! mmap of anonymous memory (private, or shared through an unnamed tmpfs
//! file) and of files.
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `mmap_region`), `mm/shmem.c`
//! (`shmem_zero_setup`).

use hmm_types::{MapFlags, Prot, VaRange, VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::fs::{File, InodeKind};
use crate::mm::Mm;
use crate::vma::{Vma, VmaBacking};

use super::{populate_locked, unmap_locked};

impl Mm {
    /// Maps `len` bytes of anonymous memory (`mmap(addr, len, prot, flags,
    /// -1, 0)`); returns the address. `addr` is a hint unless `MAP_FIXED`
    /// (replace what is there) or `MAP_FIXED_NOREPLACE` (`EEXIST` if
    /// anything is there).
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, MmError> {
        if !flags.contains(MapFlags::ANONYMOUS) {
            return Err(MmError::Invalid("a mapping without MAP_ANONYMOUS needs a file: use mmap_file"));
        }
        self.do_mmap(addr, len, prot, flags, None)
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
        if flags.contains(MapFlags::ANONYMOUS) {
            return Err(MmError::Invalid("MAP_ANONYMOUS with a file"));
        }
        if offset % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("file offset not page aligned"));
        }
        self.do_mmap(addr, len, prot, flags, Some((file, offset)))
    }

    fn do_mmap(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        file: Option<(&File, u64)>,
    ) -> Result<u64, MmError> {
        self.check_alive()?;
        if len == 0 {
            return Err(MmError::Invalid("mmap of zero length"));
        }
        if Prot::from_bits(prot.bits()).is_none() {
            return Err(MmError::Invalid("unknown PROT_* bits"));
        }
        let len = len.checked_add(PAGE_SIZE - 1).ok_or(MmError::NoSpace(len))? & !(PAGE_SIZE - 1);
        let shared = match flags.map_type() {
            t if t == MapFlags::SHARED.bits() || t == MapFlags::SHARED_VALIDATE.bits() => true,
            t if t == MapFlags::PRIVATE.bits() => false,
            _ => return Err(MmError::Invalid("exactly one of MAP_SHARED and MAP_PRIVATE is required")),
        };
        // MAP_SYNC is only honoured (and only validated) with
        // MAP_SHARED_VALIDATE, and only a DAX file supports it.
        let sync = flags.contains(MapFlags::SYNC) && flags.map_type() == MapFlags::SHARED_VALIDATE.bits();
        let is_dax = file.is_some_and(|(f, _)| matches!(f.inode().kind(), InodeKind::Dax(_)));
        if sync && !is_dax {
            return Err(MmError::NotSupported("MAP_SYNC needs a DAX file"));
        }
        if flags.contains(MapFlags::HUGETLB) {
            return Err(MmError::NotSupported("MAP_HUGETLB needs the hugetlbfs pool"));
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        if fixed && addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("MAP_FIXED address not page aligned"));
        }
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
        let backing = match file {
            Some((file, offset)) => {
                if (offset >> PAGE_SHIFT).checked_add(len >> PAGE_SHIFT).is_none() {
                    return Err(MmError::Overflow("file offset plus length"));
                }
                if shared && !file.is_writable() {
                    if prot.contains(Prot::WRITE) {
                        return Err(MmError::Access("shared writable mapping of a file not open for writing"));
                    }
                    vm_flags -= VmFlags::MAYWRITE;
                }
                Some((VmaBacking::File(file.inode().clone()), offset >> PAGE_SHIFT))
            }
            None if shared => Some((VmaBacking::File(self.kernel().tmpfs().anonymous(len)), 0)),
            None => None,
        };

        let mut guard = self.mmap_write();
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
            let hint = (addr != 0).then_some(addr & !(PAGE_SIZE - 1));
            guard.find_free(len, hint).ok_or(MmError::NoSpace(len))?
        };
        let (backing, pgoff) = backing.unwrap_or((VmaBacking::Anon, start >> PAGE_SHIFT));
        if let VmaBacking::File(inode) = &backing {
            inode.add_mapper(self.weak());
        }
        let end = start + len;
        guard.vmas_mut().insert(Vma { start, end, flags: vm_flags, pgoff, backing });
        guard.vmas_mut().merge_range(start, end);
        if flags.contains(MapFlags::POPULATE) {
            // Like Linux, a failed populate does not fail the mmap.
            let _ = populate_locked(self, &guard, start, end, prot.contains(Prot::WRITE));
        }
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Errno, MapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, leaf, record};
    use crate::{MmError, ThpMode};

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
    fn large_mappings_are_pmd_aligned_and_hints_are_honoured() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let big = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
        assert_eq!(big % PMD_SIZE, 0);
        let hinted = mm.mmap(0x4000_0000, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(hinted, 0x4000_0000);
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
        let sync = MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS | MapFlags::SYNC;
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, sync)), Errno::OpNotSupp);
        assert!(mm.mmap_read().is_empty(), "no failed call left a mapping behind");
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
