//! The corpus (`scenarios/corpus/*.hmm` and `scenarios/example.hmm`) on
//! both executors. Every `expect` line states what Linux does:
//! - on the host they must all hold (the kernel is the referee; skipped,
//!   with the reason printed, where the host executor cannot run);
//! - on the model they must all hold, and `hmm diff` must find no
//!   divergence, unless the file starts with `# known-divergence: WHERE:
//!   WHAT`: then each failure is printed as a known divergence pending a
//!   fix (WHERE names the branch or issue), never counted as a pass. The
//!   coordinator removes the marker when the fix lands, making them hard
//!   failures again.

mod common;

use common::{failed_expectations, judge, load, scenario_files};
use hmm_scenario::compare::{compare, Verdict};
use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::model::ModelExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::versions;

fn corpus() -> Vec<std::path::PathBuf> {
    let mut files = scenario_files("corpus");
    files.push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/example.hmm"));
    files
}

fn host() -> Option<HostExecutor> {
    match HostExecutor::unavailable() {
        Some(why) => {
            println!("host executor skipped: {why}");
            None
        }
        None => Some(HostExecutor { program: env!("CARGO_BIN_EXE_hmm-host-runner").into(), args: vec![] }),
    }
}

#[test]
fn the_corpus_holds_on_the_host() {
    let Some(mut host) = host() else { return };
    let mut failures = Vec::new();
    for path in corpus() {
        let file = load(&path);
        let name = &file.name;
        let trace = host.run(&file.scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(why) = &trace.aborted {
            failures.push(format!("{name}: the host runner did not finish: {why}"));
        }
        failures.extend(failed_expectations(&trace).into_iter().map(|f| format!("{name}: {f}")));
    }
    assert!(failures.is_empty(), "expectations that Linux does not meet:\n{}", failures.join("\n"));
}

#[test]
fn the_corpus_holds_on_the_model_and_matches_the_host() {
    let mut host = host();
    let version = versions::host_version().unwrap_or((0, 0));
    let mut failures = Vec::new();
    for path in corpus() {
        let file = load(&path);
        let (name, scenario) = (&file.name, &file.scenario);
        let model_trace = ModelExecutor::default().run(scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut problems: Vec<String> = failed_expectations(&model_trace);
        if let Some(host) = host.as_mut() {
            let host_trace = host.run(scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
            let cmp = compare(scenario, &model_trace, &host_trace, version);
            for s in &cmp.steps {
                let line = scenario.steps[s.step].line;
                match &s.verdict {
                    Verdict::Differ => problems.push(format!("line {line}: model {:?}, host {:?}", s.model, s.host)),
                    Verdict::Version(why) => println!("{name}: line {line}: expected version difference: {why}"),
                    Verdict::Inconclusive(why) => println!("{name}: line {line}: inconclusive: {why}"),
                    Verdict::Match => {}
                }
            }
        }
        judge(&file, problems, &mut failures);
    }
    assert!(failures.is_empty(), "the model diverges from Linux:\n{}", failures.join("\n"));
}
