//! mprotect: change the protection of whole pages, announced as
//! PROTECTION_VMA for every changed VMA range that has entries.
//!
//! Removing write permission write-protects every entry. Granting it
//! makes writable at once only the entries a write fault would make
//! writable without more ado (`MM_CP_TRY_CHANGE_WRITABLE`,
//! `can_change_pte_writable`): every entry of shared memory (it wants no
//! write notification), dirty entries of other shared mappings, and
//! exclusively owned anonymous pages of private ones; the rest wait for
//! a write fault (reuse or COW). An entry under userfaultfd-wp stays
//! read-only. PROT_NONE keeps the entries (data survives) but makes them
//! inaccessible. A writable migration entry loses its write right like a
//! present entry.
//!
//! Linux: `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`,
//! `change_protection`).

use core::ops::ControlFlow;

use hmm_pagetable::{Entry, SwapKind, Visit};
use hmm_types::{Event, Prot, VaRange, VmFlags, PAGE_SIZE, TASK_SIZE};

use super::vma_modify::{check_splits, Refused};
use crate::error::MmError;
use crate::huge::split_huge_edge;
use crate::mm::{Mm, MmapWriteGuard};
use crate::phys::PageFlags;
use crate::vma::Vma;
use crate::zap::has_entries;

const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);
/// `PROT_SEM`: accepted, no effect on x86.
const PROT_SEM: u32 = 0x8;
/// `PROT_GROWSDOWN`: extend the change down to the start of a stack VMA.
const PROT_GROWSDOWN: u32 = 0x0100_0000;
/// `PROT_GROWSUP`.
const PROT_GROWSUP: u32 = 0x0200_0000;
const MAY: VmFlags = VmFlags::MAYREAD.union(VmFlags::MAYWRITE).union(VmFlags::MAYEXEC);

impl Mm {
    /// Sets the protection of `[addr, addr + len)`, as Linux does: VMA by
    /// VMA in address order until the first gap or refused VMA. The range
    /// must start inside a VMA (`ENOMEM`, nothing changed); a gap later on
    /// stops the walk with `ENOMEM` and a VMA that may not get the new
    /// rights with `EACCES`, the VMAs before it keeping their new
    /// protection (`do_mprotect_pkey`).
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), MmError> {
        self.check_alive()?;
        let grows = prot.bits() & (PROT_GROWSDOWN | PROT_GROWSUP);
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(MmError::Invalid("PROT_GROWSDOWN and PROT_GROWSUP together"));
        }
        // PROT_SEM is valid on x86 and grants nothing (`arch_validate_prot`).
        let prot = Prot::from_bits_retain(prot.bits() & !(grows | PROT_SEM));
        if addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mprotect address not page aligned"));
        }
        if len == 0 {
            return Ok(());
        }
        // Linux's order: a wrapping range (ENOMEM), the protection (EINVAL),
        // then the walk; a range past the address space simply meets a gap.
        let end = len.checked_add(PAGE_SIZE - 1).and_then(|l| addr.checked_add(l & !(PAGE_SIZE - 1)));
        let Some(end) = end else {
            return Err(MmError::OutOfRange("mprotect range wraps"));
        };
        if Prot::from_bits(prot.bits()).is_none() {
            return Err(MmError::Invalid("unknown PROT_* bits"));
        }
        let start = addr;
        let mut guard = self.mmap_write();
        if grows != 0 {
            return Err(refuse_grows(&guard, start, end, grows));
        }
        let new_access = VmFlags::from_prot(prot);
        let (done_end, outcome) = walk_prefix(&guard, start, end, new_access);
        if done_end > start {
            apply(self, &mut guard, start, done_end, new_access)?;
        }
        outcome.map_err(|refused| refused.settle(&mut guard))
    }
}

