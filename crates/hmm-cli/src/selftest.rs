//! `hmm selftest [FILTER]`: runs the conformance suite (`hmm-selftest`),
//! one line per test and a last line with the totals; fails when a test
//! fails.

use hmm_selftest::{instances, Outcome, Setup};

use crate::demo::DemoError;
use crate::render::{Out, TestLine};

/// Arguments of `hmm selftest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only the tests whose full name contains this
    /// (e.g. `migrate`, `hmm2.`, `device_coherent`, `dax.`).
    filter: Option<String>,
    /// List the matching tests instead of running them.
    #[arg(long)]
    list: bool,
    /// Load the module without the device-coherent devices (2 and 3), as
    /// Linux does without special-purpose memory: those variants skip.
    #[arg(long)]
    no_coherent: bool,
}

pub fn run(args: &Args, out: &Out) -> Result<(), DemoError> {
    let filter = args.filter.as_deref();
    let selected = instances(filter);
    if selected.is_empty() {
        return Err(DemoError(format!("no test matches {:?}; `hmm selftest --list` shows them", filter.unwrap_or(""))));
    }
    if args.list {
        for instance in &selected {
            out.line(&instance.name());
        }
        return Ok(());
    }
    let setup = Setup { coherent: !args.no_coherent, ..Setup::default() };
    out.line(&format!("running {} tests", selected.len()));
    let summary = hmm_selftest::run(filter, &setup, |instance, report| {
        let name = instance.name();
        let took = report.took.as_secs_f64();
        match &report.outcome {
            Outcome::Passed => out.test_line(TestLine::Ok, &format!("{name} ({took:.2} s)")),
            Outcome::Failed(why) => out.test_line(TestLine::NotOk, &format!("{name}: {why}")),
            Outcome::Skipped(why) => out.test_line(TestLine::Skip, &format!("{name}: {why}")),
        }
        for note in &report.notes {
            out.line(&format!("  # {note}"));
        }
    });
    out.line(&format!("{} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped));
    if summary.failed > 0 {
        return Err(DemoError(format!("{} tests failed", summary.failed)));
    }
    Ok(())
}
