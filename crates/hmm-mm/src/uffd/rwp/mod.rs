//! Read-write-protect mode (Linux 7.3, `UFFDIO_REGISTER_MODE_RWP`): a
//! handler takes every access, read or write, to chosen pages away and
//! learns of the next one. A protected page stays mapped, as a PROT_NONE
//! leaf carrying the uffd bit ([`Entry::is_uffd_rwp`]: the bit WP mode
//! uses, which is why one VMA cannot have both modes); the bit tells it
//! apart from an mprotect(PROT_NONE) leaf.
//!
//! - `UFFDIO_RWPROTECT` ([`Userfaultfd::rwprotect`]) protects the present
//!   pages of an RWP-registered range (none entries stay none) or resolves
//!   them, waking the faults waiting there;
//! - an access to a protected page is an RWP fault (`wait.rs` asks
//!   [`is_rwp_fault`]): a PAGEFAULT message with `UFFD_PAGEFAULT_FLAG_RWP`
//!   (and `WRITE` for a write) and a wait, or, with
//!   `UFFD_FEATURE_RWP_ASYNC`, resolved in the fault ([`resolve_in_fault`]);
//! - `UFFDIO_SET_MODE` ([`Userfaultfd::set_mode`]) turns `RWP_ASYNC` on or
//!   off at run time;
//! - unregistering or closing resolves every protected page (`register.rs`
//!   calls [`resolve_range`]); a fork child or an mremap destination,
//!   which lose the registration, get the page accessible again
//!   ([`unregistered`]); mprotect keeps the protection (`ops/mprotect.rs`).
//!
//! HMM sees a protected page as a PROT_NONE leaf (cpu flags 0): a snapshot
//! reports 0; a requested fault is the RWP fault, which the locked
//! `range_fault` (no `ALLOW_RETRY`) gets as SIGBUS (`EFAULT`) and the
//! unlocked one waits for.
//!
//! On hugetlb memory (7.3.4 allows it) RWPROTECT goes in whole huge pages
//! (`EINVAL` otherwise) and a fault is reported at the huge page.
//!
//! Swap (7.3): a protected anonymous page swapped out keeps the uffd bit in
//! its swap entry (the uffd-wp one, `pte_swp_uffd`; pagemap shows
//! `PM_UFFD_WP` there), RWPROTECT sets or clears it on swap entries, and
//! swap-in in an RWP VMA maps the page protected again (`fault/swap.rs`),
//! so the access takes the RWP fault. A fork child keeps the bit only with
//! EVENT_FORK (`ops/fork.rs`), an mremap destination only with EVENT_REMAP;
//! unregistering clears it. Neither the host nor the guest has swap: the
//! unit tests (`tests.rs`) state the 7.3 code, not a run.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`userfaultfd_rwprotect`,
//! `userfaultfd_set_mode`), `mm/memory.c` (`do_uffd_rwp`), `mm/mprotect.c`
//! (`change_pte_range` with `MM_CP_UFFD_RWP`, `MM_CP_UFFD_RWP_RESOLVE`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, Slot, Visit};
use hmm_types::VmFlags;

use super::{check_range, UffdError, Userfaultfd};
use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::vma::Vma;

/// `UFFD_FEATURE_RWP`: the RWP registration mode.
pub const UFFD_FEATURE_RWP: u64 = 1 << 17;
/// `UFFD_FEATURE_RWP_ASYNC`: RWP faults are resolved by the kernel, with
/// no message (needs `UFFD_FEATURE_RWP`).
pub const UFFD_FEATURE_RWP_ASYNC: u64 = 1 << 18;
/// `UFFD_PAGEFAULT_FLAG_RWP`: an access to a read-write-protected page.
pub const UFFD_PAGEFAULT_FLAG_RWP: u64 = 1 << 3;
/// `UFFDIO_RWPROTECT_MODE_RWP`: protect (clear: resolve).
pub const UFFDIO_RWPROTECT_MODE_RWP: u64 = 1 << 0;
/// `UFFDIO_RWPROTECT_MODE_DONTWAKE`: resolve without waking.
pub const UFFDIO_RWPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
/// The features `UFFDIO_SET_MODE` may turn on or off.
const TOGGLEABLE: u64 = UFFD_FEATURE_RWP_ASYNC;

