//! `hmm selftest --format kselftest` and `--compare` end to end, on a
//! cheap test (`open_close`, both variants): the kernel-format output, a
//! guest capture that agrees (exit 0), one that disagrees (exit 1, the
//! kernel's assertion shown), a defects table that records the difference
//! (exit 0), and unreadable input (a clear error).

use std::path::PathBuf;
use std::process::Command;

fn hmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hmm")).args(args).arg("--no-color").output().expect("hmm runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A file in the target's temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hmm-selftest-compare-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn guest(coherent: &str) -> String {
    format!(
        "[    1.000000] test_hmm: loaded\n\
         TAP version 13\n\
         1..2\n\
         # Starting 2 tests from 2 test cases.\n\
         #  RUN           hmm.hmm_device_private.open_close ...\n\
         #            OK  hmm.hmm_device_private.open_close\n\
         ok 1 hmm.hmm_device_private.open_close\n\
         #  RUN           hmm.hmm_device_coherent.open_close ...\n\
         {coherent}\
         # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n"
    )
}

const COHERENT_OK: &str =
    "#            OK  hmm.hmm_device_coherent.open_close\nok 2 hmm.hmm_device_coherent.open_close\n";
const COHERENT_FAIL: &str = "\
# hmm-tests.c:177:open_close:Expected ret (-5) == 0 (0)
# open_close: Test terminated by assertion
#          FAIL  hmm.hmm_device_coherent.open_close
not ok 2 hmm.hmm_device_coherent.open_close
";

#[test]
fn kselftest_format_prints_the_kernel_harness_output() {
    let (code, out, _) = hmm(&["selftest", "--format", "kselftest", "--thp", "never", "open_close"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "TAP version 13",
            "1..2",
            "# Starting 2 tests from 2 test cases.",
            "#  RUN           hmm.hmm_device_private.open_close ..."
        ]
    );
    assert!(lines.contains(&"ok 2 hmm.hmm_device_coherent.open_close"), "{out}");
    assert_eq!(lines.last(), Some(&"# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0"));
}

#[test]
fn an_agreeing_capture_exits_0() {
    let file = Scratch::new("agree", &guest(COHERENT_OK));
    let (code, out, err) = hmm(&["selftest", "--compare", file.path(), "--thp", "always", "--fs", "dax", "open_close"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("same      kernel pass    model pass    hmm.hmm_device_coherent.open_close"), "{out}");
    assert!(out.contains("2 tests: 2 same verdict, 0 known kernel defects, 0 mismatches"), "{out}");
}

#[test]
fn a_different_verdict_exits_1_with_the_kernels_assertion() {
    let file = Scratch::new("differ", &guest(COHERENT_FAIL));
    let (code, out, _) = hmm(&["selftest", "--compare", file.path(), "--thp", "never", "open_close"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH  kernel fail    model pass    hmm.hmm_device_coherent.open_close"), "{out}");
    assert!(out.contains("kernel: hmm-tests.c:177: Expected ret (-5) == 0 (0)"), "{out}");
    assert!(out.contains("2 tests: 1 same verdict, 0 known kernel defects, 1 mismatches"), "{out}");
}

#[test]
fn a_recorded_kernel_defect_is_reported_and_exits_0() {
    let file = Scratch::new("known", &guest(COHERENT_FAIL));
    let table = Scratch::new(
        "defects.json",
        r#"{ "defects": [ { "test": "open_close", "variant": "hmm_device_coherent", "thp": ["never"],
            "kernel": "7.3.4", "kernel_verdict": "fail",
            "evidence": "close() returned EIO after the WARN in memremap_pages", "fix": null } ] }"#,
    );
    let args = ["selftest", "--compare", file.path(), "--thp", "never", "--known-defects", table.path(), "open_close"];
    let (code, out, err) = hmm(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("known kernel defect #0  kernel fail    model pass"), "{out}");
    assert!(out.contains("evidence (7.3.4): close() returned EIO"), "{out}");
    // The same table under THP always does not cover it.
    let args = ["selftest", "--compare", file.path(), "--thp", "always", "--known-defects", table.path(), "open_close"];
    assert_eq!(hmm(&args).0, 1);
}

#[test]
fn input_that_is_not_a_run_is_refused_clearly() {
    let file = Scratch::new("noise", "[    1.000000] Linux version 7.3.4\nlogin:\n");
    let (code, _, err) = hmm(&["selftest", "--compare", file.path()]);
    assert_eq!(code, 1);
    assert!(err.contains("no kselftest run in the text"), "{err}");
    let (code, _, err) = hmm(&["selftest", "--compare", "/nonexistent/guest.log"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent/guest.log"), "{err}");
}

#[test]
fn several_filters_select_the_tests_the_guest_ran() {
    // The guest ran only open_close and anon_read of the private variant.
    let text = "\
TAP version 13
1..2
ok 1 hmm.hmm_device_private.open_close
ok 2 hmm.hmm_device_private.anon_read
";
    let file = Scratch::new("subset", text);
    // Full names select those tests only (anon_read is part of other names).
    let args =
        ["selftest", "--compare", file.path(), "open_close", "hmm.hmm_device_private.anon_read", "--thp", "never"];
    let (code, out, err) = hmm(&args);
    assert_eq!(code, 1, "open_close also selects the coherent variant, which the guest did not run: {out}{err}");
    assert!(out.contains("3 tests: 2 same verdict, 0 known kernel defects, 1 mismatches"), "{out}");
    assert!(!out.contains("anon_read_prot"), "{out}");
}
