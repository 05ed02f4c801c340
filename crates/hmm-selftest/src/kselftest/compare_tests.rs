//! The comparison on a synthetic kernel run against hand-made model
//! results: same verdicts, a mismatch, a recorded defect, a test the
//! kernel never reported, errnos and skip reasons side by side.

use super::*;
use crate::kselftest::parse;

const KERNEL: &str = "\
TAP version 13
1..5
# Starting 5 tests from 2 test cases.
#  RUN           hmm.hmm_device_private.migrate ...
# hmm-tests.c:930:migrate:Expected ret (-2) == 0 (0)
# migrate: Test terminated by assertion
#          FAIL  hmm.hmm_device_private.migrate
not ok 1 hmm.hmm_device_private.migrate
#  RUN           hmm.hmm_device_private.compound ...
#      SKIP      Not enough huge pages
#            OK  hmm.hmm_device_private.compound
ok 2 hmm.hmm_device_private.compound # SKIP Not enough huge pages
#  RUN           hmm.hmm_device_private.open_close ...
[   20.000000] test_hmm: opened
[   20.000100] WARNING: CPU: 1 PID: 99 at mm/memremap.c:191 memremap_pages+0x2a/0x40
#            OK  hmm.hmm_device_private.open_close
ok 3 hmm.hmm_device_private.open_close
#  RUN           hmm.hmm_device_coherent.migrate ...
# hmm-tests.c:930:migrate:Expected ret (-2) == 0 (0)
# migrate: Test terminated by assertion
#          FAIL  hmm.hmm_device_coherent.migrate
not ok 4 hmm.hmm_device_coherent.migrate
#  RUN           hmm.hmm_device_coherent.exclusive ...
[   30.000000] BUG: kernel NULL pointer dereference
";

fn model() -> Vec<(String, Outcome)> {
    let failed = |s: &str| Outcome::Failed(s.to_string());
    vec![
        (
            "hmm.hmm_device_private.migrate".into(),
            failed("src/suite/migrate.rs:25: the command failed: EINVAL: invalid"),
        ),
        ("hmm.hmm_device_private.compound".into(), Outcome::Skipped("no free default-size huge pages".into())),
        ("hmm.hmm_device_private.open_close".into(), failed("src/x.rs:1: boom")),
        ("hmm.hmm_device_coherent.migrate".into(), Outcome::Passed),
        ("hmm.hmm_device_coherent.exclusive".into(), Outcome::Passed),
        ("hmm.hmm_device_coherent.open_close".into(), Outcome::Passed),
    ]
}

const DEFECT: &str = r#"{ "defects": [ {
    "test": "migrate", "variant": "hmm_device_coherent", "kernel": "7.3.4", "kernel_verdict": "fail",
    "evidence": "ENOENT from migrate_vma_setup; WARN in memremap_pages at module load", "fix": null },
  { "test": "anon_read", "variant": "hmm_device_coherent", "thp": ["always"], "kernel": "7.3.4",
    "kernel_verdict": "fail", "evidence": "oops in dmirror_migrate_to_device" } ] }"#;

fn row<'a>(comparison: &'a Comparison, name: &str) -> &'a Row {
    comparison.rows.iter().find(|r| r.name == name).unwrap()
}

#[test]
fn verdicts_are_compared_and_only_unknown_differences_are_mismatches() {
    let kernel = parse(KERNEL).unwrap();
    let defects = KnownDefects::from_json(DEFECT).unwrap();
    let comparison = compare(&kernel, &model(), &defects, "always", "tmpfs");
    let agreements: Vec<_> = comparison.rows.iter().map(|r| (r.name.as_str(), r.agreement)).collect();
    assert_eq!(
        agreements,
        [
            ("hmm.hmm_device_private.migrate", Agreement::Same),
            ("hmm.hmm_device_private.compound", Agreement::Same),
            ("hmm.hmm_device_private.open_close", Agreement::Mismatch),
            ("hmm.hmm_device_coherent.migrate", Agreement::KnownDefect(0)),
            ("hmm.hmm_device_coherent.exclusive", Agreement::Mismatch),
            ("hmm.hmm_device_coherent.open_close", Agreement::Mismatch),
        ]
    );
    assert_eq!(comparison.mismatches(), 3);
    let exclusive = row(&comparison, "hmm.hmm_device_coherent.exclusive");
    assert_eq!((exclusive.kernel, exclusive.kernel_detail.as_deref()), (None, Some("started, never reported")));
    let absent = row(&comparison, "hmm.hmm_device_coherent.open_close");
    assert_eq!(absent.kernel_detail.as_deref(), Some("not in the output"));
    // The anon_read entry is in scope (THP always) but no model test of
    // this run is anon_read: not reported as unused.
    assert!(comparison.unused_defects.is_empty());
}

