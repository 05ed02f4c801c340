//! Decoding raw PTE words in tight loops (`hmm::range_fault`'s fast
//! path, the device mirrors): one operation per word, one check per batch.

use super::{Entry, HUGE, PFN_MASK, PFN_SHIFT, PRESENT, PROTNONE, SPECIAL, WRITE};

impl Entry {
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
}

#[cfg(test)]
mod tests {
    use hmm_types::Pfn;

    use crate::entry::{Entry, LeafFlags, SwapKind};

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
}
