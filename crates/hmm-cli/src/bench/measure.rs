//! Timing: warm-up, repetitions, medians, and the ratio and slope
//! arithmetic every category reports with.
//!
//! A subject and its limit are timed alternately (limit, subject, limit,
//! subject, …) so that whatever else the machine is doing at a given moment
//! weighs on both; each figure is the median of its repetitions. A closure
//! returns the duration it measured itself, so untimed set-up (a fresh
//! mapping, a refilled table) can sit inside it.

use std::time::{Duration, Instant};

/// How many times to run each measurement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan {
    /// Untimed runs first (host page faults, caches, branch predictors).
    pub warmups: u32,
    /// Timed runs; the median is reported.
    pub reps: u32,
}

/// Medians of a subject and its limit, timed in the same run.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Pair {
    /// The limit, ns per run.
    pub limit_ns: f64,
    /// The subject, ns per run.
    pub subject_ns: f64,
    /// The median of the ratios of each repetition's subject to the limit
    /// timed just before it: steadier than the ratio of the medians when
    /// the load on the machine changes during the measurement.
    pub ratio: f64,
}

/// Times `run` once.
pub fn time(run: impl FnOnce()) -> Duration {
    let start = Instant::now();
    run();
    start.elapsed()
}

/// Median of `samples` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}

/// Times `limit` and `subject` alternately; medians of each. The first
/// error stops it.
pub fn paired<E>(
    plan: Plan,
    mut limit: impl FnMut() -> Result<Duration, E>,
    mut subject: impl FnMut() -> Result<Duration, E>,
) -> Result<Pair, E> {
    for _ in 0..plan.warmups {
        limit()?;
        subject()?;
    }
    let reps = plan.reps.max(1) as usize;
    let (mut limits, mut subjects, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let limit_ns = limit()?.as_secs_f64() * 1e9;
        let subject_ns = subject()?.as_secs_f64() * 1e9;
        limits.push(limit_ns);
        subjects.push(subject_ns);
        ratios.push(ratio(subject_ns, limit_ns));
    }
    Ok(Pair { limit_ns: median(&mut limits), subject_ns: median(&mut subjects), ratio: median(&mut ratios) })
}

/// `subject / limit`: how many times the limit the subject costs.
pub fn ratio(subject: f64, limit: f64) -> f64 {
    subject / limit
}

/// The slope of a cost per unit over sizes: cost per unit at the largest
/// size over cost per unit at the smallest (1.0 is perfectly flat).
/// `points` are `(units, total cost)`; `None` for fewer than two.
pub fn slope(points: &[(u64, f64)]) -> Option<f64> {
    let small = points.iter().min_by_key(|p| p.0)?;
    let big = points.iter().max_by_key(|p| p.0)?;
    if points.len() < 2 || small.0 == big.0 || small.0 == 0 {
        return None;
    }
    Some((big.1 / big.0 as f64) / (small.1 / small.0 as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn median_ignores_one_outlier() {
        assert_eq!(median(&mut [10.0, 11.0, 1000.0, 9.0, 10.5]), 10.5);
    }

    #[test]
    fn ratio_is_subject_over_limit() {
        assert_eq!(ratio(6.0, 2.0), 3.0);
        assert_eq!(ratio(1.0, 4.0), 0.25);
    }

    #[test]
    fn slope_compares_cost_per_unit_at_the_ends() {
        // 10 ns per unit at both ends: flat.
        assert_eq!(slope(&[(1, 10.0), (16, 160.0), (256, 2560.0)]), Some(1.0));
        // 10 ns per unit small, 12 ns per unit big, given in any order.
        let s = slope(&[(256, 3072.0), (1, 10.0), (16, 170.0)]).unwrap();
        assert!((s - 1.2).abs() < 1e-12);
    }

    #[test]
    fn slope_needs_two_distinct_sizes() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(4, 1.0)]), None);
        assert_eq!(slope(&[(4, 1.0), (4, 2.0)]), None);
    }

    #[test]
    fn paired_reports_each_side_and_runs_warmups_untimed() {
        let (limits, subjects) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let plan = Plan { warmups: 2, reps: 3 };
        let pair = paired(
            plan,
            || {
                limits.set(limits.get() + 1);
                Ok(Duration::from_nanos(100))
            },
            || {
                subjects.set(subjects.get() + 1);
                Ok::<_, ()>(Duration::from_nanos(300))
            },
        );
        assert_eq!((limits.get(), subjects.get()), (5, 5));
        assert_eq!(pair, Ok(Pair { limit_ns: 100.0, subject_ns: 300.0, ratio: 3.0 }));
    }

    #[test]
    fn the_ratio_is_the_median_of_each_repetitions_ratio() {
        // The machine slows down mid-way: both sides double together.
        let times = std::cell::RefCell::new(vec![100, 300, 100, 300, 200, 600, 200, 600, 200, 600].into_iter());
        let next = || Ok::<_, ()>(Duration::from_nanos(times.borrow_mut().next().unwrap()));
        let pair = paired(Plan { warmups: 0, reps: 5 }, next, next).unwrap();
        assert_eq!(pair.ratio, 3.0);
        assert_eq!((pair.limit_ns, pair.subject_ns), (200.0, 600.0));
    }

    #[test]
    fn the_first_error_stops_a_measurement() {
        let calls = std::cell::Cell::new(0);
        let limit = || Ok(Duration::from_nanos(1));
        let result = paired(Plan { warmups: 1, reps: 5 }, limit, || {
            calls.set(calls.get() + 1);
            if calls.get() == 3 {
                Err("broken")
            } else {
                Ok(Duration::from_nanos(1))
            }
        });
        assert_eq!(result, Err("broken"));
        assert_eq!(calls.get(), 3);
    }
}
