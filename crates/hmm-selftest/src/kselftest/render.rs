//! A model run printed as the kernel's `hmm-tests` binary prints its own:
//! the TAP header and plan, `# Starting N tests from M test cases.`, per
//! test the `RUN` line, what the test logged (`SKIP` reason, the failed
//! assertion as `file:line:test:message`), the harness's `OK`/`FAIL` line
//! and the TAP result line, then the pass count and the totals.
//!
//! Linux: `__run_test`, `test_harness_run` and the `__TH_LOG`/`SKIP` macros
//! of `kselftest_harness.h`; `ksft_test_result_code`, `ksft_print_cnts` of
//! `kselftest.h`.

use crate::{Outcome, Report};

/// Writes one run, line by line, to `out`.
#[derive(Debug)]
pub struct Writer<F: FnMut(&str)> {
    out: F,
    number: usize,
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl<F: FnMut(&str)> Writer<F> {
    /// Prints the header for `tests` tests from `cases` test cases (a case
    /// is a fixture variant with at least one test to run).
    pub fn begin(mut out: F, tests: usize, cases: usize) -> Self {
        out("TAP version 13");
        out(&format!("1..{tests}"));
        out(&format!("# Starting {tests} tests from {cases} test cases."));
        Self { out, number: 0, passed: 0, failed: 0, skipped: 0 }
    }

    /// Prints one test: `name` is the full name
    /// (`hmm.hmm_device_private.migrate`), `test` the test's own name as
    /// the harness logs it in assertion lines (`migrate`).
    pub fn test(&mut self, name: &str, test: &str, report: &Report) {
        self.number += 1;
        let out = &mut self.out;
        out(&format!("#  RUN           {name} ..."));
        for note in &report.notes {
            out(&format!("# {note}"));
        }
        let result = match &report.outcome {
            Outcome::Passed => {
                self.passed += 1;
                format!("ok {} {name}", self.number)
            }
            Outcome::Skipped(reason) => {
                self.skipped += 1;
                out(&format!("#      SKIP      {reason}"));
                format!("ok {} {name} # SKIP {reason}", self.number)
            }
            Outcome::Failed(why) => {
                self.failed += 1;
                match split_location(why) {
                    Some((at, message)) => out(&format!("# {at}:{test}:{message}")),
                    None => out(&format!("# {test}: {why}")),
                }
                out(&format!("# {test}: Test terminated by assertion"));
                format!("not ok {} {name}", self.number)
            }
        };
        let word = if matches!(report.outcome, Outcome::Failed(_)) { "FAIL" } else { "OK" };
        out(&format!("#          {word:>4}  {name}"));
        out(&result);
    }

    /// Prints the pass count (skips count as passed, as the harness counts
    /// them) and the totals; true when no test failed.
    pub fn finish(mut self) -> bool {
        let run = self.passed + self.failed + self.skipped;
        let ok = self.failed == 0;
        let verdict = if ok { "PASSED" } else { "FAILED" };
        let out = &mut self.out;
        out(&format!("# {verdict}: {} / {run} tests passed.", self.passed + self.skipped));
        if self.skipped > 0 {
            out(&format!(
                "# {} skipped test(s) detected. Consider enabling relevant config options to improve coverage.",
                self.skipped
            ));
        }
        out(&format!(
            "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0",
            self.passed, self.failed, self.skipped
        ));
        ok
    }
}

/// Splits a model failure `path/file.rs:LINE: message` into its location
/// and message.
fn split_location(why: &str) -> Option<(&str, &str)> {
    let (at, message) = why.split_once(": ")?;
    let (file, line) = at.rsplit_once(':')?;
    let is_location = !file.is_empty() && !file.contains(' ') && line.parse::<u32>().is_ok();
    is_location.then_some((at, message))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report(outcome: Outcome, notes: &[&str]) -> Report {
        Report { outcome, took: Duration::ZERO, notes: notes.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn a_run_prints_as_the_kernel_harness_prints() {
        let mut lines = Vec::new();
        let mut writer = Writer::begin(|line: &str| lines.push(line.to_string()), 3, 2);
        writer.test("hmm.hmm_device_private.open_close", "open_close", &report(Outcome::Passed, &[]));
        writer.test(
            "hmm.hmm_device_coherent.open_close",
            "open_close",
            &report(Outcome::Skipped("DEVICE_COHERENT not available".into()), &[]),
        );
        writer.test(
            "hmm2.hmm2_device_private.migrate_mixed",
            "migrate_mixed",
            &report(Outcome::Failed("crates/x/src/m.rs:12: the command failed: ENOENT".into()), &["a note"]),
        );
        assert!(!writer.finish());
        let expected = [
            "TAP version 13",
            "1..3",
            "# Starting 3 tests from 2 test cases.",
            "#  RUN           hmm.hmm_device_private.open_close ...",
            "#            OK  hmm.hmm_device_private.open_close",
            "ok 1 hmm.hmm_device_private.open_close",
            "#  RUN           hmm.hmm_device_coherent.open_close ...",
            "#      SKIP      DEVICE_COHERENT not available",
            "#            OK  hmm.hmm_device_coherent.open_close",
            "ok 2 hmm.hmm_device_coherent.open_close # SKIP DEVICE_COHERENT not available",
            "#  RUN           hmm2.hmm2_device_private.migrate_mixed ...",
            "# a note",
            "# crates/x/src/m.rs:12:migrate_mixed:the command failed: ENOENT",
            "# migrate_mixed: Test terminated by assertion",
            "#          FAIL  hmm2.hmm2_device_private.migrate_mixed",
            "not ok 3 hmm2.hmm2_device_private.migrate_mixed",
            "# FAILED: 2 / 3 tests passed.",
            "# 1 skipped test(s) detected. Consider enabling relevant config options to improve coverage.",
            "# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_clean_run_says_passed_without_the_skip_line() {
        let mut lines = Vec::new();
        let mut writer = Writer::begin(|line: &str| lines.push(line.to_string()), 1, 1);
        writer.test("hmm.hmm_device_private.open_close", "open_close", &report(Outcome::Passed, &[]));
        assert!(writer.finish());
        assert_eq!(
            lines[lines.len() - 2..],
            ["# PASSED: 1 / 1 tests passed.", "# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0"]
        );
    }

    #[test]
    fn a_panic_has_no_location_and_is_logged_whole() {
        assert_eq!(split_location("panicked: index out of bounds: 3"), None);
        assert_eq!(split_location("src/a.rs:7: x"), Some(("src/a.rs:7", "x")));
    }
}
