//! Category 6, the seed patch's argument in numbers: mirroring a populated
//! range with `range_fault` (no reference taken) against
//! `pin_user_pages` plus the unpin of the same range (a reference per
//! page, `hmm-mm`'s `gup.rs`).

use std::cell::RefCell;

use super::fixture::{Leaves, Populated};
use super::measure::paired;
use super::report::{Figure, Limit, Row, Target};
use super::{Case, Mode};

/// Bytes mirrored or pinned.
const LEN: u64 = 64 << 20;

/// 4K pages and THPs.
pub fn cases(mode: Mode) -> Vec<Case> {
    [(Leaves::Anon4k, "4k", "4K anonymous"), (Leaves::Thp, "thp", "2M THP")]
        .into_iter()
        .map(|(leaves, id, name)| {
            Case::new(format!("mirror versus pin, {name}"), move || {
                let populated = RefCell::new(Populated::new(leaves, LEN)?);
                let pin = || populated.borrow().pin_unpin();
                let pair = paired(mode.plan(), pin, || populated.borrow_mut().snapshot())?;
                let (pin_ns, mirror_ns) = (pair.limit_ns, pair.subject_ns);
                let pages = populated.borrow().slots() as f64;
                Ok(vec![Row::new(
                    6,
                    &format!("mirror_vs_pin/{id}"),
                    &format!("range_fault of {} MiB, {name}", LEN >> 20),
                    Figure::new(mirror_ns / pages, "ns/4KiB"),
                    Limit::measured("pin_user_pages+unpin", Figure::new(pin_ns / pages, "ns/4KiB")),
                    pair.ratio,
                    Target::Faster,
                )])
            })
        })
        .collect()
}
