//! mremap's refusals: the argument checks before any lookup
//! (`check_mremap_params`), the hugetlb alignment (`align_hugetlb`) and
//! the per-VMA checks of a move or resize (`check_prep_vma`).
//!
//! Linux: `mm/mremap.c`.

use hmm_types::{MremapFlags, PageSize, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::error::{FaultError, MmError, SegvReason};
use crate::vma::Vma;

use super::page_round;

/// A hugetlb VMA (`align_hugetlb`): both lengths round up to the huge
/// page, both addresses must be aligned to it (`new_addr` even without
/// MREMAP_FIXED) and growing is refused (the reservation cannot be split);
/// each is `EINVAL`. A length rounded past the address space is `EINVAL`
/// too, as no huge page fits there.
pub(super) fn align_hugetlb(
    size: PageSize,
    old_addr: u64,
    old_len: u64,
    new_len: u64,
    new_addr: u64,
) -> Result<(u64, u64), MmError> {
    let huge = size.bytes();
    let round = |len: u64| len.checked_next_multiple_of(huge).filter(|&len| len <= TASK_SIZE);
    let (Some(old_len), Some(new_len)) = (round(old_len), round(new_len)) else {
        return Err(MmError::Invalid("mremap length past the address space"));
    };
    if old_addr % huge != 0 || new_addr % huge != 0 {
        return Err(MmError::Invalid("mremap of hugetlb memory at an address not huge-page aligned"));
    }
    if new_len > old_len {
        return Err(MmError::Invalid("mremap cannot grow hugetlb memory"));
    }
    Ok((old_len, new_len))
}

/// The argument checks before any lookup, in Linux's order
/// (`check_mremap_params`); all are `EINVAL`. Linux 6.18 on the host: an
/// unknown flag bit, a new length rounding to zero or past `TASK_SIZE`
/// (lengths near 2^64 included), and an old range ending past
/// `TASK_SIZE` are each EINVAL.
pub(super) fn check_params(
    old_addr: u64,
    old_len: u64,
    new_len: u64,
    flags: MremapFlags,
    new_addr: u64,
) -> Result<(), MmError> {
    if MremapFlags::from_bits(flags.bits()).is_none() {
        return Err(MmError::Invalid("unknown MREMAP_* flag"));
    }
    if old_addr % PAGE_SIZE != 0 {
        return Err(MmError::Invalid("mremap address not page aligned"));
    }
    let (old_len, new_len) = (page_round(old_len), page_round(new_len));
    if new_len == 0 {
        return Err(MmError::Invalid("mremap to zero length"));
    }
    if new_len > TASK_SIZE {
        return Err(MmError::Invalid("mremap new length past the address space"));
    }
    if flags.intersects(MremapFlags::FIXED | MremapFlags::DONTUNMAP) {
        if new_addr > TASK_SIZE - new_len {
            return Err(MmError::Invalid("mremap new range past the address space"));
        }
        if new_addr % PAGE_SIZE != 0 {
            return Err(MmError::Invalid("mremap new address not page aligned"));
        }
        if !flags.contains(MremapFlags::MAYMOVE) {
            return Err(MmError::Invalid("MREMAP_FIXED and MREMAP_DONTUNMAP need MREMAP_MAYMOVE"));
        }
        if flags.contains(MremapFlags::DONTUNMAP) && old_len != new_len {
            return Err(MmError::Invalid("MREMAP_DONTUNMAP needs equal old and new lengths"));
        }
        // The ranges must not overlap, with DONTUNMAP alone too (it names
        // the new address; Linux 6.18 on the host: EINVAL). Linux compares
        // the ends as they are: an old range that wraps past 2^64 ends
        // "before" the new one (no overlap; then EFAULT where nothing is
        // mapped, EINVAL when a shrink unmaps the tail).
        if new_addr < old_addr.wrapping_add(old_len) && old_addr < new_addr + new_len {
            return Err(MmError::Invalid("mremap old and new ranges overlap"));
        }
    }
    Ok(())
}

/// The per-VMA refusals of a move or resize (`check_prep_vma`).
pub(super) fn check_vma(vma: &Vma, addr: u64, grows: bool, flags: MremapFlags) -> Result<(), MmError> {
    crate::ops::mseal::check_sealed(vma, "mremap of a sealed VMA")?;
    if flags.contains(MremapFlags::DONTUNMAP) && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) {
        return Err(MmError::Invalid("MREMAP_DONTUNMAP of a VM_PFNMAP/VM_DONTEXPAND mapping"));
    }
    if grows && vma.flags.intersects(VmFlags::PFNMAP | VmFlags::DONTEXPAND) {
        return Err(MmError::Fault { addr, error: FaultError::Segv(SegvReason::Protection) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, MremapFlags, Prot, TASK_SIZE};

    use crate::testing::kernel;
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn bad_arguments() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 2 * 4096, Prot::RW, ANON).unwrap();
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mremap(va + 1, 4096, 4096, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::FIXED, 0x5000_0000)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 0, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 8192, MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP, 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(0x7000_0000, 4096, 8192, MremapFlags::MAYMOVE, 0)), Errno::Fault);
        assert_eq!(errno(mm.mremap(va, 3 * 4096, 4 * 4096, MremapFlags::MAYMOVE, 0)), Errno::Fault);
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(errno(mm.mremap(va, 2 * 4096, 2 * 4096, flags, va + 4096)), Errno::Inval);
        assert_eq!(mm.mmap_read().len(), 1);
    }

    #[test]
    fn linux_rejects_unknown_flags_and_huge_lengths_with_einval() {
        // Linux 6.18 on the host: flags 8 or 16|MAYMOVE = EINVAL; new_len
        // -1, -4096 or 2^47 = EINVAL (no panic, nothing changed); new_len
        // TASK_SIZE with MAYMOVE = ENOMEM (no room); growing in place past
        // TASK_SIZE = ENOMEM; an old range ending past TASK_SIZE = EINVAL;
        // an address past TASK_SIZE = EFAULT (no VMA there).
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x3000_0000, 4 * 4096, Prot::RW, ANON).unwrap();
        let errno = |r: Result<u64, crate::MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::from_bits_retain(8), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(va, 4096, 4096, MremapFlags::from_bits_retain(16 | 1), 0)), Errno::Inval);
        for new_len in [u64::MAX, u64::MAX - 4095, u64::MAX - 8191, 1 << 47, TASK_SIZE + 1] {
            for flags in [MremapFlags::empty(), MremapFlags::MAYMOVE] {
                assert_eq!(errno(mm.mremap(va, 4096, new_len, flags, 0)), Errno::Inval, "{new_len:#x}");
            }
        }
        assert_eq!(errno(mm.mremap(va, 4096, TASK_SIZE, MremapFlags::MAYMOVE, 0)), Errno::NoMem);
        assert_eq!(errno(mm.mremap(va, 4 * 4096, TASK_SIZE - va + 4096, MremapFlags::empty(), 0)), Errno::NoMem);
        assert_eq!(errno(mm.mremap(va, TASK_SIZE - va + 4096, 4096, MremapFlags::empty(), 0)), Errno::Inval);
        assert_eq!(errno(mm.mremap(u64::MAX - 4095, 4096, 4096, MremapFlags::empty(), 0)), Errno::Fault);
        let fixed = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        assert_eq!(errno(mm.mremap(va, 4096, 2 * 4096, fixed, TASK_SIZE - 4096)), Errno::Inval);
        assert_eq!(mm.mremap(va, 4096, 2 * 4096, fixed, TASK_SIZE - 2 * 4096), Ok(TASK_SIZE - 2 * 4096));
    }
}
