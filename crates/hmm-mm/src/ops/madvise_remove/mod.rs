//! MADV_REMOVE: punch a hole in the file behind a shared writable mapping,
//! as `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` would on the
//! part of the file the piece maps. The file's own hole punching unmaps
//! the pages from every mapping (tmpfs, memfd and shared anonymous memory
//! free them; fs-dax frees the blocks and unmaps the whole file,
//! `crate::fs::truncate`).
//!
//! Linux: `madvise_remove` in `mm/madvise.c`.

use hmm_types::{MadviseAdvice, VmFlags, PAGE_SHIFT};

use crate::error::MmError;
use crate::mm::MmapReadGuard;
use crate::vma::VmaBacking;

use super::mseal::check_madvise_sealed;

/// MADV_REMOVE on `[start, end)`, a piece of one VMA when the walk began.
/// The VMA is looked up again (a earlier piece dropped the lock): gone is
/// `ENOMEM`. `EINVAL` for a locked VMA or one without a file (private
/// anonymous memory), `EACCES` unless the mapping is shared and may write
/// (`vma_is_shared_maywrite`: a read-only shared mapping of a file opened
/// read-write may). The read lock is released for the punch, as Linux's
/// `vfs_fallocate` runs without `mmap_lock`, after the userfaultfd
/// `REMOVE` event.
pub(super) fn remove_piece(guard: &mut MmapReadGuard<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let vma = guard.lookup(start).ok_or(MmError::NoMem)?;
    check_madvise_sealed(vma, MadviseAdvice::Remove)?;
    let end = end.min(vma.end);
    if vma.flags.contains(VmFlags::LOCKED) {
        return Err(MmError::Invalid("MADV_REMOVE of a locked VMA"));
    }
    let inode = match &vma.backing {
        VmaBacking::File(inode) => inode.clone(),
        VmaBacking::Anon | VmaBacking::Pfnmap | VmaBacking::Mixed => {
            return Err(MmError::Invalid("MADV_REMOVE of a mapping without a file"))
        }
        VmaBacking::DevDax(_) => {
            shared_maywrite(vma)?;
            // vfs_fallocate refuses a character device.
            return Err(MmError::NoDevice("MADV_REMOVE of a device-DAX mapping"));
        }
        VmaBacking::Hugetlb(object) => {
            let object = object.clone();
            shared_maywrite(vma)?;
            let offset = (start - vma.start) + (vma.pgoff << PAGE_SHIFT);
            crate::uffd::remove_before_zap(guard, start, end);
            let kernel = guard.mm().kernel().clone();
            return guard.unlocked(|| crate::hugetlb_punch::punch(&kernel, &object, offset, end - start));
        }
    };
    shared_maywrite(vma)?;
    let offset = (start - vma.start) + (vma.pgoff << PAGE_SHIFT);
    crate::uffd::remove_before_zap(guard, start, end);
    guard.unlocked(|| crate::fs::truncate::punch_hole(&inode, offset, end - start))
}

fn shared_maywrite(vma: &crate::vma::Vma) -> Result<(), MmError> {
    if vma.flags.contains(VmFlags::SHARED) && vma.flags.contains(VmFlags::MAYWRITE) {
        Ok(())
    } else {
        Err(MmError::Access("MADV_REMOVE needs a shared mapping that may write"))
    }
}

#[cfg(test)]
mod tests;
