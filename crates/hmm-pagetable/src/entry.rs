//! The 64-bit entry encoding, x86-64 flavoured.
//!
//! ```text
//! present:      bit 0 = 1, bit 1 WRITE, bit 5 ACCESSED, bit 6 DIRTY,
//!               bit 7 HUGE (a PMD/PUD leaf), bit 8 PROTNONE (kept but
//!               inaccessible), bit 9 SPECIAL, bit 10 UFFD_WP (userfaultfd
//!               write-protected; x86's `_PAGE_UFFD_WP`), bits 12..52 pfn
//! table:        bit 0 = 1, bit 7 = 0, above the PTE level; pfn = table id
//! non-present:  bit 0 = 0, bits 1..6 swap kind (never 0), bit 7 HUGE,
//!               bit 10 UFFD_WP (a swap entry's `_PAGE_SWP_UFFD_WP`),
//!               bits 12..52 offset (swap slot or pfn)
//! none:         0
//! ```
//! A marker is a non-present PTE of kind [`SwapKind::Marker`] whose offset
//! holds `PTE_MARKER_*` bits; a guard marker ([`Entry::guard_marker`]) has
//! [`PTE_MARKER_GUARD`].
//!
//! Linux: `pte_present`, `pte_write`, `pte_special`, `pmd_trans_huge`,
//! `pud_leaf`, `swp_entry_t`, `is_migration_entry`,
//! `is_device_private_entry`, `is_device_exclusive_entry`,
//! `make_pte_marker`, `is_guard_pte_marker`.

use core::fmt;

use hmm_types::Pfn;

use crate::level::Level;
use crate::store::TableId;

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

/// The marker bit of a guard region's PTE (`PTE_MARKER_GUARD`, bit 2).
pub const PTE_MARKER_GUARD: u64 = 1 << 2;
/// The marker bit of a write-protected none entry (`PTE_MARKER_UFFD_WP`,
/// bit 0): userfaultfd WP over unpopulated memory.
pub const PTE_MARKER_UFFD_WP: u64 = 1 << 0;

/// The kinds of non-present entries (`swp_type` in Linux).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SwapKind {
    /// A page written to swap; the offset is the swap slot.
    Swap = 1,
    /// Migration in progress, the page was mapped read-only.
    MigrationRead = 2,
    /// Migration in progress, read-only but exclusively owned (anon).
    MigrationReadExclusive = 3,
    /// Migration in progress, the page was mapped writable.
    MigrationWrite = 4,
    /// A device-private page, read-only.
    DevicePrivateRead = 5,
    /// A device-private page, writable.
    DevicePrivateWrite = 6,
    /// Taken away from the CPU for device atomics.
    DeviceExclusive = 7,
    /// A poisoned page.
    Hwpoison = 8,
    /// A marker (uffd-wp, guard), no page.
    Marker = 9,
}

