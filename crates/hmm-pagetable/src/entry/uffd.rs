//! The userfaultfd bits of a present leaf: write protection (the UFFD_WP
//! bit with WRITE cleared) and Linux 7.3's read-write protection (RWP:
//! PROT_NONE with the UFFD_WP bit). The non-present uffd-wp marker is in
//! `super::marker`.
//!
//! Linux: `pte_uffd_wp`, `pte_mkuffd_wp`, `pte_clear_uffd_wp`
//! (`arch/x86/include/asm/pgtable.h`), `change_pte_range` with
//! `MM_CP_UFFD_RWP` (7.3).

use super::{Entry, PRESENT, PROTNONE, UFFD_WP, WRITE};

impl Entry {
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
}

#[cfg(test)]
mod tests {
    use hmm_types::Pfn;

    use crate::entry::{Entry, LeafFlags};

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
}
