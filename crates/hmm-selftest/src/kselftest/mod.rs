//! The kselftest harness's output format (TAP 13 as
//! `tools/testing/selftests/kselftest_harness.h` and `kselftest.h` print
//! it), both ways, and the side-by-side comparison of a kernel run with a
//! model run:
//!
//! - [`render`]: prints a model run exactly as the kernel's `hmm-tests`
//!   binary prints its own (same names, order, result lines, totals);
//! - [`parse`]: reads the binary's output as a guest captured it (nested
//!   under a runner's `# ` prefix or not, kernel log lines interleaved,
//!   even inside a line) into one [`TestResult`] per test;
//! - [`defects`]: the table of known kernel defects, with their evidence;
//! - [`compare`]: kernel verdict against model verdict per test, failure
//!   messages side by side.

pub mod compare;
pub mod defects;
pub mod parse;
pub mod render;

pub use compare::{compare, Agreement, Comparison, Row};
pub use defects::{DefectError, KnownDefect, KnownDefects};
pub use parse::{parse, ParseError, TapRun, Totals};
pub use render::Writer;

use crate::Outcome;

/// A test's verdict, as the harness reports it on its result line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Verdict {
    /// `ok N name`.
    Pass,
    /// `not ok N name`.
    Fail,
    /// `ok N name # SKIP reason`.
    Skip,
    /// `ok N name # XFAIL reason`: failed, and expected to.
    XFail,
    /// `ok N name # XPASS reason`: passed, expected to fail.
    XPass,
}

impl Verdict {
    /// The word used in reports and in the defects table.
    pub fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::XFail => "xfail",
            Self::XPass => "xpass",
        }
    }

    /// The verdict a comparison looks at: an expected failure is a failure,
    /// an unexpected pass a pass (the marks are the harness's, not the
    /// test's).
    pub fn class(self) -> Self {
        match self {
            Self::XFail => Self::Fail,
            Self::XPass => Self::Pass,
            other => other,
        }
    }

    /// A model outcome's verdict.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Passed => Self::Pass,
            Outcome::Failed(_) => Self::Fail,
            Outcome::Skipped(_) => Self::Skip,
        }
    }
}

/// An `ASSERT_*`/`EXPECT_*` failure the harness logged:
/// `# hmm-tests.c:930:migrate:Expected ret (-2) == 0 (0)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Assertion {
    /// `file:line`.
    pub at: String,
    /// What was expected and seen.
    pub message: String,
}

/// One test of a run.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TestResult {
    /// Its number on the result line.
    pub number: usize,
    /// `fixture.variant.test`.
    pub name: String,
    /// The result line's verdict; none if the test started and never
    /// reported (the binary was killed, the guest died).
    pub verdict: Option<Verdict>,
    /// The directive's text (the SKIP reason) or the line's diagnostic.
    pub reason: Option<String>,
    /// The assertions it logged, first first.
    pub assertions: Vec<Assertion>,
    /// Everything else it printed between its `RUN` and result lines
    /// (harness notes such as "Test terminated by assertion", printf
    /// output), without the kernel log.
    pub output: Vec<String>,
    /// The kernel log lines that came while it ran (a WARN, an oops).
    pub kernel_log: Vec<String>,
}

impl TestResult {
    /// A test seen starting (or reporting without its start).
    pub fn started(name: &str) -> Self {
        Self {
            number: 0,
            name: name.to_string(),
            verdict: None,
            reason: None,
            assertions: Vec::new(),
            output: Vec::new(),
            kernel_log: Vec::new(),
        }
    }
}
