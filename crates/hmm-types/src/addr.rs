//! Addresses, frame numbers and page sizes (x86-64 4-level paging).
//!
//! Linux: `PAGE_SHIFT`, `PMD_SHIFT`, `PUD_SHIFT`, `TASK_SIZE`.

use core::fmt;

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// Base page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of the size a PMD entry maps.
pub const PMD_SHIFT: u32 = 21;
/// Bytes mapped by one PMD entry (2 MiB).
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
/// log2 of the size a PUD entry maps.
pub const PUD_SHIFT: u32 = 30;
/// Bytes mapped by one PUD entry (1 GiB).
pub const PUD_SIZE: u64 = 1 << PUD_SHIFT;
/// End of the user address space (exclusive), as x86-64 with 4-level paging.
pub const TASK_SIZE: u64 = (1 << 47) - PAGE_SIZE;

/// A user virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub u64);

impl VirtAddr {
    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// True when the address is a multiple of `size`.
    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & (size.bytes() - 1) == 0
    }
    /// Rounds down to a multiple of `size`.
    pub const fn align_down(self, size: PageSize) -> Self {
        Self(self.0 & !(size.bytes() - 1))
    }
    /// The base page this address lies in.
    pub const fn page(self) -> Self {
        self.align_down(PageSize::Size4K)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A physical page frame number: physical address >> [`PAGE_SHIFT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The raw frame number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The frame `n` frames after this one.
    pub const fn add(self, n: u64) -> Self {
        Self(self.0 + n)
    }
    /// Physical byte address of the frame.
    pub const fn phys_addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The three leaf sizes of 4-level x86-64 paging.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum PageSize {
    /// A PTE leaf, 4 KiB (order 0).
    Size4K,
    /// A PMD leaf, 2 MiB (order 9).
    Size2M,
    /// A PUD leaf, 1 GiB (order 18).
    Size1G,
}

impl PageSize {
    /// Bytes covered.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }
    /// log2 of [`Self::bytes`].
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => PAGE_SHIFT,
            Self::Size2M => PMD_SHIFT,
            Self::Size1G => PUD_SHIFT,
        }
    }
    /// Page order: log2 of the number of base pages (0, 9 or 18).
    pub const fn order(self) -> u32 {
        self.shift() - PAGE_SHIFT
    }
    /// Number of base pages covered.
    pub const fn nr_pages(self) -> u64 {
        1 << self.order()
    }
    /// The size of the given order, if it is one of the three leaf sizes.
    pub const fn from_order(order: u32) -> Option<Self> {
        match order {
            0 => Some(Self::Size4K),
            9 => Some(Self::Size2M),
            18 => Some(Self::Size1G),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_x86_64() {
        assert_eq!(PageSize::Size2M.order(), 9);
        assert_eq!(PageSize::Size1G.order(), 18);
        assert_eq!(PageSize::Size1G.nr_pages(), 262_144);
        assert_eq!(PageSize::from_order(9), Some(PageSize::Size2M));
        assert_eq!(PageSize::from_order(3), None);
    }

    #[test]
    fn alignment_helpers() {
        let va = VirtAddr(0x20_1234);
        assert!(!va.is_aligned(PageSize::Size4K));
        assert_eq!(va.page(), VirtAddr(0x20_1000));
        assert_eq!(va.align_down(PageSize::Size2M), VirtAddr(0x20_0000));
    }
}
