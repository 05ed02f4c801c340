//! mmap's argument checks before anything is looked up, in Linux's
//! order: the hugetlb page size and length rounding (`ksys_mmap_pgoff`),
//! the length and fixed-address checks (`do_mmap`, `get_unmapped_area`),
//! and the sharing type (`do_mmap`'s switch on `MAP_TYPE`).
//!
//! Linux: `mm/mmap.c` (`ksys_mmap_pgoff`, `do_mmap`).

use hmm_types::{MapFlags, PageSize, VaRange, PAGE_SIZE};

use crate::error::MmError;
use crate::mm::Mm;

use super::Source;

/// What the checks settle for the rest of `do_mmap`.
pub(super) struct Checked {
    /// The length, rounded to the mapping's page or granule.
    pub(super) len: u64,
    /// The page size of an anonymous `MAP_HUGETLB` mapping.
    pub(super) hugetlb: Option<PageSize>,
    /// What the start (and, but for device-DAX, the length) is a multiple
    /// of: the huge page, the device alignment, or a page.
    pub(super) granule: u64,
    /// `MAP_FIXED` or `MAP_FIXED_NOREPLACE`.
    pub(super) fixed: bool,
}

/// The checks of `mmap(addr, len, .., flags)` of `source` that come before
/// the sharing type; `EEXIST` of `MAP_FIXED_NOREPLACE` is among them.
pub(super) fn check_args(
    mm: &Mm,
    addr: u64,
    len: u64,
    flags: MapFlags,
    source: &Source<'_>,
) -> Result<Checked, MmError> {
    // ksys_mmap_pgoff: anonymous MAP_HUGETLB picks its page size (EINVAL
    // for an unknown one) and rounds the length to it before do_mmap
    // sees it, so a length near 2^64 wraps to 0 and is EINVAL there.
    let hugetlb = flags.contains(MapFlags::HUGETLB).then(|| huge_size(flags)).transpose()?;
    let len = match hugetlb {
        Some(size) => len.wrapping_add(size.bytes() - 1) & !(size.bytes() - 1),
        None => len,
    };
    if len == 0 {
        return Err(MmError::Invalid("mmap of zero length"));
    }
    // do_mmap rounds the length to pages before it looks at the sharing
    // type or anything else: a length within a page of 2^64 is ENOMEM
    // first.
    if len.checked_add(PAGE_SIZE - 1).is_none() {
        return Err(MmError::NoSpace(len));
    }
    let granule = match (source, hugetlb) {
        (_, Some(size)) => size.bytes(),
        (Source::DevDax(dev, _), _) => dev.align().bytes(),
        _ => PAGE_SIZE,
    };
    // Lengths round up to the granule, as hugetlbfs rounds to its page;
    // a device-DAX length only to pages (its mmap hook refuses an
    // unaligned end).
    let round = if matches!(source, Source::DevDax(..)) { PAGE_SIZE } else { granule };
    let len = len.checked_add(round - 1).ok_or(MmError::NoSpace(len))? & !(round - 1);
    // get_unmapped_area: any length past the address space is ENOMEM,
    // before the sharing type is looked at.
    if len > hmm_types::TASK_SIZE {
        return Err(MmError::NoSpace(len));
    }
    // get_unmapped_area: a fixed range past the address space is
    // ENOMEM, an unaligned fixed address EINVAL.
    let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
    if fixed && addr.checked_add(len).is_none_or(|end| end > hmm_types::TASK_SIZE) {
        return Err(MmError::OutOfRange("MAP_FIXED range ends past the user address space"));
    }
    // A device-DAX node's `get_unmapped_area` takes any fixed address: its
    // mmap hook refuses an unaligned one, after the range was unmapped.
    let placement = if matches!(source, Source::DevDax(..)) { PAGE_SIZE } else { granule };
    if fixed && addr % placement != 0 {
        return Err(MmError::Invalid("MAP_FIXED address not aligned to the mapping's page size"));
    }
    // MAP_FIXED_NOREPLACE over a mapping is EEXIST before the sharing
    // type and the flags are validated (checked again under the write
    // lock below).
    if flags.contains(MapFlags::FIXED_NOREPLACE) && mm.mmap_read().overlapping(addr, addr + len).next().is_some() {
        return Err(MmError::Exists(VaRange::new(addr, len).map_err(|_| MmError::NoSpace(len))?));
    }
    Ok(Checked { len, hugetlb, granule, fixed })
}

/// do_mmap's switch on the sharing type: whether the mapping is shared.
/// A file (hugetlb's included) takes `MAP_SHARED_VALIDATE` but refuses any
/// flag outside the legacy mask (`EOPNOTSUPP`; `MAP_SYNC` is allowed on a
/// DAX file). Anonymous memory has no file yet, so `MAP_SHARED_VALIDATE`
/// is just an unknown type there (`EINVAL`).
pub(super) fn map_type_shared(flags: MapFlags, file: bool, dax: bool) -> Result<bool, MmError> {
    const SHARED: u32 = MapFlags::SHARED.bits();
    const VALIDATE: u32 = MapFlags::SHARED_VALIDATE.bits();
    const PRIVATE: u32 = MapFlags::PRIVATE.bits();
    match flags.map_type() {
        SHARED => Ok(true),
        PRIVATE => Ok(false),
        VALIDATE if file => {
            let mut accepted = MapFlags::LEGACY_MASK;
            if dax {
                accepted |= MapFlags::SYNC;
            }
            if flags.difference(accepted).is_empty() {
                Ok(true)
            } else if flags.contains(MapFlags::SYNC) && !dax {
                Err(MmError::NotSupported("MAP_SYNC needs a DAX file"))
            } else {
                Err(MmError::NotSupported("a flag MAP_SHARED_VALIDATE does not know"))
            }
        }
        _ => Err(MmError::Invalid("exactly one of MAP_SHARED, MAP_PRIVATE and MAP_SHARED_VALIDATE is required")),
    }
}

