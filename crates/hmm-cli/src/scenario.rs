//! `hmm run`, `hmm diff`, `hmm fuzz`: render what `hmm-scenario` computes.
//! The host executor runs this very binary again with the hidden
//! `__host-runner` subcommand as its child process.

use std::path::PathBuf;

use hmm_scenario::compare::{self, Verdict};
use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::model::ModelExecutor;
use hmm_scenario::exec::vm::VmExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::lang;
use hmm_scenario::observe::{Outcome, Shown, Trace};
use hmm_scenario::versions;

use crate::demo::DemoError;
use crate::render::{Out, TestLine};

/// Arguments of `hmm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario file (`.hmm`).
    file: PathBuf,
    /// Write one JSON object per operation instead of text.
    #[arg(long)]
    json: bool,
    /// Run on this machine's kernel instead of the model (no invalidations
    /// are visible there).
    #[arg(long)]
    host: bool,
}

pub(crate) fn load(file: &PathBuf) -> Result<lang::ast::Scenario, DemoError> {
    let text = std::fs::read_to_string(file).map_err(|e| DemoError(format!("{}: {e}", file.display())))?;
    lang::parse(&file.display().to_string(), &text).map_err(|e| DemoError(e.to_string()))
}

/// Runs a scenario on the model (or the host); `Ok(false)` when an expectation failed.
pub fn run(args: &RunArgs, out: &Out) -> Result<bool, DemoError> {
    let scenario = load(&args.file)?;
    let trace = if args.host { host_executor()?.run(&scenario) } else { ModelExecutor::default().run(&scenario) }
        .map_err(|e| DemoError(e.to_string()))?;
    if let Some(why) = &trace.aborted {
        return Err(DemoError(format!("the host runner did not finish: {why}")));
    }
    if args.json {
        for record in &trace.records {
            out.line(&serde_json::to_string(record).map_err(|e| DemoError(e.to_string()))?);
        }
    } else {
        render_trace(&trace, out);
    }
    let ok = trace.failed_expectations().next().is_none();
    Ok(ok)
}

fn render_trace(trace: &Trace, out: &Out) {
    for record in &trace.records {
        let shown = Shown { outcome: &record.outcome, window: trace.window }.to_string();
        match (record.expect_ok, &record.got) {
            (Some(true), _) => out.test_line(TestLine::Ok, &format!("{}:{} {}", record.line, record.proc, record.text)),
            (Some(false), got) => out.test_line(
                TestLine::NotOk,
                &format!("{}:{} {} (got {})", record.line, record.proc, record.text, got.as_deref().unwrap_or("")),
            ),
            (None, _) => out.line(&format!("{:>4} {:<5} {:<48} -> {shown}", record.line, record.proc, record.text)),
        }
        for inv in &record.invalidations {
            let w = trace.window;
            let range = if inv.end == u64::MAX {
                "whole address space".to_string()
            } else {
                format!("[{}, {})", rel(inv.start, w), rel(inv.end, w))
            };
            out.event(&format!("{} {} {range} -> {}", inv.proc, inv.event, inv.subscribers.join(", ")));
        }
    }
    let failed = trace.failed_expectations().count();
    let total = trace.records.iter().filter(|r| r.expect_ok.is_some()).count();
    out.line(&format!("{} operations, {} of {total} expectations held", trace.records.len(), total - failed));
}

fn rel(va: u64, window: u64) -> String {
    Shown { outcome: &Outcome::Addr(va), window }.to_string()
}

/// Which kernel `hmm diff` and `hmm fuzz` compare the model with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// This machine's running kernel.
    Host,
    /// The reference kernel (Linux 7.3 with test_hmm and fs-dax) booted
    /// under QEMU by kernel-lab/ (or $HMM_KERNEL_LAB); many scenarios per boot.
    Vm,
}

/// Arguments of `hmm diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The scenario files (`.hmm`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print every step's verdict, not only the first difference.
    #[arg(long)]
    all: bool,
    /// The kernel to compare with.
    #[arg(long, value_enum, default_value_t = KernelChoice::Host)]
    kernel: KernelChoice,
}

/// The host executor: this binary again, as `hmm __host-runner`.
pub(crate) fn host_executor() -> Result<HostExecutor, DemoError> {
    if let Some(why) = HostExecutor::unavailable() {
        return Err(DemoError(why));
    }
    let program = std::env::current_exe().map_err(|e| DemoError(format!("finding the hmm binary: {e}")))?;
    Ok(HostExecutor { program, args: vec!["__host-runner".into()] })
}

pub(crate) fn host_version() -> (u32, u32) {
    versions::host_version().unwrap_or((0, 0))
}

