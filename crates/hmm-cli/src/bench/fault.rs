//! Category 2: `range_fault` with `HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE`
//! over untouched anonymous memory (every page allocated, zeroed and
//! mapped through the remote-fault path), in ns per 4 KiB page, against a
//! memset of the same bytes.

use super::fixture::Untouched;
use super::limits::Memset;
use super::measure::paired;
use super::report::{Figure, Limit, Row, Target};
use super::{Case, Mode};

/// Bytes faulted per run.
pub const LEN: u64 = 64 << 20;

/// 4K pages and THPs.
pub fn cases(mode: Mode) -> Vec<Case> {
    [(false, "4k", "4K pages"), (true, "thp", "2M THP")]
        .into_iter()
        .map(|(thp, id, name)| {
            Case::new(format!("range_fault with faulting, {name}"), move || {
                let mut untouched = Untouched::new(LEN, thp)?;
                let mut memset = Memset::new(LEN);
                let pair = paired(mode.heavy_plan(), || Ok(memset.run()), || untouched.fault())?;
                let pages = untouched.pages() as f64;
                Ok(vec![Row::new(
                    2,
                    &format!("fault/{id}"),
                    &format!("range_fault+fault of {} MiB, {name}", LEN >> 20),
                    Figure::new(pair.subject_ns / pages, "ns/4KiB"),
                    Limit::measured("memset", Figure::new(pair.limit_ns / pages, "ns/4KiB")),
                    pair.ratio,
                    Target::AtMost(2.0),
                )])
            })
        })
        .collect()
}