/// The hugetlb page size a `MAP_HUGE_*` encoding asks for (2 MiB by
/// default); other sizes are `EINVAL`.
fn huge_size(flags: MapFlags) -> Result<PageSize, MmError> {
    let log2 = (flags.bits() >> 26) & 0x3f;
    match log2 {
        0 | 21 => Ok(PageSize::Size2M),
        30 => Ok(PageSize::Size1G),
        _ => Err(MmError::Invalid("unsupported MAP_HUGE_* size")),
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot, PMD_SIZE};

    use crate::testing::kernel;
    use crate::{MmError, ThpMode};

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn a_length_that_rounds_past_2_pow_64_is_enomem_before_a_bad_sharing_type() {
        // Regression (found by the API fuzzer): the sharing type was checked
        // first (EINVAL). Linux 6.18 answers ENOMEM for MAP_ANONYMOUS |
        // MAP_FIXED without a type and for an unknown bit with
        // MAP_SHARED_VALIDATE alike.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let len = u64::MAX - 4094;
        let unknown = MapFlags::from_bits_retain(0x400);
        for flags in
            [MapFlags::ANONYMOUS | MapFlags::FIXED, ANON | MapFlags::SHARED_VALIDATE | MapFlags::FIXED | unknown]
        {
            assert_eq!(mm.mmap(0x4000_0000, len, Prot::RW, flags).unwrap_err().errno(), Errno::NoMem);
        }
        assert_eq!(mm.mmap(0x4000_0000, 4096, Prot::RW, MapFlags::ANONYMOUS).unwrap_err().errno(), Errno::Inval);
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let errno = |r: Result<u64, MmError>| r.unwrap_err().errno();
        assert_eq!(errno(mm.mmap(0, 0, Prot::RW, ANON)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0x1001, 4096, Prot::RW, ANON | MapFlags::FIXED)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::ANONYMOUS)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, u64::MAX, Prot::RW, ANON)), Errno::NoMem);
        assert_eq!(errno(mm.mmap(0, 1 << 48, Prot::RW, ANON)), Errno::NoMem);
        // Anonymous memory has no file when do_mmap checks the type:
        // MAP_SHARED_VALIDATE is EINVAL there, MAP_SYNC or not.
        let sync = MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS | MapFlags::SYNC;
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, sync)), Errno::Inval);
        assert_eq!(errno(mm.mmap(0, 4096, Prot::RW, MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS)), Errno::Inval);
        assert!(mm.mmap_read().is_empty(), "no failed call left a mapping behind");
    }

    #[test]
    fn do_mmap_checks_in_linux_order() {
        // Regressions (scenarios/found, Linux 6.18 on x86): EEXIST of
        // MAP_FIXED_NOREPLACE comes before the sharing type, the flag
        // validation and the hugetlb reservation; a hugetlb length that
        // rounds past 2^64 becomes 0 (EINVAL); MAP_SHARED_VALIDATE on
        // hugetlb (a file) refuses MAP_FIXED_NOREPLACE with EOPNOTSUPP.
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let errno = |r: Result<u64, MmError>| r.unwrap_err().errno();
        let va = mm.mmap(0x4000_0000 - 0x5000, 0x6000, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let noreplace = MapFlags::ANONYMOUS | MapFlags::FIXED_NOREPLACE;
        let huge = noreplace | MapFlags::HUGETLB;
        assert_eq!(errno(mm.mmap(0x4000_0000, 1, Prot::RW, huge | MapFlags::PRIVATE)), Errno::Exist);
        assert_eq!(errno(mm.mmap(va, 1, Prot::RW, noreplace | MapFlags::SHARED_VALIDATE)), Errno::Exist);
        assert_eq!(errno(mm.mmap(va, 1, Prot::RW, noreplace)), Errno::Exist);
        let free = 0x8000_0000;
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, huge | MapFlags::SHARED_VALIDATE)), Errno::OpNotSupp);
        let fixed_huge = ANON | MapFlags::FIXED | MapFlags::HUGETLB;
        assert_eq!(errno(mm.mmap(free, u64::MAX, Prot::RW, fixed_huge)), Errno::Inval);
        let validate_anon = MapFlags::SHARED_VALIDATE | MapFlags::ANONYMOUS;
        assert_eq!(errno(mm.mmap(0, u64::MAX - 4095, Prot::RW, validate_anon)), Errno::NoMem);
        // Without a pool the hugetlb reservation itself fails: ENOMEM, and
        // the range MAP_FIXED was to replace is left unmapped.
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, fixed_huge)), Errno::NoMem);
        mm.mmap(free, 2 * PMD_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.write_u64(free + PMD_SIZE, 1).unwrap();
        assert_eq!(errno(mm.mmap(free, 1, Prot::RW, fixed_huge)), Errno::NoMem);
        assert!(mm.read_u64(free).is_err(), "the first 2 MiB were unmapped");
        assert_eq!(mm.read_u64(free + PMD_SIZE), Ok(1), "the rest is kept");
    }
}
