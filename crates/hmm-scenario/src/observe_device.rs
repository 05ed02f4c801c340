//! What a test-device command reports: `cpages`, `faults`, and the data it
//! copied back (READ's buffer as runs of 32-bit words, SNAPSHOT's bytes as
//! runs), printed compactly so an `expect` line can state it.
//!
//! Linux: `struct hmm_dmirror_cmd` and the `HMM_DMIRROR_PROT_*` bytes
//! (`lib/test_hmm_uapi.h`).

use core::fmt;

use serde::{Deserialize, Serialize};

/// A run of equal values (`step` 0) or of values counting up by one
/// (`step` 1), starting at `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// How many values.
    pub count: u64,
    /// The first value.
    pub first: u32,
    /// 0: all equal; 1: each one more than the last.
    pub step: u32,
}

/// Runs of `values`, greedily: a counting run where the next value is one
/// more (and a constant run does not continue), a constant run otherwise.
pub fn runs(values: impl IntoIterator<Item = u32>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for v in values {
        if let Some(last) = out.last_mut() {
            let next = last.first.wrapping_add(last.step.wrapping_mul(last.count as u32));
            if v == next {
                last.count += 1;
                continue;
            }
            if last.count == 1 && v == last.first.wrapping_add(1) {
                last.step = 1;
                last.count = 2;
                continue;
            }
        }
        out.push(Run { count: 1, first: v, step: 0 });
    }
    out
}

/// The result of a successful test-device command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceResult {
    /// `cmd.cpages` after the call.
    pub cpages: u64,
    /// `cmd.faults` after the call.
    pub faults: u64,
    /// The buffer as 32-bit little-endian words, for commands that fill it.
    pub words: Option<Vec<Run>>,
    /// SNAPSHOT's bytes, one per page.
    pub snapshot: Option<Vec<Run>>,
}

/// The 32-bit little-endian words of `data` as runs.
pub fn word_runs(data: &[u8]) -> Vec<Run> {
    runs(data.chunks(4).map(|c| c.iter().rev().fold(0u32, |w, &b| w << 8 | b as u32)))
}

impl DeviceResult {
    /// A result with the buffer `data` (`words`) or SNAPSHOT bytes.
    pub fn new(cpages: u64, faults: u64, data: Option<&[u8]>, snapshot: Option<&[u8]>) -> Self {
        let words = data.map(word_runs);
        let snapshot = snapshot.map(|s| runs(s.iter().map(|&b| b as u32)));
        Self { cpages, faults, words, snapshot }
    }
}

/// SNAPSHOT's `HMM_DMIRROR_PROT_PMD` bit.
const PROT_PMD: u32 = 0x04;

impl DeviceResult {
    /// The model's SNAPSHOT shows PMD leaves where the kernel's shows the
    /// same bytes without: the kernel did not get a THP (which Linux
    /// allows), not a divergence.
    pub fn thp_fallback(model: &Self, host: &Self) -> bool {
        let (Some(m), Some(h)) = (&model.snapshot, &host.snapshot) else { return false };
        let expand = |runs: &[Run]| -> Vec<u32> {
            runs.iter().flat_map(|r| (0..r.count).map(move |i| r.first.wrapping_add(r.step * i as u32))).collect()
        };
        let (m, h) = (expand(m), expand(h));
        model.cpages == host.cpages
            && m.len() == h.len()
            && m.iter().zip(&h).all(|(a, b)| a == b || (a & PROT_PMD != 0 && a & !PROT_PMD == *b))
    }
}

fn show_runs(f: &mut fmt::Formatter<'_>, label: &str, runs: &[Run]) -> fmt::Result {
    write!(f, " {label}")?;
    show_run_list(f, runs)
}

/// ` 1024*0x0++ 2*0x7`: each run after a space.
pub(crate) fn show_run_list(f: &mut fmt::Formatter<'_>, runs: &[Run]) -> fmt::Result {
    for r in runs {
        let up = if r.step == 1 { "++" } else { "" };
        write!(f, " {}*{:#x}{up}", r.count, r.first)?;
    }
    Ok(())
}

/// `cpages=N faults=N`, then `words 1024*0x0++` (N words counting up from
/// V) or `snap 2*0x3 1*0x0` (N bytes of V).
impl fmt::Display for DeviceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpages={} faults={}", self.cpages, self.faults)?;
        if let Some(words) = &self.words {
            show_runs(f, "words", words)?;
        }
        if let Some(snap) = &self.snapshot {
            show_runs(f, "snap", snap)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_count_up_or_repeat() {
        let r = runs([0, 1, 2, 3, 7, 7, 7, 9]);
        assert_eq!(
            r,
            [
                Run { count: 4, first: 0, step: 1 },
                Run { count: 3, first: 7, step: 0 },
                Run { count: 1, first: 9, step: 0 }
            ]
        );
        assert_eq!(runs([5, 5, 6, 7]).len(), 2, "a constant run is not broken into a counting one");
    }

    #[test]
    fn a_missing_pmd_bit_is_a_thp_fallback_only() {
        let model = DeviceResult::new(2, 0, None, Some(&[0x6, 0x6]));
        let small = DeviceResult::new(2, 0, None, Some(&[0x2, 0x2]));
        let other = DeviceResult::new(2, 0, None, Some(&[0x1, 0x2]));
        assert!(DeviceResult::thp_fallback(&model, &small));
        assert!(!DeviceResult::thp_fallback(&small, &model), "the kernel huge, the model not: a divergence");
        assert!(!DeviceResult::thp_fallback(&model, &other));
    }

    #[test]
    fn results_print_compactly() {
        let data: Vec<u8> = (0u32..8).flat_map(|i| i.to_le_bytes()).collect();
        let r = DeviceResult::new(1, 1, Some(&data), None);
        assert_eq!(r.to_string(), "cpages=1 faults=1 words 8*0x0++");
        let s = DeviceResult::new(3, 0, None, Some(&[0x3, 0x3, 0x0]));
        assert_eq!(s.to_string(), "cpages=3 faults=0 snap 2*0x3 1*0x0");
    }
}
