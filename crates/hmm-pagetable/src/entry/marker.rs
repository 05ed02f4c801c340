//! Marker entries: non-present PTEs of kind [`SwapKind::Marker`] with no
//! page behind them, whose offset holds `PTE_MARKER_*` bits. A guard
//! marker ([`Entry::guard_marker`]) makes every access fault; a uffd-wp
//! marker ([`Entry::uffd_wp_marker`]) is a none entry that remembers it is
//! write-protected for userfaultfd.
//!
//! Linux: `make_pte_marker`, `is_guard_pte_marker`, `pte_marker_uffd_wp`
//! (`include/linux/swapops.h`, `include/linux/mm_inline.h`).

use super::{Entry, SwapKind, KIND_MASK, KIND_SHIFT, PFN_MASK, PFN_SHIFT};

/// The marker bit of a guard region's PTE (`PTE_MARKER_GUARD`, bit 2).
pub const PTE_MARKER_GUARD: u64 = 1 << 2;
/// The marker bit of a write-protected none entry (`PTE_MARKER_UFFD_WP`,
/// bit 0): userfaultfd WP over unpopulated memory.
pub const PTE_MARKER_UFFD_WP: u64 = 1 << 0;

impl Entry {
    /// A guard marker (`make_pte_marker(PTE_MARKER_GUARD)`): a PTE-level
    /// entry with no page behind it that makes every access fault.
    #[inline]
    pub const fn guard_marker() -> Self {
        Self::swap(SwapKind::Marker, PTE_MARKER_GUARD, false)
    }
    /// `is_guard_pte_marker`: a marker entry carrying the guard bit.
    #[inline]
    pub const fn is_guard_marker(self) -> bool {
        self.has_marker_bit(PTE_MARKER_GUARD)
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
        self.has_marker_bit(PTE_MARKER_UFFD_WP)
    }

    /// A PTE-level marker entry whose marker bits include `bit`.
    #[inline]
    const fn has_marker_bit(self, bit: u64) -> bool {
        !self.is_present()
            && !self.is_huge()
            && (self.0 & KIND_MASK) >> KIND_SHIFT == SwapKind::Marker as u64
            && ((self.0 & PFN_MASK) >> PFN_SHIFT) & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::Pfn;

    use super::*;
    use crate::entry::{EntryKind, LeafFlags};
    use crate::level::Level;

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
}
