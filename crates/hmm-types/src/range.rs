//! Validated user address ranges.

use core::fmt;

use crate::{Errno, PageSize, VirtAddr, PAGE_SIZE, TASK_SIZE};

/// A half-open, page-aligned, non-empty range `[start, end)` of user
/// addresses, below [`TASK_SIZE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VaRange {
    start: u64,
    end: u64,
}

impl VaRange {
    /// Validates `[start, start + len)`: both page aligned, `len > 0`, no
    /// overflow and inside the user address space; otherwise `EINVAL`
    /// (`ENOMEM` past the address space, as mmap and mprotect report it).
    pub fn new(start: u64, len: u64) -> Result<Self, Errno> {
        if len == 0 || start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Errno::Inval);
        }
        let end = start.checked_add(len).ok_or(Errno::Inval)?;
        if end > TASK_SIZE {
            return Err(Errno::NoMem);
        }
        Ok(Self { start, end })
    }
    /// Like [`Self::new`] but with `len` rounded up to a page first, as
    /// munmap, mprotect and madvise accept an unaligned length.
    pub fn new_round_len(start: u64, len: u64) -> Result<Self, Errno> {
        if len == 0 {
            return Err(Errno::Inval);
        }
        let rounded = len.checked_add(PAGE_SIZE - 1).ok_or(Errno::Inval)? & !(PAGE_SIZE - 1);
        Self::new(start, rounded)
    }
    /// `[start, end)` from two addresses; `EINVAL` unless `start < end` and
    /// both are page aligned.
    pub fn from_bounds(start: u64, end: u64) -> Result<Self, Errno> {
        if end <= start {
            return Err(Errno::Inval);
        }
        Self::new(start, end - start)
    }
    /// First address.
    pub const fn start(self) -> u64 {
        self.start
    }
    /// One past the last address.
    pub const fn end(self) -> u64 {
        self.end
    }
    /// Length in bytes.
    pub const fn len_bytes(self) -> u64 {
        self.end - self.start
    }
    /// Number of base pages.
    pub const fn nr_pages(self) -> u64 {
        self.len_bytes() / PAGE_SIZE
    }
    /// First address as a [`VirtAddr`].
    pub const fn start_addr(self) -> VirtAddr {
        VirtAddr(self.start)
    }
    /// True when `addr` lies inside.
    pub const fn contains(self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// True when the two ranges share an address.
    pub const fn overlaps(self, other: Self) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The common part, if any.
    pub fn intersect(self, other: Self) -> Option<Self> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(Self { start, end })
    }
    /// True when both ends are multiples of `size`.
    pub const fn is_aligned(self, size: PageSize) -> bool {
        (self.start | self.end) & (size.bytes() - 1) == 0
    }
}

impl fmt::Debug for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

impl fmt::Display for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_ranges() {
        assert_eq!(VaRange::new(0x1000, 0), Err(Errno::Inval));
        assert_eq!(VaRange::new(0x1001, 0x1000), Err(Errno::Inval));
        assert_eq!(VaRange::new(0x1000, 0x1001), Err(Errno::Inval));
        assert_eq!(VaRange::new(!0xfff, 0x2000), Err(Errno::Inval));
        assert_eq!(VaRange::new(TASK_SIZE, 0x1000), Err(Errno::NoMem));
        assert_eq!(VaRange::from_bounds(0x2000, 0x1000), Err(Errno::Inval));
    }

    #[test]
    fn rounds_length_when_asked() {
        let r = VaRange::new_round_len(0x1000, 1).unwrap();
        assert_eq!((r.start(), r.end(), r.nr_pages()), (0x1000, 0x2000, 1));
    }

    #[test]
    fn intersection_and_overlap() {
        let a = VaRange::from_bounds(0x1000, 0x5000).unwrap();
        let b = VaRange::from_bounds(0x4000, 0x9000).unwrap();
        assert!(a.overlaps(b));
        assert_eq!(a.intersect(b), Some(VaRange::from_bounds(0x4000, 0x5000).unwrap()));
        let c = VaRange::from_bounds(0x5000, 0x6000).unwrap();
        assert!(!a.overlaps(c));
        assert_eq!(a.intersect(c), None);
    }
}