/// `mprotect` with PROT_GROWSDOWN or PROT_GROWSUP: no VMA is a stack
/// growing that way here, so it fails before any change, `ENOMEM` where
/// Linux finds no VMA to start from, `EINVAL` otherwise. Linux 6.18 on the
/// host: PROT_READ|PROT_GROWSDOWN on an ordinary mapping is EINVAL.
fn refuse_grows(guard: &MmapWriteGuard<'_>, start: u64, end: u64, grows: u32) -> MmError {
    let Some(first) = guard.overlapping(start, end).next() else {
        return VaRange::from_bounds(start, end.min(TASK_SIZE))
            .map_or(MmError::OutOfRange("mprotect range past the address space"), MmError::NotMapped);
    };
    if grows == PROT_GROWSUP && first.start > start {
        return MmError::NotMapped(first.range());
    }
    MmError::Invalid("PROT_GROWSDOWN/PROT_GROWSUP on a mapping that does not grow")
}

/// How far `mprotect` gets: the end of the prefix of `[start, end)` it
/// changes, and what it returns. Each VMA is checked in turn, and a gap
/// after it ends the walk (`ENOMEM`).
fn walk_prefix(guard: &MmapWriteGuard<'_>, start: u64, end: u64, access: VmFlags) -> (u64, Result<(), Refused>) {
    let mut cursor = start;
    for vma in guard.overlapping(start, end) {
        if vma.start > cursor {
            break;
        }
        // Each right asked for needs its VM_MAY* bit (`VM_MAYREAD` is
        // `VM_READ << 4`).
        let may = VmFlags::from_bits_truncate((vma.flags & MAY).bits() >> 4);
        if !may.contains(access) {
            return (cursor, Err(MmError::Access("mapping may not get this protection").into()));
        }
        // `mprotect_fixup`: a sealed VMA is EPERM, even for its own
        // protection, after the VMAs before it were changed.
        if let Err(error) = super::mseal::check_sealed(vma, "mprotect of a sealed VMA") {
            return (cursor, Err(error.into()));
        }
        // A split inside a VMA that cannot be split there (hugetlb,
        // device-DAX) fails at that VMA, unless its protection does not
        // change: `mprotect_fixup` then leaves it alone, unsplit.
        if vma.flags & ACCESS != access {
            let (piece_start, piece_end) = (start.max(vma.start), end.min(vma.end));
            let new_flags = account(vma, (vma.flags - ACCESS) | access);
            if let Err(refused) = check_splits(guard, vma, piece_start, piece_end, new_flags) {
                return (cursor, Err(refused));
            }
        }
        cursor = vma.end.min(end);
    }
    if cursor < end {
        let hole = VaRange::from_bounds(cursor, end.min(TASK_SIZE).max(cursor + PAGE_SIZE));
        let error = hole.map_or(MmError::OutOfRange("mprotect range past the address space"), MmError::NotMapped);
        return (cursor, Err(error.into()));
    }
    (end, Ok(()))
}

/// Gives every VMA of `[start, end)` (no gap in it) the access bits, and
/// rewrites their entries.
fn apply(mm: &Mm, guard: &mut MmapWriteGuard<'_>, start: u64, end: u64, new_access: VmFlags) -> Result<(), MmError> {
    // Only the VMAs whose protection changes are split, with the huge
    // leaves at their new edges (`mprotect_fixup` leaves the others alone).
    let changes: Vec<(u64, u64, WriteUpgrade, bool)> = guard
        .overlapping(start, end)
        .filter(|vma| vma.flags & ACCESS != new_access)
        .map(|vma| {
            let upgrade = WriteUpgrade::for_vma(vma, new_access);
            (vma.start.max(start), vma.end.min(end), upgrade, vma.flags.contains(VmFlags::UFFD_RWP))
        })
        .collect();
    for &(chunk_start, chunk_end, ..) in &changes {
        split_huge_edge(mm, guard, chunk_start)?;
        split_huge_edge(mm, guard, chunk_end)?;
    }
    for &(chunk_start, chunk_end, upgrade, rwp) in &changes {
        if has_entries(mm, chunk_start, chunk_end) {
            let invalidation = mm.notifiers().start(mm.id(), chunk_start, chunk_end, Event::ProtectionVma);
            change_protection(mm, chunk_start, chunk_end, new_access, upgrade, rwp);
            invalidation.end();
        }
    }
    for &(chunk_start, chunk_end, ..) in &changes {
        for vma in guard.vmas_mut().split_range_mut(chunk_start, chunk_end) {
            vma.flags = account(vma, (vma.flags - ACCESS) | new_access);
        }
    }
    // Only a changed piece merges with its neighbours (`vma_modify_flags`);
    // VMAs left alone stay as they are, split or not.
    for &(chunk_start, chunk_end, ..) in &changes {
        guard.vmas_mut().merge_range(chunk_start, chunk_end);
    }
    Ok(())
}

