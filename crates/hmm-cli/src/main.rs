//! `hmm`: run the demos (and, as they land, the conformance suite, scenario
//! scripts and benchmarks). Parse, call, render: no memory-management logic
//! lives here.

#![forbid(unsafe_code)]

mod bench;
mod demo;
mod render;
mod scenario;
mod selftest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Heterogeneous Memory Management, modelled in Rust.
#[derive(Debug, Parser)]
#[command(name = "hmm", version, about)]
struct Cli {
    /// Never colour the output.
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tell a story step by step, with every invalidation shown.
    Demo {
        #[command(subcommand)]
        which: demo::Which,
    },
    /// Run Linux's HMM selftests (and the DAX conformance tests) on the
    /// dmirror reference device.
    Selftest(selftest::Args),
    /// Measure the model against this machine's own limits, with targets.
    Bench(bench::Args),
    /// Run a scenario on the model: each operation, its result, and every
    /// invalidation it caused. Exits 1 if an `expect` line fails.
    Run(scenario::RunArgs),
    /// Run a scenario on the model and on this machine's Linux kernel and
    /// print the first difference. Exits 1 on a divergence.
    Diff(scenario::DiffArgs),
    /// Random scenarios on the model and on this machine's kernel; each
    /// divergence is shrunk and written to a file. Exits 1 if any is found.
    Fuzz(scenario::FuzzArgs),
    /// The host runner (`hmm diff` and `hmm fuzz` start this binary again
    /// with it): a scenario on stdin, real system calls, JSON on stdout.
    #[command(name = "__host-runner", hide = true)]
    HostRunner,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = render::Out::new(cli.no_color);
    // `Ok(false)`: the command ran and reports a failure (an expectation,
    // a divergence) it has already printed.
    let result = match cli.command {
        Command::Demo { which } => demo::run(which, &out).map(|()| true),
        Command::Selftest(args) => selftest::run(&args, &out),
        Command::Bench(args) => bench::run(args, &out).map(|()| true).map_err(|e| demo::DemoError(e.to_string())),
        Command::Run(args) => scenario::run(&args, &out),
        Command::Diff(args) => scenario::diff(&args, &out),
        Command::Fuzz(args) => scenario::fuzz(&args, &out),
        Command::HostRunner => hmm_scenario::exec::host::runner_main(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            out.error(&error.to_string());
            ExitCode::FAILURE
        }
    }
}
