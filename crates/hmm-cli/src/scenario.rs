//! `hmm run`, `hmm diff`, `hmm fuzz`: render what `hmm-scenario` computes.
//! The host executor runs this very binary again with the hidden
//! `__host-runner` subcommand as its child process.

use std::path::PathBuf;

use hmm_scenario::exec::model::ModelExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::lang;
use hmm_scenario::observe::{Shown, Trace};

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
}

pub(crate) fn load(file: &PathBuf) -> Result<lang::ast::Scenario, DemoError> {
    let text = std::fs::read_to_string(file).map_err(|e| DemoError(format!("{}: {e}", file.display())))?;
    lang::parse(&file.display().to_string(), &text).map_err(|e| DemoError(e.to_string()))
}

/// Runs a scenario on the model; `Ok(false)` when an expectation failed.
pub fn run(args: &RunArgs, out: &Out) -> Result<bool, DemoError> {
    let scenario = load(&args.file)?;
    let trace = ModelExecutor::default().run(&scenario).map_err(|e| DemoError(e.to_string()))?;
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
    Shown { outcome: &hmm_scenario::observe::Outcome::Addr(va), window }.to_string()
}
