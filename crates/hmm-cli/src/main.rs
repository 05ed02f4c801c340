//! `hmm`: run the demos (and, as they land, the conformance suite, scenario
//! scripts and benchmarks). Parse, call, render: no memory-management logic
//! lives here.

#![forbid(unsafe_code)]

mod demo;
mod render;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = render::Out::new(cli.no_color);
    let result = match cli.command {
        Command::Demo { which } => demo::run(which, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            out.error(&error.to_string());
            ExitCode::FAILURE
        }
    }
}
