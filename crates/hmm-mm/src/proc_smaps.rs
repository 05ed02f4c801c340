//! `/proc/<pid>/smaps`: the memory statistics of one VMA, gathered by a
//! walk of its page-table entries: resident, proportional (`Pss`, each page
//! divided by its mapcount), shared or private, clean or dirty, anonymous,
//! lazily freeable, mapped by PMDs (THP), swapped, and whether THP may back
//! it (`THPeligible`).
//!
//! What counts: a present entry with a normal page (the zero pages and
//! special entries have none), a device-private entry (fake-present: it
//! counts as resident and private), a migration or device-exclusive entry
//! (its page, counted as "maybe shared"), a swap entry (`Swap` only).
//! hugetlb pages count in `Shared_Hugetlb`/`Private_Hugetlb`, not in `Rss`.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_smap`, `smaps_pte_entry`,
//! `smaps_pmd_entry`, `smaps_account`, `smaps_page_accumulate`,
//! `smaps_hugetlb_range`), `mm/huge_memory.c` (`__thp_vma_allowable_orders`
//! with `TVA_SMAPS`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, Level, SwapKind, Visit};
use hmm_types::{VmFlags, PAGE_SIZE, PMD_SIZE};

use crate::error::MmError;
use crate::kernel::ThpMode;
use crate::mm::Mm;
use crate::phys::{MemoryType, PageFlags, PhysMem};
use crate::vma::{Vma, VmaBacking};

/// Fixed-point shift of the proportional sums (`PSS_SHIFT`).
pub const PSS_SHIFT: u32 = 12;

/// One VMA's statistics, in bytes (`struct mem_size_stats`); the `pss*`
/// sums keep [`PSS_SHIFT`] fractional bits, as Linux does before printing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Smaps {
    /// First address of the VMA.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// `Rss`.
    pub resident: u64,
    /// `Pss`, fixed point.
    pub pss: u64,
    /// `Pss_Dirty`, fixed point.
    pub pss_dirty: u64,
    /// `Shared_Clean`.
    pub shared_clean: u64,
    /// `Shared_Dirty`.
    pub shared_dirty: u64,
    /// `Private_Clean`.
    pub private_clean: u64,
    /// `Private_Dirty`.
    pub private_dirty: u64,
    /// `Anonymous`.
    pub anonymous: u64,
    /// `LazyFree`.
    pub lazyfree: u64,
    /// `AnonHugePages`.
    pub anonymous_thp: u64,
    /// `ShmemPmdMapped`.
    pub shmem_thp: u64,
    /// `FilePmdMapped`.
    pub file_thp: u64,
    /// `Shared_Hugetlb`.
    pub shared_hugetlb: u64,
    /// `Private_Hugetlb`.
    pub private_hugetlb: u64,
    /// `Swap`.
    pub swap: u64,
    /// `SwapPss`, fixed point.
    pub swap_pss: u64,
    /// `THPeligible`.
    pub thp_eligible: bool,
}

impl Smaps {
    /// `Size`.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// Why the model cannot give a VMA's statistics as Linux would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmapsGap {
    /// A PTE-mapped large folio shared with another mapping: Linux reads
    /// each page's own mapcount, which the model does not keep.
    PteMappedLargeFolio,
    /// A PUD leaf (device-DAX): Linux's smaps walk has no PUD callback.
    PudLeaf,
}

