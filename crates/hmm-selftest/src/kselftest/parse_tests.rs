//! The parser on synthetic captures shaped like a guest's serial console:
//! results of every kind, assertion lines, printf output, kernel log
//! lines between and inside lines, a runner's nesting, a run cut short.

use super::*;

/// A run as the binary prints it on a console (CRLF), with kernel log
/// lines between lines and one printk cutting a result line in two.
const GUEST: &str = "\
[    2.481516] test_hmm: loaded\r
TAP version 13\r
1..6\r
# Starting 6 tests from 2 test cases.\r
#  RUN           hmm.hmm_device_private.open_close ...\r
#            OK  hmm.hmm_device_private.open_close\r
ok 1 hmm.hmm_device_private.open_close\r
#  RUN           hmm.hmm_device_private.anon_write_hugetlbfs ...\r
#      SKIP      Not enough huge pages\r
#            OK  hmm.hmm_device_private.anon_write_hugetlbfs\r
ok 2 hmm.hmm_device_private.anon_write_hugetlbfs # SKIP Not enough huge pages\r
#  RUN           hmm.hmm_device_private.benchmark_thp_migration ...\r
\r
HMM THP Migration Benchmark\r
---------------------------\r
#            OK  hmm.hmm_device_private.benchmark_thp_migration\r
ok 3 hmm.hmm_device_private.benchmark_thp_migration\r
#  RUN           hmm.hmm_device_coherent.migrate ...\r
[    7.100200] ------------[ cut here ]------------\r
[    7.100300] WARNING: CPU: 1 PID: 231 at mm/memremap.c:191 memremap_pages+0x2a/0x40\r
# hmm-tests.c:930:migrate:Expected ret (-2) == 0 (0)\r
# migrate: Test terminated by assertion\r
#          FAIL  hmm.hmm_device_coherent.migrate\r
not ok 4 hmm.hmm_device_coher[    7.200000] test_hmm: dmirror_migrate_to_device: oops\r
ent.migrate\r
#  RUN           hmm.hmm_device_coherent.hmm_gup_test ...\r
#      SKIP      Skipping test, could not find gup_test driver\r
#            OK  hmm.hmm_device_coherent.hmm_gup_test\r
ok 5 hmm.hmm_device_coherent.hmm_gup_test # SKIP Skipping test, could not find gup_test driver\r
#  RUN           hmm.hmm_device_coherent.anon_read ...\r
<4>[    8.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008\r
# anon_read: Test terminated unexpectedly by signal 11\r
#          FAIL  hmm.hmm_device_coherent.anon_read\r
not ok 6 hmm.hmm_device_coherent.anon_read\r
# FAILED: 4 / 6 tests passed.\r
# 2 skipped test(s) detected. Consider enabling relevant config options to improve coverage.\r
# Totals: pass:2 fail:2 xfail:0 xpass:0 skip:2 error:0\r
[    9.000000] reboot: Power down\r
";

#[test]
fn every_kind_of_result_is_read_with_its_reason() {
    let run = parse(GUEST).unwrap();
    assert_eq!(run.plan, Some(6));
    let verdicts: Vec<_> = run.results.iter().map(|r| (r.number, r.name.as_str(), r.verdict)).collect();
    assert_eq!(
        verdicts,
        [
            (1, "hmm.hmm_device_private.open_close", Some(Verdict::Pass)),
            (2, "hmm.hmm_device_private.anon_write_hugetlbfs", Some(Verdict::Skip)),
            (3, "hmm.hmm_device_private.benchmark_thp_migration", Some(Verdict::Pass)),
            (4, "hmm.hmm_device_coherent.migrate", Some(Verdict::Fail)),
            (5, "hmm.hmm_device_coherent.hmm_gup_test", Some(Verdict::Skip)),
            (6, "hmm.hmm_device_coherent.anon_read", Some(Verdict::Fail)),
        ]
    );
    let skip = run.result("hmm.hmm_device_private.anon_write_hugetlbfs").unwrap();
    assert_eq!(skip.reason.as_deref(), Some("Not enough huge pages"));
    assert_eq!(run.totals, Some(Totals { pass: 2, fail: 2, skip: 2, ..Totals::default() }));
}

#[test]
fn assertions_and_kernel_log_stay_with_their_test() {
    let run = parse(GUEST).unwrap();
    let migrate = run.result("hmm.hmm_device_coherent.migrate").unwrap();
    assert_eq!(
        migrate.assertions,
        [Assertion { at: "hmm-tests.c:930".into(), message: "Expected ret (-2) == 0 (0)".into() }]
    );
    assert_eq!(migrate.output, ["# migrate: Test terminated by assertion"]);
    assert_eq!(migrate.kernel_log.len(), 3, "{:?}", migrate.kernel_log);
    assert!(migrate.kernel_log[1].contains("WARNING: CPU: 1 PID: 231 at mm/memremap.c:191"));
    assert!(migrate.kernel_log[2].ends_with("dmirror_migrate_to_device: oops"));
    let oops = run.result("hmm.hmm_device_coherent.anon_read").unwrap();
    assert!(oops.assertions.is_empty());
    assert_eq!(oops.kernel_log, ["<4>[    8.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008"]);
    assert_eq!(run.kernel_log, ["[    2.481516] test_hmm: loaded", "[    9.000000] reboot: Power down"]);
}

#[test]
fn printf_output_is_kept_and_harness_status_lines_are_not() {
    let run = parse(GUEST).unwrap();
    let bench = run.result("hmm.hmm_device_private.benchmark_thp_migration").unwrap();
    assert_eq!(bench.output, ["", "HMM THP Migration Benchmark", "---------------------------"]);
}

#[test]
fn a_run_nested_under_a_runner_is_unwrapped() {
    let nested = "\
TAP version 13
1..1
# timeout set to 180
# selftests: mm: hmm-tests
# TAP version 13
# 1..2
# # Starting 2 tests from 1 test cases.
# #  RUN           hmm2.hmm2_device_private.migrate_mixed ...
# #            OK  hmm2.hmm2_device_private.migrate_mixed
# ok 1 hmm2.hmm2_device_private.migrate_mixed
# #  RUN           hmm2.hmm2_device_private.snapshot ...
# # hmm-tests.c:1441:snapshot:Expected m[6] (0) == HMM_DMIRROR_PROT_NONE (1)
# # snapshot: Test terminated by assertion
# #          FAIL  hmm2.hmm2_device_private.snapshot
# not ok 2 hmm2.hmm2_device_private.snapshot
# # FAILED: 1 / 2 tests passed.
# # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0
not ok 1 selftests: mm: hmm-tests # exit=1
";
    let run = parse(nested).unwrap();
    assert_eq!(run.plan, Some(2));
    assert_eq!(run.results.len(), 2, "the runner's own result line is not a test");
    let snapshot = run.result("hmm2.hmm2_device_private.snapshot").unwrap();
    assert_eq!(snapshot.verdict, Some(Verdict::Fail));
    assert_eq!(snapshot.assertions[0].message, "Expected m[6] (0) == HMM_DMIRROR_PROT_NONE (1)");
    assert_eq!(run.totals.map(|t| t.fail), Some(1));
}

#[test]
fn a_test_cut_short_has_no_verdict_and_keeps_its_oops() {
    let cut = "\
TAP version 13
1..3
# Starting 3 tests from 1 test cases.
#  RUN           hmm.hmm_device_coherent.migrate ...
[   11.000000] BUG: unable to handle page fault for address: ffffea0000000000
[   11.000001] Kernel panic - not syncing: Fatal exception
";
    let run = parse(cut).unwrap();
    assert_eq!(run.results.len(), 1);
    let migrate = &run.results[0];
    assert_eq!(migrate.verdict, None);
    assert_eq!(migrate.kernel_log.len(), 2);
    assert_eq!(run.totals, None);
}

#[test]
fn xfail_xpass_and_diagnostics_are_read() {
    let text = "\
TAP version 13
1..3
ok 1 a.b.c # XFAIL known
ok 2 a.b.d # XPASS fixed
not ok 3 a.b.e #  timeout
";
    let run = parse(text).unwrap();
    let got: Vec<_> = run.results.iter().map(|r| (r.verdict, r.reason.as_deref())).collect();
    assert_eq!(
        got,
        [
            (Some(Verdict::XFail), Some("known")),
            (Some(Verdict::XPass), Some("fixed")),
            (Some(Verdict::Fail), Some("timeout"))
        ]
    );
    assert_eq!(Verdict::XFail.class(), Verdict::Fail);
}

#[test]
fn a_bail_out_is_recorded() {
    let run = parse("TAP version 13\nBail out! reading PMD pagesize failed\n").unwrap();
    assert_eq!(run.bail_out.as_deref(), Some("reading PMD pagesize failed"));
}

#[test]
fn text_without_a_run_or_with_two_is_refused() {
    assert_eq!(parse("[ 1.000000] booting\nhello\n"), Err(ParseError::NoRun));
    let two = "# Starting 1 tests from 1 test cases.\nok 1 a.b.c\n# Starting 1 tests from 1 test cases.\nok 1 a.b.c\n";
    assert_eq!(parse(two), Err(ParseError::SeveralRuns(2)));
    let twice = "TAP version 13\nok 1 a.b.c\nok 2 a.b.c\n";
    assert_eq!(parse(twice), Err(ParseError::Duplicate("a.b.c".into())));
}

#[test]
fn bracketed_text_that_is_not_a_timestamp_stays_in_the_line() {
    assert_eq!(kernel_record_start("# m[6] (0) == x"), None);
    assert_eq!(kernel_record_start("# [1.x] no"), None);
    assert_eq!(kernel_record_start("ok 1 a[  3.5] x"), Some(6));
    assert_eq!(kernel_record_start("<6>[ 0.000000] Linux"), Some(0));
}

#[test]
fn the_models_own_kselftest_output_reads_back() {
    use crate::kselftest::Writer;
    use crate::{Outcome, Report};
    let mut text = String::new();
    let mut writer = Writer::begin(
        |line: &str| {
            text.push_str(line);
            text.push('\n');
        },
        2,
        1,
    );
    let report = |outcome| Report { outcome, took: std::time::Duration::ZERO, notes: vec![] };
    writer.test("hmm.hmm_device_private.open_close", "open_close", &report(Outcome::Passed));
    writer.test(
        "hmm.hmm_device_private.migrate",
        "migrate",
        &report(Outcome::Failed("src/suite/migrate.rs:27: the command failed: ENOENT: no such file".into())),
    );
    writer.finish();
    let run = parse(&text).unwrap();
    assert_eq!(run.results[0].verdict, Some(Verdict::Pass));
    assert_eq!(run.results[1].verdict, Some(Verdict::Fail));
    assert_eq!(
        run.results[1].assertions,
        [Assertion {
            at: "src/suite/migrate.rs:27".into(),
            message: "the command failed: ENOENT: no such file".into()
        }]
    );
    assert_eq!(run.totals, Some(Totals { pass: 1, fail: 1, ..Totals::default() }));
}
