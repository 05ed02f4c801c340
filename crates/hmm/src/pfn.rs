//! The 64-bit hmm pfn word (Linux 7.3 layout, delta §1.2): VALID, WRITE
//! and ERROR in bits 63–61, the sticky DMA_MAPPED, P2PDMA and P2PDMA_BUS in
//! bits 60–58, the map order in bits 53–57 (five bits, none free), the
//! frame number in bits 0–52.
//!
//! On input the same word carries requests (`REQ_FAULT`, `REQ_WRITE`) and
//! the sticky DMA bookkeeping bits, which every output keeps.
//!
//! Linux: `include/linux/hmm.h` (`enum hmm_pfn_flags`,
//! `hmm_pfn_to_map_order`, `hmm_pfn_to_page`).

use hmm_types::Pfn;

/// Output: the pfn is valid and at least readable (`HMM_PFN_VALID`).
pub const HMM_PFN_VALID: u64 = 1 << 63;
/// Output: writable (`HMM_PFN_WRITE`).
pub const HMM_PFN_WRITE: u64 = 1 << 62;
/// Output: no access possible (`HMM_PFN_ERROR`).
pub const HMM_PFN_ERROR: u64 = 1 << 61;
/// Sticky: the driver DMA-mapped this index (`HMM_PFN_DMA_MAPPED`).
pub const HMM_PFN_DMA_MAPPED: u64 = 1 << 60;
/// Sticky: PCI P2PDMA through the host bridge (`HMM_PFN_P2PDMA`).
pub const HMM_PFN_P2PDMA: u64 = 1 << 59;
/// Sticky: PCI P2PDMA by bus address (`HMM_PFN_P2PDMA_BUS`).
pub const HMM_PFN_P2PDMA_BUS: u64 = 1 << 58;
/// Input: the output must be VALID (`HMM_PFN_REQ_FAULT`).
pub const HMM_PFN_REQ_FAULT: u64 = HMM_PFN_VALID;
/// Input: the output must be WRITE (`HMM_PFN_REQ_WRITE`).
pub const HMM_PFN_REQ_WRITE: u64 = HMM_PFN_WRITE;
/// Where the map order starts (`HMM_PFN_ORDER_SHIFT` = 64 - 11).
pub const HMM_PFN_ORDER_SHIFT: u32 = 53;
/// The flag bits (`HMM_PFN_FLAGS`): everything above the pfn.
pub const HMM_PFN_FLAGS: u64 = !((1 << HMM_PFN_ORDER_SHIFT) - 1);
/// Bits kept from input to output (`HMM_PFN_INOUT_FLAGS`).
pub const HMM_PFN_INOUT_FLAGS: u64 = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS;

/// The frame of a VALID output word (`hmm_pfn_to_page` without the page).
pub const fn hmm_pfn_to_pfn(word: u64) -> Pfn {
    Pfn(word & !HMM_PFN_FLAGS)
}

/// The physical address of a VALID output word (`hmm_pfn_to_phys`).
pub const fn hmm_pfn_to_phys(word: u64) -> u64 {
    (word & !HMM_PFN_FLAGS) << hmm_types::PAGE_SHIFT
}

/// The order of the CPU mapping that covers the word's page
/// (`hmm_pfn_to_map_order`): 0, 9 or 18.
pub const fn hmm_pfn_to_map_order(word: u64) -> u32 {
    ((word >> HMM_PFN_ORDER_SHIFT) & 0x1f) as u32
}

/// The output bits for a mapping of `order`.
pub(crate) const fn order_bits(order: u32) -> u64 {
    (order as u64) << HMM_PFN_ORDER_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delta §1.2 corrects the spec: bit 57 belongs to the order field.
    #[test]
    fn order_field_is_bits_53_to_57_and_the_sticky_flags_sit_above_it() {
        let order_field = order_bits(0x1f);
        assert_eq!(order_field, 0x03e0_0000_0000_0000);
        assert_eq!(HMM_PFN_INOUT_FLAGS, 0x1c00_0000_0000_0000);
        assert_eq!(order_field & HMM_PFN_INOUT_FLAGS, 0, "no sticky flag inside the order field");
        let outputs = HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_ERROR;
        assert_eq!(outputs | HMM_PFN_INOUT_FLAGS | order_field, HMM_PFN_FLAGS, "the eleven flag bits, none free");
        assert_eq!(
            hmm_pfn_to_map_order(HMM_PFN_INOUT_FLAGS | order_bits(18)),
            18,
            "sticky bits do not leak into the order"
        );
    }

    #[test]
    fn layout_matches_linux() {
        assert_eq!(HMM_PFN_FLAGS, 0xffe0_0000_0000_0000);
        let word = HMM_PFN_VALID | HMM_PFN_WRITE | order_bits(9) | 0x1234;
        assert_eq!(hmm_pfn_to_map_order(word), 9);
        assert_eq!(hmm_pfn_to_pfn(word), Pfn(0x1234));
        assert_eq!(hmm_pfn_to_phys(word), 0x1234 << 12);
        assert_eq!(hmm_pfn_to_map_order(order_bits(18)), 18);
    }
}
