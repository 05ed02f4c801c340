//! Reads a kselftest harness run (the kernel's `hmm-tests` output) as a
//! guest's serial console captured it into one [`TestResult`] per test.
//!
//! What a capture holds besides the run, and how it is taken apart:
//! - kernel log lines (`[   12.345678] ...`, with or without a `<4>` level
//!   prefix) are set aside, attached to the test running when they came;
//!   one that cut a line of the run in two (the console prints a printk
//!   in the middle of a user write) is taken out and the two halves are
//!   joined again;
//! - a runner (`run_kselftest.sh`, `run_vmtests.sh`) nests the binary's
//!   TAP under its own by prefixing each line with `# `: the prefix is
//!   found from the `# Starting N tests` line and stripped;
//! - `\r\n` line ends, and anything before or after the run.
//!
//! A test that printed `RUN` and never its result line (the binary was
//! killed, the guest panicked) is kept with no verdict.

use thiserror::Error;

use super::{Assertion, TestResult, Verdict};

/// The harness's closing counts (`# Totals: pass:N fail:N ...`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Totals {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Failed as expected.
    pub xfail: usize,
    /// Passed, expected to fail.
    pub xpass: usize,
    /// Skipped.
    pub skip: usize,
    /// Errors.
    pub error: usize,
}

/// A parsed run.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TapRun {
    /// The plan (`1..N`).
    pub plan: Option<usize>,
    /// Every test that started or reported, in output order; a test with
    /// no verdict started and never reported.
    pub results: Vec<TestResult>,
    /// `# Totals: ...`, if the run got that far.
    pub totals: Option<Totals>,
    /// `Bail out! reason`, if the binary gave up.
    pub bail_out: Option<String>,
    /// Kernel log lines that came outside any test.
    pub kernel_log: Vec<String>,
}

impl TapRun {
    /// The result of the test named `name`, if it started or reported.
    pub fn result(&self, name: &str) -> Option<&TestResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Why a text is not a kselftest run.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum ParseError {
    /// No `TAP version 13`, plan, `RUN` or result line at all.
    #[error("no kselftest run in the text (no TAP header, plan, RUN or result line)")]
    NoRun,
    /// More than one run (several `# Starting N tests` lines).
    #[error("the text holds {0} kselftest runs; give the comparison one run per file")]
    SeveralRuns(usize),
    /// A test reported twice.
    #[error("test {0} reports twice; give the comparison one run per file")]
    Duplicate(String),
}

/// Parses a captured run.
pub fn parse(text: &str) -> Result<TapRun, ParseError> {
    let lines = split_kernel_log(text);
    let starts = lines.iter().filter(|l| matches!(l, Line::User(u) if starting_prefix(u).is_some())).count();
    if starts > 1 {
        return Err(ParseError::SeveralRuns(starts));
    }
    let prefix = nesting_prefix(&lines);
    let mut run = TapRun::default();
    let mut current: Option<TestResult> = None;
    let mut seen_tap = false;
    for line in lines {
        let user = match line {
            Line::Kernel(log) => {
                match current.as_mut() {
                    Some(test) => test.kernel_log.push(log),
                    None => run.kernel_log.push(log),
                }
                continue;
            }
            Line::User(user) => user,
        };
        let Some(line) = user.strip_prefix(prefix.as_str()) else { continue };
        let line = line.trim_end();
        if line == "TAP version 13" {
            seen_tap = true;
        } else if let Some(plan) = line.strip_prefix("1..").and_then(|n| n.parse().ok()) {
            run.plan = Some(plan);
        } else if let Some(name) = line.strip_prefix("#  RUN ").and_then(|r| r.trim_start().strip_suffix(" ...")) {
            if let Some(unfinished) = current.take() {
                run.results.push(unfinished);
            }
            current = Some(TestResult::started(name));
        } else if let Some((number, name, verdict, reason)) = result_line(line) {
            let mut test = match current.take() {
                Some(test) if test.name == name => test,
                other => {
                    // A result for a test whose RUN line was lost.
                    if let Some(unfinished) = other {
                        run.results.push(unfinished);
                    }
                    TestResult::started(name)
                }
            };
            if run.results.iter().any(|r| r.name == name && r.verdict.is_some()) {
                return Err(ParseError::Duplicate(name.to_string()));
            }
            test.number = number;
            test.verdict = Some(verdict);
            test.reason = reason;
            run.results.push(test);
        } else if let Some(totals) = line.strip_prefix("# Totals: ").and_then(totals) {
            run.totals = Some(totals);
        } else if let Some(reason) = line.strip_prefix("Bail out!") {
            run.bail_out = Some(reason.trim().to_string());
        } else if let Some(test) = current.as_mut() {
            if let Some(assertion) = assertion(line) {
                test.assertions.push(assertion);
            } else if !is_harness_status(line) {
                test.output.push(line.to_string());
            }
        }
    }
    if let Some(unfinished) = current.take() {
        run.results.push(unfinished);
    }
    if !seen_tap && run.plan.is_none() && run.results.is_empty() {
        return Err(ParseError::NoRun);
    }
    Ok(run)
}

/// A line of the capture: the run's (or anything else a program printed)
/// or the kernel's log.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    User(String),
    Kernel(String),
}

