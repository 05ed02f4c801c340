//! What the corpus tests share: finding and parsing the scenario files,
//! and the `# known-divergence: WHERE: WHAT` marker's bookkeeping.

use std::path::{Path, PathBuf};

use hmm_scenario::lang::{self, ast::Scenario};
use hmm_scenario::observe::Trace;

const MARKER: &str = "# known-divergence:";

/// The `.hmm` files of `scenarios/DIR`, sorted.
pub fn scenario_files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hmm"))
        .collect();
    files.sort();
    files
}

/// One corpus file: its name, the parsed scenario and its known-divergence
/// marker (the first line), if any.
pub struct CorpusFile {
    pub name: String,
    pub scenario: Scenario,
    pub known: Option<String>,
}

pub fn load(path: &Path) -> CorpusFile {
    let text = std::fs::read_to_string(path).expect("readable");
    let name = path.file_name().expect("a file").to_string_lossy().to_string();
    let scenario = lang::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
    let known = text.lines().next().and_then(|l| l.strip_prefix(MARKER)).map(|s| s.trim().to_string());
    CorpusFile { name, scenario, known }
}

/// Every `expect` line the trace did not meet, with its line number.
pub fn failed_expectations(trace: &Trace) -> Vec<String> {
    trace
        .failed_expectations()
        .map(|r| format!("line {}: {} (got {})", r.line, r.text, r.got.as_deref().unwrap_or("")))
        .collect()
}

/// Files `problems` as failures, unless the file is marked as a known
/// divergence: then they are printed as pending a fix (never as a pass),
/// and a marked file without problems is told to drop its marker.
pub fn judge(file: &CorpusFile, problems: Vec<String>, failures: &mut Vec<String>) {
    let name = &file.name;
    match (&file.known, problems.is_empty()) {
        (None, true) => {}
        (None, false) => failures.extend(problems.into_iter().map(|p| format!("{name}: {p}"))),
        (Some(why), false) => {
            println!("{name}: known divergence pending fix ({why})");
            for p in problems {
                println!("    {p}");
            }
        }
        (Some(why), true) => {
            println!("{name}: marked as a known divergence ({why}) but the model now matches: remove the marker")
        }
    }
}