impl SwapKind {
    const fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            1 => Self::Swap,
            2 => Self::MigrationRead,
            3 => Self::MigrationReadExclusive,
            4 => Self::MigrationWrite,
            5 => Self::DevicePrivateRead,
            6 => Self::DevicePrivateWrite,
            7 => Self::DeviceExclusive,
            8 => Self::Hwpoison,
            9 => Self::Marker,
            _ => return None,
        })
    }
    /// A migration entry of either direction.
    #[inline]
    pub const fn is_migration(self) -> bool {
        matches!(self, Self::MigrationRead | Self::MigrationReadExclusive | Self::MigrationWrite)
    }
    /// A device-private entry of either direction.
    #[inline]
    pub const fn is_device_private(self) -> bool {
        matches!(self, Self::DevicePrivateRead | Self::DevicePrivateWrite)
    }
    /// The offset field is a page frame number (not a swap slot).
    #[inline]
    pub const fn has_pfn(self) -> bool {
        self.is_migration() || self.is_device_private() || matches!(self, Self::DeviceExclusive | Self::Hwpoison)
    }
    /// The entry records a writable mapping.
    #[inline]
    pub const fn is_write(self) -> bool {
        matches!(self, Self::MigrationWrite | Self::DevicePrivateWrite)
    }
}

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

    /// A guard marker (`make_pte_marker(PTE_MARKER_GUARD)`): a PTE-level
    /// entry with no page behind it that makes every access fault.
    #[inline]
    pub const fn guard_marker() -> Self {
        Self::swap(SwapKind::Marker, PTE_MARKER_GUARD, false)
    }
    /// `is_guard_pte_marker`: a marker entry carrying the guard bit.
    #[inline]
    pub const fn is_guard_marker(self) -> bool {
        !self.is_present()
            && !self.is_huge()
            && (self.0 & KIND_MASK) >> KIND_SHIFT == SwapKind::Marker as u64
            && ((self.0 & PFN_MASK) >> PFN_SHIFT) & PTE_MARKER_GUARD != 0
    }

    /// A uffd-wp marker (`make_pte_marker(PTE_MARKER_UFFD_WP)`): a none
    /// entry that remembers it is write-protected for userfaultfd.
    #[inline]
    pub const fn uffd_wp_marker() -> Self {
        Self::swap(SwapKind::Marker, PTE_MARKER_UFFD_WP, false)
    }
    /// `pte_marker_uffd_wp`: a marker entry carrying the uffd-wp bit.
    #[inline]
    pub const fn is_uffd_wp_marker(self) -> bool {
        !self.is_present()
            && !self.is_huge()
            && (self.0 & KIND_MASK) >> KIND_SHIFT == SwapKind::Marker as u64
            && ((self.0 & PFN_MASK) >> PFN_SHIFT) & PTE_MARKER_UFFD_WP != 0
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
    /// For tight loops over raw PTE words: zero exactly when `raw` is a
    /// plain page — present, accessible (not PROT_NONE), not special, not
    /// huge, no bit set above the frame field. For such a word
    /// [`Self::raw_plain_pfn`] and [`Self::raw_write`] decode it with one
    /// operation each; callers OR the results of many words and check once.
    #[inline]
    pub const fn raw_plain_anomaly(raw: u64) -> u64 {
        (raw ^ PRESENT) & (PRESENT | PROTNONE | SPECIAL | HUGE | !(PFN_MASK | ((1 << PFN_SHIFT) - 1)))
    }
    /// The flag bits of a word (below the frame field).
    #[inline]
    pub const fn raw_flags(raw: u64) -> u64 {
        raw & ((1 << PFN_SHIFT) - 1)
    }
    /// The bits of `diff` (two words XORed) that decide how a plain page
    /// is reported: nonzero when the words differ in PRESENT, WRITE, HUGE,
    /// PROTNONE, SPECIAL or above the frame field (ACCESSED and DIRTY may
    /// differ).
    #[inline]
    pub const fn raw_shape(diff: u64) -> u64 {
        diff & (PRESENT | WRITE | PROTNONE | SPECIAL | HUGE | !(PFN_MASK | ((1 << PFN_SHIFT) - 1)))
    }
    /// The frame of a word with no [`Self::raw_plain_anomaly`] (for any
    /// other word, garbage).
    #[inline]
    pub const fn raw_plain_pfn(raw: u64) -> u64 {
        raw >> PFN_SHIFT
    }
    /// The WRITE bit of a word, moved to bit `to` (nonzero exactly for a
    /// writable plain page, given no [`Self::raw_plain_anomaly`]).
    #[inline]
    pub const fn raw_write(raw: u64, to: u32) -> u64 {
        (raw & WRITE) << (to - WRITE.trailing_zeros())
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

    /// The userfaultfd write-protect bit of a present leaf (`pte_uffd_wp`).
    #[inline]
    pub const fn is_uffd_wp(self) -> bool {
        self.0 & (PRESENT | UFFD_WP) == PRESENT | UFFD_WP
    }
    /// The same present leaf write-protected for userfaultfd: UFFD_WP set,
    /// WRITE cleared (`pte_mkuffd_wp`).
    #[inline]
    pub const fn mkuffd_wp(self) -> Self {
        Self((self.0 | UFFD_WP) & !WRITE)
    }
    /// The same present leaf without UFFD_WP (`pte_clear_uffd_wp`).
    #[inline]
    pub const fn clear_uffd_wp(self) -> Self {
        if self.0 & PRESENT != 0 {
            Self(self.0 & !UFFD_WP)
        } else {
            self
        }
    }
    /// The uffd-wp bit of a swap entry (`pte_swp_uffd_wp`): the page was
    /// write-protected when it went to swap and comes back protected.
    #[inline]
    pub const fn is_swp_uffd_wp(self) -> bool {
        self.0 & (PRESENT | UFFD_WP) == UFFD_WP && self.0 & KIND_MASK != 0
    }
    /// The same swap entry with the uffd-wp bit (`pte_swp_mkuffd_wp`).
    #[inline]
    pub const fn swp_mkuffd_wp(self) -> Self {
        if self.0 & PRESENT == 0 && self.0 & KIND_MASK != 0 {
            Self(self.0 | UFFD_WP)
        } else {
            self
        }
    }
    /// The same swap entry without the uffd-wp bit (`pte_swp_clear_uffd_wp`).
    #[inline]
    pub const fn swp_clear_uffd_wp(self) -> Self {
        if self.0 & PRESENT == 0 {
            Self(self.0 & !UFFD_WP)
        } else {
            self
        }
    }
    /// A present leaf read-write-protected for userfaultfd (Linux 7.3's
    /// RWP mode): PROT_NONE with the uffd bit, which tells it apart from
    /// an mprotect(PROT_NONE) entry.
    #[inline]
    pub const fn is_uffd_rwp(self) -> bool {
        self.0 & (PRESENT | PROTNONE | UFFD_WP) == PRESENT | PROTNONE | UFFD_WP
    }
    /// The same present leaf read-write-protected: PROT_NONE, the uffd bit
    /// set, WRITE cleared (`change_pte_range` with `MM_CP_UFFD_RWP`).
    #[inline]
    pub const fn mkuffd_rwp(self) -> Self {
        if self.0 & PRESENT != 0 {
            Self((self.0 | PROTNONE | UFFD_WP) & !WRITE)
        } else {
            self
        }
    }
    /// The same present leaf with the read-write protection gone: PROT_NONE
    /// and the uffd bit cleared (the caller decides about WRITE).
    #[inline]
    pub const fn clear_uffd_rwp(self) -> Self {
        if self.0 & PRESENT != 0 {
            Self(self.0 & !(PROTNONE | UFFD_WP))
        } else {
            self
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
    fn rwp_protection_is_protnone_with_the_uffd_bit() {
        let flags = LeafFlags { write: true, dirty: true, accessed: true, special: false };
        let page = Entry::present(Pfn(0x42), flags, false);
        let rwp = page.mkuffd_rwp();
        assert!(rwp.is_uffd_rwp() && rwp.is_protnone() && !rwp.is_accessible() && !rwp.is_write());
        assert_eq!(rwp.pfn(), Pfn(0x42));
        assert!(!page.mkprotnone().is_uffd_rwp(), "mprotect(PROT_NONE) is no RWP protection");
        assert!(!page.mkuffd_wp().is_uffd_rwp(), "nor is write protection");
        let back = rwp.clear_uffd_rwp();
        assert!(back.is_accessible() && !back.is_uffd_wp() && !back.is_write());
        assert_eq!(Entry::NONE.mkuffd_rwp(), Entry::NONE, "only present leaves are protected");
    }

    #[test]
    fn table_versus_huge_leaf_at_pmd() {
        assert_eq!(Entry::table(7).kind(Level::Pmd), EntryKind::Table(7));
        let huge = Entry::present(Pfn(512), LeafFlags::default(), true);
        assert!(huge.is_leaf(Level::Pmd));
        assert!(!huge.is_table(Level::Pmd));
    }

    #[test]
    fn swap_kinds_round_trip() {
        for kind in [
            SwapKind::Swap,
            SwapKind::MigrationRead,
            SwapKind::MigrationReadExclusive,
            SwapKind::MigrationWrite,
            SwapKind::DevicePrivateRead,
            SwapKind::DevicePrivateWrite,
            SwapKind::DeviceExclusive,
            SwapKind::Hwpoison,
            SwapKind::Marker,
        ] {
            let e = Entry::swap(kind, 0x1234, false);
            assert!(!e.is_present() && !e.is_none());
            assert_eq!(e.kind(Level::Pte), EntryKind::NonPresent { kind, offset: 0x1234 });
        }
    }

    #[test]
    fn uffd_wp_markers_are_recognised_and_nothing_else_is() {
        let marker = Entry::uffd_wp_marker();
        assert!(marker.is_uffd_wp_marker() && !marker.is_none() && !marker.is_present());
        assert!(!marker.is_guard_marker() && !marker.is_uffd_wp(), "not a guard, not a present uffd-wp page");
        for other in [
            Entry::guard_marker(),
            Entry::swap(SwapKind::Swap, PTE_MARKER_UFFD_WP, false),
            Entry::present(Pfn(PTE_MARKER_UFFD_WP), LeafFlags::default(), false).mkuffd_wp(),
            Entry::NONE,
        ] {
            assert!(!other.is_uffd_wp_marker(), "{other:?}");
        }
    }

    #[test]
    fn a_swap_entry_carries_the_uffd_wp_bit_apart_from_its_slot() {
        let entry = Entry::swap(SwapKind::Swap, 0x1234, false);
        let wp = entry.swp_mkuffd_wp();
        assert!(wp.is_swp_uffd_wp() && !entry.is_swp_uffd_wp() && !wp.is_uffd_wp());
        assert_eq!((wp.swap_kind(), wp.pfn()), (Some(SwapKind::Swap), Pfn(0x1234)));
        assert_eq!(wp.swp_clear_uffd_wp(), entry);
        assert!(!Entry::NONE.swp_mkuffd_wp().is_swp_uffd_wp(), "none stays none");
        let present = Entry::present(Pfn(1), LeafFlags::default(), false).mkuffd_wp();
        assert!(!present.is_swp_uffd_wp() && present.swp_clear_uffd_wp() == present);
    }

    #[test]
    fn guard_markers_are_recognised_and_nothing_else_is() {
        let guard = Entry::guard_marker();
        assert!(guard.is_guard_marker() && !guard.is_none() && !guard.is_present() && guard.is_leaf(Level::Pte));
        assert_eq!(guard.kind(Level::Pte), EntryKind::NonPresent { kind: SwapKind::Marker, offset: PTE_MARKER_GUARD });
        assert_ne!(Entry::raw_plain_anomaly(guard.raw()), 0, "not a plain page");
        // A uffd-wp marker (bit 0), a swap entry with slot 4 and a present
        // page with frame 4 are not guard markers.
        for other in [
            Entry::swap(SwapKind::Marker, 1, false),
            Entry::swap(SwapKind::Swap, PTE_MARKER_GUARD, false),
            Entry::present(Pfn(PTE_MARKER_GUARD), LeafFlags::default(), false),
            Entry::NONE,
        ] {
            assert!(!other.is_guard_marker(), "{other:?}");
        }
    }

    #[test]
    fn raw_plain_decoding_agrees_with_the_entry() {
        let plain = |write, dirty, accessed| LeafFlags { write, dirty, accessed, special: false };
        for flags in [plain(true, true, true), plain(false, false, true), plain(true, false, false)] {
            let e = Entry::present(Pfn(0xabcde), flags, false);
            assert_eq!(Entry::raw_plain_anomaly(e.raw()), 0);
            assert_eq!(Entry::raw_plain_pfn(e.raw()), 0xabcde);
            assert_eq!(Entry::raw_write(e.raw(), 62) != 0, flags.write);
            assert_eq!(Entry::raw_write(e.raw(), 62) & !(1 << 62), 0);
        }
        let special = Entry::present(Pfn(1), LeafFlags { special: true, ..Default::default() }, false);
        let others = [
            Entry::NONE,
            special,
            Entry::present(Pfn(1), LeafFlags::default(), false).mkprotnone(),
            Entry::present(Pfn(1), LeafFlags::default(), true),
            Entry::swap(SwapKind::MigrationWrite, 1, false),
            Entry::swap(SwapKind::DevicePrivateWrite, 1, false),
            Entry::from_raw(Entry::present(Pfn(1), LeafFlags::default(), false).raw() | 1 << 60),
        ];
        for e in others {
            assert_ne!(Entry::raw_plain_anomaly(e.raw()), 0, "{e:?}");
        }
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
