//! The VM executor's payload end to end, without a guest: a stand-in for
//! `kernel-lab/lab` runs the payload's script on this machine and writes
//! the console as `boot` does; the replies must come back as the traces
//! the host executor gives, and a scenario the runner rejects as an error.

use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::vm::VmExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::lang::parse;

#[test]
fn a_batch_runs_through_the_payload_script() {
    if let Some(why) = HostExecutor::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hmm-fake-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lab = dir.join("lab");
    std::fs::write(
        &lab,
        "#!/bin/sh\n[ \"$1\" = boot ] || exit 2\ncd \"$2\" && { echo '=== payload begin'; ./run; echo '=== payload end'; } >\"$3\" 2>&1\n",
    )
    .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&lab).status().unwrap();
    std::env::set_var("HMM_KERNEL_LAB", &dir);
    let root = VmExecutor::find_root(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut vm = VmExecutor::new(&root).unwrap().with_runner(env!("CARGO_BIN_EXE_hmm-host-runner").into());
    vm.console = dir.join("console.log");
    let a = parse("a", "x = mmap w 2p rw- private|anon|fixed\nwrite x 5\nread x\nd = dmirror 0\n").unwrap();
    let bad = parse("b", "window 0 0x7fffffe00000\nread w\n").unwrap();
    let batch = vm.run_batch(&[a.clone(), bad]).unwrap();
    assert!(!batch.guest.release.is_empty() && !batch.guest.thp.is_empty(), "{:?}", batch.guest);
    let mut host = HostExecutor { program: env!("CARGO_BIN_EXE_hmm-host-runner").into(), args: vec![] };
    let direct = host.run(&a).unwrap();
    let via_vm = batch.traces[0].as_ref().unwrap();
    assert_eq!(via_vm.records.len(), direct.records.len());
    for (v, d) in via_vm.records.iter().zip(&direct.records) {
        assert_eq!(v.outcome, d.outcome, "{}", v.text);
    }
    assert!(batch.traces[1].is_err(), "the runner's refusal comes back as an error");
    let _ = std::fs::remove_dir_all(&dir);
}
