//! Category 1: a snapshot (`range_fault`, no fault requested) of populated
//! memory of each leaf kind, in ns per 4 KiB slot, against a streaming
//! u64 read-plus-write of as many words as there are slots.

use super::fixture::{Leaves, Populated};
use super::limits::Stream;
use super::measure::paired;
use super::report::{Figure, Limit, Row, Target};
use super::{Case, Mode};

/// Bytes each snapshot covers: 8192 slots, 16 page-table pages of PTEs
/// (64 KiB of entries, like the limit's 64 KiB per array).
const LEN: u64 = 32 << 20;

const KINDS: [(Leaves, &str, &str, f64); 5] = [
    (Leaves::Anon4k, "4k", "4K anonymous", 3.0),
    (Leaves::Thp, "thp", "2M THP", 1.5),
    (Leaves::FsDax, "fsdax_pmd", "fs-dax PMD (2M)", 1.5),
    (Leaves::DevDax, "devdax_pud", "device-DAX PUD (1G)", 1.5),
    (Leaves::Hugetlb, "hugetlb_2m", "hugetlb 2M", 1.5),
];

/// One case per leaf kind.
pub fn cases(mode: Mode) -> Vec<Case> {
    KINDS
        .into_iter()
        .map(|(leaves, id, name, within)| {
            Case::new(format!("snapshot, {name}"), move || {
                let mut populated = Populated::new(leaves, LEN)?;
                let mut stream = Stream::new(populated.slots());
                let pair = paired(mode.plan(), || Ok(stream.run()), || populated.snapshot())?;
                let slots = populated.slots() as f64;
                Ok(vec![Row::new(
                    1,
                    &format!("snapshot/{id}"),
                    &format!("snapshot of {} MiB, {name}", LEN >> 20),
                    Figure::new(pair.subject_ns / slots, "ns/slot"),
                    Limit::measured("stream r+w u64", Figure::new(pair.limit_ns / slots, "ns/slot")),
                    pair.ratio,
                    Target::AtMost(within),
                )])
            })
        })
        .collect()
}
