//! `UFFDIO_MOVE`: moves pages of private anonymous memory from `src` to
//! `dst` (a range registered here) by moving page-table entries, without
//! copying: the page itself changes address (its rmap index follows), so
//! only a page exclusive to this process may move (`EBUSY` otherwise,
//! also for a page once shared with a fork child that no write reused).
//! The zero page moves as the zero page; a source hole is `ENOENT` unless
//! `ALLOW_SRC_HOLES`; a destination entry is `EEXIST`. Each moved page is
//! a CLEAR invalidation of its source address.
//!
//! Not modelled: moving THPs (a PMD leaf in the source is refused with
//! `EOPNOTSUPP`), swap entries in the source (`EOPNOTSUPP`).
//!
//! Linux 7.3: `mm/userfaultfd.c` (`move_pages`, `validate_move_areas`,
//! `move_pages_pte`, `move_present_pte`, `move_zeropage_pte`).

use hmm_pagetable::{Entry, Level};
use hmm_types::{Event, VmFlags, PAGE_SIZE};

use super::{
    check_range, is_mine, UffdError, Userfaultfd, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UFFDIO_MOVE_MODE_DONTWAKE,
};
use crate::mm::MmapReadGuard;
use crate::vma::Vma;

/// `VM_READ|VM_WRITE|VM_EXEC`: both sides must agree on them.
const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);

impl Userfaultfd {
    /// `UFFDIO_MOVE`: moves `len` bytes of pages from `src` to `dst`;
    /// returns the bytes moved (holes skipped with `ALLOW_SRC_HOLES`
    /// count). `ENOENT` where no VMA holds `dst` or `src`; `EINVAL` for a
    /// bad mode or shape, ranges leaving their VMA, shared or unregistered
    /// VMAs, or VMAs that differ in access rights or are not writable; a
    /// failure after the first page is [`UffdError::Partial`].
    pub fn move_pages(&self, dst: u64, src: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        self.ready()?;
        if mode & !(UFFDIO_MOVE_MODE_DONTWAKE | UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES) != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_MOVE mode"));
        }
        let src_end = check_range(src, len)?;
        let holes = mode & UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES != 0;
        self.mfill(
            dst,
            len,
            mode & UFFDIO_MOVE_MODE_DONTWAKE != 0,
            |guard| {
                let dst_vma = guard.vma(dst).ok_or(UffdError::NoEntry("no mapping at the destination"))?;
                let src_vma = guard.vma(src).ok_or(UffdError::NoEntry("no mapping at the source"))?;
                self.validate(src_vma, src_end, dst_vma, dst + len)?;
                crate::anon_vma::anon_vma_prepare(guard.mm(), guard, dst_vma);
                Ok(())
            },
            |guard, offset| {
                let vma = guard.vma(dst).expect("validated: the destination stays mapped under the lock");
                move_page(guard, src + offset, vma, dst + offset, holes)
            },
        )
    }

    /// `move_pages`' range checks and `validate_move_areas`.
    fn validate(&self, src_vma: &Vma, src_end: u64, dst_vma: &Vma, dst_end: u64) -> Result<(), UffdError> {
        let bad = |why| Err(UffdError::Invalid(why));
        if src_vma.flags.is_shared() || src_end > src_vma.end || dst_vma.flags.is_shared() || dst_end > dst_vma.end {
            return bad("each range must lie in one private VMA");
        }
        if src_vma.flags & ACCESS != dst_vma.flags & ACCESS {
            return bad("source and destination differ in access rights");
        }
        if !src_vma.flags.contains(VmFlags::WRITE) {
            return bad("only writable VMAs move pages");
        }
        if !is_mine(&self.ctx, dst_vma) {
            return bad("the destination is not registered with this userfaultfd");
        }
        if !src_vma.is_anonymous() || !dst_vma.is_anonymous() {
            return bad("pages move only between anonymous VMAs");
        }
        Ok(())
    }
}

