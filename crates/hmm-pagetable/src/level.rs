//! The four levels of x86-64 paging and how a virtual address indexes them.

use hmm_types::PageSize;

/// A page-table level, numbered as the leaf-to-root distance plus one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Level {
    /// Leaf table: each entry maps 4 KiB.
    Pte = 1,
    /// Each entry maps 2 MiB or points to a PTE table.
    Pmd = 2,
    /// Each entry maps 1 GiB or points to a PMD table.
    Pud = 3,
    /// The root: each entry points to a PUD table (512 GiB).
    P4d = 4,
}

impl Level {
    /// The root level of a tree.
    pub const ROOT: Self = Self::P4d;

    /// log2 of the bytes one entry of this level covers.
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }
    /// Bytes one entry of this level covers.
    pub const fn entry_bytes(self) -> u64 {
        1 << self.shift()
    }
    /// Index of `va` in a table of this level.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 511) as usize
    }
    /// The level below, `None` for PTE.
    pub const fn child(self) -> Option<Self> {
        match self {
            Self::P4d => Some(Self::Pud),
            Self::Pud => Some(Self::Pmd),
            Self::Pmd => Some(Self::Pte),
            Self::Pte => None,
        }
    }
    /// The leaf size an entry of this level maps; `None` at the root, which
    /// has no leaves.
    pub const fn leaf_size(self) -> Option<PageSize> {
        match self {
            Self::Pte => Some(PageSize::Size4K),
            Self::Pmd => Some(PageSize::Size2M),
            Self::Pud => Some(PageSize::Size1G),
            Self::P4d => None,
        }
    }
    /// The level whose leaves have this size.
    pub const fn for_size(size: PageSize) -> Self {
        match size {
            PageSize::Size4K => Self::Pte,
            PageSize::Size2M => Self::Pmd,
            PageSize::Size1G => Self::Pud,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_x86_64() {
        let va = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!(Level::P4d.index(va), 3);
        assert_eq!(Level::Pud.index(va), 5);
        assert_eq!(Level::Pmd.index(va), 7);
        assert_eq!(Level::Pte.index(va), 9);
        assert_eq!(Level::Pmd.entry_bytes(), 2 << 20);
        assert_eq!(Level::Pud.leaf_size(), Some(PageSize::Size1G));
    }
}
