//! `hmm run` and `hmm diff` as a user meets them: exit status, a typo's
//! location, the first difference.

use std::process::Command;

fn hmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hmm")).args(args).arg("--no-color").output().expect("hmm runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn scenario(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("hmm-cli-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn run_shows_results_and_invalidations_and_fails_on_a_wrong_expectation() {
    let good = scenario("good.hmm", "a = mmap w 2p rw- private|anon|fixed\nwrite a 1\nmunmap a 2p\nexpect ok\n");
    let (code, out, _) = hmm(&["run", &good]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("MMU_NOTIFY_UNMAP [w, w+0x2000)"), "{out}");
    assert!(out.contains("1 of 1 expectations held"), "{out}");
    let bad = scenario("bad.hmm", "read w\nexpect 0x1\n");
    let (code, out, _) = hmm(&["run", &bad]);
    assert_eq!(code, 1);
    assert!(out.contains("not ok") && out.contains("(got fault)"), "{out}");
}

#[test]
fn a_typo_names_file_line_and_column() {
    let typo = scenario("typo.hmm", "a = mmap w 2p rw- private|anon|fixed\nmprotect a 2p rq-\n");
    let (code, _, err) = hmm(&["run", &typo]);
    assert_eq!(code, 1);
    assert!(err.contains("typo.hmm:2:16: expected `w` or `-`, found `q`"), "{err}");
}

#[test]
fn diff_prints_the_first_difference_or_agreement() {
    if !cfg!(target_os = "linux") {
        println!("skipped: hmm diff needs Linux");
        return;
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/example.hmm");
    let (code, out, err) = hmm(&["diff", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 differ"), "{out}");
    let hole = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/corpus/mprotect_hole.hmm");
    let (_, out, _) = hmm(&["diff", hole]);
    // A known divergence until branch fidelity lands: either way the
    // verdict line is printed, and a difference names its line.
    assert!(out.contains("steps,"), "{out}");
    if out.contains("first difference") {
        assert!(out.contains("mprotect a 0x4000 r--") && out.contains("host:  w..w+0x2000 r--p"), "{out}");
    }
}