/// Moves one page (`move_pages_pte`).
fn move_page(guard: &MmapReadGuard<'_>, src: u64, dst_vma: &Vma, dst: u64, holes: bool) -> Result<(), UffdError> {
    let mm = guard.mm();
    let phys = mm.phys();
    let dst_pte = super::mfill::none_pte(mm, dst)?;
    let src_slot = mm.pgtable().find(src);
    let entry = src_slot.load();
    if entry.is_none() {
        return if holes { Ok(()) } else { Err(UffdError::NoEntry("a hole in the source")) };
    }
    if src_slot.level() != Level::Pte {
        return Err(UffdError::NotModelled("moving a huge page"));
    }
    if !entry.is_present() {
        return Err(UffdError::NotModelled("moving a non-present source entry"));
    }
    let pfn = entry.pfn();
    let zero = phys.is_zero_pfn(pfn);
    // `PageAnonExclusive`: a page shared with a fork child stays
    // non-exclusive (even once the child is gone) until a write reuses it.
    let exclusive = phys.meta(pfn).flags().contains(crate::phys::PageFlags::ANON_EXCLUSIVE);
    if !zero && (entry.is_special() || !exclusive || phys.folio_counts(pfn).1 != 1 || phys.folio_order(pfn) != 0) {
        return Err(UffdError::PageBusy("the source page is not exclusive to this process"));
    }
    let _invalidation = mm.notifiers().start(mm.id(), src, src + PAGE_SIZE, Event::Clear);
    if src_slot.compare_exchange(entry, Entry::NONE).is_err() {
        return Err(UffdError::Again);
    }
    let moved = if zero {
        entry
    } else {
        crate::rmap::folio_add_new_anon_rmap(mm, dst_vma, pfn, dst);
        let moved = entry.clear_uffd_wp();
        if dst_vma.flags.contains(VmFlags::WRITE) {
            moved.mkwrite()
        } else {
            moved
        }
    };
    if dst_pte.compare_exchange(Entry::NONE, moved).is_err() {
        // A fault filled the destination meanwhile: put the source back.
        src_slot.store(entry);
        return Err(UffdError::Exists(dst));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot};

    use super::super::{UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UFFDIO_REGISTER_MODE_MISSING};
    use crate::testing::{kernel, userfaultfd};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_page_moves_with_its_contents_and_leaves_a_hole() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let src = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        let dst = mm.mmap(0, 2 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(src, 42).unwrap();
        let pfn = mm.pagemap_entry(src).unwrap();
        let uffd = userfaultfd(&mm, 0, 0);
        uffd.register(dst, 2 * 4096, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        assert_eq!(uffd.move_pages(dst, src, 4096, 0), Ok(4096));
        assert_eq!(mm.pagemap_entry(src).unwrap(), 0, "the source is a hole now");
        assert_eq!(mm.pagemap_entry(dst).unwrap(), pfn, "the same frame, not a copy");
        assert_eq!(mm.read_u64(dst).unwrap(), 42);
        mm.write_u64(dst, 43).unwrap();
        let e = |r: Result<u64, super::UffdError>| r.unwrap_err().errno();
        assert_eq!(e(uffd.move_pages(dst + 4096, src, 4096, 0)), Errno::NoEnt, "a source hole");
        assert_eq!(uffd.move_pages(dst + 4096, src, 4096, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES), Ok(4096));
        mm.write_u64(src, 1).unwrap();
        assert_eq!(e(uffd.move_pages(dst, src, 4096, 0)), Errno::Exist);
        assert_eq!(e(uffd.move_pages(src, dst, 4096, 0)), Errno::Inval, "the destination is not registered");
    }

    #[test]
    fn a_page_shared_with_a_child_is_busy() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let src = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let dst = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(src, 1).unwrap();
        let child = mm.fork().unwrap();
        let uffd = userfaultfd(&mm, 0, 0);
        uffd.register(dst, 4096, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        assert_eq!(uffd.move_pages(dst, src, 4096, 0).unwrap_err().errno(), Errno::Busy);
        child.exit();
        assert_eq!(
            uffd.move_pages(dst, src, 4096, 0).unwrap_err().errno(),
            Errno::Busy,
            "mapped once again, but not exclusive until a write reuses it"
        );
        mm.write_u64(src, 2).unwrap();
        assert_eq!(uffd.move_pages(dst, src, 4096, 0), Ok(4096));
        assert_eq!(mm.read_u64(dst).unwrap(), 2);
    }
}
