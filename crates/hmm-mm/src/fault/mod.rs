//! Page faults: make a virtual address accessible as the MMU and the kernel
//! would, for the CPU or for a device (a remote fault).
//!
//! Dispatch lives here; each kind of fault has its own file:
//! `anon.rs` (first touch of private anonymous memory, THP and zero pages),
//! `wp.rs` (write to a read-only present page: reuse or copy-on-write),
//! `file.rs` (file mappings, including shared anonymous memory), `swap.rs`
//! (swap entries of private memory), `unshare.rs` (what a read-only pin
//! must not share). All run under the mmap read lock
//! and install entries by compare-and-swap, so concurrent faults on the same
//! address are safe: the loser frees what it allocated and finds the
//! winner's entry.
//!
//! Linux: `mm/memory.c` (`handle_mm_fault`, `__handle_mm_fault`,
//! `handle_pte_fault`).

mod anon;
mod around;
mod dax;
mod devdax;
mod file;
mod file_huge;
mod hugetlb;
mod retry;
mod swap;
mod unshare;
mod wp;

use bitflags::bitflags;

use hmm_types::VmFlags;

use crate::error::{FaultError, SegvReason};
use crate::fs::InodeKind;
use crate::mm::MmapLocked;
use crate::mm::{Mm, MmapReadGuard};
use crate::vma::{Vma, VmaBacking, VmaTree};

pub use retry::FaultOutcome;
pub(crate) use unshare::unshare;

bitflags! {
    /// `FAULT_FLAG_*`.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct FaultFlags: u32 {
        /// A write access (`FAULT_FLAG_WRITE`).
        const WRITE = 1 << 0;
        /// The handler may release the mmap lock and ask for a retry
        /// (`FAULT_FLAG_ALLOW_RETRY`); only [`MmapReadGuard::handle_mm_fault_unlockable`]
        /// honours it.
        const ALLOW_RETRY = 1 << 2;
        /// A wait inside the handler ends on a fatal signal (`FAULT_FLAG_KILLABLE`).
        const KILLABLE = 1 << 4;
        /// A retry after the lock was released once (`FAULT_FLAG_TRIED`).
        const TRIED = 1 << 5;
        /// From user mode (`FAULT_FLAG_USER`): CPU accesses, not HMM or GUP.
        const USER = 1 << 6;
        /// On behalf of another agent (`FAULT_FLAG_REMOTE`): a device, GUP.
        const REMOTE = 1 << 7;
    }
}

impl MmapReadGuard<'_> {
    /// Resolves a fault at `va` (`handle_mm_fault`). Access rights are
    /// checked against the VMA first: a write to a read-only mapping, or any
    /// access to PROT_NONE, is SIGSEGV.
    pub fn handle_mm_fault(&self, va: u64, flags: FaultFlags) -> Result<(), FaultError> {
        let vma = self.vma(va).ok_or(FaultError::Segv(SegvReason::NotMapped))?;
        handle_fault(self.mm(), self, vma, va, flags)
    }
}

/// Fault handling once the VMA is known; the caller holds the mmap lock.
pub(crate) fn handle_fault(mm: &Mm, vmas: &VmaTree, vma: &Vma, va: u64, flags: FaultFlags) -> Result<(), FaultError> {
    let write = flags.contains(FaultFlags::WRITE);
    // As on x86, write and exec permission imply read.
    let allowed = if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    };
    if !allowed {
        return Err(FaultError::Segv(SegvReason::Protection));
    }
    let va = va & !(hmm_types::PAGE_SIZE - 1);
    // A guard page faults whatever backs the VMA, before any userfaultfd
    // or backing-specific handling (`handle_pte_marker`). Only a VMA that
    // ever had guards installed can hold one (`VM_MAYBE_GUARD`).
    if vma.flags.contains(VmFlags::MAYBE_GUARD) && crate::ops::is_guard_page(mm, va) {
        return Err(FaultError::Segv(SegvReason::GuardRegion));
    }
    // A userfaultfd range: here the lock cannot be released, so a fault
    // that would have to wait for the handler is SIGBUS
    // (`retry::handle_mm_fault_unlockable` is the path that waits).
    match crate::uffd::verdict(mm, vma, va, flags) {
        crate::uffd::Verdict::Proceed => {}
        crate::uffd::Verdict::Sigbus(why) => return Err(FaultError::Sigbus(why)),
        crate::uffd::Verdict::Wait(..) => {
            return Err(FaultError::Sigbus("userfaultfd fault that may not release the mmap lock"))
        }
    }
    // A private page may be created: it needs an anon_vma first. Private
    // hugetlb has no zero page, so its reads create anonymous pages too.
    let private_page = match vma.backing {
        VmaBacking::Anon | VmaBacking::File(_) => write,
        VmaBacking::Hugetlb(_) => true,
        _ => false,
    };
    if private_page && !vma.flags.is_shared() {
        crate::anon_vma::anon_vma_prepare(mm, vmas, vma);
    }
    // A uffd-wp marker faults as a none entry whose new page is
    // protected (`handle_pte_marker`, `vmf_orig_pte_uffd_wp`).
    let wp_marker = crate::uffd::take_wp_marker(mm, vma, va);
    let done = fault_backing(mm, vmas, vma, va, write);
    if wp_marker {
        crate::uffd::arm_after_marker_fault(mm, va);
    }
    done
}

