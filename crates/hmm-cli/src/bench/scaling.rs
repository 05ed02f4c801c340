//! Category 7: categories 1 and 2 (snapshot of populated anonymous memory,
//! range_fault with faulting of untouched memory, 4K and THP) at growing
//! sizes. The cost per page should not grow with the size.
//!
//! The slope is the cost per page at the largest size over the cost at the
//! smallest. The machine has a slope of its own (a 4 MiB memset stays in
//! cache, a 1 GiB one goes to DRAM), so each size also times the
//! category's limit at that size, and the figure judged is the model's
//! slope over the limit's: how much worse the model scales than the plain
//! memory operation it is compared with.

use hmm_types::PAGE_SHIFT;

use super::fixture::{Leaves, Populated, Untouched};
use super::limits::{Memset, Stream};
use super::measure::{paired, slope, Pair};
use super::report::{fmt_number, Figure, Limit, Row, Target};
use super::{BenchError, Case, Mode};

#[derive(Clone, Copy, Debug)]
enum Subject {
    Snapshot(Leaves),
    Fault { thp: bool },
}

const SUBJECTS: [(Subject, &str, &str); 4] = [
    (Subject::Snapshot(Leaves::Anon4k), "snapshot_4k", "snapshot, 4K"),
    (Subject::Snapshot(Leaves::Thp), "snapshot_thp", "snapshot, 2M THP"),
    (Subject::Fault { thp: false }, "fault_4k", "range_fault+fault, 4K"),
    (Subject::Fault { thp: true }, "fault_thp", "range_fault+fault, 2M THP"),
];

/// One case per subject, every size inside it.
pub fn cases(mode: Mode) -> Vec<Case> {
    SUBJECTS
        .into_iter()
        .map(|(subject, id, name)| {
            let sizes = mode.scaling_sizes();
            let label = format!("scaling, {name}, {}", sizes.iter().map(|&s| size(s)).collect::<Vec<_>>().join("/"));
            Case::new(label, move || {
                let mut points = Vec::new();
                for &len in sizes {
                    points.push((len >> PAGE_SHIFT, measure_at(mode, subject, len)?));
                }
                Ok(vec![scaling_row(id, name, &points)?])
            })
        })
        .collect()
}

/// The subject and its limit at one size.
fn measure_at(mode: Mode, subject: Subject, len: u64) -> Result<Pair, BenchError> {
    match subject {
        Subject::Snapshot(leaves) => {
            let mut populated = Populated::new(leaves, len)?;
            let mut stream = Stream::new(populated.slots());
            paired(mode.plan(), || Ok(stream.run()), || populated.snapshot())
        }
        Subject::Fault { thp } => {
            let mut untouched = Untouched::new(len, thp)?;
            let mut memset = Memset::new(len);
            paired(mode.heavy_plan(), || Ok(memset.run()), || untouched.fault())
        }
    }
}

/// A size in MiB or GiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// The row for `points` of `(pages, subject and limit ns)`.
fn scaling_row(id: &str, name: &str, points: &[(u64, Pair)]) -> Result<Row, BenchError> {
    let of = |pick: fn(&Pair) -> f64| points.iter().map(|(n, p)| (*n, pick(p))).collect::<Vec<_>>();
    let (subject, limit) = (of(|p| p.subject_ns), of(|p| p.limit_ns));
    let two_sizes = || BenchError("scaling needs two sizes".into());
    let subject_slope = slope(&subject).ok_or_else(two_sizes)?;
    let limit_slope = slope(&limit).ok_or_else(two_sizes)?;
    let (small, big) = (points.first().expect("two sizes").0, points.last().expect("two sizes").0);
    let per_page = |(pages, ns): &(u64, f64)| fmt_number(ns / *pages as f64);
    let figures: Vec<String> = subject
        .iter()
        .zip(&limit)
        .map(|(s, l)| format!("{} {} ({})", size(s.0 << PAGE_SHIFT), per_page(s), per_page(l)))
        .collect();
    Ok(Row::new(
        7,
        &format!("scaling/{id}"),
        &format!("{name}, {} -> {}", size(small << PAGE_SHIFT), size(big << PAGE_SHIFT)),
        Figure::new(subject_slope, "x slope"),
        Limit::measured("limit's own slope", Figure::new(limit_slope, "x slope")),
        subject_slope / limit_slope,
        Target::Flat(0.2),
    )
    .with_note(format!("ns per 4 KiB page (limit's): {}", figures.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::super::report::Verdict;
    use super::*;

    fn pair(subject_ns: f64, limit_ns: f64) -> Pair {
        Pair { subject_ns, limit_ns, ratio: subject_ns / limit_ns }
    }

    #[test]
    fn the_row_judges_the_slope_relative_to_the_limits() {
        // The model's cost per page grows 1.3x; the limit's 1.1x.
        let points = [
            (1024, pair(1024.0, 512.0)),
            (16384, pair(16384.0 * 1.1, 16384.0 * 0.5)),
            (262144, pair(262144.0 * 1.3, 262144.0 * 0.55)),
        ];
        let row = scaling_row("fault_4k", "fault, 4K", &points).unwrap();
        assert!((row.measured.as_ref().unwrap().value - 1.3).abs() < 1e-9);
        assert!((row.limit.as_ref().unwrap().value - 1.1).abs() < 1e-9);
        assert!((row.ratio - 1.3 / 1.1).abs() < 1e-9);
        assert_eq!(row.verdict, Verdict::Met);
        assert_eq!(row.what, "fault, 4K, 4M -> 1G");
        assert_eq!(
            row.note.as_deref(),
            Some("ns per 4 KiB page (limit's): 4M 1.00 (0.500), 64M 1.10 (0.500), 1G 1.30 (0.550)")
        );
    }

    #[test]
    fn one_size_is_not_a_slope() {
        assert!(scaling_row("x", "x", &[(1024, pair(1.0, 1.0))]).is_err());
    }
}
