//! `hmm selftest [FILTER...]`: runs the conformance suite (`hmm-selftest`)
//! configured as the reference guest is (`--thp`, `--fs`), one line per
//! test and a last line with the totals, or (`--format kselftest`) exactly
//! as the kernel's `hmm-tests` binary prints; `--compare FILE` runs the
//! kernel's tests on the model and compares each verdict with the
//! kernel's run captured in FILE. Fails when a test fails or a verdict
//! differs beyond the known kernel defects.

use std::path::PathBuf;

use hmm_selftest::kselftest::{self, Agreement, Comparison, KnownDefects, TapRun, Verdict, Writer};
use hmm_selftest::{instances, kselftest_instances, FileSystem, Instance, Outcome, Setup, ThpMode};

use crate::demo::DemoError;
use crate::render::{Out, TestLine};

/// `/sys/kernel/mm/transparent_hugepage/enabled` for the run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Thp {
    /// Every eligible anonymous range.
    Always,
    /// Ranges with MADV_HUGEPAGE.
    Madvise,
    /// None.
    Never,
}

impl Thp {
    fn mode(self) -> ThpMode {
        match self {
            Self::Always => ThpMode::Always,
            Self::Madvise => ThpMode::Madvise,
            Self::Never => ThpMode::Never,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Madvise => "madvise",
            Self::Never => "never",
        }
    }
}

/// What `/tmp` is for the file tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Fs {
    /// tmpfs.
    Tmpfs,
    /// An fs-dax file system (the guest's ext4 on pmem, bind-mounted).
    Dax,
}

impl Fs {
    fn file_system(self) -> FileSystem {
        match self {
            Self::Tmpfs => FileSystem::Tmpfs,
            Self::Dax => FileSystem::Dax,
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    /// One line per test (the DAX tests included).
    Human,
    /// The kernel's kselftest harness output (TAP 13), the kernel's tests
    /// only, in the kernel binary's order.
    Kselftest,
}

/// Arguments of `hmm selftest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only the tests whose full name contains one of these
    /// (e.g. `migrate`, `hmm2.`, `device_coherent`, `dax.`); a full name
    /// (`hmm.hmm_device_private.anon_read`) selects that test only. With
    /// --compare: the tests the guest ran, if it ran a subset.
    filter: Vec<String>,
    /// List the matching tests instead of running them.
    #[arg(long)]
    list: bool,
    /// Load the module without the device-coherent devices (2 and 3), as
    /// Linux does without special-purpose memory: those variants skip.
    #[arg(long)]
    no_coherent: bool,
    /// Run without the gup_test driver (no /sys/kernel/debug/gup_test in
    /// the guest): hmm_gup_test skips, as on Linux.
    #[arg(long)]
    no_gup_test: bool,
    /// The THP mode of the run, as the guest's
    /// /sys/kernel/mm/transparent_hugepage/enabled.
    #[arg(long, value_enum, default_value_t = Thp::Madvise)]
    thp: Thp,
    /// What /tmp is, where the file tests (file_read, file_write,
    /// migrate_file_private) make their file.
    #[arg(long, value_enum, default_value_t = Fs::Tmpfs)]
    fs: Fs,
    /// How to print the results.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Compare with the kernel's hmm-tests output captured in this file
    /// (one run; a guest's console log will do): runs the kernel's tests on
    /// the model with the same --thp, --fs and --no-coherent and prints
    /// both verdicts per test. Exits 1 on a difference the known-defects
    /// table does not record.
    #[arg(long, value_name = "GUEST_OUTPUT_FILE", conflicts_with_all = ["list", "format"])]
    compare: Option<PathBuf>,
    /// The known-kernel-defects table (default: the repository's
    /// kernel-lab/known-defects.json, built in).
    #[arg(long, value_name = "FILE", requires = "compare")]
    known_defects: Option<PathBuf>,
}

impl Args {
    fn setup(&self) -> Setup {
        Setup {
            coherent: !self.no_coherent,
            thp: self.thp.mode(),
            fs: self.fs.file_system(),
            gup_test: !self.no_gup_test,
            ..Setup::default()
        }
    }
    /// True if `name` is selected by the filters (all are without any): a
    /// filter that is a test's full name selects that test only, any other
    /// every test whose name contains it.
    fn selects(&self, name: &str) -> bool {
        let full_names: Vec<String> = instances(None).iter().map(Instance::name).collect();
        self.filter.is_empty()
            || self.filter.iter().any(|f| if full_names.contains(f) { name == f } else { name.contains(f.as_str()) })
    }