/// `VM_ACCOUNT` under the new flags (`mprotect_fixup`): a private mapping
/// made writable for the first time is charged; the charge is dropped when
/// it stops being writable only by an anonymous VMA that never had a page
/// (no anon_vma). So a private file mapping made writable once keeps
/// VM_ACCOUNT, and does not merge back with a piece that never was
/// (Linux 6.18 on the host).
fn account(vma: &Vma, new_flags: VmFlags) -> VmFlags {
    let uncharged = VmFlags::ACCOUNT | VmFlags::WRITE | VmFlags::HUGETLB | VmFlags::SHARED | VmFlags::NORESERVE;
    if new_flags.contains(VmFlags::WRITE) {
        if !vma.flags.intersects(uncharged) {
            return new_flags | VmFlags::ACCOUNT;
        }
    } else if vma.flags.contains(VmFlags::ACCOUNT) && vma.is_anonymous() && vma.anon_vma.get().is_none() {
        return new_flags - VmFlags::ACCOUNT;
    }
    new_flags
}

/// Which entries an mprotect granting write permission makes writable at
/// once (`vma_wants_manual_pte_write_upgrade`, `can_change_pte_writable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteUpgrade {
    /// Write permission is not granted.
    None,
    /// Shared memory: the new page protection is writable, so every entry.
    All,
    /// Another shared mapping (write notification wanted): dirty entries,
    /// whose write the file system has seen already.
    Dirty,
    /// A private mapping: exclusively owned anonymous pages, which a
    /// write fault would reuse.
    AnonExclusive,
}

impl WriteUpgrade {
    fn for_vma(vma: &Vma, new_access: VmFlags) -> Self {
        if !new_access.contains(VmFlags::WRITE) {
            return Self::None;
        }
        let mut after = vma.clone();
        after.flags = (vma.flags - ACCESS) | new_access;
        match (after.flags.is_shared(), after.wants_writenotify()) {
            (true, false) => Self::All,
            (true, true) => Self::Dirty,
            (false, _) => Self::AnonExclusive,
        }
    }

    /// Whether the present leaf `entry` (already given the new access
    /// bits) becomes writable.
    fn applies(self, phys: &crate::phys::PhysMem, entry: Entry) -> bool {
        if entry.is_write() || entry.is_protnone() || entry.is_uffd_wp() {
            return false;
        }
        match self {
            Self::None => false,
            Self::All => true,
            Self::Dirty => entry.is_dirty(),
            Self::AnonExclusive => {
                !phys.is_zero_pfn(entry.pfn()) && phys.meta(entry.pfn()).flags().contains(PageFlags::ANON_EXCLUSIVE)
            }
        }
    }
}

