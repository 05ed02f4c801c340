//! The tests, one file per group of the kernel's suite, and the DAX tests.

mod anon;
mod dax;
mod exclusive;
mod migrate;
mod snapshot;
mod thp;
mod uffd;

use crate::{Case, Fixture};

macro_rules! case {
    ($fixture:ident, $module:ident :: $name:ident) => {
        Case { fixture: Fixture::$fixture, name: stringify!($name), run: $module::$name }
    };
}

/// Every test, in the order of Linux 7.3's `hmm-tests.c`, then the DAX tests.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(Hmm, anon::open_close),
        case!(Hmm, anon::anon_read),
        case!(Hmm, anon::anon_read_prot),
        case!(Hmm, anon::anon_write),
        case!(Hmm, anon::anon_write_prot),
        case!(Hmm, anon::anon_write_child),
        case!(Hmm, anon::anon_write_child_shared),
        case!(Hmm, anon::anon_write_huge),
        case!(Hmm, anon::anon_write_hugetlbfs),
        case!(Hmm, anon::file_read),
        case!(Hmm, anon::file_write),
        case!(Hmm, migrate::migrate),
        case!(Hmm, migrate::migrate_file_private),
        case!(Hmm, migrate::migrate_fault),
        case!(Hmm, migrate::migrate_release),
        case!(Hmm, migrate::migrate_shared),
        case!(Hmm2, migrate::migrate_mixed),
        case!(Hmm, migrate::migrate_multiple),
        case!(Hmm, anon::anon_read_multiple),
        case!(Hmm, anon::anon_teardown),
        case!(Hmm, snapshot::mixedmap),
        case!(Hmm2, snapshot::snapshot),
        case!(Hmm, snapshot::compound),
        case!(Hmm2, migrate::double_map),
        case!(Hmm, exclusive::exclusive),
        case!(Hmm, exclusive::exclusive_mprotect),
        case!(Hmm, exclusive::exclusive_cow),
        case!(Hmm, migrate::hmm_gup_test),
        case!(Hmm, migrate::hmm_cow_in_device),
        case!(Hmm, thp::migrate_anon_huge_empty),
        case!(Hmm, thp::migrate_anon_huge_zero),
        case!(Hmm, thp::migrate_anon_huge_free),
        case!(Hmm, thp::migrate_anon_huge_fault),
        case!(Hmm, thp::migrate_partial_unmap_fault),
        case!(Hmm, thp::migrate_remap_fault),
        case!(Hmm, thp::migrate_anon_huge_err),
        case!(Hmm, thp::migrate_anon_huge_zero_err),
        case!(Hmm, thp::benchmark_thp_migration),
        case!(Hmm, uffd::userfaultfd_read),
        case!(Dax, dax::read_write_through_pmd),
        case!(Dax, dax::read_write_through_devdax_pud),
        case!(Dax, dax::truncate_while_mirrored),
        case!(Dax, dax::punch_hole_while_mirrored),
        case!(Dax, dax::truncate_with_a_pinned_page),
        case!(Dax, dax::device_writes_persist),
        case!(Dax, dax::map_sync_mirrored),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_suite_has_39_tests_36_on_hmm_and_3_on_hmm2() {
        let cases = super::cases();
        let kernel: Vec<_> = cases.iter().filter(|c| c.fixture != crate::Fixture::Dax).collect();
        assert_eq!(kernel.len(), 39, "Linux 7.3 added userfaultfd_read");
        assert_eq!(kernel.iter().filter(|c| c.fixture == crate::Fixture::Hmm2).count(), 3);
        assert_eq!(crate::instances(None).iter().filter(|i| i.case.fixture != crate::Fixture::Dax).count(), 78);
    }

    #[test]
    fn the_kselftest_order_is_fixture_then_variant_then_source_order() {
        let names: Vec<String> = crate::kselftest_instances(None).iter().map(|i| i.name()).collect();
        assert_eq!(names.len(), 78);
        assert_eq!(names[0], "hmm.hmm_device_private.open_close");
        assert_eq!(names[35], "hmm.hmm_device_private.userfaultfd_read");
        assert_eq!(names[36], "hmm.hmm_device_coherent.open_close");
        assert_eq!(names[71], "hmm.hmm_device_coherent.userfaultfd_read");
        assert_eq!(
            names[72..],
            [
                "hmm2.hmm2_device_private.migrate_mixed",
                "hmm2.hmm2_device_private.snapshot",
                "hmm2.hmm2_device_private.double_map",
                "hmm2.hmm2_device_coherent.migrate_mixed",
                "hmm2.hmm2_device_coherent.snapshot",
                "hmm2.hmm2_device_coherent.double_map",
            ]
        );
        assert!(crate::kselftest_instances(Some("dax.")).is_empty(), "the DAX tests are not the kernel's");
    }
}