/// Splits the capture into lines, taking out kernel log records, also from
/// the middle of a user line (whose halves are joined again).
fn split_kernel_log(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for raw in text.split('\n') {
        let raw = raw.trim_end_matches('\r');
        match kernel_record_start(raw) {
            Some(0) => lines.push(Line::Kernel(raw.to_string())),
            Some(at) => {
                pending.push_str(&raw[..at]);
                lines.push(Line::Kernel(raw[at..].to_string()));
            }
            None => {
                let mut user = std::mem::take(&mut pending);
                user.push_str(raw);
                lines.push(Line::User(user));
            }
        }
    }
    if !pending.is_empty() {
        lines.push(Line::User(pending));
    }
    lines
}

/// Where a kernel log record (`[ seconds.micros]`, maybe after a `<N>`
/// level) starts in `line`, if one does.
fn kernel_record_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(offset) = line[from..].find('[') {
        let open = from + offset;
        if is_timestamp(&line[open..]) {
            // A `<N>` level right before belongs to the record.
            let start = level_prefix_start(&bytes[..open]).unwrap_or(open);
            return Some(start);
        }
        from = open + 1;
    }
    None
}

/// True if `text` starts with `[  123.456789]`.
fn is_timestamp(text: &str) -> bool {
    let Some(close) = text.find(']') else { return false };
    let inside = text[1..close].trim_start();
    let Some((secs, micros)) = inside.split_once('.') else { return false };
    !secs.is_empty()
        && !micros.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && micros.bytes().all(|b| b.is_ascii_digit())
}

/// The start of a `<N>` syslog level ending right at the end of `before`.
fn level_prefix_start(before: &[u8]) -> Option<usize> {
    let n = before.len();
    if n >= 3 && before[n - 1] == b'>' && before[n - 2].is_ascii_digit() && before[n - 3] == b'<' {
        Some(n - 3)
    } else {
        None
    }
}

/// The nesting prefix before `# Starting`, if `line` is that line.
fn starting_prefix(line: &str) -> Option<&str> {
    let at = line.find("# Starting ")?;
    let rest = &line[at..];
    (rest.contains(" tests from ") && rest.trim_end().ends_with(" test cases.")).then(|| &line[..at])
}

/// The prefix a runner put before every line of the run: what comes
/// before `# Starting N tests`, else before the innermost `TAP version 13`.
fn nesting_prefix(lines: &[Line]) -> String {
    let users = || lines.iter().filter_map(|l| if let Line::User(u) = l { Some(u.as_str()) } else { None });
    if let Some(prefix) = users().find_map(starting_prefix) {
        return prefix.to_string();
    }
    users()
        .filter_map(|u| u.trim_end().strip_suffix("TAP version 13"))
        .filter(|p| p.bytes().all(|b| b == b'#' || b == b' '))
        .max_by_key(|p| p.len())
        .unwrap_or("")
        .to_string()
}

/// `ok N name`, `ok N name # SKIP reason`, `not ok N name`,
/// `not ok N name #  diagnostic`.
fn result_line(line: &str) -> Option<(usize, &str, Verdict, Option<String>)> {
    let (failed, rest) = match line.strip_prefix("not ok ") {
        Some(rest) => (true, rest),
        None => (false, line.strip_prefix("ok ")?),
    };
    let (number, rest) = rest.split_once(' ')?;
    let number = number.parse().ok()?;
    let (name, directive) = match rest.split_once(" # ") {
        Some((name, directive)) => (name, Some(directive)),
        None => (rest, None),
    };
    let name = name.trim();
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let (verdict, reason) = match directive {
        None => (if failed { Verdict::Fail } else { Verdict::Pass }, None),
        Some(directive) => {
            let word = |w: &str| directive.strip_prefix(w).map(|r| r.trim().to_string());
            if let Some(reason) = word("SKIP") {
                (Verdict::Skip, Some(reason))
            } else if let Some(reason) = word("XFAIL") {
                (Verdict::XFail, Some(reason))
            } else if let Some(reason) = word("XPASS") {
                (Verdict::XPass, Some(reason))
            } else {
                (if failed { Verdict::Fail } else { Verdict::Pass }, Some(directive.trim().to_string()))
            }
        }
    };
    let reason = reason.filter(|r| !r.is_empty());
    Some((number, name, verdict, reason))
}

/// `# file:line:test:message`, as `__TH_LOG` prints an assertion.
fn assertion(line: &str) -> Option<Assertion> {
    let rest = line.strip_prefix("# ")?;
    let mut parts = rest.splitn(4, ':');
    let (file, number, test, message) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = !file.is_empty()
        && !file.contains(' ')
        && number.parse::<u32>().is_ok()
        && !test.is_empty()
        && !test.contains(' ');
    well_formed.then(|| Assertion { at: format!("{file}:{number}"), message: message.to_string() })
}

/// The harness's own `OK`/`FAIL` line (the result line follows it).
fn is_harness_status(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('#') else { return false };
    let rest = rest.trim_start();
    rest.starts_with("OK  ") || rest.starts_with("FAIL  ")
}

/// `pass:N fail:N xfail:N xpass:N skip:N error:N`.
fn totals(text: &str) -> Option<Totals> {
    let mut totals = Totals::default();
    for field in text.split_whitespace() {
        let (key, value) = field.split_once(':')?;
        let value = value.parse().ok()?;
        match key {
            "pass" => totals.pass = value,
            "fail" => totals.fail = value,
            "xfail" => totals.xfail = value,
            "xpass" => totals.xpass = value,
            "skip" => totals.skip = value,
            "error" => totals.error = value,
            _ => return None,
        }
    }
    Some(totals)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
