//! mprotect: change the protection of whole pages, announced as
//! PROTECTION_VMA for every changed VMA range that has entries.
//!
//! Write permission is only ever removed from entries here; a later write
//! fault grants it back (reuse or COW), as Linux does for private memory.
//! PROT_NONE keeps the entries (data survives) but makes them inaccessible.
//! A writable migration entry loses its write right like a present entry.
//!
//! Linux: `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`,
//! `change_protection`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, SwapKind, Visit};
use hmm_types::{Event, Prot, VaRange, VmFlags, PAGE_SIZE};

use crate::error::MmError;
use crate::huge::split_huge_at;
use crate::mm::Mm;
use crate::phys::PageFlags;
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
        // Linux's order: a wrapping range (ENOMEM), the protection (EINVAL),
        // then a range past the address space, which is unmapped (ENOMEM).
        let wraps = len.checked_add(PAGE_SIZE - 1).and_then(|l| addr.checked_add(l & !(PAGE_SIZE - 1))).is_none();
        if wraps {
            return Err(MmError::OutOfRange("mprotect range wraps"));
        }
        if Prot::from_bits(prot.bits()).is_none() {
            return Err(MmError::Invalid("unknown PROT_* bits"));
        }
        let range = VaRange::new_round_len(addr, len)
            .map_err(|_| MmError::OutOfRange("mprotect range ends past the user address space"))?;
        let (start, end) = (range.start(), range.end());
        let mut guard = self.mmap_write();
        if !guard.is_fully_mapped(start, end) {
            return Err(MmError::NotMapped(range));
        }
        guard.check_split(start)?;
        guard.check_split(end)?;
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
                let invalidation = self.notifiers().start(self.id(), chunk_start, chunk_end, Event::ProtectionVma);
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

/// Rewrites the present leaves of `[start, end)` for the new access bits,
/// and makes writable migration entries read-only when write permission
/// goes (the migrator restores the rights the entry records). Runs under
/// the mmap write lock, so only compare-and-swap against the hardware's
/// accessed/dirty updates is needed.
fn change_protection(mm: &Mm, start: u64, end: u64, access: VmFlags) {
    let phys = mm.phys();
    let _ = mm.pgtable().walk(start, end, |visit| {
        if let Visit::Slot { slot, mut entry } = visit {
            if entry.swap_kind() == Some(SwapKind::MigrationWrite) && !access.contains(VmFlags::WRITE) {
                // An anonymous page stays exclusively owned (`change_pte_range`).
                let anon = phys.meta(phys.folio_head(entry.pfn())).flags().contains(PageFlags::ANON);
                let kind = if anon { SwapKind::MigrationReadExclusive } else { SwapKind::MigrationRead };
                slot.store(Entry::swap(kind, entry.pfn().0, entry.is_huge()));
                return ControlFlow::Continue(());
            }
            if !access.contains(VmFlags::WRITE) {
                let downgraded = match entry.swap_kind() {
                    Some(SwapKind::DevicePrivateWrite) => {
                        Some(Entry::swap(SwapKind::DevicePrivateRead, entry.pfn().0, entry.is_huge()))
                    }
                    // The device loses exclusivity; the CPU entry comes back
                    // and is downgraded below.
                    Some(SwapKind::DeviceExclusive) => Some(Entry::present(
                        entry.pfn(),
                        hmm_pagetable::LeafFlags { write: false, dirty: true, accessed: true, special: false },
                        false,
                    )),
                    _ => None,
                };
                if let Some(new) = downgraded {
                    if slot.compare_exchange(entry, new).is_ok() {
                        entry = new;
                    }
                }
            }
            while entry.is_present() {
                let mut new = entry;
                if !access.contains(VmFlags::WRITE) {
                    new = new.wrprotect();
                }
                new = if access.is_empty() { new.mkprotnone() } else { new.clear_protnone() };
                match slot.compare_exchange(entry, new) {
                    Ok(_) => break,
                    Err(now) => entry = now,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, Event, MapFlags, Prot, VmFlags};

    use crate::testing::{kernel, leaf, record};
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn read_only_then_back() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4 * 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va + 4096, 11).unwrap();
        let rec = record(&mm);
        mm.mprotect(va + 4096, 4096, Prot::READ).unwrap();
        assert_eq!(rec.take_events(), [(Event::ProtectionVma, va + 4096, va + 8192)]);
        assert_eq!(mm.mmap_read().len(), 3);
        assert!(!leaf(&mm, va + 4096).1.is_write());
        assert_eq!(mm.write_u64(va + 4096, 1).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 11);
        mm.mprotect(va + 4096, 4096, Prot::RW).unwrap();
        assert_eq!(mm.mmap_read().len(), 1, "VMAs merge back");
        mm.write_u64(va + 4096, 12).unwrap();
        assert_eq!(mm.read_u64(va + 4096).unwrap(), 12);
    }

    #[test]
    fn prot_none_keeps_the_data() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        mm.write_u64(va, 5).unwrap();
        mm.mprotect(va, 4096, Prot::NONE).unwrap();
        assert!(leaf(&mm, va).1.is_protnone());
        assert_eq!(mm.read_u64(va).unwrap_err().errno(), Errno::Fault);
        mm.mprotect(va, 4096, Prot::READ).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 5);
    }

    #[test]
    fn a_hole_is_enomem_and_changes_nothing() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 4096, Prot::RW, ANON).unwrap();
        let rec = record(&mm);
        assert_eq!(mm.mprotect(va, 2 * 4096, Prot::READ).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(mm.mmap_read().lookup(va).unwrap().flags & VmFlags::WRITE, VmFlags::WRITE);
        assert!(rec.take_events().is_empty());
        assert_eq!(mm.mprotect(va + 1, 4096, Prot::READ).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.mprotect(va, 4096, Prot::from_bits_retain(8)).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn unpopulated_ranges_change_silently() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let rec = record(&mm);
        mm.mprotect(va, 4096, Prot::READ).unwrap();
        assert!(rec.take_events().is_empty());
    }
}
