//! Linux's HMM selftests (`tools/testing/selftests/mm/hmm-tests.c`), every
//! one of its 38 tests under its kernel name, written from the
//! specification against the [`hmm_dmirror`] reference device and run on
//! both fixture variants (device-private and device-coherent memory), plus
//! DAX conformance tests beyond the kernel's suite (hmm's starting point).
//!
//! [`cases`] lists the tests; [`run`] runs those matching a filter and
//! reports each result; `hmm selftest` and `cargo test -p hmm-selftest`
//! both use it. [`Setup`] configures a run as the reference guest is
//! configured (THP mode, what `/tmp` is); [`kselftest`] prints a run in
//! the kernel harness's TAP format, parses the kernel binary's output and
//! compares the two test by test.

mod harness;
pub mod kselftest;
mod suite;
mod verdict;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub use harness::{Ctx, FileSystem, Setup, Shared, Variant};
pub use hmm_mm::ThpMode;
pub use verdict::{Fail, Verdict};

/// Which fixture a test uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Fixture {
    /// `hmm`: one device.
    Hmm,
    /// `hmm2`: two devices.
    Hmm2,
    /// `dax`: hmm's DAX conformance, one device-private device.
    Dax,
}

impl Fixture {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hmm => "hmm",
            Self::Hmm2 => "hmm2",
            Self::Dax => "dax",
        }
    }
    fn devices(self) -> usize {
        match self {
            Self::Hmm | Self::Dax => 1,
            Self::Hmm2 => 2,
        }
    }
    fn variants(self) -> &'static [Variant] {
        match self {
            Self::Hmm | Self::Hmm2 => &Variant::ALL,
            Self::Dax => &[Variant::DevicePrivate],
        }
    }
}

/// One test.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Its fixture.
    pub fixture: Fixture,
    /// Its name (Linux's for the kernel's tests).
    pub name: &'static str,
    /// The test.
    pub run: fn(&Ctx) -> Verdict,
}

/// One test on one variant.
#[derive(Clone, Copy, Debug)]
pub struct Instance {
    /// The test.
    pub case: Case,
    /// The variant.
    pub variant: Variant,
}

impl Instance {
    /// The full name, as kselftest prints it:
    /// `hmm.hmm_device_private.open_close`.
    pub fn name(&self) -> String {
        let fixture = self.case.fixture.name();
        match self.case.fixture {
            Fixture::Dax => format!("dax.{}", self.case.name),
            _ => format!("{fixture}.{fixture}_{}.{}", self.variant.name(), self.case.name),
        }
    }
}

/// How one instance ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Passed.
    Passed,
    /// Failed, with where and why.
    Failed(String),
    /// Skipped, with the reason.
    Skipped(String),
}

/// Totals of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    /// Instances that passed.
    pub passed: usize,
    /// Instances that failed.
    pub failed: usize,
    /// Instances skipped.
    pub skipped: usize,
}

/// Every test, in the kernel's order, then the DAX tests.
pub fn cases() -> Vec<Case> {
    suite::cases()
}

/// Every instance (test × variant) whose name contains `filter`.
pub fn instances(filter: Option<&str>) -> Vec<Instance> {
    cases()
        .into_iter()
        .flat_map(|case| case.fixture.variants().iter().map(move |&variant| Instance { case, variant }))
        .filter(|instance| filter.is_none_or(|f| instance.name().contains(f)))
        .collect()
}

/// The kernel's tests (fixtures `hmm` and `hmm2`, no DAX tests) whose
/// name contains `filter`, in the order the kselftest harness runs them:
/// fixture by fixture (in source order), variant by variant, then test by
/// test in source order.
pub fn kselftest_instances(filter: Option<&str>) -> Vec<Instance> {
    let rank = |instance: &Instance| {
        let fixture = match instance.case.fixture {
            Fixture::Hmm => 0,
            Fixture::Hmm2 => 1,
            Fixture::Dax => 2,
        };
        let variant = Variant::ALL.iter().position(|&v| v == instance.variant).unwrap_or(usize::MAX);
        (fixture, variant)
    };
    let mut kernel: Vec<_> = instances(filter).into_iter().filter(|i| i.case.fixture != Fixture::Dax).collect();
    // Stable: within a (fixture, variant) the tests keep source order.
    kernel.sort_by_key(rank);
    kernel
}

/// What running one instance gave.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time, setup and teardown included.
    pub took: Duration,
    /// Lines the test printed.
    pub notes: Vec<String>,
}

/// Runs one instance: fixture setup, the test, teardown. A panic inside
/// is a failure, not a crash of the run.
pub fn run_one(setup: &Setup, instance: &Instance) -> Report {
    let started = Instant::now();
    let mut notes = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ctx = Ctx::new(setup, instance.variant, instance.case.fixture.devices())?;
        let verdict = (instance.case.run)(&ctx);
        notes = ctx.take_notes();
        ctx.teardown();
        verdict
    }));
    let outcome = match result {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(Fail::Skip(reason))) => Outcome::Skipped(reason),
        Ok(Err(fail)) => Outcome::Failed(fail.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(format!("panicked: {what}"))
        }
    };
    Report { outcome, took: started.elapsed(), notes }
}

/// Runs every instance matching `filter`, calling `report` after each.
pub fn run(filter: Option<&str>, setup: &Setup, mut report: impl FnMut(&Instance, &Report)) -> Summary {
    let mut summary = Summary::default();
    for instance in instances(filter) {
        let result = run_one(setup, &instance);
        match &result.outcome {
            Outcome::Passed => summary.passed += 1,
            Outcome::Failed(_) => summary.failed += 1,
            Outcome::Skipped(_) => summary.skipped += 1,
        }
        report(&instance, &result);
    }
    summary
}
