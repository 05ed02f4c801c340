//! Faults on hugetlbfs mappings: whole huge pages (a PMD or PUD leaf), never
//! split. A shared mapping maps the object's page; a private one gets its
//! own page, read-only until written, and a write to a page shared after
//! fork copies the whole huge page (a CLEAR invalidation of it). An empty
//! pool is SIGBUS. A private huge page is the process's own when it is
//! mapped once (`hugetlb_wp` judges by mapcount alone, whatever pins or
//! other references it holds): a write reuses it, an unshare fault (a
//! read-only pin) leaves it; one mapped by another process too is copied.
//!
//! Linux: `mm/hugetlb.c` (`hugetlb_fault`, `hugetlb_no_page`, `hugetlb_wp`).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level, Slot};
use hmm_types::{Event, VmFlags};

use crate::error::FaultError;
use crate::hugetlb::HugetlbFile;
use crate::mm::Mm;
use crate::vma::Vma;
use crate::zap::{release_entry, Gather};

const EMPTY_POOL: FaultError = FaultError::Sigbus("the hugetlb pool is empty");

pub(super) fn fault(mm: &Mm, vma: &Vma, object: &HugetlbFile, va: u64, write: bool) -> Result<(), FaultError> {
    let phys = mm.phys();
    let size = object.page_size();
    let level = Level::for_size(size);
    let start = va & !(size.bytes() - 1);
    let shared = vma.flags.is_shared();
    loop {
        let slot = match mm.pgtable().ensure(va, level) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(_)) => return Err(FaultError::Sigbus("a larger leaf maps hugetlb memory")),
        };
        let entry = slot.load();
        if entry.is_present() {
            if !write || entry.is_write() {
                return Ok(());
            }
            if shared || mapped_once(mm, entry) {
                if slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok() {
                    return Ok(());
                }
                continue;
            }
            replace_with_copy(mm, object, slot, entry, start, true)?;
            continue;
        }
        if crate::uffd::is_poison_marker(entry) {
            // A UFFDIO_POISON marker (`hugetlb_fault`: VM_FAULT_HWPOISON_LARGE).
            return Err(FaultError::Hwpoison);
        }
        if !entry.is_none() {
            return Err(FaultError::Sigbus("unsupported non-present hugetlb entry"));
        }
        let index = vma.page_index(start) / size.nr_pages();
        let page = if shared { object.shared_page(index) } else { object.alloc() }.map_err(|_| EMPTY_POOL)?;
        let writable = vma.flags.contains(VmFlags::WRITE) && (shared || write);
        let new =
            Entry::present(page, LeafFlags { write: writable, dirty: write, accessed: true, special: false }, true);
        phys.map_add(page, 1);
        if slot.compare_exchange(Entry::NONE, new).is_ok() {
            return Ok(());
        }
        phys.map_sub(page, 1);
        phys.put(page);
    }
}

/// An unshare fault at `va` (`hugetlb_wp` with FAULT_FLAG_UNSHARE): a
/// private huge page mapped by another process too is copied behind a
/// read-only, clean entry (its uffd-wp bit kept), so a read-only pin never
/// shares a page a later write would replace; one mapped only here stays.
/// Shared mappings have nothing to unshare, and a missing entry is left to
/// the caller's next fault.
pub(super) fn unshare(mm: &Mm, vma: &Vma, object: &HugetlbFile, va: u64) -> Result<(), FaultError> {
    let size = object.page_size();
    let start = va & !(size.bytes() - 1);
    loop {
        let slot = match mm.pgtable().ensure(va, Level::for_size(size)) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(_)) => return Ok(()),
        };
        let entry = slot.load();
        if vma.flags.is_shared() || !entry.is_present() || mapped_once(mm, entry) {
            return Ok(());
        }
        if replace_with_copy(mm, object, slot, entry, start, false)? {
            return Ok(());
        }
    }
}

/// The huge page behind `entry` is mapped by this entry alone.
fn mapped_once(mm: &Mm, entry: Entry) -> bool {
    mm.phys().folio_counts(entry.pfn()).1 == 1
}

/// Replaces the private huge page behind `entry` at `start` with a copy
/// from `object`'s pool, writable and dirty for a write fault, read-only
/// and clean for an unshare fault; false when the entry changed meanwhile.
fn replace_with_copy(
    mm: &Mm,
    object: &HugetlbFile,
    slot: Slot<'_>,
    entry: Entry,
    start: u64,
    write: bool,
) -> Result<bool, FaultError> {
    let phys = mm.phys();
    let size = object.page_size();
    let copy = object.alloc().map_err(|_| EMPTY_POOL)?;
    phys.copy_frames(copy, entry.pfn(), size.nr_pages());
    phys.map_add(copy, 1);
    let new = Entry::present(copy, LeafFlags { write, dirty: write, accessed: true, special: false }, true);
    let new = if !write && entry.is_uffd_wp() { new.mkuffd_wp() } else { new };
    let invalidation = mm.notifiers().start(mm.id(), start, start + size.bytes(), Event::Clear);
    let mut gather = Gather::new();
    let replaced = slot.compare_exchange(entry, new).is_ok();
    if replaced {
        release_entry(phys, entry, &mut gather);
    } else {
        phys.map_sub(copy, 1);
        gather.push(copy);
    }
    gather.free_after(phys, invalidation);
    Ok(replaced)
}