/// The backing-specific fault on a none or non-present entry.
fn fault_backing(mm: &Mm, vmas: &VmaTree, vma: &Vma, va: u64, write: bool) -> Result<(), FaultError> {
    match &vma.backing {
        VmaBacking::Anon => anon::fault(MmapLocked { mm, vmas }, vma, va, write),
        VmaBacking::File(inode) => match inode.kind() {
            InodeKind::Dax(fs) => dax::fault(MmapLocked { mm, vmas }, vma, inode, fs, va, write),
            InodeKind::PageCache => file::fault(MmapLocked { mm, vmas }, vma, inode, va, write),
        },
        VmaBacking::DevDax(dev) => devdax::fault(mm, vma, dev, va, write),
        VmaBacking::Hugetlb(object) => hugetlb::fault(mm, vma, object, va, write),
        VmaBacking::Pfnmap | VmaBacking::Mixed => {
            Err(FaultError::Sigbus("no page to fault into a VM_PFNMAP/VM_MIXEDMAP mapping"))
        }
    }
}

/// What became of a fault on an entry that is not none.
pub(super) enum Existing {
    /// The access can proceed.
    Done,
    /// The entry changed (or was replaced): look again.
    Retry,
}

/// A fault on a PTE that holds something (`handle_pte_fault` past
/// `pte_none`): a write to a read-only page, a migration entry to wait
/// out, a swap entry to read in, a device-private page to bring back, a
/// device-exclusive entry to restore. Anything else is SIGBUS.
pub(super) fn existing_pte(
    locked: MmapLocked<'_>,
    vma: &Vma,
    slot: hmm_pagetable::Slot<'_>,
    entry: hmm_pagetable::Entry,
    write: bool,
) -> Result<Existing, FaultError> {
    let mm = locked.mm();
    let va = slot.va();
    if entry.is_present() {
        if write && entry.is_write() {
            // `handle_pte_fault` on a writable entry: a write fault (a
            // GUP with FOLL_WRITE, MADV_POPULATE_WRITE) marks it dirty.
            if !entry.is_dirty() {
                let _ = slot.compare_exchange(entry, entry.mkdirty());
            }
            return Ok(Existing::Done);
        }
        let done = !write || wp::pte(mm, vma, slot, entry)?;
        return Ok(if done { Existing::Done } else { Existing::Retry });
    }
    match entry.swap_kind() {
        // `do_swap_page` → `migration_entry_wait`: sleep, then retry.
        _ if crate::migrate::is_migration_entry(entry) => crate::migrate::migration_entry_wait(mm, va),
        Some(hmm_pagetable::SwapKind::Swap) => {
            swap::fault(mm, vma, slot, entry, write)?;
            // A page that came back uffd-wp protected: a write is a WP
            // fault now (`do_swap_page` → `do_wp_page`), which the retried
            // access reports through the userfaultfd verdict.
            if write && entry.is_swp_uffd_wp() && vma.flags.contains(VmFlags::UFFD_WP) {
                return Ok(Existing::Done);
            }
            // One that came back read-write-protected: any access is an
            // RWP fault now (7.3 `do_swap_page` → `do_uffd_rwp`), also
            // reported by the retried access.
            if entry.is_swp_uffd_wp() && vma.flags.contains(VmFlags::UFFD_RWP) {
                return Ok(Existing::Done);
            }
        }
        Some(kind) if kind.is_device_private() => crate::device::to_ram::fault(locked, vma, va, slot, entry)?,
        Some(hmm_pagetable::SwapKind::DeviceExclusive) => crate::device::exclusive::restore(mm, vma, slot, entry),
        Some(hmm_pagetable::SwapKind::Hwpoison) => return Err(FaultError::Hwpoison),
        _ if entry.is_guard_marker() => return Err(FaultError::Segv(SegvReason::GuardRegion)),
        // A UFFDIO_POISON marker: as a poisoned page (`handle_pte_marker`).
        Some(hmm_pagetable::SwapKind::Marker) if crate::uffd::is_poison_marker(entry) => {
            return Err(FaultError::Hwpoison)
        }
        _ => return Err(FaultError::Sigbus("unsupported non-present entry")),
    }
    Ok(Existing::Retry)
}

#[cfg(test)]
mod tests {
    use hmm_pagetable::Level;
    use hmm_types::{Event, MapFlags, Prot, PMD_SIZE};

