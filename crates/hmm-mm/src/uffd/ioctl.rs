//! Resolving faults: `UFFDIO_COPY` (a new page with the given contents:
//! anonymous in a private mapping, added to the page cache in a shared
//! shmem one), `UFFDIO_ZEROPAGE` (the shared zero page, or a zeroed
//! page-cache page for shared shmem) and `UFFDIO_WAKE`.
//! Both fills install into a none PTE only, under the mmap read lock and by
//! compare-and-swap, with no mmu-notifier invalidation (none → present
//! removes nothing a mirror could hold), then wake the faults waiting on
//! the range unless `DONTWAKE`.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`mfill_atomic_copy`,
//! `mfill_atomic_pte_copy`, `mfill_atomic_pte_zeropage`,
//! `userfaultfd_wake`).

use hmm_pagetable::{Entry, LeafFlags};
use hmm_types::{VmFlags, PAGE_SIZE};

use super::mfill::{fill_pte, install_pte, none_pte};
use super::{check_range, UffdError, Userfaultfd, UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_COPY_MODE_WP};
use crate::fs::{Inode, InodeKind};
use crate::mm::MmapReadGuard;
use crate::phys::PageFlags;
use crate::vma::{Vma, VmaBacking};

/// What to put in each page.
#[derive(Clone, Copy)]
enum Fill<'a> {
    Copy(&'a [u8]),
    Zero,
}

impl Userfaultfd {
    /// `UFFDIO_COPY`: fills `[dst, dst + src.len())` with `src` (the model
    /// takes the source bytes; Linux reads them from the caller's address
    /// space). Returns the bytes copied. A failure on the first page is its
    /// error (`EEXIST` for a page already mapped, `ENOENT` outside a range
    /// registered here, `ENOMEM`); a later one is [`UffdError::Partial`]
    /// (`EAGAIN`), the pages before it filled and woken. `EINVAL` for a bad
    /// mode or shape, or `WP` (map the pages write-protected) on a range
    /// not registered for WP.
    pub fn copy(&self, dst: u64, src: &[u8], mode: u64) -> Result<u64, UffdError> {
        self.ready()?;
        if mode & !(UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP) != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_COPY mode"));
        }
        self.fill(dst, src.len() as u64, Fill::Copy(src), mode)
    }

    /// `UFFDIO_ZEROPAGE`: maps the zero page read-only over
    /// `[start, start + len)`; errors as [`Self::copy`].
    pub fn zeropage(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        self.ready()?;
        if mode & !UFFDIO_COPY_MODE_DONTWAKE != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_ZEROPAGE mode"));
        }
        self.fill(start, len, Fill::Zero, mode)
    }

    /// `UFFDIO_WAKE`: wakes the faults waiting on `[start, start + len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        self.features()?;
        let end = check_range(start, len)?;
        self.ctx.wake_range(start, end);
        Ok(())
    }

    fn fill(&self, dst: u64, len: u64, fill: Fill<'_>, mode: u64) -> Result<u64, UffdError> {
        let dontwake = mode & UFFDIO_COPY_MODE_DONTWAKE != 0;
        self.mfill(
            dst,
            len,
            dontwake,
            |_| Ok(()),
            |guard, offset| self.fill_page(guard, dst + offset, fill, offset as usize, mode),
        )
    }

    fn fill_page(
        &self,
        guard: &MmapReadGuard<'_>,
        va: u64,
        fill: Fill<'_>,
        offset: usize,
        mode: u64,
    ) -> Result<(), UffdError> {
        let vma = guard.vma(va).ok_or(UffdError::NotRegistered(va))?;
        if !vma.uffd.as_ref().is_some_and(|b| std::sync::Arc::ptr_eq(&b.0, &self.ctx)) {
            return Err(UffdError::NotRegistered(va));
        }
        let wp = mode & UFFDIO_COPY_MODE_WP != 0 && matches!(fill, Fill::Copy(_));
        if wp && !vma.flags.contains(VmFlags::UFFD_WP) {
            return Err(UffdError::Invalid("UFFDIO_COPY_MODE_WP on a range not registered for WP"));
        }
        if let VmaBacking::Hugetlb(_) = &vma.backing {
            let Fill::Copy(src) = fill else {
                return Err(UffdError::Invalid("UFFDIO_ZEROPAGE on hugetlb memory"));
            };
            let bytes = super::hugetlb::huge_size(vma).unwrap_or(PAGE_SIZE) as usize;
            // A range that runs from other memory into hugetlb leaves the
            // VMA it started in: ENOENT, as Linux's one-VMA check says.
            let Some(src) = src.get(offset..offset + bytes).filter(|_| va as usize % bytes == 0) else {
                return Err(UffdError::NotRegistered(va));
            };
            return super::hugetlb::fill(guard, vma, va, super::hugetlb::HugeFill::Copy(src), wp);
        }
        if let (true, VmaBacking::File(inode)) = (vma.flags.is_shared(), &vma.backing) {
            return shmem_fill(guard, vma, inode, va, fill, offset, wp);
        }
        let mm = guard.mm();
        let phys = mm.phys();
        // An anonymous ZEROPAGE wants a plain none entry, COPY takes a
        // marker's place too (`mfill_atomic_pte_zeropage` vs
        // `mfill_atomic_install_pte`; the 6.18 host).
        let pte = match fill {
            Fill::Copy(_) => fill_pte(mm, va)?,
            _ => none_pte(mm, va)?,
        };
        let new = match fill {
            Fill::Copy(src) => {
                let page = phys.alloc_folio(0, false).map_err(|_| UffdError::NoMem)?;
                phys.write(page, 0, &src[offset..offset + PAGE_SIZE as usize]);
                phys.meta(page).set_flags(
                    PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::ANON_EXCLUSIVE,
                );
                crate::anon_vma::anon_vma_prepare(mm, guard, vma);
                crate::rmap::folio_add_new_anon_rmap(mm, vma, page, va);
                phys.map_add(page, 1);
                let write = vma.flags.contains(VmFlags::WRITE);
                let entry =
                    Entry::present(page, LeafFlags { write, dirty: true, accessed: true, special: false }, false);
                if wp {
                    entry.mkuffd_wp()
                } else {
                    entry
                }
            }
            Fill::Zero => {
                let flags = LeafFlags { special: true, accessed: true, ..LeafFlags::default() };
                Entry::present(phys.zero_pfn(), flags, false)
            }
        };
        if pte.compare_exchange(Entry::NONE, new).is_err() {
            if let Fill::Copy(_) = fill {
                phys.map_sub(new.pfn(), 1);
                phys.put(new.pfn());
            }
            return Err(UffdError::Exists(va));
        }
        Ok(())
    }
}