/// Rewrites the present leaves of `[start, end)` for the new access bits,
/// and makes writable migration and device-private entries read-only when
/// write permission goes (the migrator restores the rights the entry
/// records); a device-exclusive entry is left alone. In an RWP
/// range (`rwp`) a read-write-protected leaf stays PROT_NONE whatever the
/// new access (Linux 7.3 keeps the RWP marker across PTE rewrites). Runs under
/// the mmap write lock, so only compare-and-swap against the hardware's
/// accessed/dirty updates is needed. `upgrade` says which entries a
/// grant of write permission makes writable.
fn change_protection(mm: &Mm, start: u64, end: u64, access: VmFlags, upgrade: WriteUpgrade, rwp: bool) {
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
                    // A device-exclusive entry stays: the CPU's access
                    // restores it with the VMA's protection then
                    // (`restore_exclusive_pte`; seen in the 7.3.4 guest).
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
                let keep_rwp = rwp && entry.is_uffd_rwp();
                new = if access.is_empty() || keep_rwp { new.mkprotnone() } else { new.clear_protnone() };
                if upgrade.applies(phys, new) {
                    new = new.mkwrite();
                }
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
    fn unchanged_vmas_stay_split() {
        // Linux 6.18 (scenarios/corpus/mprotect_unchanged_keeps_split.hmm,
        // found by `hmm fuzz`): mprotect to the protection a VMA already
        // has leaves it alone, and does not merge it with a neighbour it
        // could merge with.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4 * 4096, Prot::RW, ANON).unwrap();
        mm.mprotect(va + 4096, 4096, Prot::READ).unwrap();
        mm.mprotect(va, 4096, Prot::READ).unwrap();
        assert_eq!(mm.mmap_read().len(), 2, "the changed piece merges with its neighbour");
        mm.mprotect(va + 2 * 4096, 4096, Prot::READ).unwrap();
        mm.mprotect(va + 3 * 4096, 4096, Prot::READ).unwrap();
        assert_eq!(mm.mmap_read().len(), 1);
        // Split it by a change and a change back; then mprotect the whole
        // with its own protection: nothing merges.
        mm.mprotect(va + 4096, 4096, Prot::RW).unwrap();
        mm.mprotect(va + 4096, 4096, Prot::READ).unwrap();
        assert_eq!(mm.mmap_read().len(), 1, "a change back merges");
        let va2 = mm.mmap(va + 4 * 4096, 4096, Prot::READ, ANON | MapFlags::FIXED).unwrap();
        assert_eq!(mm.mmap_read().len(), 1, "a new neighbour merges");
        let _ = va2;
    }

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

    /// The VMA layout as `(start, end, writable)`.
    fn layout(mm: &crate::Mm) -> Vec<(u64, u64, bool)> {
        mm.mmap_read().iter().map(|v| (v.start, v.end, v.flags.contains(VmFlags::WRITE))).collect()
    }

    #[test]
    fn linux_changes_the_vmas_before_a_gap_then_fails_with_enomem() {
        // Linux 6.18 on the host: pages [0,4) and [6,10) mapped RW;
        // mprotect([2,8), PROT_READ) = ENOMEM with [2,4) now read-only and
        // [6,10) untouched; mprotect([8,12), PROT_READ) = ENOMEM with [8,10)
        // read-only (the trailing gap is found after the change).
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 10 * 4096, Prot::RW, ANON).unwrap();
        mm.munmap(va + 4 * 4096, 2 * 4096).unwrap();
        mm.write_u64(va + 2 * 4096, 7).unwrap();
        let rec = record(&mm);
        assert_eq!(mm.mprotect(va + 2 * 4096, 6 * 4096, Prot::READ).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(rec.take_events(), [(Event::ProtectionVma, va + 2 * 4096, va + 4 * 4096)]);
        let p = |n: u64| va + n * 4096;
        assert_eq!(layout(&mm), [(p(0), p(2), true), (p(2), p(4), false), (p(6), p(10), true)]);
        assert_eq!(mm.write_u64(p(2), 1).unwrap_err().errno(), Errno::Fault);
        assert_eq!(mm.mprotect(p(8), 4 * 4096, Prot::READ).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(layout(&mm), [(p(0), p(2), true), (p(2), p(4), false), (p(6), p(8), true), (p(8), p(10), false)]);
    }

    #[test]
    fn linux_changes_nothing_when_the_range_starts_in_a_gap() {
        // Linux 6.18 on the host: mprotect([5,8), PROT_READ) with [4,6)
        // unmapped = ENOMEM, [6,10) untouched.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 10 * 4096, Prot::RW, ANON).unwrap();
        mm.munmap(va + 4 * 4096, 2 * 4096).unwrap();
        let before = layout(&mm);
        assert_eq!(mm.mprotect(va + 5 * 4096, 3 * 4096, Prot::READ).unwrap_err().errno(), Errno::NoMem);
        assert_eq!(layout(&mm), before);
        assert_eq!(mm.mprotect(va + 1, 4096, Prot::READ).unwrap_err().errno(), Errno::Inval);
        assert_eq!(mm.mprotect(va, 4096, Prot::from_bits_retain(0x10)).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn linux_keeps_earlier_vmas_changed_when_a_later_one_refuses_with_eacces() {
        // Linux 6.18 on the host: [0,2) anon RW, [2,3) a MAP_SHARED file
        // opened read-only, [3,5) anon RW; mprotect([0,5), RWX) = EACCES
        // with [0,2) now rwx and [3,5) still rw.
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("ro").unwrap();
        file.ftruncate(4096).unwrap();
        let ro = k.tmpfs().open("ro", crate::fs::OpenMode::ReadOnly).unwrap();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 5 * 4096, Prot::RW, ANON).unwrap();
        mm.mmap_file(va + 2 * 4096, 4096, Prot::READ, MapFlags::SHARED | MapFlags::FIXED, &ro, 0).unwrap();
        let rwx = Prot::RW | Prot::EXEC;
        assert_eq!(mm.mprotect(va, 5 * 4096, rwx).unwrap_err().errno(), Errno::Acces);
        let flags: Vec<VmFlags> = mm.mmap_read().iter().map(|v| v.flags & VmFlags::from_prot(rwx)).collect();
        assert_eq!(flags, [VmFlags::from_prot(rwx), VmFlags::READ, VmFlags::from_prot(Prot::RW)]);
    }

    #[test]
    fn linux_accepts_prot_sem_and_refuses_prot_grows_on_ordinary_mappings() {
        // Linux 6.18 on the host (x86-64): PROT_SEM (0x8) alone = 0 and
        // the VMA becomes ---p; 0x10, 0x20, 0x80000000 = EINVAL;
        // PROT_READ|PROT_GROWSDOWN or |PROT_GROWSUP = EINVAL, both = EINVAL;
        // an unknown bit with a wrapping length = ENOMEM (the wrap first).
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x2000_0000, 4 * 4096, Prot::RW, ANON).unwrap();
        let errno = |addr: u64, len: u64, bits: u32| {
            mm.mprotect(addr, len, Prot::from_bits_retain(bits)).map_err(|e| e.errno())
        };
        assert_eq!(errno(va, 4096, 0x8), Ok(()));
        assert_eq!(layout(&mm), [(va, va + 4096, false), (va + 4096, va + 4 * 4096, true)]);
        assert!(mm.mmap_read().lookup(va).unwrap().flags.prot().is_empty());
        for bits in [0x10, 0x20, 0x8000_0000, 0x0100_0001, 0x0200_0001, 0x0300_0001] {
            assert_eq!(errno(va + 4096, 4096, bits), Err(Errno::Inval), "{bits:#x}");
        }
        assert_eq!(errno(va, u64::MAX, 0x10), Err(Errno::NoMem));
        assert_eq!(layout(&mm)[1], (va + 4096, va + 4 * 4096, true));
    }

    #[test]
    fn unpopulated_ranges_change_silently() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0, 4096, Prot::RW, ANON).unwrap();
        let rec = record(&mm);
        mm.mprotect(va, 4096, Prot::READ).unwrap();
        assert!(rec.take_events().is_empty());
    }

    /// VM_ACCOUNT takes part in merging. Linux 6.18 on the host: a private
    /// anonymous RW mapping of 4 pages, its upper half made read-only, then
    /// a read-only mapping right after it: if a page was written (the VMA
    /// has an anon_vma) the half keeps VM_ACCOUNT and three VMAs remain;
    /// untouched, it drops the charge and merges with the new mapping.
    #[test]
    fn linux_keeps_vm_account_once_written_and_merges_only_without_it() {
        const P: u64 = 4096;
        for (written, layout) in [(true, vec![(0, 2), (2, 4), (4, 6)]), (false, vec![(0, 2), (2, 6)])] {
            let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
            let base = 0x5000_0000;
            mm.mmap(base, 4 * P, Prot::RW, ANON | MapFlags::FIXED).unwrap();
            if written {
                mm.write_u64(base + 2 * P, 1).unwrap();
            }
            mm.mprotect(base + 2 * P, 2 * P, Prot::READ).unwrap();
            mm.mmap(base + 4 * P, 2 * P, Prot::READ, ANON | MapFlags::FIXED).unwrap();
            let vmas: Vec<(u64, u64)> =
                mm.mmap_read().iter().map(|v| ((v.start - base) / P, (v.end - base) / P)).collect();
            assert_eq!(vmas, layout, "written: {written}");
        }
    }
}
