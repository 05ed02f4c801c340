//! `hmm bench`: the model measured against this machine's own limits, in
//! one process. Every figure sits next to a limit measured in the same run
//! (a streaming read+write, memset, memcpy, clearing device entries, or
//! the alternative it competes with), so only ratios carry over between
//! machines and runs.
//!
//! The eight categories of issue 7 are registered in [`CATEGORIES`]; each
//! module turns a [`Mode`] into [`Case`]s, each case into [`Row`]s. Files:
//! `measure.rs` (timing, medians, ratio and slope), `limits.rs` (the
//! limits), `fixture.rs` and `device.rs` (machines, mappings, a flat
//! mirroring device, the reference device `hmm-dmirror` over a populated
//! range), one file per category, `report.rs` (table and JSON),
//! `progress.rs` (bar or lines).

mod device;
mod dmirror;
mod fault;
mod fixture;
mod invalidate;
mod limits;
mod measure;
mod migrate;
mod overhead;
mod pin;
mod progress;
mod report;
mod scaling;
mod snapshot;

use std::path::PathBuf;
use std::time::Instant;

use measure::Plan;
use progress::Progress;
use report::{Report, Row};

use crate::render::Out;

/// Arguments of `hmm bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A short run (under a minute on two cores): fewer repetitions and
    /// smaller ranges for invalidation and scaling.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run only these categories (1-8, repeatable).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub only: Vec<u8>,
}

impl Args {
    /// Checks what clap cannot, before the run rather than after it: the
    /// JSON file's directory exists, the path is not a directory, and the
    /// file can be written (a file created for the check is removed).
    fn validate(&self) -> Result<(), BenchError> {
        if let Some(path) = &self.json {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                return Err(BenchError(format!("--json {}: no directory {}", path.display(), dir.display())));
            }
            if path.is_dir() {
                return Err(BenchError(format!("--json {}: is a directory, not a file", path.display())));
            }
            let existed = path.exists();
            let opened = std::fs::OpenOptions::new().append(true).create(true).open(path);
            if let Err(error) = opened {
                return Err(BenchError(format!("--json {}: cannot write: {error}", path.display())));
            }
            if !existed {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// Quick or full: repetitions and sizes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mode {
    /// `--quick`.
    pub quick: bool,
}

impl Mode {
    /// For measurements whose runs are cheap (snapshots, copies).
    pub fn plan(self) -> Plan {
        if self.quick {
            Plan { warmups: 2, reps: 11 }
        } else {
            Plan { warmups: 3, reps: 31 }
        }
    }

    /// For measurements that rebuild a mapping before every run.
    pub fn heavy_plan(self) -> Plan {
        if self.quick {
            Plan { warmups: 1, reps: 5 }
        } else {
            Plan { warmups: 1, reps: 9 }
        }
    }

    /// The range category 5 unmaps.
    pub fn invalidation_len(self) -> u64 {
        if self.quick {
            64 << 20
        } else {
            1 << 30
        }
    }

    /// The sizes category 7 compares.
    pub fn scaling_sizes(self) -> &'static [u64] {
        if self.quick {
            &[4 << 20, 64 << 20, 256 << 20]
        } else {
            &[4 << 20, 64 << 20, 1 << 30]
        }
    }

    /// What a quick run does differently, for the report.
    fn notes(self) -> Vec<String> {
        if !self.quick {
            return Vec::new();
        }
        vec!["--quick: invalidation over 64 MiB (not 1 GiB), scaling up to 256 MiB (not 1 GiB), fewer repetitions"
            .to_string()]
    }
}

/// A benchmark could not run.
#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

macro_rules! bench_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for BenchError {
            fn from(error: $t) -> Self {
                Self(error.to_string())
            }
        }
    )*};
}

bench_error_from!(hmm::HmmError, hmm_types::Errno, hmm_mm::MmError, hmm_dmirror::DmirrorError, std::io::Error);

/// One measurement: a label for the progress display and the work.
pub struct Case {
    label: String,
    run: Box<dyn FnOnce() -> Result<Vec<Row>, BenchError>>,
}

impl Case {
    /// A case.
    pub fn new(label: String, run: impl FnOnce() -> Result<Vec<Row>, BenchError> + 'static) -> Self {
        Self { label, run: Box::new(run) }
    }
}

/// A category: its number and its cases.
type Category = (u8, fn(Mode) -> Vec<Case>);

