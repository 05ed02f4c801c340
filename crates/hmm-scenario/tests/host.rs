//! The host executor against this machine's kernel: the runner child,
//! its window check, and crash containment. Skips (with the reason
//! printed) where the host executor cannot run.

use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::{ExecError, Executor};
use hmm_scenario::lang::parse;

fn runner() -> Option<HostExecutor> {
    if let Some(why) = HostExecutor::unavailable() {
        println!("skipped: {why}");
        return None;
    }
    Some(HostExecutor { program: env!("CARGO_BIN_EXE_hmm-host-runner").into(), args: vec![] })
}

#[test]
fn the_example_holds_on_the_host() {
    let Some(mut host) = runner() else { return };
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/example.hmm")).unwrap();
    let trace = host.run(&parse("example.hmm", &text).unwrap()).unwrap();
    assert!(trace.aborted.is_none(), "{:?}", trace.aborted);
    let failed: Vec<_> = trace.failed_expectations().collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn a_window_over_the_runners_own_memory_is_refused() {
    let Some(mut host) = runner() else { return };
    let scenario = parse("t", "window 0 0x7fffffe00000\nread w\n").unwrap();
    let err = host.run(&scenario).unwrap_err();
    assert!(matches!(&err, ExecError::Host(m) if m.contains("not free")), "{err}");
}

#[test]
fn calls_outside_the_window_are_refused_not_performed() {
    let Some(mut host) = runner() else { return };
    let scenario = parse("t", "munmap 0x10000 0x7ffffff0000\nmprotect 0x10000 0x1000 ---\n").unwrap();
    let trace = host.run(&scenario).unwrap();
    for record in &trace.records {
        assert!(matches!(record.outcome, hmm_scenario::observe::Outcome::Refused(_)), "{record:?}");
    }
}

#[test]
fn a_crashing_runner_is_reported_not_trusted() {
    if runner().is_none() {
        return;
    }
    let mut host = HostExecutor { program: "/bin/sh".into(), args: vec!["-c".into(), "kill -SEGV $$".into()] };
    let trace = host.run(&parse("t", "read w\n").unwrap()).unwrap();
    let why = trace.aborted.expect("reported as aborted");
    assert!(why.contains("signal"), "{why}");
    assert!(trace.records.is_empty());
}