#[test]
fn a_defect_entry_is_scoped_by_configuration_and_recorded_verdict() {
    let kernel = parse(KERNEL).unwrap();
    let narrowed = DEFECT.replacen(
        r#""kernel": "7.3.4", "kernel_verdict": "fail","#,
        r#""fs": ["dax"], "kernel": "7.3.4", "kernel_verdict": "fail","#,
        1,
    );
    let defects = KnownDefects::from_json(&narrowed).unwrap();
    let comparison = compare(&kernel, &model(), &defects, "always", "tmpfs");
    assert_eq!(row(&comparison, "hmm.hmm_device_coherent.migrate").agreement, Agreement::Mismatch);
    let wrong_verdict = DEFECT.replacen(r#""kernel_verdict": "fail""#, r#""kernel_verdict": "missing""#, 1);
    let defects = KnownDefects::from_json(&wrong_verdict).unwrap();
    let comparison = compare(&kernel, &model(), &defects, "always", "tmpfs");
    assert_eq!(row(&comparison, "hmm.hmm_device_coherent.migrate").agreement, Agreement::Mismatch);
}

#[test]
fn an_entry_that_matched_nothing_is_reported_unused() {
    let kernel = parse(KERNEL).unwrap();
    let defects = KnownDefects::from_json(DEFECT).unwrap();
    let mut model = model();
    model[3].1 = Outcome::Failed("src/x.rs:3: the command failed: ENOENT: gone".into());
    let comparison = compare(&kernel, &model, &defects, "never", "dax");
    assert_eq!(row(&comparison, "hmm.hmm_device_coherent.migrate").agreement, Agreement::Same);
    assert_eq!(comparison.unused_defects, [0]);
}

#[test]
fn failures_on_both_sides_have_their_errnos_compared() {
    let kernel = parse(KERNEL).unwrap();
    let comparison = compare(&kernel, &model(), &KnownDefects::default(), "always", "tmpfs");
    let migrate = row(&comparison, "hmm.hmm_device_private.migrate");
    assert_eq!(migrate.info, ["errno differs: kernel saw ENOENT (2), model saw EINVAL (22)"]);
    assert_eq!(migrate.kernel_detail.as_deref(), Some("hmm-tests.c:930: Expected ret (-2) == 0 (0)"));
    let compound = row(&comparison, "hmm.hmm_device_private.compound");
    assert_eq!(
        compound.info,
        ["skip reasons differ: kernel \"Not enough huge pages\", model \"no free default-size huge pages\""]
    );
}

#[test]
fn a_kernel_test_the_model_lacks_is_a_mismatch() {
    let kernel = parse("TAP version 13\n1..1\nok 1 hmm.hmm_device_private.brand_new\n").unwrap();
    let comparison = compare(&kernel, &[], &KnownDefects::default(), "always", "tmpfs");
    assert_eq!(comparison.rows.len(), 1);
    assert_eq!(comparison.rows[0].model, None);
    assert_eq!(comparison.mismatches(), 1);
}

#[test]
fn observed_errnos_are_read_from_both_sides_messages() {
    assert_eq!(kernel_observed_errno("Expected ret (-2) == 0 (0)"), Some(2));
    assert_eq!(kernel_observed_errno("Expected ret (0) == -EFAULT (-14)"), Some(0));
    assert_eq!(kernel_observed_errno("Expected buffer->cpages (3) == npages (4)"), None);
    assert_eq!(kernel_observed_errno("Expected m[6] (0) == HMM_DMIRROR_PROT_NONE (1)"), None);
    assert_eq!(model_observed_errno("the command failed: ENOENT: no such file or directory"), Some(2));
    assert_eq!(
        model_observed_errno("hmm_dmirror_cmd(fd, R, &mut b, n) == Err(Errno::Fault): Ok(()) != Err(Fault)"),
        Some(0)
    );
    assert_eq!(model_observed_errno("x == Err(Errno::Inval): Err(NoEnt) != Err(Inval)"), Some(2));
    assert_eq!(model_observed_errno("(cpages, faults): (3, 1) != (4, 1)"), None);
}

#[test]
fn kernel_trouble_behind_an_agreeing_verdict_is_shown() {
    let kernel = parse(KERNEL).unwrap();
    let mut model = model();
    model[2].1 = Outcome::Passed;
    let comparison = compare(&kernel, &model, &KnownDefects::default(), "always", "tmpfs");
    let open_close = row(&comparison, "hmm.hmm_device_private.open_close");
    assert_eq!(open_close.agreement, Agreement::Same);
    assert_eq!(
        open_close.info,
        ["kernel log: [   20.000100] WARNING: CPU: 1 PID: 99 at mm/memremap.c:191 memremap_pages+0x2a/0x40"]
    );
}