impl Mm {
    /// The smaps statistics of the VMA containing `va` (`None`: no VMA
    /// there), or what keeps the model from giving them.
    pub fn smaps(&self, va: u64) -> Result<Option<Result<Smaps, SmapsGap>>, MmError> {
        self.check_alive()?;
        let guard = self.mmap_read();
        let Some(vma) = guard.vma(va) else { return Ok(None) };
        let mut stats = Smaps { start: vma.start, end: vma.end, ..Smaps::default() };
        stats.thp_eligible = thp_eligible(self, vma);
        let hugetlb = matches!(vma.backing, VmaBacking::Hugetlb(_));
        let phys = self.phys();
        let swap = self.kernel().swap();
        let special_vma = vma.flags.intersects(VmFlags::PFNMAP);
        let flow = self.pgtable().walk(vma.start, vma.end, |visit| {
            let Visit::Slot { slot, entry } = visit else { return ControlFlow::Continue(()) };
            if entry.is_none() {
                return ControlFlow::Continue(());
            }
            let level = slot.level();
            if level == Level::Pud {
                return ControlFlow::Break(SmapsGap::PudLeaf);
            }
            if hugetlb {
                hugetlb_entry(phys, &mut stats, entry, level);
                return ControlFlow::Continue(());
            }
            let huge = level == Level::Pmd;
            if entry.is_present() && entry.is_leaf(level) {
                let pfn = entry.pfn();
                if special_vma || entry.leaf_flags().special || phys.is_zero_pfn(pfn) {
                    return ControlFlow::Continue(());
                }
                let flags = entry.leaf_flags();
                let head_flags = phys.meta(phys.folio_head(pfn)).flags();
                if huge {
                    if head_flags.contains(PageFlags::ANON) {
                        stats.anonymous_thp += PMD_SIZE;
                    } else if head_flags.contains(PageFlags::SWAPBACKED) {
                        stats.shmem_thp += PMD_SIZE;
                    } else if phys.memory_type(pfn) == MemoryType::System {
                        stats.file_thp += PMD_SIZE;
                    }
                }
                return account(phys, &mut stats, pfn, huge, flags.dirty, true);
            }
            match entry.swap_kind() {
                Some(SwapKind::Swap) => {
                    stats.swap += PAGE_SIZE;
                    let count = u64::from(swap.slot_count(entry.pfn().0)).max(1);
                    stats.swap_pss += (PAGE_SIZE << PSS_SHIFT) / count;
                    ControlFlow::Continue(())
                }
                // Device-private entries are fake-present in the PTE walk
                // only; a device-private PMD is a non-present entry there.
                Some(kind) if kind.is_device_private() => account(phys, &mut stats, entry.pfn(), huge, false, !huge),
                Some(
                    SwapKind::MigrationRead
                    | SwapKind::MigrationReadExclusive
                    | SwapKind::MigrationWrite
                    | SwapKind::DeviceExclusive
                    | SwapKind::Hwpoison,
                ) => account(phys, &mut stats, entry.pfn(), huge, false, false),
                _ => ControlFlow::Continue(()),
            }
        });
        Ok(Some(match flow {
            ControlFlow::Continue(()) => Ok(stats),
            ControlFlow::Break(gap) => Err(gap),
        }))
    }
}

/// `smaps_account`: the page at `pfn` (its whole folio when `compound`).
fn account(
    phys: &PhysMem,
    stats: &mut Smaps,
    pfn: hmm_types::Pfn,
    compound: bool,
    dirty: bool,
    present: bool,
) -> ControlFlow<SmapsGap> {
    let head = phys.folio_head(pfn);
    let flags = phys.meta(head).flags();
    let nr = if compound { 1u64 << phys.folio_order(pfn) } else { 1 };
    let size = nr * PAGE_SIZE;
    let dirty = dirty || flags.contains(PageFlags::DIRTY);
    if flags.contains(PageFlags::ANON) {
        stats.anonymous += size;
        if flags.contains(PageFlags::LAZYFREE) && !dirty {
            stats.lazyfree += size;
        }
    }
    stats.resident += size;
    let (refs, mapcount) = phys.folio_counts(pfn);
    if refs == 1 || !present {
        accumulate(stats, size, size << PSS_SHIFT, dirty, present);
        return ControlFlow::Continue(());
    }
    if !compound && phys.folio_order(pfn) > 0 {
        return ControlFlow::Break(SmapsGap::PteMappedLargeFolio);
    }
    // An order-0 folio's mapcount is its page's; a PMD-mapped folio's
    // mappings (the model counts each PMD once) map every page.
    let per_page = mapcount.max(0) as u64;
    for _ in 0..nr {
        let pss = if per_page >= 2 { (PAGE_SIZE << PSS_SHIFT) / per_page } else { PAGE_SIZE << PSS_SHIFT };
        accumulate(stats, PAGE_SIZE, pss, dirty, per_page < 2);
    }
    ControlFlow::Continue(())
}

/// `smaps_page_accumulate`.
fn accumulate(stats: &mut Smaps, size: u64, pss: u64, dirty: bool, private: bool) {
    stats.pss += pss;
    match (dirty, private) {
        (true, true) => stats.private_dirty += size,
        (true, false) => stats.shared_dirty += size,
        (false, true) => stats.private_clean += size,
        (false, false) => stats.shared_clean += size,
    }
    if dirty {
        stats.pss_dirty += pss;
    }
}

