//! MINOR mode (shmem): a fault on an address with no entry whose page *is*
//! in the page cache goes to the handler (`UFFD_PAGEFAULT_FLAG_MINOR`),
//! which may change the page's contents through another mapping and then
//! map the cached page with `UFFDIO_CONTINUE`.
//!
//! A fallocated (not yet uptodate) page becomes uptodate when CONTINUE
//! maps it.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mfill_atomic_continue`,
//! `mfill_atomic_pte_continue`, `mfill_atomic_install_pte`),
//! `mm/shmem.c` (`shmem_get_folio_gfp` with `SGP_NOALLOC`).

use hmm_types::VmFlags;

use super::mfill::{fill_pte, install_pte};
use super::{is_mine, UffdError, Userfaultfd, UFFDIO_CONTINUE_MODE_DONTWAKE, UFFDIO_CONTINUE_MODE_WP};
use crate::fs::{Inode, InodeKind};
use crate::mm::MmapReadGuard;
use crate::vma::{Vma, VmaBacking};

/// Whether the page-cache page behind `va` exists (shmem and shared
/// hugetlb: anonymous memory has no page cache).
pub(crate) fn is_cached(vma: &Vma, va: u64) -> bool {
    match &vma.backing {
        VmaBacking::File(inode) if matches!(inode.kind(), InodeKind::PageCache) => {
            inode.state.lock().pages.contains_key(&vma.page_index(va))
        }
        VmaBacking::Hugetlb(object) => super::hugetlb::is_cached(vma, object, va),
        _ => false,
    }
}

impl Userfaultfd {
    /// `UFFDIO_CONTINUE`: maps the cached pages of `[start, start + len)`
    /// (a shmem range registered here) and wakes the faults waiting there
    /// unless `DONTWAKE`. Returns the bytes mapped. `ENOENT` outside a
    /// registered VMA, `EINVAL` for anonymous memory, a bad mode or `WP`
    /// without WP registration, `EEXIST` over an entry, `EFAULT` where the
    /// page cache has no page; a failure after the first page is
    /// [`UffdError::Partial`].
    pub fn continue_range(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        self.ready()?;
        if mode & !(UFFDIO_CONTINUE_MODE_DONTWAKE | UFFDIO_CONTINUE_MODE_WP) != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_CONTINUE mode"));
        }
        let wp = mode & UFFDIO_CONTINUE_MODE_WP != 0;
        let dontwake = mode & UFFDIO_CONTINUE_MODE_DONTWAKE != 0;
        self.mfill(
            start,
            len,
            dontwake,
            |guard| {
                // One shmem VMA registered here holds the whole range.
                let vma = guard
                    .vma(start)
                    .filter(|v| is_mine(&self.ctx, v) && start + len <= v.end)
                    .ok_or(UffdError::NotRegistered(start))?;
                if wp && !vma.flags.contains(VmFlags::UFFD_WP) {
                    return Err(UffdError::Invalid("UFFDIO_CONTINUE_MODE_WP on a range not registered for WP"));
                }
                match &vma.backing {
                    VmaBacking::File(_) | VmaBacking::Hugetlb(_) => Ok(()),
                    _ => Err(UffdError::Invalid("UFFDIO_CONTINUE needs shmem or hugetlb")),
                }
            },
            |guard, offset| {
                let vma = guard.vma(start).expect("setup found the VMA, the read lock keeps it");
                match &vma.backing {
                    VmaBacking::File(inode) => continue_page(guard, vma, inode, start + offset, wp),
                    _ => super::hugetlb::fill(guard, vma, start + offset, super::hugetlb::HugeFill::Continue, wp),
                }
            },
        )
    }
}

fn continue_page(guard: &MmapReadGuard<'_>, vma: &Vma, inode: &Inode, va: u64, wp: bool) -> Result<(), UffdError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let pte = fill_pte(mm, va)?;
    let pfn = {
        let state = inode.state.lock();
        let pfn = *state.pages.get(&vma.page_index(va)).ok_or(UffdError::NoCachedPage(va))?;
        phys.get(pfn);
        pfn
    };
    // A fallocated page has no contents yet: the lookup zeroes it and
    // marks it uptodate (`shmem_get_folio_gfp` with `SGP_NOALLOC`), so
    // fault-around maps it from now on.
    inode.mark_uptodate(pfn);
    // A private mapping maps the cached page read-only (a write copies it).
    let write = vma.flags.contains(VmFlags::WRITE) && vma.flags.is_shared();
    install_pte(mm, &pte, va, pfn, write, wp)
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot};

    use super::super::{UFFDIO_REGISTER_MODE_MINOR, UFFD_FEATURE_SIGBUS};
    use crate::testing::{kernel, userfaultfd};
    use crate::{MmError, ThpMode};

    #[test]
    fn a_minor_fault_waits_for_continue_which_maps_the_cached_page() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("minor").unwrap();
        file.ftruncate(2 * 4096).unwrap();
        file.pwrite(0, &7u64.to_le_bytes()).unwrap();
        let va = mm.mmap_file(0, 2 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
        uffd.register(va, 2 * 4096, UFFDIO_REGISTER_MODE_MINOR).unwrap();
        assert!(matches!(mm.read_u64(va), Err(MmError::Fault { .. })), "cached, not mapped: a MINOR fault");
        // Page 1 is not cached: MINOR does not fire, the fault allocates it.
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 0);
        assert_eq!(uffd.continue_range(va, 4096, 0), Ok(4096));
        assert_eq!(mm.read_u64(va).unwrap(), 7);
        assert_eq!(uffd.continue_range(va, 4096, 0).unwrap_err().errno(), Errno::Exist);
        file.punch_hole(0, 4096).unwrap();
        assert_eq!(uffd.continue_range(va, 4096, 0).unwrap_err().errno(), Errno::Fault, "no page in the cache");
    }

    #[test]
    fn continue_makes_a_fallocated_page_uptodate() {
        // As Linux 6.18 (scenarios/corpus/uffd_continue_fallocated.hmm).
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("falloc").unwrap();
        file.ftruncate(2 * 4096).unwrap();
        file.fallocate_keep_size(0, 2 * 4096).unwrap();
        let va = mm.mmap_file(0, 2 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let uffd = userfaultfd(&mm, 0, UFFD_FEATURE_SIGBUS);
        uffd.register(va, 2 * 4096, UFFDIO_REGISTER_MODE_MINOR).unwrap();
        let uptodate = |n: u64| {
            let pfn = file.inode().state.lock().pages[&n];
            file.inode().phys().meta(pfn).flags().contains(crate::phys::PageFlags::UPTODATE)
        };
        assert!(!uptodate(1));
        assert_eq!(uffd.continue_range(va + 4096, 4096, 0), Ok(4096));
        assert!(uptodate(1) && !uptodate(0), "only the page CONTINUE mapped");
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 0);
    }

    #[test]
    fn minor_mode_needs_shmem() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        let uffd = userfaultfd(&mm, 0, 0);
        assert_eq!(uffd.register(va, 4096, UFFDIO_REGISTER_MODE_MINOR).unwrap_err().errno(), Errno::Inval);
    }
}
