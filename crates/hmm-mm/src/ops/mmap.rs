//! mmap of anonymous memory, private or shared.
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `mmap_region`), `mm/shmem.c`
//! (`shmem_zero_setup`).

use std::sync::Arc;

use hmm_types::{MapFlags, Prot, VaRange, VmFlags, PAGE_SHIFT, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;
use crate::shmem::ShmemObject;
use crate::vma::{Vma, VmaBacking};

use super::{populate_locked, unmap_locked};

static NEXT_SHMEM_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

impl Mm {
    /// Maps `len` bytes of anonymous memory (`mmap(addr, len, prot, flags,
    /// -1, 0)`); returns the address. `addr` is a hint unless `MAP_FIXED`
    /// (replace what is there) or `MAP_FIXED_NOREPLACE` (`EEXIST` if
    /// anything is there).
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, MmError> {
        self.check_alive()?;
        if len == 0 {
            return Err(MmError::Invalid("mmap of zero length"));
        }
        let len = len
            .checked_add(PAGE_SIZE - 1)
            .ok_or(MmError::NoSpace(len))?
            & !(PAGE_SIZE - 1);
        let shared = match flags.map_type() {
            t if t == MapFlags::SHARED.bits() || t == MapFlags::SHARED_VALIDATE.bits() => true,
            t if t == MapFlags::PRIVATE.bits() => false,
            _ => {
                return Err(MmError::Invalid(
                    "exactly one of MAP_SHARED and MAP_PRIVATE is required",
                ))
            }
        };
        if !flags.contains(MapFlags::ANONYMOUS) {
            return Err(MmError::Invalid(
                "only anonymous mappings here; map files with mmap_file",
            ));
        }
        if flags.contains(MapFlags::SYNC) && flags.map_type() == MapFlags::SHARED_VALIDATE.bits() {
            return Err(MmError::NotSupported("MAP_SYNC needs a DAX file"));
        }
        if flags.contains(MapFlags::HUGETLB) {
            return Err(MmError::NotSupported(
                "MAP_HUGETLB needs the hugetlbfs pool",
            ));
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        if fixed && addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("MAP_FIXED address not page aligned"));
        }

        let mut guard = self.mmap_write();
        let start = if fixed {
            let range = VaRange::new(addr, len).map_err(|_| MmError::NoSpace(len))?;
            if guard
                .overlapping(range.start(), range.end())
                .next()
                .is_some()
            {
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

        let mut vm_flags =
            VmFlags::from_prot(prot) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if flags.contains(MapFlags::NORESERVE) {
            vm_flags |= VmFlags::NORESERVE;
        }
        let (backing, pgoff) = if shared {
            vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
            let id = NEXT_SHMEM_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            (
                VmaBacking::Shmem(Arc::new(ShmemObject::new(self.phys().clone(), id))),
                0,
            )
        } else {
            (VmaBacking::Anon, start >> PAGE_SHIFT)
        };
        let end = start + len;
        guard.vmas_mut().insert(Vma {
            start,
            end,
            flags: vm_flags,
            pgoff,
            backing,
        });
        guard.vmas_mut().merge_range(start, end);
        if flags.contains(MapFlags::POPULATE) {
            // Like Linux, a failed populate does not fail the mmap.
            let _ = populate_locked(self, &guard, start, end, prot.contains(Prot::WRITE));
        }
        Ok(start)
    }
}
