//! A consistency check of frame accounting, for tests and debugging: every
//! frame the buddy allocator holds free has no reference and no mapping,
//! every folio in use has at least as many references as mappings and no
//! negative count, and tails carry no counts of their own. Run it when the
//! machine is quiet (no operation in flight): a folio being migrated or
//! split is frozen at zero references for a moment.
//!
//! Linux: the `bad_page` checks of `free_pages_prepare`, and
//! `CONFIG_DEBUG_VM`'s `VM_BUG_ON_FOLIO` on refcount and mapcount.

use hmm_types::Pfn;

use super::{PageFlags, PhysMem};

/// What a consistent [`PhysMem::check_frames`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FrameAudit {
    /// Frames of RAM allocated, besides the zero pages (folios, page
    /// tables, hugetlb pools).
    pub in_use: u64,
    /// Of those, page-table pages.
    pub page_tables: u64,
}

/// A frame whose counts contradict its state.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("frame accounting broken on {pfn:?}: {problem} (refcount {refcount}, mapcount {mapcount}, {flags:?})")]
pub struct FrameAccountingError {
    /// The first bad frame.
    pub pfn: Pfn,
    /// What is wrong with it.
    pub problem: &'static str,
    /// Its reference count.
    pub refcount: u32,
    /// Its mapcount.
    pub mapcount: i32,
    /// Its flags.
    pub flags: PageFlags,
}

impl PhysMem {
    /// Checks every frame of system RAM (see the module doc); the free
    /// count is the buddy allocator's, so `in_use + free_frames()` is all
    /// of RAM less the zero pages when the result is `Ok`.
    pub fn check_frames(&self) -> Result<FrameAudit, FrameAccountingError> {
        let buddy = self.buddy.lock();
        let mut audit = FrameAudit::default();
        let zero_pages = (self.huge_zero_pfn.0..self.huge_zero_pfn.0 + 512).chain([self.zero_pfn.0]);
        let mut pfn = 0;
        while pfn < self.ram_frames {
            let meta = self.meta(Pfn(pfn));
            let bad = |problem| FrameAccountingError {
                pfn: Pfn(pfn),
                problem,
                refcount: meta.refcount(),
                mapcount: meta.mapcount(),
                flags: meta.flags(),
            };
            if buddy.is_inside_free_block(pfn) {
                if meta.refcount() != 0 || meta.mapcount() != 0 {
                    return Err(bad("a free frame is still referenced or mapped"));
                }
                pfn += 1;
                continue;
            }
            let nr = 1u64 << meta.order();
            if meta.head_offset() != 0 {
                return Err(bad("a tail without its head"));
            }
            if meta.mapcount() < 0 {
                return Err(bad("negative mapcount"));
            }
            let reserved = meta.flags().contains(PageFlags::RESERVED);
            if !reserved && meta.mapcount() as u64 > u64::from(meta.refcount()) {
                return Err(bad("more mappings than references"));
            }
            let pooled = meta.flags().intersects(PageFlags::HUGETLB | PageFlags::PGTABLE);
            if !reserved && !pooled && meta.refcount() == 0 {
                return Err(bad("allocated, yet nobody holds a reference (leaked)"));
            }
            for tail in 1..nr {
                let t = self.meta(Pfn(pfn + tail));
                if t.refcount() != 0 || t.head_offset() != tail {
                    return Err(FrameAccountingError {
                        pfn: Pfn(pfn + tail),
                        problem: "a tail with its own references or the wrong head",
                        refcount: t.refcount(),
                        mapcount: t.mapcount(),
                        flags: t.flags(),
                    });
                }
            }
            if meta.flags().contains(PageFlags::PGTABLE) {
                audit.page_tables += 1;
            }
            audit.in_use += nr;
            pfn += nr;
        }
        audit.in_use -= zero_pages.count() as u64;
        Ok(audit)
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{MapFlags, Prot, PMD_SIZE};

    use crate::testing::kernel;
    use crate::ThpMode;

    #[test]
    fn a_quiet_machine_accounts_for_every_frame() {
        let k = kernel(64, ThpMode::Always);
        let phys = k.phys();
        assert_eq!(phys.check_frames().unwrap().in_use, 0);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.write_u64(va + PMD_SIZE + 4096, 1).unwrap();
        let child = mm.fork().unwrap();
        child.write_u64(va + 8192, 2).unwrap();
        let audit = phys.check_frames().unwrap();
        assert_eq!(audit.in_use + phys.free_frames() + 513, phys.ram_frames());
        assert_eq!(audit.page_tables, phys.page_table_frames());
        child.exit();
        mm.exit();
        drop((mm, child));
        assert_eq!(phys.check_frames().unwrap(), super::FrameAudit::default());
    }

    #[test]
    fn a_reference_to_a_freed_frame_is_reported() {
        let k = kernel(64, ThpMode::Never);
        let phys = k.phys();
        let page = phys.alloc_folio(0, true).unwrap();
        phys.put(page);
        // What a stray put would leave behind after the frame was freed.
        phys.meta(page).mapcount.store(1, core::sync::atomic::Ordering::Relaxed);
        let error = phys.check_frames().unwrap_err();
        assert_eq!((error.pfn, error.problem), (page, "a free frame is still referenced or mapped"));
        phys.meta(page).mapcount.store(0, core::sync::atomic::Ordering::Relaxed);
        let leaked = phys.alloc_folio(0, true).unwrap();
        phys.map_add(leaked, 2);
        assert_eq!(phys.check_frames().unwrap_err().problem, "more mappings than references");
        phys.map_sub(leaked, 2);
        phys.put(leaked);
    }
}