/// `smaps_hugetlb_range`: a present hugetlb page (or a migration or swap
/// entry naming one) is shared when mapped more than once.
fn hugetlb_entry(phys: &PhysMem, stats: &mut Smaps, entry: Entry, level: Level) {
    let has_page = entry.is_present() || entry.swap_kind().is_some_and(|k| k != SwapKind::Marker);
    if !has_page {
        return;
    }
    let size = level.entry_bytes();
    if phys.folio_counts(entry.pfn()).1 > 1 {
        stats.shared_hugetlb += size;
    } else {
        stats.private_hugetlb += size;
    }
}

/// `THPeligible`: whether a PMD-sized THP may back some part of the VMA
/// (`thp_vma_allowable_orders(..., TVA_SMAPS, ...)`): private anonymous
/// memory the THP policy allows, not `MADV_NOHUGEPAGE`, holding a 2 MiB
/// aligned block. The model has no THP for shmem, files, DAX (whose smaps
/// says 0 outside the fault path) or hugetlb.
fn thp_eligible(mm: &Mm, vma: &Vma) -> bool {
    if !vma.is_anonymous() || vma.flags.contains(VmFlags::NOHUGEPAGE) {
        return false;
    }
    let mode_allows = match mm.kernel().config().thp {
        ThpMode::Always => true,
        ThpMode::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
        ThpMode::Never => false,
    };
    let last_block = vma.end.saturating_sub(PMD_SIZE) & !(PMD_SIZE - 1);
    mode_allows && vma.end >= PMD_SIZE && last_block >= vma.start
}

#[cfg(test)]
mod tests {
    use hmm_types::{MadviseAdvice, MapFlags, Prot};

    use super::*;
    use crate::testing::kernel;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
    const KB: u64 = 1024;

    fn smaps(mm: &Mm, va: u64) -> Smaps {
        mm.smaps(va).unwrap().expect("a VMA").expect("the model can tell")
    }

    #[test]
    fn written_pages_are_private_dirty_and_zero_page_reads_are_not_resident() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.read_u64(va + PAGE_SIZE).unwrap();
        let s = smaps(&mm, va + 3 * PAGE_SIZE);
        assert_eq!((s.size(), s.resident, s.pss >> PSS_SHIFT), (16 * KB, 4 * KB, 4 * KB));
        assert_eq!((s.private_dirty, s.anonymous, s.shared_dirty), (4 * KB, 4 * KB, 0));
        assert!(!s.thp_eligible, "THP never");
        assert_eq!(mm.smaps(va + 4 * PAGE_SIZE).unwrap(), None, "no VMA");
    }

    #[test]
    fn a_forked_page_is_shared_and_counts_half() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        let child = mm.fork().unwrap();
        let s = smaps(&mm, va);
        assert_eq!((s.resident, s.pss >> PSS_SHIFT, s.shared_dirty, s.private_dirty), (4 * KB, 2 * KB, 4 * KB, 0));
        child.write_u64(va, 2).unwrap();
        let s = smaps(&mm, va);
        assert_eq!((s.pss >> PSS_SHIFT, s.private_dirty), (4 * KB, 4 * KB), "the child copied on write");
        child.exit();
    }

    #[test]
    fn thp_eligibility_needs_an_aligned_block_and_the_policy() {
        let mm = kernel(64, ThpMode::Madvise).create_mm().unwrap();
        let va = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
        assert!(!smaps(&mm, va).thp_eligible, "madvise mode without MADV_HUGEPAGE");
        mm.madvise(va, 4 << 20, MadviseAdvice::HugePage).unwrap();
        assert!(smaps(&mm, va).thp_eligible);
        let small = mm.mmap(0, 16 * PAGE_SIZE, Prot::RW, ANON).unwrap();
        mm.madvise(small, 16 * PAGE_SIZE, MadviseAdvice::HugePage).unwrap();
        assert!(!smaps(&mm, small).thp_eligible, "no aligned 2 MiB block");
    }

    #[test]
    fn a_thp_counts_as_anon_huge_pages() {
        let mm = kernel(64, ThpMode::Always).create_mm().unwrap();
        let va = mm.mmap(0, 4 << 20, Prot::RW, ANON).unwrap();
        let block = (va + PMD_SIZE - 1) & !(PMD_SIZE - 1);
        mm.write_u64(block, 1).unwrap();
        let s = smaps(&mm, va);
        assert_eq!((s.anonymous_thp, s.resident, s.private_dirty), (PMD_SIZE, PMD_SIZE, PMD_SIZE));
        assert!(s.thp_eligible);
    }
}
