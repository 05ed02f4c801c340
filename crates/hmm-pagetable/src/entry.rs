//! The 64-bit entry encoding, x86-64 flavoured.
//!
//! ```text
//! present:      bit 0 = 1, bit 1 WRITE, bit 5 ACCESSED, bit 6 DIRTY,
//!               bit 7 HUGE (a PMD/PUD leaf), bit 8 PROTNONE (kept but
//!               inaccessible), bit 9 SPECIAL, bit 10 UFFD_WP (userfaultfd
//!               write-protected; x86's `_PAGE_UFFD_WP`), bits 12..52 pfn
//! table:        bit 0 = 1, bit 7 = 0, above the PTE level; pfn = table id
//! non-present:  bit 0 = 0, bits 1..6 swap kind (never 0), bit 7 HUGE,
//!               bits 12..52 offset (swap slot or pfn)
//! none:         0
//! ```
//! This file owns the bits and the present-leaf accessors; beside it,
//! `swap` the non-present kinds ([`SwapKind`]), `marker` the marker
//! entries (guard, uffd-wp), `uffd` the uffd-wp and RWP bits of present
//! leaves, `raw` the decoders for tight loops over raw words.
//!
//! Linux: `pte_present`, `pte_write`, `pte_special`, `pmd_trans_huge`,
//! `pud_leaf`, `swp_entry_t`.

use core::fmt;

use hmm_types::Pfn;

use crate::level::Level;
use crate::store::TableId;

mod marker;
mod raw;
mod swap;
mod uffd;

pub use marker::{PTE_MARKER_GUARD, PTE_MARKER_UFFD_WP};
pub use swap::SwapKind;

const PRESENT: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const PROTNONE: u64 = 1 << 8;
const SPECIAL: u64 = 1 << 9;
const UFFD_WP: u64 = 1 << 10;
const KIND_SHIFT: u32 = 1;
const KIND_MASK: u64 = 0x1f << KIND_SHIFT;
const PFN_SHIFT: u32 = 12;
const PFN_MASK: u64 = ((1 << 52) - 1) & !((1 << PFN_SHIFT) - 1);

/// Software and hardware bits of a present leaf.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct LeafFlags {
    /// Writable.
    pub write: bool,
    /// Written since the bit was last cleared.
    pub dirty: bool,
    /// Accessed since the bit was last cleared.
    pub accessed: bool,
    /// No `struct page` semantics (`pte_special`: pfnmap, zero page).
    pub special: bool,
}

/// One page-table entry. `Entry(0)` is none.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entry(u64);

/// An entry decoded, as far as the entry alone can tell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryKind {
    /// Nothing mapped.
    None,
    /// Points to a table of the next level.
    Table(TableId),
    /// A present leaf.
    Present {
        /// First frame of the mapped block.
        pfn: Pfn,
        /// Its bits.
        flags: LeafFlags,
    },
    /// A non-present leaf.
    NonPresent {
        /// What kind.
        kind: SwapKind,
        /// Swap slot, or frame number for kinds with [`SwapKind::has_pfn`].
        offset: u64,
    },
}

impl Entry {
    /// The empty entry.
    pub const NONE: Self = Self(0);

    /// Reinterprets raw bits (as loaded from a slot).
    #[inline]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
    /// The raw bits.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// A pointer to a next-level table.
    #[inline]
    pub const fn table(id: TableId) -> Self {
        Self(PRESENT | (id << PFN_SHIFT))
    }
    /// A present leaf; `huge` for PMD and PUD leaves.
    #[inline]
    pub const fn present(pfn: Pfn, flags: LeafFlags, huge: bool) -> Self {
        let mut raw = PRESENT | ((pfn.0 << PFN_SHIFT) & PFN_MASK);
        if flags.write {
            raw |= WRITE;
        }
        if flags.dirty {
            raw |= DIRTY;
        }
        if flags.accessed {
            raw |= ACCESSED;
        }
        if flags.special {
            raw |= SPECIAL;
        }
        if huge {
            raw |= HUGE;
        }
        Self(raw)
    }
    /// A non-present leaf; `huge` for PMD-level entries.
    #[inline]
    pub const fn swap(kind: SwapKind, offset: u64, huge: bool) -> Self {
        let mut raw = ((kind as u64) << KIND_SHIFT) | ((offset << PFN_SHIFT) & PFN_MASK);
        if huge {
            raw |= HUGE;
        }
        Self(raw)
    }

