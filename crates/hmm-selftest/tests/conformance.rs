//! The conformance suite under `cargo test`: one test per kernel test name
//! (both variants), and one per DAX test. A skip is printed, not failed.

use hmm_selftest::{instances, run_one, Outcome, Setup};

fn run(name: &str) {
    let setup = Setup::default();
    let matching: Vec<_> = instances(None).into_iter().filter(|i| i.case.name == name).collect();
    assert!(!matching.is_empty(), "no test named {name}");
    let mut failures = Vec::new();
    for instance in matching {
        let report = run_one(&setup, &instance);
        match report.outcome {
            Outcome::Passed => {}
            Outcome::Skipped(reason) => eprintln!("{}: skipped: {reason}", instance.name()),
            Outcome::Failed(why) => failures.push(format!("{}: {why}", instance.name())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

conformance!(
    open_close,
    anon_read,
    anon_read_prot,
    anon_write,
    anon_write_prot,
    anon_write_child,
    anon_write_child_shared,
    anon_write_huge,
    anon_write_hugetlbfs,
    file_read,
    file_write,
    migrate,
    migrate_file_private,
    migrate_fault,
    migrate_release,
    migrate_shared,
    migrate_mixed,
    migrate_multiple,
    anon_read_multiple,
    anon_teardown,
    mixedmap,
    snapshot,
    compound,
    double_map,
    exclusive,
    exclusive_mprotect,
    exclusive_cow,
    hmm_gup_test,
    hmm_cow_in_device,
    migrate_anon_huge_empty,
    migrate_anon_huge_zero,
    migrate_anon_huge_free,
    migrate_anon_huge_fault,
    migrate_partial_unmap_fault,
    migrate_remap_fault,
    migrate_anon_huge_err,
    migrate_anon_huge_zero_err,
    benchmark_thp_migration,
    userfaultfd_read,
    read_write_through_pmd,
    read_write_through_devdax_pud,
    truncate_while_mirrored,
    punch_hole_while_mirrored,
    truncate_with_a_pinned_page,
    device_writes_persist,
    map_sync_mirrored,
);

#[test]
fn every_case_has_a_test_here() {
    let here = include_str!("conformance.rs");
    for case in hmm_selftest::cases() {
        assert!(here.contains(&format!("    {},\n", case.name)), "{} is not listed in tests/conformance.rs", case.name);
    }
}
