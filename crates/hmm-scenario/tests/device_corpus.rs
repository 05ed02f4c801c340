//! The device and DAX corpus (`scenarios/device/*.hmm`). Every `expect`
//! line states what the reference kernel (Linux 7.3 with test_hmm and an
//! fs-dax mount, `hmm diff --kernel vm`) does:
//! - on the model they must all hold, unless the file starts with
//!   `# known-divergence: WHERE: WHAT` (then each failure is printed as a
//!   known divergence pending a fix, never counted as a pass);
//! - on this machine's kernel (no test device, no fs-dax mount here) the
//!   device and DAX steps are refused, so nothing after them may count as
//!   a match or a divergence: every such step must be inconclusive.

use std::path::PathBuf;

use hmm_scenario::compare::{compare, Verdict};
use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::model::ModelExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::lang::{self, ast::Op, ast::Scenario};
use hmm_scenario::observe::Outcome;
use hmm_scenario::versions;

const MARKER: &str = "# known-divergence:";

fn corpus() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/device");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("scenarios/device exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hmm"))
        .collect();
    files.sort();
    files
}

fn load(path: &PathBuf) -> (String, Scenario, Option<String>) {
    let text = std::fs::read_to_string(path).expect("readable");
    let name = path.file_name().expect("a file").to_string_lossy().to_string();
    let scenario = lang::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
    let known = text.lines().next().and_then(|l| l.strip_prefix(MARKER)).map(|s| s.trim().to_string());
    (name, scenario, known)
}

/// The reference guest's configuration (THP `madvise`, 64 huge pages, as `lab boot`
/// sets it up) is what the expectations were written against.
fn guest_like_model() -> ModelExecutor {
    let guest = hmm_scenario::exec::vm::GuestInfo {
        release: "7.3".into(),
        thp: "always [madvise] never".into(),
        use_zero_page: "1".into(),
        nr_hugepages: "64".into(),
    };
    ModelExecutor { config: guest.model_config() }
}

#[test]
fn the_device_corpus_holds_on_the_model() {
    let mut failures = Vec::new();
    let files = corpus();
    assert!(files.len() >= 8, "the device corpus is missing files");
    for path in files {
        let (name, scenario, known) = load(&path);
        let trace = guest_like_model().run(&scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        let problems: Vec<String> = trace
            .failed_expectations()
            .map(|r| format!("line {}: {} (got {})", r.line, r.text, r.got.as_deref().unwrap_or("")))
            .collect();
        match (known, problems.is_empty()) {
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
    assert!(failures.is_empty(), "the model diverges from Linux 7.3:\n{}", failures.join("\n"));
}

#[test]
fn without_the_device_the_host_never_counts_a_device_step() {
    if let Some(why) = HostExecutor::unavailable() {
        println!("skipped: {why}");
        return;
    }
    if std::path::Path::new("/dev/hmm_dmirror0").exists() {
        println!("skipped: this kernel has the test device");
        return;
    }
    let mut host = HostExecutor { program: env!("CARGO_BIN_EXE_hmm-host-runner").into(), args: vec![] };
    let version = versions::host_version().unwrap_or((0, 0));
    for path in corpus() {
        let (name, scenario, _) = load(&path);
        let model = guest_like_model().run(&scenario).unwrap();
        let trace = host.run(&scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A device, DAX or gup_test step: this host has none of them.
        let first_device = scenario
            .steps
            .iter()
            .position(|s| matches!(s.op, Op::Device(_) | Op::Pin(_)))
            .expect("uses a device or gup_test");
        let refused = &trace.records[first_device].outcome;
        let is_setting = matches!(&scenario.steps[first_device].op, Op::Device(d) if d.keyword() == "daxdir");
        assert!(is_setting || matches!(refused, Outcome::Refused(_)), "{name}: {refused:?}");
        for s in compare(&scenario, &model, &trace, version).steps {
            if s.step > first_device
                && !matches!(scenario.steps[s.step].op, Op::Device(ref d) if d.keyword() == "daxdir")
            {
                assert!(matches!(s.verdict, Verdict::Inconclusive(_)), "{name}: step {}: {:?}", s.step, s.verdict);
            }
        }
    }
}
