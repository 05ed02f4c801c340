//! Kernel against model, test by test: the verdicts must be the same (an
//! expected failure counts as a failure); a difference is a mismatch
//! unless the known-defects table records it for this configuration.
//! Where both failed, the failure messages are set side by side and their
//! errnos compared, as information: the kernel's assertion
//! (`Expected ret (-2) == 0 (0)`) and the model's (`the command failed:
//! ENOENT`) are written differently, the errno they saw is comparable.
//! Kernel log lines showing trouble (a WARN, a BUG, an oops, a leak) while
//! a test ran are shown even when the verdicts agree.

use hmm_types::Errno;

use super::{KnownDefects, TapRun, Verdict};
use crate::Outcome;

/// How a test's two verdicts relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Agreement {
    /// Same verdict.
    Same,
    /// Different, as the entry (index) of the known-defects table says the
    /// defective kernel reports.
    KnownDefect(usize),
    /// Different, and not known: a divergence to fix.
    Mismatch,
}

/// One test of the comparison.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Row {
    /// `fixture.variant.test`.
    pub name: String,
    /// The kernel's verdict; none if it never reported.
    pub kernel: Option<Verdict>,
    /// Why, in the kernel's words: the skip reason, the first assertion,
    /// "started, never reported", "not in the output".
    pub kernel_detail: Option<String>,
    /// The model's verdict; none if the model has no such test.
    pub model: Option<Verdict>,
    /// Why, in the model's words.
    pub model_detail: Option<String>,
    /// How they relate.
    pub agreement: Agreement,
    /// What else differs (skip reasons, errnos), as information.
    pub info: Vec<String>,
}

/// The whole comparison.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Comparison {
    /// One row per test, in the model's (the harness's) order, then the
    /// kernel's tests the model does not have.
    pub rows: Vec<Row>,
    /// Entries of the table for this configuration that matched no
    /// difference (the kernel was fixed, or the entry is wrong).
    pub unused_defects: Vec<usize>,
}

impl Comparison {
    /// Rows with this agreement.
    pub fn count(&self, agreement: fn(&Agreement) -> bool) -> usize {
        self.rows.iter().filter(|r| agreement(&r.agreement)).count()
    }

    /// Unknown differences.
    pub fn mismatches(&self) -> usize {
        self.count(|a| *a == Agreement::Mismatch)
    }
}

/// Compares the kernel's run with the model's results (full name and
/// outcome, in run order) for a run with THP mode `thp` and `/tmp` on `fs`.
pub fn compare(
    kernel: &TapRun,
    model: &[(String, Outcome)],
    defects: &KnownDefects,
    thp: &str,
    fs: &str,
) -> Comparison {
    let mut rows = Vec::new();
    let mut used = Vec::new();
    for (name, outcome) in model {
        let result = kernel.result(name);
        let kernel_verdict = result.and_then(|r| r.verdict);
        let kernel_detail = match result {
            None => Some("not in the output".to_string()),
            Some(r) if r.verdict.is_none() => Some("started, never reported".to_string()),
            Some(r) => match r.verdict.map(Verdict::class) {
                Some(Verdict::Skip) => r.reason.clone(),
                Some(Verdict::Fail) => r
                    .assertions
                    .first()
                    .map(|a| format!("{}: {}", a.at, a.message))
                    .or_else(|| r.output.iter().find(|l| l.contains("Test ")).cloned())
                    .or_else(|| r.reason.clone()),
                _ => None,
            },
        };
        let model_verdict = Verdict::of(outcome);
        let model_detail = match outcome {
            Outcome::Passed => None,
            Outcome::Failed(why) | Outcome::Skipped(why) => Some(why.clone()),
        };
        let same = kernel_verdict.map(Verdict::class) == Some(model_verdict);
        let agreement = if same {
            Agreement::Same
        } else {
            match defects.find(name, thp, fs) {
                Some((index, defect)) if defect.matches_kernel(kernel_verdict) => {
                    used.push(index);
                    Agreement::KnownDefect(index)
                }
                _ => Agreement::Mismatch,
            }
        };
        let mut info = Vec::new();
        if let Some(r) = result {
            if same {
                info.extend(same_verdict_info(r, outcome));
                // A kernel defect can hide behind an agreeing verdict.
                info.extend(
                    r.kernel_log.iter().filter(|l| is_kernel_trouble(l)).take(3).map(|l| format!("kernel log: {l}")),
                );
            }
        }
        rows.push(Row {
            name: name.clone(),
            kernel: kernel_verdict,
            kernel_detail,
            model: Some(model_verdict),
            model_detail,
            agreement,
            info,
        });
    }
    for result in &kernel.results {
        if !model.iter().any(|(name, _)| *name == result.name) {
            rows.push(Row {
                name: result.name.clone(),
                kernel: result.verdict,
                kernel_detail: result.reason.clone(),
                model: None,
                model_detail: Some("the model has no such test".into()),
                agreement: Agreement::Mismatch,
                info: Vec::new(),
            });
        }
    }
    let unused_defects = defects
        .defects
        .iter()
        .enumerate()
        .filter(|(index, d)| d.applies_to(thp, fs) && !used.contains(index))
        .filter(|(_, d)| model.iter().any(|(name, _)| *name == d.full_name()))
        .map(|(index, _)| index)
        .collect();
    Comparison { rows, unused_defects }
}

