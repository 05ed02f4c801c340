//! Category 8: what the model spends per 4 KiB of mapped memory, in bytes
//! and as a share of the 4 KiB: the page-table pages the mapping needed
//! (counted by the machine) and the per-frame bookkeeping of every frame
//! involved, data and page tables alike
//! ([`PhysMem::ram_metadata_bytes_per_frame`]: `FrameMeta` and the buddy
//! byte). Linux's `struct page` alone is 64 bytes, 1.56%.

use hmm_mm::phys::PhysMem;
use hmm_types::PAGE_SIZE;

use super::fixture::{Leaves, Populated};
use super::report::{Figure, Limit, Row, Target};
use super::{Case, Mode};

/// Bytes mapped.
const LEN: u64 = 256 << 20;

/// Bytes per 4 KiB page for `pages` data frames that needed `tables`
/// page-table frames, at `meta` bytes of bookkeeping per frame.
pub fn bytes_per_page(pages: u64, tables: u64, meta: u64) -> f64 {
    let bytes = tables * PAGE_SIZE + (pages + tables) * meta;
    bytes as f64 / pages as f64
}

/// 4K pages and THPs.
pub fn cases(_mode: Mode) -> Vec<Case> {
    [(Leaves::Anon4k, "4k", "4K anonymous"), (Leaves::Thp, "thp", "2M THP")]
        .into_iter()
        .map(|(leaves, id, name)| {
            Case::new(format!("memory overhead, {name}"), move || {
                let populated = Populated::new(leaves, LEN)?;
                let phys = populated.mm.phys();
                // Every page-table page of this machine belongs to this
                // mapping (the address space is otherwise empty).
                let tables = phys.page_table_frames();
                let pages = populated.slots();
                let meta = PhysMem::ram_metadata_bytes_per_frame();
                let per_page = bytes_per_page(pages, tables, meta);
                Ok(vec![Row::new(
                    8,
                    &format!("overhead/{id}"),
                    &format!("model memory per 4 KiB mapped, {name}"),
                    Figure::new(per_page, "B/4KiB"),
                    Limit::fixed("the 4 KiB itself"),
                    per_page / PAGE_SIZE as f64,
                    Target::PercentAtMost(0.016),
                )
                .with_note(format!(
                    "{tables} page-table pages for {} MiB; {meta} B of FrameMeta+buddy per frame",
                    LEN >> 20
                ))])
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_page_counts_tables_and_every_frames_metadata() {
        // 512 pages, one PTE table: 4096 B of table and 513 × 32 B of
        // metadata over 512 pages.
        let per_page = bytes_per_page(512, 1, 32);
        assert!((per_page - (4096.0 + 513.0 * 32.0) / 512.0).abs() < 1e-9);
        assert_eq!(bytes_per_page(512, 0, 32), 32.0);
    }
}
