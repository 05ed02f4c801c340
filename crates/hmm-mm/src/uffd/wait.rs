//! The fault side of userfaultfd (`handle_userfault`): decide whether a
//! fault in a registered range must go to the handler (MISSING: no entry
//! and, for shmem, no page in the page cache; MINOR: no entry but a cached
//! page; WP: a write to a page with the uffd-wp bit; RWP: any access to
//! a read-write-protected page, `rwp.rs`), and if so queue a message and
//! sleep with the mmap lock released until a COPY, ZEROPAGE, CONTINUE,
//! WRITEPROTECT, RWPROTECT, WAKE, UNREGISTER or close covers the page, or
//! a fatal signal arrives. `UFFD_FEATURE_WP_ASYNC` resolves a WP fault in
//! place instead, `UFFD_FEATURE_RWP_ASYNC` an RWP fault.
//!
//! A fault that may not release the lock (no `FAULT_FLAG_ALLOW_RETRY`:
//! the locked `hmm::range_fault`, GUP under the caller's mmap lock such as
//! `Mm::pin_user_pages`; the unlocked GUP calls and the kernel's copies
//! from and to user memory wait), a context created with
//! `UFFD_FEATURE_SIGBUS`, and a non-user fault on a `UFFD_USER_MODE_ONLY`
//! context get SIGBUS at once, with no message queued.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`handle_userfault`,
//! `userfaultfd_must_wait`), reached from `do_anonymous_page`.

use std::sync::Arc;

use hmm_types::{VmFlags, PAGE_SIZE};

use super::{
    UffdCtx, UffdMsg, Waiter, UFFD_FEATURE_EXACT_ADDRESS, UFFD_FEATURE_SIGBUS, UFFD_FEATURE_WP_ASYNC,
    UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE,
};
use crate::fault::FaultFlags;
use crate::mm::{Mm, MmapReadGuard};
use crate::vma::Vma;

/// What a fault in `vma` must do about userfaultfd.
pub(crate) enum Verdict {
    /// Not a userfaultfd fault: handle it normally.
    Proceed,
    /// `VM_FAULT_SIGBUS`, no message.
    Sigbus(&'static str),
    /// Queue a message with these `UFFD_PAGEFAULT_FLAG_*` reason bits
    /// (`WP` or `MINOR`, none for MISSING) and wait for the handler (needs
    /// ALLOW_RETRY).
    Wait(Arc<UffdCtx>, u64),
}

/// Decides, under the mmap lock. MISSING mode fires on an address with no
/// entry at any level (and, for shmem, no page in the page cache); MINOR
/// on no entry with a cached page; WP on a write to a present page with
/// the uffd-wp bit; RWP on any access to a protected page. The only side
/// effects are the async modes': WP_ASYNC clears the bit, RWP_ASYNC
/// resolves the protection.
pub(crate) fn verdict(mm: &Mm, vma: &Vma, va: u64, flags: FaultFlags) -> Verdict {
    let Some(binding) = &vma.uffd else { return Verdict::Proceed };
    let slot = mm.pgtable().find(va);
    let entry = slot.load();
    // A uffd-wp marker is a none entry to MISSING and MINOR
    // (`pte_none_mostly`).
    let reason = if entry.is_none() || super::wp::is_wp_marker(entry) {
        let cached = super::minor::is_cached(vma, va);
        if vma.flags.contains(VmFlags::UFFD_MISSING) && !cached {
            0
        } else if vma.flags.contains(VmFlags::UFFD_MINOR) && cached {
            UFFD_PAGEFAULT_FLAG_MINOR
        } else {
            return Verdict::Proceed;
        }
    } else if super::rwp::is_rwp_fault(vma, entry) {
        super::rwp::UFFD_PAGEFAULT_FLAG_RWP
    } else if flags.contains(FaultFlags::WRITE) && entry.is_uffd_wp() && vma.flags.contains(VmFlags::UFFD_WP) {
        UFFD_PAGEFAULT_FLAG_WP
    } else {
        return Verdict::Proceed;
    };
    let ctx = &binding.0;
    let features = ctx.lock().features.unwrap_or(0);
    if reason == UFFD_PAGEFAULT_FLAG_WP && features & UFFD_FEATURE_WP_ASYNC != 0 {
        // Resolved in the fault: the bit goes, the write fault proceeds.
        let _ = slot.compare_exchange(entry, entry.clear_uffd_wp());
        return Verdict::Proceed;
    }
    if reason == super::rwp::UFFD_PAGEFAULT_FLAG_RWP && features & super::rwp::UFFD_FEATURE_RWP_ASYNC != 0 {
        super::rwp::resolve_in_fault(mm, vma, slot, entry);
        return Verdict::Proceed;
    }
    if features & UFFD_FEATURE_SIGBUS != 0 {
        return Verdict::Sigbus("userfaultfd with UFFD_FEATURE_SIGBUS");
    }
    if ctx.user_mode_only && !flags.contains(FaultFlags::USER) {
        return Verdict::Sigbus("userfaultfd is UFFD_USER_MODE_ONLY and the fault is not from user mode");
    }
    if !flags.contains(FaultFlags::ALLOW_RETRY) {
        return Verdict::Sigbus("userfaultfd fault that may not release the mmap lock");
    }
    Verdict::Wait(ctx.clone(), reason)
}

/// Queues the PAGEFAULT message (while the mmap read lock is still held,
/// as Linux does), then sleeps with the lock released until the page is
/// woken, the context is closed, or (KILLABLE) a fatal signal is pending.
/// Returns with the lock taken again; the caller must look everything up
/// afresh (`VM_FAULT_RETRY`).
pub(crate) fn wait_for_handler(
    guard: &mut MmapReadGuard<'_>,
    ctx: Arc<UffdCtx>,
    reason: u64,
    va: u64,
    flags: FaultFlags,
) {
    // A hugetlb fault is reported at its huge page (`hugetlb_fault`), or
    // with EXACT_ADDRESS at its base page: the 7.3.4 guest reports a read
    // of offset 0x1008 as 0x1000 (scenarios/device/uffd_hugetlb_shared.hmm).
    let huge = guard.vma(va).and_then(super::hugetlb::huge_size);
    let page = va & !(huge.unwrap_or(PAGE_SIZE) - 1);
    let exact_va = if huge.is_some() { va & !(PAGE_SIZE - 1) } else { va };
    let probe = super::probe::current();
    let id = {
        let mut state = ctx.lock();
        let exact = state.features.unwrap_or(0) & UFFD_FEATURE_EXACT_ADDRESS != 0;
        let msg = UffdMsg::pagefault(
            reason | if flags.contains(FaultFlags::WRITE) { UFFD_PAGEFAULT_FLAG_WRITE } else { 0 },
            if exact { exact_va } else { page },
        );
        let id = state.next_id;
        state.next_id += 1;
        state.pending.push_back((id, msg));
        state.waiting.push(Waiter { id, page, probe: probe.clone() });
        ctx.readers.notify_all();
        id
    };
    let mm = guard.mm();
    let killable = flags.contains(FaultFlags::KILLABLE);
    guard.unlocked(|| {
        let mut state = ctx.lock();
        // Set under the lock only while still waiting: a wake (which
        // clears it) may come before this thread first sleeps.
        while !state.released && state.waiting.iter().any(|w| w.id == id) {
            probe.set(true);
            if killable && mm.fatal_signal_pending() {
                state.waiting.retain(|w| w.id != id);
                state.pending.retain(|(i, _)| *i != id);
                break;
            }
            state = ctx.faults.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        probe.set(false);
    });
}