/// A kernel log line that shows something went wrong in the kernel.
fn is_kernel_trouble(line: &str) -> bool {
    ["WARNING:", "BUG:", "Oops", "kernel BUG", "general protection fault", "leak", "Call Trace:"]
        .iter()
        .any(|marker| line.contains(marker))
}

/// What differs between two skips or two failures.
fn same_verdict_info(kernel: &super::TestResult, model: &Outcome) -> Vec<String> {
    let mut info = Vec::new();
    match model {
        Outcome::Skipped(reason) => {
            if kernel.reason.as_deref() != Some(reason.as_str()) {
                info.push(format!(
                    "skip reasons differ: kernel {:?}, model {reason:?}",
                    kernel.reason.as_deref().unwrap_or("")
                ));
            }
        }
        Outcome::Failed(why) => {
            // The "kernel" run may be the model's own kselftest output.
            let kernel_errno = kernel
                .assertions
                .first()
                .and_then(|a| kernel_observed_errno(&a.message).or_else(|| model_observed_errno(&a.message)));
            match (kernel_errno, model_observed_errno(why)) {
                (Some(k), Some(m)) if k == m => info.push(format!("both failed seeing {}", errno_text(k))),
                (Some(k), Some(m)) => {
                    info.push(format!("errno differs: kernel saw {}, model saw {}", errno_text(k), errno_text(m)))
                }
                _ => {
                    let kernel_text = kernel.assertions.first().map_or("(no assertion logged)", |a| a.message.as_str());
                    info.push(format!("failure messages: kernel {kernel_text:?}, model {why:?}"));
                }
            }
        }
        Outcome::Passed => {}
    }
    info
}

/// `-N` as an errno name, `0` as success.
fn errno_text(value: i32) -> String {
    match value {
        0 => "success (0)".into(),
        n => Errno::from_code(n).map_or(format!("errno {n}"), |e| format!("{} ({n})", e.name())),
    }
}

/// The errno (0: success) a kernel assertion on `ret` saw:
/// `Expected ret (-2) == 0 (0)` saw ENOENT; `Expected ret (0) == -EFAULT
/// (-14)` saw success. Other assertions have none.
pub fn kernel_observed_errno(message: &str) -> Option<i32> {
    let rest = message.strip_prefix("Expected ")?;
    let (expression, value) = first_printed_value(rest)?;
    (expression == "ret").then_some(if value < 0 { (-value) as i32 } else { 0 })
}

/// The first `EXPR (N)` of an assertion message.
fn first_printed_value(text: &str) -> Option<(&str, i64)> {
    let mut from = 0;
    while let Some(offset) = text[from..].find(" (") {
        let open = from + offset;
        let inside = &text[open + 2..];
        if let Some(close) = inside.find(')') {
            if let Ok(value) = inside[..close].parse::<i64>() {
                return Some((&text[..open], value));
            }
        }
        from = open + 2;
    }
    None
}

/// The errno (0: success) a model failure saw: `the command failed:
/// ENOENT: ...`, or a command's result compared with another
/// (`... : Ok(()) != Err(Fault)`, `...: Err(NoEnt) != Ok(())`).
pub fn model_observed_errno(message: &str) -> Option<i32> {
    if let Some((_, after)) = message.split_once("the command failed: ") {
        let name = after.split(':').next()?.trim();
        return errno_named(name, |e| e.name().to_string());
    }
    let (left, _) = message.rsplit_once(" != ")?;
    let seen = left.rsplit_once(": ").map_or(left, |(_, seen)| seen).trim();
    if seen == "Ok(())" {
        return Some(0);
    }
    let debug = seen.strip_prefix("Err(")?.strip_suffix(')')?;
    errno_named(debug, |e| format!("{e:?}"))
}

/// The errno whose name (as `naming` writes it) is `name`.
fn errno_named(name: &str, naming: impl Fn(Errno) -> String) -> Option<i32> {
    (1..4096).filter_map(Errno::from_code).find(|&e| naming(e) == name).map(Errno::code)
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
