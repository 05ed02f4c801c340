//! Faults on shared anonymous memory: the page comes from the shmem object
//! (allocated on first touch) and is mapped by reference; a read maps it
//! read-only so the first write is seen (dirty tracking), a write maps it
//! writable and dirty.
//!
//! Linux: `do_read_fault`, `do_shared_fault`, `shmem_fault`.

use hmm_pagetable::{EnsureError, Entry, LeafFlags, Level};

use crate::error::FaultError;
use crate::mm::Mm;
use crate::shmem::ShmemObject;
use crate::vma::Vma;

use super::wp;

pub(super) fn fault(
    mm: &Mm,
    vma: &Vma,
    object: &ShmemObject,
    va: u64,
    write: bool,
) -> Result<(), FaultError> {
    let phys = mm.phys();
    loop {
        let pte = match mm.pgtable().ensure(va, Level::Pte) {
            Ok(slot) => slot,
            Err(EnsureError::NoMem(_)) => return Err(FaultError::Oom),
            Err(EnsureError::Leaf(_)) => {
                return Err(FaultError::Sigbus("huge entry in a shmem mapping"))
            }
        };
        let entry = pte.load();
        if entry.is_present() {
            if !write || entry.is_write() {
                return Ok(());
            }
            if wp::pte(mm, vma, pte, entry)? {
                return Ok(());
            }
            continue;
        }
        if !entry.is_none() {
            return Err(FaultError::Sigbus("unsupported non-present entry in shmem"));
        }
        let pfn = object
            .find_or_create(vma.page_index(va))
            .map_err(|_| FaultError::Oom)?;
        let flags = LeafFlags {
            write,
            dirty: write,
            accessed: true,
            special: false,
        };
        phys.get(pfn);
        phys.map_add(pfn, 1);
        if pte
            .compare_exchange(Entry::NONE, Entry::present(pfn, flags, false))
            .is_ok()
        {
            return Ok(());
        }
        phys.map_sub(pfn, 1);
        phys.put(pfn);
    }
}
