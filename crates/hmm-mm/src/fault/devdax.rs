//! Faults on device-DAX mappings: one leaf of the device's alignment
//! (PUD, PMD or PTE) mapping device frames directly. Beyond the device, or
//! after the device went away, the fault is SIGBUS.
//!
//! Linux: `drivers/dax/device.c` (`__dev_dax_pud_fault`,
//! `__dev_dax_pmd_fault`, `__dev_dax_pte_fault`).

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};

use crate::devdax::DevDax;
use crate::error::FaultError;
use crate::mm::Mm;
use crate::vma::Vma;

pub(super) fn fault(mm: &Mm, vma: &Vma, dev: &DevDax, va: u64, write: bool) -> Result<(), FaultError> {
    if !dev.pagemap().is_alive() {
        return Err(FaultError::Sigbus("the device-dax device is gone"));
    }
    let level = Level::for_size(dev.align());
    let size = level.entry_bytes();
    let start = va & !(size - 1);
    let pfn = dev
        .pfn_at(vma.page_index(start) * hmm_types::PAGE_SIZE)
        .ok_or(FaultError::Sigbus("access beyond the device"))?;
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
        let new =
            Entry::present(pfn, LeafFlags { write, dirty: write, accessed: true, special: false }, level > Level::Pte);
        phys.get(pfn);
        phys.map_add(pfn, 1);
        if slot.compare_exchange(Entry::NONE, new).is_ok() {
            return Ok(());
        }
        phys.map_sub(pfn, 1);
        phys.put(pfn);
    }
}