/// The VM executor for the workspace this command runs in.
fn vm_executor() -> Result<VmExecutor, DemoError> {
    let cwd = std::env::current_dir().map_err(|e| DemoError(e.to_string()))?;
    let root = VmExecutor::find_root(&cwd)
        .ok_or_else(|| DemoError("hmm --kernel vm runs inside the hmm workspace (it builds the runner)".into()))?;
    VmExecutor::new(&root).map_err(|e| DemoError(e.to_string()))
}

/// Runs scenarios on the model and on a kernel and prints each one's first
/// difference; `Ok(false)` when there is one.
pub fn diff(args: &DiffArgs, out: &Out) -> Result<bool, DemoError> {
    let scenarios = args.files.iter().map(load).collect::<Result<Vec<_>, _>>()?;
    let mut all_ok = true;
    match args.kernel {
        KernelChoice::Host => {
            let mut host = host_executor()?;
            let version = host_version();
            let label = format!("Linux {}.{} on this machine", version.0, version.1);
            for (file, scenario) in args.files.iter().zip(&scenarios) {
                let (model_trace, _, cmp) =
                    compare::diff_scenario(scenario, &mut ModelExecutor::default(), &mut host, version)
                        .map_err(|e| DemoError(e.to_string()))?;
                if args.files.len() > 1 {
                    out.heading(&file.display().to_string());
                }
                all_ok &= report(scenario, &model_trace, &cmp, &label, args.all, out);
            }
        }
        KernelChoice::Vm => {
            let mut vm = vm_executor()?;
            out.note(&format!(
                "booting the reference kernel for {} scenarios (kernel lab {})",
                scenarios.len(),
                vm.lab.display()
            ));
            let batch = vm.run_batch(&scenarios).map_err(|e| DemoError(e.to_string()))?;
            let version = batch.guest.version().unwrap_or((0, 0));
            let label = format!("Linux {} in the guest (THP {})", batch.guest.release, batch.guest.thp);
            out.note(&format!(
                "guest ran in {:.1} s; console in {}",
                batch.elapsed.as_secs_f64(),
                vm.console.display()
            ));
            for warning in &batch.kernel_warnings {
                out.note(&format!("the guest kernel warned: {warning}"));
            }
            let mut model = ModelExecutor { config: batch.guest.model_config() };
            for ((file, scenario), guest) in args.files.iter().zip(&scenarios).zip(batch.traces) {
                out.heading(&file.display().to_string());
                let guest = match guest {
                    Ok(t) => t,
                    Err(e) => {
                        out.test_line(TestLine::NotOk, &format!("the guest could not run it: {e}"));
                        all_ok = false;
                        continue;
                    }
                };
                let model_trace = model.run(scenario).map_err(|e| DemoError(e.to_string()))?;
                let cmp = compare::compare(scenario, &model_trace, &guest, version);
                all_ok &= report(scenario, &model_trace, &cmp, &label, args.all, out);
            }
        }
    }
    Ok(all_ok)
}

/// Prints one comparison; true when nothing differs.
fn report(
    scenario: &lang::ast::Scenario,
    model_trace: &Trace,
    cmp: &compare::Comparison,
    label: &str,
    all: bool,
    out: &Out,
) -> bool {
    let w = model_trace.window;
    let show = |o: &Outcome| Shown { outcome: o, window: w }.to_string();
    if let Some(why) = &cmp.host_aborted {
        out.test_line(TestLine::NotOk, &format!("the runner did not finish: {why}"));
        return false;
    }
    if let Some(defect) = &cmp.kernel_defect {
        out.test_line(TestLine::Skip, &format!("not compared: {defect}"));
        return true;
    }
    for s in &cmp.steps {
        let step = &scenario.steps[s.step];
        let text = lang::print_step(step);
        match &s.verdict {
            Verdict::Version(behaviour) => out.test_line(
                TestLine::Skip,
                &format!(
                    "line {}: {text}: expected version difference ({behaviour}): model {}, kernel {}",
                    step.line,
                    show(&s.model),
                    show(&s.host)
                ),
            ),
            Verdict::Inconclusive(why) if all => {
                out.test_line(TestLine::Skip, &format!("line {}: {text}: inconclusive ({why})", step.line))
            }
            Verdict::Match if all => {
                out.test_line(TestLine::Ok, &format!("line {}: {text} -> {}", step.line, show(&s.model)))
            }
            Verdict::Differ if all => out.test_line(
                TestLine::NotOk,
                &format!("line {}: {text}: model {}, kernel {}", step.line, show(&s.model), show(&s.host)),
            ),
            _ => {}
        }
    }
    let (matched, differ, version_diffs, inconclusive) = cmp.counts();
    if let Some(first) = cmp.first_divergence() {
        out.heading(&format!("first difference, at line {}", scenario.steps[first.step].line));
        out.note("the operations that led to it:");
        for step in &scenario.steps[..=first.step] {
            if !matches!(step.op, hmm_scenario::lang::ast::Op::Expect { .. }) {
                out.line(&format!("{:>4}  {}", step.line, lang::print_step(step)));
            }
        }
        out.line(&format!("model:  {}", show(&first.model)));
        out.line(&format!("kernel: {}", show(&first.host)));
    }
    out.line(&format!(
        "model vs {label}: {} steps, {matched} match, {differ} differ, {version_diffs} expected version differences, {inconclusive} inconclusive",
        cmp.steps.len()
    ));
    differ == 0
}