/// COPY or ZEROPAGE into shared shmem (`shmem_mfill_atomic_pte`): a new
/// page goes into the page cache (`EEXIST` if one is there, `EFAULT`
/// beyond end of file) and is mapped.
fn shmem_fill(
    guard: &MmapReadGuard<'_>,
    vma: &Vma,
    inode: &Inode,
    va: u64,
    fill: Fill<'_>,
    offset: usize,
    wp: bool,
) -> Result<(), UffdError> {
    if !matches!(inode.kind(), InodeKind::PageCache) {
        return Err(UffdError::Invalid("not shmem"));
    }
    let mm = guard.mm();
    let phys = mm.phys();
    let pte = fill_pte(mm, va)?;
    let index = vma.page_index(va);
    let pfn = {
        let mut state = inode.state.lock();
        if index >= state.size.div_ceil(PAGE_SIZE) {
            return Err(UffdError::NoCachedPage(va));
        }
        if state.pages.contains_key(&index) {
            return Err(UffdError::Exists(va));
        }
        let pfn = phys.alloc_folio(0, true).map_err(|_| UffdError::NoMem)?;
        if let Fill::Copy(src) = fill {
            phys.write(pfn, 0, &src[offset..offset + PAGE_SIZE as usize]);
        }
        let meta = phys.meta(pfn);
        meta.set_flags(PageFlags::SHMEM | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::DIRTY);
        meta.index.store(index, std::sync::atomic::Ordering::Relaxed);
        meta.mapping.store(inode.id(), std::sync::atomic::Ordering::Relaxed);
        state.pages.insert(index, pfn);
        // The cache's reference, then the mapping's.
        phys.get(pfn);
        pfn
    };
    let write = vma.flags.contains(VmFlags::WRITE);
    install_pte(mm, &pte, va, pfn, write, wp)
}
