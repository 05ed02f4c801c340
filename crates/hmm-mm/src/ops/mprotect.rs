//! mprotect: change the protection of whole pages, announced as
//! PROTECTION_VMA for every changed VMA range that has entries.
//!
//! Write permission is only ever removed from entries here; a later write
//! fault grants it back (reuse or COW), as Linux does for private memory.
//! PROT_NONE keeps the entries (data survives) but makes them inaccessible.
//!
//! Linux: `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`,
//! `change_protection`).

use core::ops::ControlFlow;

use hmm_pagetable::Visit;
use hmm_types::{Event, Prot, VaRange, VmFlags, PAGE_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::Mm;
use crate::zap::has_entries;

const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);

impl Mm {
    /// Sets the protection of `[addr, addr + len)`. The whole range must be
    /// mapped (`ENOMEM` otherwise, with nothing changed) and each VMA must
    /// allow the new rights (`EACCES`).
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), MmError> {
        self.check_alive()?;
        if addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mprotect address not page aligned"));
        }
        if len == 0 {
            return Ok(());
        }
        let range = VaRange::new_round_len(addr, len).map_err(MmError::from_range)?;
        let (start, end) = (range.start(), range.end());
        let mut guard = self.mmap_write();
        if !guard.is_fully_mapped(start, end) {
            return Err(MmError::NotMapped(range));
        }
        for vma in guard.overlapping(start, end) {
            if prot.contains(Prot::WRITE) && !vma.flags.contains(VmFlags::MAYWRITE) {
                return Err(MmError::Access("mapping may not become writable"));
            }
        }
        split_huge_at(self, start)?;
        split_huge_at(self, end)?;
        let new_access = VmFlags::from_prot(prot);
        let changes: Vec<(u64, u64)> = guard
            .overlapping(start, end)
            .filter(|vma| vma.flags & ACCESS != new_access)
            .map(|vma| (vma.start.max(start), vma.end.min(end)))
            .collect();
        for &(chunk_start, chunk_end) in &changes {
            if has_entries(self, chunk_start, chunk_end) {
                let invalidation =
                    self.notifiers()
                        .start(self.id(), chunk_start, chunk_end, Event::ProtectionVma);
                change_protection(self, chunk_start, chunk_end, new_access);
                invalidation.end();
            }
        }
        for vma in guard.vmas_mut().split_range_mut(start, end) {
            vma.flags = (vma.flags - ACCESS) | new_access;
        }
        guard.vmas_mut().merge_range(start, end);
        Ok(())
    }
}

/// Rewrites the present leaves of `[start, end)` for the new access bits.
/// Runs under the mmap write lock, so only compare-and-swap against the
/// hardware's accessed/dirty updates is needed.
fn change_protection(mm: &Mm, start: u64, end: u64, access: VmFlags) {
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, mut entry } = visit {
            while entry.is_present() {
                let mut new = entry;
                if !access.contains(VmFlags::WRITE) {
                    new = new.wrprotect();
                }
                new = if access.is_empty() {
                    new.mkprotnone()
                } else {
                    new.clear_protnone()
                };
                match slot.compare_exchange(entry, new) {
                    Ok(_) => break,
                    Err(now) => entry = now,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}