impl Userfaultfd {
    /// `UFFDIO_RWPROTECT`: with `RWP`, protects the present pages of
    /// `[start, start + len)`; without, resolves the protected ones and
    /// wakes this userfaultfd's faults waiting there (unless `DONTWAKE`).
    /// Every VMA met must be registered in RWP mode (`ENOENT`, also for a
    /// range with no VMA), with any userfaultfd: 7.3.4 checks the VMA's
    /// flag, not whose registration it is (`userfaultfd_rwp(vma)`);
    /// `RWP|DONTWAKE` and unknown bits are `EINVAL`.
    pub fn rwprotect(&self, start: u64, len: u64, mode: u64) -> Result<(), UffdError> {
        self.features()?;
        if mode & !(UFFDIO_RWPROTECT_MODE_RWP | UFFDIO_RWPROTECT_MODE_DONTWAKE) != 0 {
            return Err(UffdError::Invalid("unknown UFFDIO_RWPROTECT mode"));
        }
        let protect = mode & UFFDIO_RWPROTECT_MODE_RWP != 0;
        if protect && mode & UFFDIO_RWPROTECT_MODE_DONTWAKE != 0 {
            return Err(UffdError::Invalid("UFFDIO_RWPROTECT_MODE_DONTWAKE only goes with resolving"));
        }
        let end = check_range(start, len)?;
        let mm = self.mm()?;
        {
            let guard = mm.mmap_read();
            let mut chunks = Vec::new();
            for vma in guard.overlapping(start, end) {
                if !vma.flags.contains(VmFlags::UFFD_RWP) {
                    return Err(UffdError::NoEntry("the range is not registered for RWP"));
                }
                // hugetlb goes in whole huge pages (EINVAL on the 7.3.4
                // guest for a range of one base page).
                let huge = super::hugetlb::huge_page(vma);
                if huge.is_some_and(|(size, _)| start & (size - 1) != 0 || len & (size - 1) != 0) {
                    return Err(UffdError::Invalid("hugetlb range not aligned to the huge page size"));
                }
                chunks.push((vma.start.max(start), vma.end.min(end), vma.flags));
            }
            if chunks.is_empty() {
                return Err(UffdError::NoEntry("no mapping in the range"));
            }
            // A huge leaf only partly in the range is split first
            // (`change_pmd_range`), so only the pages asked for change; a
            // hugetlb edge is huge-aligned already.
            for edge in [start, end] {
                let hugetlb = guard.vma(edge).and_then(super::hugetlb::huge_page).is_some();
                if !hugetlb {
                    crate::huge::split_huge_at(&mm, edge).map_err(|_| UffdError::NoMem)?;
                }
            }
            for (s, e, vma_flags) in chunks {
                if protect {
                    super::wp::change_range(&mm, s, e, Entry::mkuffd_rwp);
                    // A swapped-out page is protected by the swap entry's
                    // uffd bit (7.3 `change_pte_range`).
                    super::wp::change_swap_entries(&mm, s, e, Entry::swp_mkuffd_wp);
                } else {
                    resolve_range(&mm, vma_flags, s, e);
                }
            }
        }
        if !protect && mode & UFFDIO_RWPROTECT_MODE_DONTWAKE == 0 {
            self.ctx.wake_range(start, end);
        }
        Ok(())
    }

    /// `UFFDIO_SET_MODE`: turns the features in `enable` on and those in
    /// `disable` off. Only `RWP_ASYNC` may be toggled, the two sets may not
    /// overlap, and enabling needs `RWP` negotiated (each `EINVAL`). Taken
    /// under the mmap write lock, so every fault decides under one mode;
    /// going asynchronous wakes every waiting fault of this userfaultfd:
    /// RWP faults retry and resolve themselves, others wait again.
    pub fn set_mode(&self, enable: u64, disable: u64) -> Result<(), UffdError> {
        let negotiated = self.features()?;
        if (enable | disable) & !TOGGLEABLE != 0 {
            return Err(UffdError::Invalid("only UFFD_FEATURE_RWP_ASYNC can be toggled"));
        }
        if enable & disable != 0 {
            return Err(UffdError::Invalid("a feature is both enabled and disabled"));
        }
        if enable & UFFD_FEATURE_RWP_ASYNC != 0 && negotiated & UFFD_FEATURE_RWP == 0 {
            return Err(UffdError::Invalid("UFFD_FEATURE_RWP_ASYNC needs UFFD_FEATURE_RWP"));
        }
        let mm = self.mm()?;
        let _serialized = mm.mmap_write();
        let mut state = self.ctx.lock();
        let was_async = negotiated & UFFD_FEATURE_RWP_ASYNC != 0;
        let features = (negotiated | enable) & !disable;
        state.features = Some(features);
        drop(state);
        if !was_async && features & UFFD_FEATURE_RWP_ASYNC != 0 {
            // Every waiting fault retries, whatever its kind: a MISSING
            // fault queues its message again (as on 7.3.4).
            self.ctx.wake_range(0, u64::MAX);
        }
        Ok(())
    }
}