    use super::FaultFlags;
    use crate::testing::{kernel, leaf, record};
    use crate::{FaultError, MmError, SegvReason, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_write_fault_on_a_writable_clean_entry_dirties_it() {
        // Linux 6.18 (scenarios/corpus/populate_write_dirties_writable_shmem.hmm):
        // a read fault maps shared memory writable and clean; then
        // MADV_POPULATE_WRITE's write fault marks the entry dirty.
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let shared = MapFlags::SHARED.union(MapFlags::ANONYMOUS);
        let va = mm.mmap(0, 4096, Prot::RW, shared).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0);
        let (_, entry) = leaf(&mm, va);
        assert!(entry.is_write() && !entry.is_dirty());
        mm.madvise(va, 4096, hmm_types::MadviseAdvice::PopulateWrite).unwrap();
        assert!(leaf(&mm, va).1.is_dirty());
    }

    #[test]
    fn read_maps_the_zero_page_and_write_copies_it() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0);
        let (level, entry) = leaf(&mm, va);
        assert_eq!((level, entry.pfn(), entry.is_write()), (Level::Pte, k.phys().zero_pfn(), false));
        let rec = record(&mm);
        mm.write_u64(va, 1).unwrap();
        assert_eq!(rec.take_events(), [(Event::Clear, va, va + 4096)], "replacing the zero page is a CLEAR");
        let (_, entry) = leaf(&mm, va);
        assert!(entry.is_write() && entry.pfn() != k.phys().zero_pfn());
    }

    #[test]
    fn first_write_to_a_fresh_page_announces_nothing() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let rec = record(&mm);
        mm.write_u64(va, 1).unwrap();
        assert!(rec.take_events().is_empty());
    }

    #[test]
    fn aligned_ranges_get_the_huge_zero_page_then_a_thp() {
        let k = kernel(64, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.read_u64(va).unwrap();
        let (level, entry) = leaf(&mm, va);
        assert_eq!((level, entry.pfn()), (Level::Pmd, k.phys().huge_zero_pfn()));
        mm.write_u64(va + PMD_SIZE, 3).unwrap();
        let (level, entry) = leaf(&mm, va + PMD_SIZE);
        assert_eq!(level, Level::Pmd);
        assert_eq!(k.phys().folio_order(entry.pfn()), 9);
        let rec = record(&mm);
        mm.write_u64(va + 8, 4).unwrap();
        let events = rec.take_events();
        assert_eq!(events[0], (Event::Clear, va, va + PMD_SIZE), "the huge zero page is split first");
        assert_eq!(leaf(&mm, va).0, Level::Pte);
        assert_eq!(mm.read_u64(va + 8).unwrap(), 4);
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 0);
    }

    #[test]
    fn unaligned_or_disabled_ranges_use_4k_pages() {
        let mm = kernel(64, ThpMode::Madvise).create_mm().unwrap();
        let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 1).unwrap();
        assert_eq!(leaf(&mm, va).0, Level::Pte, "THP only on MADV_HUGEPAGE in madvise mode");
        mm.madvise(va, 2 * PMD_SIZE, hmm_types::MadviseAdvice::HugePage).unwrap();
        mm.write_u64(va + PMD_SIZE, 1).unwrap();
        assert_eq!(leaf(&mm, va + PMD_SIZE).0, Level::Pmd);
    }

    #[test]
    fn permission_faults_are_segv() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let ro = mm.mmap(0, 4096, Prot::READ, ANON).unwrap();
        let none = mm.mmap(0, 4096, Prot::NONE, ANON).unwrap();
        let segv = |addr| MmError::Fault { addr, error: FaultError::Segv(SegvReason::Protection) };
        assert_eq!(mm.write_u64(ro, 1), Err(segv(ro)));
        assert_eq!(mm.read_u64(ro), Ok(0));
        assert_eq!(mm.read_u64(none), Err(segv(none)));
        let guard = mm.mmap_read();
        assert_eq!(
            guard.handle_mm_fault(ro, FaultFlags::WRITE | FaultFlags::REMOTE),
            Err(FaultError::Segv(SegvReason::Protection))
        );
        assert_eq!(guard.handle_mm_fault(0x10, FaultFlags::REMOTE), Err(FaultError::Segv(SegvReason::NotMapped)));
        assert_eq!(guard.handle_mm_fault(ro, FaultFlags::REMOTE), Ok(()));
    }

    #[test]
    fn running_out_of_memory_is_an_error_not_a_panic() {
        let k = kernel(8, ThpMode::Always);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 64 << 20, Prot::RW, ANON).unwrap();
        let mut first_error = None;
        for page in 0..(64 << 20) / 4096 {
            if let Err(e) = mm.write_u64(va + page * 4096, page) {
                first_error = Some(e);
                break;
            }
        }
        assert_eq!(first_error, Some(MmError::NoMem));
        mm.munmap(va, 64 << 20).unwrap();
    }
}