/// The categories of issue 7, in its order.
const CATEGORIES: [Category; 8] = [
    (1, snapshot::cases),
    (2, fault::cases),
    (3, dmirror::cases),
    (4, migrate::cases),
    (5, invalidate::cases),
    (6, pin::cases),
    (7, scaling::cases),
    (8, overhead::cases),
];

/// Runs the benchmark, prints the table, writes the JSON if asked.
pub fn run(args: Args, out: &Out) -> Result<(), BenchError> {
    args.validate()?;
    let started = Instant::now();
    let mode = Mode { quick: args.quick };
    let cases: Vec<(u8, Case)> = CATEGORIES
        .iter()
        .filter(|(n, _)| args.only.is_empty() || args.only.contains(n))
        .flat_map(|&(n, cases)| cases(mode).into_iter().map(move |case| (n, case)))
        .collect();
    out.heading(&format!("hmm bench{}", if mode.quick { " --quick" } else { "" }));
    let mut progress = Progress::new(cases.len() as u64, out.is_color());
    let mut rows = Vec::new();
    let mut failures = 0;
    for (category, case) in cases {
        progress.step(&case.label);
        match (case.run)() {
            Ok(found) => rows.extend(found),
            Err(error) => {
                failures += 1;
                let id = format!("failed/{category}");
                rows.push(Row::unavailable(category, &id, &case.label, report::Target::None, &error.to_string()));
            }
        }
        progress.done();
    }
    progress.finish();
    let report = Report {
        mode: if mode.quick { "quick" } else { "full" }.to_string(),
        wall_seconds: started.elapsed().as_secs_f64(),
        notes: mode.notes(),
        rows,
    };
    println!();
    print!("{}", report.table());
    let (met, missed) = report.tally();
    println!("\n{met} targets met, {missed} missed; {:.1} s wall time", report.wall_seconds);
    if let Some(path) = &args.json {
        std::fs::write(path, report.json())
            .map_err(|error| BenchError(format!("--json {}: cannot write: {error}", path.display())))?;
        println!("JSON written to {}", path.display());
    }
    if failures > 0 {
        return Err(BenchError(format!("{failures} benchmark case(s) could not run")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|cli| cli.args)
    }

    #[test]
    fn arguments_parse() {
        let args = parse(&["--quick", "--json", "out.json", "--only", "1", "--only", "8"]).unwrap();
        assert!(args.quick);
        assert_eq!(args.json.as_deref(), Some(std::path::Path::new("out.json")));
        assert_eq!(args.only, [1, 8]);
        let args = parse(&[]).unwrap();
        assert!(!args.quick && args.json.is_none() && args.only.is_empty());
    }

    #[test]
    fn bad_arguments_are_refused() {
        use clap::error::ErrorKind;
        assert_eq!(parse(&["--json"]).unwrap_err().kind(), ErrorKind::InvalidValue);
        assert_eq!(parse(&["--only", "9"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["--only", "x"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["--fast"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn a_json_file_in_a_missing_directory_is_refused_before_running() {
        let args = parse(&["--json", "/nonexistent-hmm-dir/out.json"]).unwrap();
        let error = args.validate().unwrap_err();
        assert!(error.0.contains("no directory /nonexistent-hmm-dir"), "{error}");
        assert!(parse(&["--json", "out.json"]).unwrap().validate().is_ok());
        assert!(!std::path::Path::new("out.json").exists(), "the check leaves no file behind");
    }

    /// Regression: `--json DIR` ran the whole benchmark, then failed with
    /// an I/O error that did not name the path.
    #[test]
    fn a_json_path_that_cannot_be_written_is_named_before_running() {
        let dir = std::env::temp_dir();
        let error = parse(&["--json", dir.to_str().unwrap()]).unwrap().validate().unwrap_err();
        assert!(error.0.contains(&format!("--json {}: is a directory", dir.display())), "{error}");
        let file = dir.join(format!("hmm-bench-validate-{}", std::process::id()));
        std::fs::write(&file, "kept").unwrap();
        let nested = file.join("out.json");
        let error = parse(&["--json", nested.to_str().unwrap()]).unwrap().validate().unwrap_err();
        assert!(error.0.contains(&nested.display().to_string()), "{error}");
        parse(&["--json", file.to_str().unwrap()]).unwrap().validate().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept", "an existing file is not truncated by the check");
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn every_category_has_cases_in_both_modes() {
        for quick in [true, false] {
            for (n, cases) in CATEGORIES {
                assert!(!cases(Mode { quick }).is_empty(), "category {n}");
            }
        }
        assert_eq!(CATEGORIES.map(|c| c.0), [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