/// Arguments of `hmm fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long to search.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The seed (random, and printed, if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Where shrunk divergences are written, one `.hmm` file each.
    #[arg(long, default_value = "scenarios/found")]
    out: PathBuf,
    /// The kernel to compare with.
    #[arg(long, value_enum, default_value_t = KernelChoice::Host)]
    kernel: KernelChoice,
    /// Scenarios per guest boot (`--kernel vm`).
    #[arg(long, default_value_t = 40)]
    batch: usize,
}

/// Writes a shrunk divergence to `OUT/SIGNATURE.hmm` (and the console of
/// the guest's boot that found it beside it); the scenario's path.
fn save_found(args: &FuzzArgs, seed: u64, found: &hmm_scenario::fuzz::Found) -> Result<PathBuf, DemoError> {
    std::fs::create_dir_all(&args.out).map_err(|e| DemoError(format!("{}: {e}", args.out.display())))?;
    let path = args.out.join(format!("{}.hmm", found.signature));
    let kernel = if args.kernel == KernelChoice::Vm { " --kernel vm" } else { "" };
    let body = format!("# found by hmm fuzz{kernel} --seed {seed}: {}\n{}", found.first, found.text);
    std::fs::write(&path, body).map_err(|e| DemoError(format!("{}: {e}", path.display())))?;
    if let Some(console) = &found.console {
        let path = path.with_extension("console");
        std::fs::write(&path, console).map_err(|e| DemoError(format!("{}: {e}", path.display())))?;
    }
    Ok(path)
}

/// Random scenarios on both executors; `Ok(false)` if any diverged.
pub fn fuzz(args: &FuzzArgs, out: &Out) -> Result<bool, DemoError> {
    let seed = args.seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.finish()
    });
    let report = if args.kernel == KernelChoice::Vm {
        let mut vm = vm_executor()?;
        out.line(&format!(
            "hmm fuzz --kernel vm --seconds {} --seed {seed} --batch {} (model vs the reference kernel in a guest)",
            args.seconds, args.batch
        ));
        let duration = std::time::Duration::from_secs(args.seconds);
        let keep = |found: &hmm_scenario::fuzz::Found| {
            if let Err(e) = save_found(args, seed, found) {
                eprintln!("hmm fuzz: {e}");
            }
        };
        hmm_scenario::fuzz_vm::fuzz_vm(&mut vm, duration, seed, args.batch.max(1), keep).map_err(DemoError)?
    } else {
        let mut host = host_executor()?;
        let version = host_version();
        out.line(&format!(
            "hmm fuzz --seconds {} --seed {seed} (model vs Linux {}.{})",
            args.seconds, version.0, version.1
        ));
        hmm_scenario::fuzz::fuzz(
            std::time::Duration::from_secs(args.seconds),
            seed,
            &mut ModelExecutor::default(),
            &mut host,
            version,
        )
    };
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    out.line(&format!(
        "{} scenarios in {:.1} s: {:.1} scenarios/s",
        report.scenarios,
        secs,
        report.scenarios as f64 / secs
    ));
    let total: u64 = report.op_mix.values().sum();
    let mix: Vec<String> =
        report.op_mix.iter().map(|(k, n)| format!("{k} {:.1}%", *n as f64 * 100.0 / total.max(1) as f64)).collect();
    out.line(&format!("operation mix: {}", mix.join(", ")));
    if let Some(first) = report.kernel_defects.first() {
        let n = report.kernel_defects.len();
        out.test_line(
            TestLine::Skip,
            &format!("{n} scenarios hit a known kernel defect, not compared; the first: {first}"),
        );
    }
    for e in report.host_errors.iter().take(5) {
        out.test_line(TestLine::Skip, &format!("host could not run a scenario: {e}"));
    }
    for found in &report.found {
        let path = save_found(args, seed, found)?;
        out.test_line(TestLine::NotOk, &format!("divergence {} -> {}", found.signature, path.display()));
        out.note(&found.first);
    }
    out.line(&format!("{} distinct divergences", report.found.len()));
    if let Some(why) = &report.aborted {
        out.test_line(TestLine::NotOk, &format!("stopped after {secs:.0} s of {}: {why}", args.seconds));
    }
    Ok(report.found.is_empty() && report.aborted.is_none())
}
