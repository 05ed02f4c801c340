//! Faults on swap entries: the page comes back from its swap slot into a
//! fresh frame. It is mapped writable when the VMA is writable and this
//! entry was the slot's only user (nobody else can see the copy); otherwise
//! read-only, so a later write goes through `wp.rs`. The entry's use of the
//! slot is dropped, which frees the slot with its last user.
//!
//! The slot is read and the entry replaced under the swap area lock: a slot
//! is freed and reused only under that lock, so an entry still naming it
//! proves the data belongs to it. Concurrent faults on one entry race on
//! the compare-and-swap; the loser frees its frame and retries. A swap
//! entry's uffd bit goes back on the page: write-protected, or, in an
//! RWP-registered VMA, read-write-protected (Linux 7.3).
//!
//! Linux: `do_swap_page`, `swap_read_folio`, `swap_free`.

use hmm_pagetable::{Entry, LeafFlags, Slot};
use hmm_types::VmFlags;

use crate::error::FaultError;
use crate::mm::Mm;
use crate::phys::PageFlags;
use crate::vma::Vma;

/// Swaps in the page of the swap entry `entry` held by the PTE `pte`.
/// `Ok(())` means the caller looks at the entry again (it was replaced, by
/// this fault or another).
pub(super) fn fault(mm: &Mm, vma: &Vma, pte: Slot<'_>, entry: Entry, write: bool) -> Result<(), FaultError> {
    let phys = mm.phys();
    let offset = entry.pfn().0;
    let page = phys.alloc_folio(0, false).map_err(|_| FaultError::Oom)?;
    let swap = mm.kernel().swap();
    let mut slots = swap.lock();
    let Some(data) = slots.data(offset) else {
        drop(slots);
        phys.put(page);
        // A freed slot means the entry changed meanwhile.
        return if pte.load() == entry { Err(FaultError::Sigbus("swap entry names a free slot")) } else { Ok(()) };
    };
    phys.write(page, 0, data);
    let exclusive = slots.count(offset) == 1;
    // The copy on swap goes away with the slot: the page is dirty.
    let mut flags = PageFlags::ANON | PageFlags::SWAPBACKED | PageFlags::UPTODATE | PageFlags::DIRTY;
    if exclusive {
        flags |= PageFlags::ANON_EXCLUSIVE;
    }
    phys.meta(page).set_flags(flags);
    crate::rmap::folio_add_new_anon_rmap(mm, vma, page, pte.va());
    // A uffd-wp swap entry comes back protected (`do_swap_page`), so a
    // write then takes the WP fault; it is not made writable while the
    // VMA is WP-registered (`userfaultfd_pte_wp`).
    // In an RWP-registered VMA the bit means read-write-protected: the
    // page comes back PROT_NONE with the bit (7.3 `do_swap_page`), so the
    // access then takes the RWP fault.
    let uffd_wp = entry.is_swp_uffd_wp();
    let rwp = uffd_wp && vma.flags.contains(VmFlags::UFFD_RWP);
    let protected = uffd_wp && vma.flags.intersects(VmFlags::UFFD_WP | VmFlags::UFFD_RWP);
    let writable = exclusive && vma.flags.contains(VmFlags::WRITE) && !protected;
    let leaf = LeafFlags { write: writable, dirty: writable && write, accessed: true, special: false };
    let mut new = Entry::present(page, leaf, false);
    if rwp {
        new = new.mkuffd_rwp();
    } else if uffd_wp {
        new = new.mkuffd_wp();
        if writable {
            new = new.mkwrite();
        }
    }
    phys.map_add(page, 1);
    if pte.compare_exchange(entry, new).is_ok() {
        slots.put(offset);
        drop(slots);
        swap.count_in();
        return Ok(());
    }
    drop(slots);
    phys.map_sub(page, 1);
    phys.put(page);
    Ok(())
}
