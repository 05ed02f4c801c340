//! `hmm run`, `hmm diff`, `hmm fuzz`: render what `hmm-scenario` computes.
//! The host executor runs this very binary again with the hidden
//! `__host-runner` subcommand as its child process.

use std::path::PathBuf;

use hmm_scenario::compare::{self, Verdict};
use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::model::ModelExecutor;
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

/// Arguments of `hmm diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The scenario file (`.hmm`).
    file: PathBuf,
    /// Print every step's verdict, not only the first difference.
    #[arg(long)]
    all: bool,
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

/// Runs a scenario on the model and on this machine's kernel and prints the
/// first difference; `Ok(false)` when there is one.
pub fn diff(args: &DiffArgs, out: &Out) -> Result<bool, DemoError> {
    let scenario = load(&args.file)?;
    let mut host = host_executor()?;
    let version = host_version();
    let (model_trace, _, cmp) = compare::diff_scenario(&scenario, &mut ModelExecutor::default(), &mut host, version)
        .map_err(|e| DemoError(e.to_string()))?;
    let w = model_trace.window;
    let show = |o: &Outcome| Shown { outcome: o, window: w }.to_string();
    if let Some(why) = &cmp.host_aborted {
        out.test_line(TestLine::NotOk, &format!("the host runner did not finish: {why}"));
        return Ok(false);
    }
    for s in &cmp.steps {
        let step = &scenario.steps[s.step];
        let text = lang::print_step(step);
        match &s.verdict {
            Verdict::Version(behaviour) => out.test_line(
                TestLine::Skip,
                &format!(
                    "line {}: {text}: expected version difference ({behaviour}): model {}, host {}",
                    step.line,
                    show(&s.model),
                    show(&s.host)
                ),
            ),
            Verdict::Inconclusive(why) if args.all => {
                out.test_line(TestLine::Skip, &format!("line {}: {text}: inconclusive ({why})", step.line))
            }
            Verdict::Match if args.all => {
                out.test_line(TestLine::Ok, &format!("line {}: {text} -> {}", step.line, show(&s.model)))
            }
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
        out.line(&format!("model: {}", show(&first.model)));
        out.line(&format!("host:  {}", show(&first.host)));
    }
    out.line(&format!(
        "model vs Linux {}.{} on this machine: {} steps, {matched} match, {differ} differ, {version_diffs} expected version differences, {inconclusive} inconclusive",
        version.0,
        version.1,
        cmp.steps.len()
    ));
    Ok(differ == 0)
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
}

/// Random scenarios on both executors; `Ok(false)` if any diverged.
pub fn fuzz(args: &FuzzArgs, out: &Out) -> Result<bool, DemoError> {
    let seed = args.seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.finish()
    });
    let mut host = host_executor()?;
    let version = host_version();
    out.line(&format!(
        "hmm fuzz --seconds {} --seed {seed} (model vs Linux {}.{})",
        args.seconds, version.0, version.1
    ));
    let report = hmm_scenario::fuzz::fuzz(
        std::time::Duration::from_secs(args.seconds),
        seed,
        &mut ModelExecutor::default(),
        &mut host,
        version,
    );
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
    for e in report.host_errors.iter().take(5) {
        out.test_line(TestLine::Skip, &format!("host could not run a scenario: {e}"));
    }
    if !report.found.is_empty() {
        std::fs::create_dir_all(&args.out).map_err(|e| DemoError(format!("{}: {e}", args.out.display())))?;
    }
    for found in &report.found {
        let path = args.out.join(format!("{}.hmm", found.signature));
        let body = format!("# found by hmm fuzz --seed {seed}: {}\n{}", found.first, found.text);
        std::fs::write(&path, body).map_err(|e| DemoError(format!("{}: {e}", path.display())))?;
        out.test_line(TestLine::NotOk, &format!("divergence {} -> {}", found.signature, path.display()));
        out.note(&found.first);
    }
    out.line(&format!("{} distinct divergences", report.found.len()));
    Ok(report.found.is_empty())
}
