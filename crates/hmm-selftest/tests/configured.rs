//! Runs configured as the reference guest is: `/tmp` on fs-dax, THP
//! `never` and `always`, no `gup_test` driver. Each test states what Linux
//! does under that configuration, and one module for a whole run.

use hmm_selftest::{instances, run_one, FileSystem, Outcome, Setup, ThpMode};

fn outcome(setup: &Setup, name: &str) -> Outcome {
    let instance = instances(Some(name)).into_iter().next().unwrap_or_else(|| panic!("no test {name}"));
    run_one(setup, &instance).outcome
}

#[test]
fn the_file_tests_read_and_write_a_file_on_fs_dax() {
    let setup = Setup { fs: FileSystem::Dax, ..Setup::default() };
    for name in ["hmm.hmm_device_private.file_read", "hmm.hmm_device_private.file_write"] {
        assert_eq!(outcome(&setup, name), Outcome::Passed, "{name}");
    }
}

#[test]
fn migrating_a_private_mapping_of_a_dax_file_fails_with_einval() {
    // Linux: migrate_vma_setup refuses a DAX VMA (vma_is_dax) with
    // -EINVAL, so hmm-tests' migrate_file_private fails on a DAX /tmp.
    let setup = Setup { fs: FileSystem::Dax, ..Setup::default() };
    match outcome(&setup, "hmm.hmm_device_private.migrate_file_private") {
        Outcome::Failed(why) => assert!(why.contains("EINVAL"), "{why}"),
        other => panic!("expected the migration to fail with EINVAL, got {other:?}"),
    }
    let tmpfs = Setup::default();
    assert_eq!(outcome(&tmpfs, "hmm.hmm_device_private.migrate_file_private"), Outcome::Passed);
}

#[test]
fn a_thp_test_runs_the_same_steps_under_every_thp_mode() {
    // hmm-tests never reads the THP mode: a device write over a
    // MADV_HUGEPAGE range takes one fault round with or without a THP.
    for thp in [ThpMode::Never, ThpMode::Always] {
        let setup = Setup { thp, ..Setup::default() };
        assert_eq!(outcome(&setup, "hmm.hmm_device_private.anon_write_huge"), Outcome::Passed, "{thp:?}");
    }
}

#[test]
fn without_the_gup_test_driver_hmm_gup_test_skips_with_linuxs_reason() {
    let setup = Setup { gup_test: false, ..Setup::default() };
    assert_eq!(
        outcome(&setup, "hmm.hmm_device_private.hmm_gup_test"),
        Outcome::Skipped("Skipping test, could not find gup_test driver".into())
    );
}

#[test]
fn with_one_module_for_the_run_a_release_leaves_the_coherent_chunk_to_the_next_test() {
    // A 7.3 guest (THP always): migrate_release removes the coherent
    // device's one chunk; migrate_multiple then registers it again for
    // 2 MiB folios, its THPs move whole, and the device's migration back
    // skips their PMDs (hmm-tests.c:1224, cpages 0); hmm_gup_test's 4K
    // pages then find no free page and no room for a second chunk (ENOENT).
    let shared = Setup { thp: ThpMode::Always, ..Setup::default() }.with_shared_module().unwrap();
    let fresh = Setup { thp: ThpMode::Always, ..Setup::default() };
    let coherent = |test: &str| format!("hmm.hmm_device_coherent.{test}");
    assert_eq!(outcome(&shared, &coherent("migrate_release")), Outcome::Passed);
    match outcome(&shared, &coherent("migrate_multiple")) {
        Outcome::Failed(why) => assert!(why.contains("0 != 1024"), "{why}"),
        other => panic!("expected cpages 0 after the migration back, got {other:?}"),
    }
    match outcome(&shared, &coherent("hmm_gup_test")) {
        Outcome::Failed(why) => assert!(why.contains("ENOENT"), "{why}"),
        other => panic!("expected ENOENT, got {other:?}"),
    }
    // A module of its own: its probe chunk of 4K pages takes the THPs page
    // by page, and they come back.
    assert_eq!(outcome(&fresh, &coherent("migrate_multiple")), Outcome::Passed);
}