    /// `pte_none`.
    #[inline]
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// `pte_present`: a present leaf or a table pointer.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }
    /// The huge bit (a PMD/PUD leaf, present or not).
    #[inline]
    pub const fn is_huge(self) -> bool {
        self.0 & HUGE != 0
    }
    /// A pointer to a next-level table, at `level`.
    #[inline]
    pub const fn is_table(self, level: Level) -> bool {
        self.is_present() && !self.is_huge() && !matches!(level, Level::Pte)
    }
    /// A leaf (present or not) at `level`: not none and not a table.
    #[inline]
    pub const fn is_leaf(self, level: Level) -> bool {
        !self.is_none() && !self.is_table(level)
    }
    /// The frame (or table id) field.
    #[inline]
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & PFN_MASK) >> PFN_SHIFT)
    }
    /// Writable present leaf.
    #[inline]
    pub const fn is_write(self) -> bool {
        self.is_present() && self.0 & WRITE != 0
    }
    /// Dirty present leaf.
    #[inline]
    pub const fn is_dirty(self) -> bool {
        self.is_present() && self.0 & DIRTY != 0
    }
    /// Accessed present leaf.
    #[inline]
    pub const fn is_accessed(self) -> bool {
        self.is_present() && self.0 & ACCESSED != 0
    }
    /// A present leaf the CPU may not touch (`pte_protnone`: PROT_NONE).
    #[inline]
    pub const fn is_protnone(self) -> bool {
        self.is_present() && self.0 & PROTNONE != 0
    }
    /// A present leaf the CPU may access (present and not PROT_NONE).
    #[inline]
    pub const fn is_accessible(self) -> bool {
        self.is_present() && self.0 & PROTNONE == 0
    }
    /// Special present leaf.
    #[inline]
    pub const fn is_special(self) -> bool {
        self.is_present() && self.0 & SPECIAL != 0
    }
    /// The bits of a present leaf.
    #[inline]
    pub const fn leaf_flags(self) -> LeafFlags {
        LeafFlags {
            write: self.is_write(),
            dirty: self.is_dirty(),
            accessed: self.is_accessed(),
            special: self.is_special(),
        }
    }
    /// The kind of a non-present entry.
    #[inline]
    pub const fn swap_kind(self) -> Option<SwapKind> {
        if self.is_present() {
            return None;
        }
        SwapKind::from_bits((self.0 & KIND_MASK) >> KIND_SHIFT)
    }
    /// Decodes the entry as found at `level`.
    pub fn kind(self, level: Level) -> EntryKind {
        if self.is_none() {
            EntryKind::None
        } else if self.is_table(level) {
            EntryKind::Table(self.pfn().0)
        } else if self.is_present() {
            EntryKind::Present { pfn: self.pfn(), flags: self.leaf_flags() }
        } else {
            match self.swap_kind() {
                Some(kind) => EntryKind::NonPresent { kind, offset: self.pfn().0 },
                // Not an encoding this engine writes; report it as a marker so
                // callers treat it as "not a page" rather than crash.
                None => EntryKind::NonPresent { kind: SwapKind::Marker, offset: 0 },
            }
        }
    }
    /// The same present leaf with WRITE cleared (`pte_wrprotect`).
    #[inline]
    pub const fn wrprotect(self) -> Self {
        Self(self.0 & !WRITE)
    }
    /// The same present leaf with WRITE set (`pte_mkwrite`).
    #[inline]
    pub const fn mkwrite(self) -> Self {
        Self(self.0 | WRITE)
    }
    /// The same present leaf made inaccessible (PROT_NONE).
    #[inline]
    pub const fn mkprotnone(self) -> Self {
        Self(self.0 | PROTNONE)
    }
    /// The same present leaf made accessible again.
    #[inline]
    pub const fn clear_protnone(self) -> Self {
        Self(self.0 & !PROTNONE)
    }
    /// The same present leaf with DIRTY set.
    #[inline]
    pub const fn mkdirty(self) -> Self {
        Self(self.0 | DIRTY | ACCESSED)
    }
    /// The same entry with the HUGE bit cleared or set.
    #[inline]
    pub const fn with_huge(self, huge: bool) -> Self {
        if huge {
            Self(self.0 | HUGE)
        } else {
            Self(self.0 & !HUGE)
        }
    }
    /// The same present leaf with DIRTY cleared.
    #[inline]
    pub const fn mkclean(self) -> Self {
        Self(self.0 & !DIRTY)
    }
    /// The same present leaf with ACCESSED cleared.
    #[inline]
    pub const fn mkold(self) -> Self {
        Self(self.0 & !ACCESSED)
    }
    /// The bits a CPU access sets: ACCESSED, and DIRTY for a write.
    #[inline]
    pub const fn access_bits(write: bool) -> u64 {
        if write {
            ACCESSED | DIRTY
        } else {
            ACCESSED
        }
    }

    /// The `index`-th part of this huge leaf at `level`, as an entry of the
    /// level below: same bits, frame advanced, huge only above the PTE level.
    /// Swap slots (no frame) are not splittable and are copied as they are.
    pub fn split_part(self, level: Level, index: usize) -> Self {
        let child = level.child().unwrap_or(Level::Pte);
        let step = child.entry_bytes() >> PFN_SHIFT;
        let advances = self.is_present() || self.swap_kind().is_some_and(SwapKind::has_pfn);
        let mut raw = self.0;
        if advances {
            let pfn = self.pfn().0 + step * index as u64;
            raw = (raw & !PFN_MASK) | ((pfn << PFN_SHIFT) & PFN_MASK);
        }
        if child == Level::Pte {
            raw &= !HUGE;
        }
        Self(raw)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return write!(f, "Entry(none)");
        }
        if self.is_present() {
            let flags = self.leaf_flags();
            write!(
                f,
                "Entry({} pfn {:#x}{}{}{}{}",
                if self.is_huge() { "huge" } else { "present" },
                self.pfn().0,
                if flags.write { " W" } else { "" },
                if flags.dirty { " D" } else { "" },
                if flags.accessed { " A" } else { "" },
                if flags.special { " S" } else { "" },
            )?;
            if self.is_protnone() {
                write!(f, " protnone")?;
            }
            write!(f, ")")
        } else {
            write!(f, "Entry({:?} {:#x}{})", self.swap_kind(), self.pfn().0, if self.is_huge() { " huge" } else { "" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_round_trip() {
        let flags = LeafFlags { write: true, dirty: true, accessed: false, special: false };
        let e = Entry::present(Pfn(0xabcde), flags, false);
        assert_eq!(e.kind(Level::Pte), EntryKind::Present { pfn: Pfn(0xabcde), flags });
        assert!(!e.wrprotect().is_write());
        assert!(e.is_leaf(Level::Pte));
    }

    #[test]
    fn table_versus_huge_leaf_at_pmd() {
        assert_eq!(Entry::table(7).kind(Level::Pmd), EntryKind::Table(7));
        let huge = Entry::present(Pfn(512), LeafFlags::default(), true);
        assert!(huge.is_leaf(Level::Pmd));
        assert!(!huge.is_table(Level::Pmd));
    }

    #[test]
    fn split_advances_frames() {
        let huge = Entry::present(Pfn(0x40000), LeafFlags { write: true, ..Default::default() }, true);
        let part = huge.split_part(Level::Pmd, 3);
        assert_eq!(part.pfn(), Pfn(0x40003));
        assert!(!part.is_huge() && part.is_write());
        let pud = Entry::present(Pfn(0x40000), LeafFlags::default(), true);
        let pmd_part = pud.split_part(Level::Pud, 2);
        assert_eq!(pmd_part.pfn(), Pfn(0x40000 + 1024));
        assert!(pmd_part.is_huge());
        let mig = Entry::swap(SwapKind::MigrationWrite, 0x200, true);
        assert_eq!(mig.split_part(Level::Pmd, 5).pfn(), Pfn(0x205));
    }
}