/// The registration checks RWP adds (`userfaultfd_register`): the mode
/// needs `UFFD_FEATURE_RWP` negotiated, cannot go with WP (both use the
/// uffd bit), and a VMA that cannot be accessed (PROT_NONE) cannot take
/// it (each `EINVAL`). `vma` is `None` for the checks of the mode alone.
pub(crate) fn check_register(mode: u64, features: u64, vma: Option<&Vma>) -> Result<(), UffdError> {
    use super::{UFFDIO_REGISTER_MODE_RWP as RWP, UFFDIO_REGISTER_MODE_WP as WP};
    if mode & RWP != 0 && features & UFFD_FEATURE_RWP == 0 {
        return Err(UffdError::Invalid("RWP mode needs UFFD_FEATURE_RWP negotiated"));
    }
    if mode & (RWP | WP) == RWP | WP {
        return Err(UffdError::Invalid("RWP and WP modes cannot be combined (they share the uffd bit)"));
    }
    match vma {
        Some(vma) if mode & RWP != 0 && !vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC) => {
            Err(UffdError::Invalid("RWP mode needs an accessible mapping (this one is PROT_NONE)"))
        }
        _ => Ok(()),
    }
}

/// Linux 7.3: registering a VMA of this context again may not drop a mode
/// that puts bits in its entries (WP, RWP): `EBUSY`, unregister first
/// (older kernels replaced the modes).
pub(crate) fn check_reregister(vma: &Vma, vm_flags: VmFlags) -> Result<(), UffdError> {
    let marking = vma.flags & (VmFlags::UFFD_WP | VmFlags::UFFD_RWP);
    if vma.uffd.is_some() && !vm_flags.contains(marking) {
        return Err(UffdError::Busy);
    }
    Ok(())
}

/// Whether a fault in `vma` on `entry` is an RWP fault: the VMA is
/// registered for RWP and the leaf is protected (`userfaultfd_pte_rwp`).
pub(crate) fn is_rwp_fault(vma: &Vma, entry: Entry) -> bool {
    entry.is_uffd_rwp() && vma.flags.contains(VmFlags::UFFD_RWP)
}

/// The protection resolved: the uffd bit and PROT_NONE gone (unless the
/// VMA itself is PROT_NONE now), WRITE back where the VMA allows writing
/// without a fault (shared, or the only mapping of an anonymous page:
/// `can_change_pte_writable`).
fn resolved(mm: &Mm, vma_flags: VmFlags, entry: Entry) -> Entry {
    let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
    let mut new = entry.clear_uffd_rwp();
    if !vma_flags.intersects(access) {
        return new.mkprotnone();
    }
    if vma_flags.contains(VmFlags::WRITE) && !entry.is_special() {
        let phys = mm.phys();
        let exclusive = || {
            phys.is_ram(entry.pfn())
                && phys.meta(phys.folio_head(entry.pfn())).flags().contains(PageFlags::ANON_EXCLUSIVE)
        };
        if vma_flags.is_shared() || exclusive() {
            new = new.mkwrite();
        }
    }
    new
}

/// Resolves every protected leaf of `[start, end)` in a VMA with flags
/// `vma_flags`, inside a PROTECTION_VMA invalidation when there is any,
/// and clears the uffd bit of its swap entries (no invalidation).
pub(crate) fn resolve_range(mm: &Mm, vma_flags: VmFlags, start: u64, end: u64) {
    super::wp::change_swap_entries(mm, start, end, Entry::swp_clear_uffd_wp);
    let any = mm
        .pgtable()
        .walk(start, end, |visit| match visit {
            Visit::Slot { entry, .. } if entry.is_uffd_rwp() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break();
    if any {
        super::wp::change_range(mm, start, end, |entry| {
            if entry.is_uffd_rwp() {
                resolved(mm, vma_flags, entry)
            } else {
                entry
            }
        });
    }
}

/// `UFFD_FEATURE_RWP_ASYNC`: the fault resolves the protection of `slot`
/// itself, with no invalidation (the entry only gains rights), and the
/// access proceeds. A lost race means someone else changed the entry; the
/// fault then looks again.
pub(crate) fn resolve_in_fault(mm: &Mm, vma: &Vma, slot: Slot<'_>, entry: Entry) {
    let _ = slot.compare_exchange(entry, resolved(mm, vma.flags, entry));
}

/// A fork child's or an mremap destination's copy of an RWP range that
/// did not keep the registration (`had` the old VMA's flags, `now` the new
/// one's): its entries lost the uffd bit on the way, and the pages that
/// were protected become accessible again (`copy_present_pte`,
/// `move_ptes` restore `vm_page_prot`). In an accessible VMA only RWP makes
/// a PROT_NONE leaf, so every such leaf of the range was one. Only rights
/// are gained: no invalidation.
pub(crate) fn disarm_unregistered(mm: &Mm, had: VmFlags, now: VmFlags, start: u64, end: u64) {
    let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
    if !had.contains(VmFlags::UFFD_RWP) || now.contains(VmFlags::UFFD_RWP) || !now.intersects(access) {
        return;
    }
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, mut entry } = visit {
            while entry.is_protnone() {
                match slot.compare_exchange(entry, entry.clear_uffd_rwp()) {
                    Ok(_) => break,
                    Err(now) => entry = now,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod swap_tests;
