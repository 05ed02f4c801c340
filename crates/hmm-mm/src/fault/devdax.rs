//! Faults on device-DAX mappings: one leaf of the device's alignment
//! (PUD, PMD or PTE) mapping device frames directly. Beyond the device, or
//! after the device went away, the fault is SIGBUS.
//!
//! MADV_NOHUGEPAGE on a device aligned above 4K makes every fault SIGBUS,
//! and so does a VMA whose start or end is off the device's alignment.
//!
//! Linux: `drivers/dax/device.c` (`__dev_dax_pud_fault`,
//! `__dev_dax_pmd_fault`, `__dev_dax_pte_fault`).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};

use hmm_types::{PageSize, VmFlags, PAGE_SIZE};

use crate::devdax::DevDax;
use crate::error::FaultError;
use crate::mm::Mm;
use crate::vma::Vma;

pub(super) fn fault(mm: &Mm, vma: &Vma, dev: &DevDax, va: u64, write: bool) -> Result<(), FaultError> {
    if !dev.pagemap().is_alive() {
        return Err(FaultError::Sigbus("the device-dax device is gone"));
    }
    // `check_vma`, on every fault: a VMA whose ends left the device's
    // alignment (grown in place by mremap, or a boundary moved by a merge)
    // faults nowhere, not even in its aligned units (7.3.4 guest).
    let align = dev.align().bytes();
    if vma.start % align != 0 || vma.end % align != 0 {
        return Err(FaultError::Sigbus("device-dax VMA ends off the device's alignment"));
    }
    // MADV_NOHUGEPAGE leaves only the PTE fault, which a device aligned
    // above 4K refuses (`__dev_dax_pte_fault`).
    if vma.flags.contains(VmFlags::NOHUGEPAGE) && dev.align() != PageSize::Size4K {
        return Err(FaultError::Sigbus("device-dax alignment above the 4K fault size (MADV_NOHUGEPAGE)"));
    }
    let level = Level::for_size(dev.align());
    let size = level.entry_bytes();
    let start = va & !(size - 1);
    // The unit's folio is mapped whole from its head, even where the
    // mapping's offset is not aligned (`vmf_insert_folio_pmd` of the folio
    // holding the offset).
    let offset = vma.page_index(start) * PAGE_SIZE;
    let pfn = dev.pfn_at(offset & !(size - 1)).ok_or(FaultError::Sigbus("access beyond the device"))?;
    if offset + size > dev.size() {
        return Err(FaultError::Sigbus("access beyond the device"));
    }
    let phys = mm.phys();
    loop {
        let slot = match mm.pgtable().ensure(va, level) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(_)) => return Err(FaultError::Sigbus("a larger leaf maps device-dax memory")),
        };
        let entry = slot.load();
        if entry.is_leaf(level) {
            if !write || entry.is_write() {
                return Ok(());
            }
            if slot.compare_exchange(entry, entry.mkwrite().mkdirty()).is_ok() {
                return Ok(());
            }
            continue;
        }
        if !entry.is_none() {
            return Err(FaultError::Sigbus("device-dax memory mapped at a smaller size"));
        }
        // No write notification (no mkwrite hooks): the leaf takes the
        // VMA's protection, writable in a writable mapping even on a read
        // fault (insert_pmd from vm_page_prot); dirty only on a write.
        let writable = write || vma.flags.contains(VmFlags::WRITE);
        let flags = LeafFlags { write: writable, dirty: write, accessed: true, special: false };
        let new = Entry::present(pfn, flags, level > Level::Pte);
        phys.get(pfn);
        phys.map_add(pfn, 1);
        if slot.compare_exchange(Entry::NONE, new).is_ok() {
            return Ok(());
        }
        phys.map_sub(pfn, 1);
        phys.put(pfn);
    }
}