    fn filter_text(&self) -> String {
        self.filter.join(" ")
    }

    fn configuration(&self) -> String {
        let coherent = if self.no_coherent { ", no coherent devices" } else { "" };
        let gup = if self.no_gup_test { ", no gup_test" } else { "" };
        format!("THP {}, /tmp on {}{coherent}{gup}", self.thp.name(), self.fs.file_system().name())
    }
}

/// Runs `hmm selftest`; `Ok(false)` when a test failed or a verdict
/// differs (already printed).
pub fn run(args: &Args, out: &Out) -> Result<bool, DemoError> {
    if let Some(path) = &args.compare {
        return compare(args, path, out);
    }
    let all = match args.format {
        Format::Human => instances(None),
        Format::Kselftest => kselftest_instances(None),
    };
    let selected: Vec<Instance> = all.into_iter().filter(|i| args.selects(&i.name())).collect();
    if selected.is_empty() {
        return Err(DemoError(format!("no test matches {:?}; `hmm selftest --list` shows them", args.filter_text())));
    }
    if args.list {
        for instance in &selected {
            out.line(&instance.name());
        }
        return Ok(true);
    }
    let setup = args.setup();
    match args.format {
        Format::Kselftest => {
            // The kernel's binary runs every test against one loaded module.
            let setup = shared_module(setup)?;
            Ok(run_kselftest(&selected, &setup, |line| out.line(line)))
        }
        Format::Human => run_human(&selected, &setup, &args.configuration(), out),
    }
}

fn run_human(selected: &[Instance], setup: &Setup, configuration: &str, out: &Out) -> Result<bool, DemoError> {
    out.line(&format!("running {} tests ({configuration})", selected.len()));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for instance in selected {
        let report = hmm_selftest::run_one(setup, instance);
        let name = instance.name();
        let took = report.took.as_secs_f64();
        match &report.outcome {
            Outcome::Passed => {
                passed += 1;
                out.test_line(TestLine::Ok, &format!("{name} ({took:.2} s)"));
            }
            Outcome::Failed(why) => {
                failed += 1;
                out.test_line(TestLine::NotOk, &format!("{name}: {why}"));
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                out.test_line(TestLine::Skip, &format!("{name}: {why}"));
            }
        }
        for note in &report.notes {
            out.line(&format!("  # {note}"));
        }
    }
    out.line(&format!("{passed} passed, {failed} failed, {skipped} skipped"));
    if failed > 0 {
        return Err(DemoError(format!("{failed} tests failed")));
    }
    Ok(true)
}

/// Runs `selected` and prints them as the kernel's binary does; true when
/// none failed.
fn run_kselftest(selected: &[Instance], setup: &Setup, mut line: impl FnMut(&str)) -> bool {
    let mut cases: Vec<(&str, &str)> = selected.iter().map(|i| (i.case.fixture.name(), i.variant.name())).collect();
    cases.dedup();
    let mut writer = Writer::begin(&mut line, selected.len(), cases.len());
    for instance in selected {
        let report = hmm_selftest::run_one(setup, instance);
        writer.test(&instance.name(), instance.case.name, &report);
    }
    writer.finish()
}

/// `setup` with one machine and module for every test, as `hmm-tests`
/// runs on a guest.
fn shared_module(setup: Setup) -> Result<Setup, DemoError> {
    setup.with_shared_module().map_err(|e| DemoError(format!("cannot load the module: {e}")))
}

fn compare(args: &Args, path: &std::path::Path, out: &Out) -> Result<bool, DemoError> {
    let text = std::fs::read_to_string(path).map_err(|e| DemoError(format!("cannot read {}: {e}", path.display())))?;
    let mut kernel = kselftest::parse(&text).map_err(|e| DemoError(format!("{}: {e}", path.display())))?;
    let defects = match &args.known_defects {
        Some(file) => KnownDefects::load(file),
        None => KnownDefects::builtin(),
    }
    .map_err(|e| DemoError(e.to_string()))?;
    kernel.results.retain(|r| args.selects(&r.name));
    let selected: Vec<Instance> = kselftest_instances(None).into_iter().filter(|i| args.selects(&i.name())).collect();
    if selected.is_empty() {
        return Err(DemoError(format!("no kernel test matches {:?}", args.filter_text())));
    }
    describe_kernel_run(&kernel, path, out);
    out.line(&format!("model: {} tests ({})", selected.len(), args.configuration()));
    // As on the guest: one module load for the whole run.
    let setup = shared_module(args.setup())?;
    let model: Vec<(String, Outcome)> =
        selected.iter().map(|i| (i.name(), hmm_selftest::run_one(&setup, i).outcome)).collect();
    let comparison = kselftest::compare(&kernel, &model, &defects, args.thp.name(), args.fs.file_system().name());
    print_comparison(&comparison, &kernel, &defects, out);
    Ok(comparison.mismatches() == 0)
}

fn describe_kernel_run(kernel: &TapRun, path: &std::path::Path, out: &Out) {
    let reported = kernel.results.iter().filter(|r| r.verdict.is_some()).count();
    let mut text = format!("kernel: {} ({reported} tests reported", path.display());
    if let Some(plan) = kernel.plan {
        text.push_str(&format!(" of {plan} planned"));
    }
    text.push(')');
    if let Some(reason) = &kernel.bail_out {
        text.push_str(&format!(", bailed out: {reason}"));
    }
    out.line(&text);
}

fn print_comparison(comparison: &Comparison, kernel: &TapRun, defects: &KnownDefects, out: &Out) {
    let word = |v: Option<Verdict>| v.map_or("missing", Verdict::word);
    for row in &comparison.rows {
        let verdicts = format!("kernel {:<7} model {:<7} {}", word(row.kernel), word(row.model), row.name);
        match row.agreement {
            Agreement::Same => out.test_line(TestLine::Ok, &format!("same      {verdicts}")),
            Agreement::Mismatch => out.test_line(TestLine::NotOk, &format!("MISMATCH  {verdicts}")),
            Agreement::KnownDefect(index) => {
                out.test_line(TestLine::Skip, &format!("known kernel defect #{index}  {verdicts}"));
                let defect = &defects.defects[index];
                out.line(&format!("    evidence ({}): {}", defect.kernel, defect.evidence));
                out.line(&format!("    kernel fix: {}", defect.fix.as_deref().unwrap_or("none known")));
            }
        }
        if row.agreement != Agreement::Same {
            out.line(&format!("    kernel: {}", row.kernel_detail.as_deref().unwrap_or("-")));
            out.line(&format!("    model:  {}", row.model_detail.as_deref().unwrap_or("-")));
            if let Some(result) = kernel.result(&row.name) {
                for line in result.kernel_log.iter().take(8) {
                    out.line(&format!("    kernel log: {line}"));
                }
            }
        }
        for info in &row.info {
            out.line(&format!("    info: {info}"));
        }
    }
    for &index in &comparison.unused_defects {
        let defect = &defects.defects[index];
        out.line(&format!(
            "info: known kernel defect #{index} ({}) did not show in this run: the kernel may be fixed, or the entry is wrong",
            defect.full_name()
        ));
    }
    let same = comparison.count(|a| *a == Agreement::Same);
    let known = comparison.count(|a| matches!(a, Agreement::KnownDefect(_)));
    out.line(&format!(
        "{} tests: {same} same verdict, {known} known kernel defects, {} mismatches",
        comparison.rows.len(),
        comparison.mismatches()
    ));
}
