//! Faults on hugetlbfs mappings: whole huge pages (a PMD or PUD leaf), never
//! split. A shared mapping maps the object's page; a private one gets its
//! own page, read-only until written, and a write to a page shared after
//! fork copies the whole huge page (a CLEAR invalidation of it). An empty
//! pool is SIGBUS.
//!
//! Linux: `mm/hugetlb.c` (`hugetlb_fault`, `hugetlb_no_page`, `hugetlb_wp`).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};
use hmm_types::{Event, VmFlags};

use crate::error::FaultError;
use crate::hugetlb::HugetlbFile;
use crate::mm::Mm;
use crate::vma::Vma;
use crate::zap::{release_entry, Gather};

pub(super) fn fault(mm: &Mm, vma: &Vma, object: &HugetlbFile, va: u64, write: bool) -> Result<(), FaultError> {
    let phys = mm.phys();
    let size = object.page_size();
    let level = Level::for_size(size);
    let start = va & !(size.bytes() - 1);
    let shared = vma.flags.is_shared();
    let empty = FaultError::Sigbus("the hugetlb pool is empty");
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
            let exclusive = phys.folio_counts(entry.pfn()) == (1, 1);
            if shared || exclusive {
                if slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok() {
                    return Ok(());
                }
                continue;
            }
            let copy = object.alloc().map_err(|_| empty)?;
            phys.copy_frames(copy, entry.pfn(), size.nr_pages());
            phys.map_add(copy, 1);
            let new =
                Entry::present(copy, LeafFlags { write: true, dirty: true, accessed: true, special: false }, true);
            let invalidation = mm.notifiers().start(mm.id(), start, start + size.bytes(), Event::Clear);
            let mut gather = Gather::new();
            if slot.compare_exchange(entry, new).is_ok() {
                release_entry(phys, entry, &mut gather);
            } else {
                phys.map_sub(copy, 1);
                gather.push(copy);
            }
            gather.free_after(phys, invalidation);
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
        let page = if shared { object.shared_page(index) } else { object.alloc() }.map_err(|_| empty)?;
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
