//! Behaviours where Linux changed on purpose between the host's version
//! and the one the model follows (7.3), as data: `hmm diff` reports a
//! difference one of these explains as an expected version difference,
//! never as a match and never as a divergence. Nothing else excuses a
//! difference. The same table, in prose: docs/version-differences.md.

use crate::lang::ast::{Expr, Op, MREMAP_BITS};
use crate::lang::uffd::UffdOp;
use crate::observe::{Outcome, PageView};

/// 2 MiB, as a scenario length.
const PMD_BYTES: i128 = 2 << 20;

/// The Linux release the model follows.
pub const MODEL_VERSION: (u32, u32) = (7, 3);

/// One intended behaviour change.
#[derive(Debug)]
pub struct VersionDifference {
    /// What behaves differently.
    pub behaviour: &'static str,
    /// The first release with the model's behaviour; hosts older than this
    /// behave the old way.
    pub since: (u32, u32),
    /// The kernel change.
    pub change: &'static str,
    /// Whether this entry explains the model/host outcomes of `op`.
    pub explains: fn(op: &Op, model: &Outcome, host: &Outcome) -> bool,
}

fn is_fixed_move(op: &Op) -> bool {
    let fixed = MREMAP_BITS.iter().find(|(_, n)| *n == "fixed").map_or(2, |(b, _)| *b);
    matches!(op, Op::Mremap { old_len, new_len, flags, .. } if flags & fixed != 0 && old_len == new_len)
}

/// `UFFDIO_SET_MODE`'s bit among the ioctls `UFFDIO_API` reports.
const SET_MODE_IOCTL: u64 = 1 << 0x0A;

/// The userfaultfd RWP series (Kiryl Shutsemau, merged for 7.3: its last
/// version was rebased on v7.2-rc1 and taken into mm on 2026-08-04; the
/// 6.18 host lacks it, the 7.3.4 guest has it).
const RWP_SERIES: (u32, u32) = (7, 3);

/// The table.
pub const TABLE: &[VersionDifference] = &[
    VersionDifference {
        behaviour: "UFFDIO_API reports UFFDIO_SET_MODE (ioctl 0x0A, bit 0x400) among the userfaultfd's ioctls; \
                    older kernels have no such ioctl",
        since: RWP_SERIES,
        change: "userfaultfd RWP series, its UFFDIO_SET_MODE patch (Kiryl Shutsemau, 2026)",
        explains: |op, model, host| match (op, model, host) {
            (Op::Userfaultfd { .. }, Outcome::Value(m), Outcome::Value(h)) => {
                h & SET_MODE_IOCTL == 0 && *m == h | SET_MODE_IOCTL
            }
            _ => false,
        },
    },
    VersionDifference {
        behaviour: "UFFDIO_REGISTER of a range registered with this userfaultfd for WP (or RWP) with a mode \
                    leaving WP out is EBUSY (the uffd-wp bits would be stranded); older kernels accept it \
                    (replacing the modes, or doing nothing for a subset) and return the ioctls",
        since: RWP_SERIES,
        change: "userfaultfd: add UFFDIO_REGISTER_MODE_RWP and UFFDIO_RWPROTECT plumbing (Kiryl Shutsemau, 2026)",
        explains: |op, model, host| {
            matches!(op, Op::Uffd(UffdOp::Register { mode, .. }) if mode & 2 == 0)
                && matches!(model, Outcome::Errno(16))
                && matches!(host, Outcome::Value(_))
        },
    },
    VersionDifference {
        behaviour: "mremap(MREMAP_FIXED) with old_len == new_len over a range spanning several VMAs (or gaps) \
                    moves every VMA in it; older kernels fail with EFAULT",
        since: (6, 17),
        change: "mm/mremap: permit mremap() move of multiple VMAs (Lorenzo Stoakes, 2025)",
        explains: |op, model, host| is_fixed_move(op) && matches!(host, Outcome::Errno(14)) && model != host,
    },
    VersionDifference {
        behaviour: "MADV_GUARD_INSTALL/MADV_GUARD_REMOVE (102/103) exist; older kernels reject the advice with EINVAL",
        since: (6, 13),
        change: "mm: madvise: implement lightweight guard page mechanism (Lorenzo Stoakes, 2024)",
        explains: |op, model, host| {
            matches!(op, Op::Madvise { advice: 102 | 103, .. }) && matches!(host, Outcome::Errno(22)) && model != host
        },
    },
    VersionDifference {
        behaviour: "MADV_GUARD_INSTALL on file-backed (shared or private) and read-only mappings; 6.13 and 6.14 \
                    accept only writable private anonymous memory and reject the rest with EINVAL",
        since: (6, 15),
        change: "mm: allow guard regions in file-backed and read-only mappings (Lorenzo Stoakes, 2025)",
        explains: |op, model, host| {
            matches!(op, Op::Madvise { advice: 102, .. }) && matches!(host, Outcome::Errno(22)) && model != host
        },
    },
    VersionDifference {
        behaviour: "/proc/PID/pagemap reports a guard page with PM_GUARD_REGION (bit 58) besides PM_SWAP; \
                    older kernels set PM_SWAP only",
        since: (6, 15),
        change: "fs/proc/task_mmu: add guard region bit to pagemap (Lorenzo Stoakes, 2025)",
        explains: |op, model, host| match (op, model, host) {
            (Op::Pagemap { .. }, Outcome::Pages(m), Outcome::Pages(h)) => {
                m.len() == h.len()
                    && m != h
                    && m.iter()
                        .zip(h)
                        .all(|(m, h)| m == h || (m.guard && !h.guard && PageView { guard: false, ..*m } == *h))
            }
            _ => false,
        },
    },
    VersionDifference {
        behaviour: "/proc/PID/pagemap reports the huge zero page (a PMD mapping of it) without PM_FILE; \
                    older kernels (6.18 on this host) report it with PM_FILE",
        // The 6.18 host has the old behaviour and the 7.3.4 guest the new;
        // the release between them that changed it is not verified here.
        since: (6, 19),
        change: "pagemap_pmd_range_thp takes the page from vm_normal_page_pmd, which has none for the \
                 huge zero folio (older kernels used pmd_page) (David Hildenbrand, 2025)",
        explains: |op, model, host| match (op, model, host) {
            (Op::Pagemap { .. }, Outcome::Pages(m), Outcome::Pages(h)) => {
                m.len() == h.len()
                    && m != h
                    && m.iter().zip(h).all(|(m, h)| {
                        m == h || (m.present && m.huge && m.zero && !m.file && PageView { file: true, ..*m } == *h)
                    })
            }
            _ => false,
        },
    },
    VersionDifference {
        behaviour: "MADV_COLLAPSE of a range inside one 2 MiB block (crossing no 2 MiB boundary) covers no block \
                    and succeeds; older kernels (6.18 on this host) count a negative number of blocks and answer \
                    EINVAL",
        // 6.18 on the host has the old behaviour, the 7.3.4 guest the new;
        // the release in between is not verified here.
        since: (6, 19),
        change: "madvise_collapse no longer fails a range with no whole PMD-aligned block (not identified: \
                 observed in the 7.3.4 guest)",
        explains: |op, model, host| match op {
            Op::Madvise { advice: 25, len: Expr { base: None, offset }, .. } => {
                (1..PMD_BYTES).contains(offset) && *model == Outcome::Ok && *host == Outcome::Errno(22)
            }
            _ => false,
        },
    },
    VersionDifference {
        behaviour: "MADV_COLLAPSE goes on past a 2 MiB block without a page table (the call still fails with \
                    EINVAL at the end), so later blocks of the range are collapsed; older kernels (6.18 on \
                    this host) stop at such a block (SCAN_PMD_NONE), leaving the later blocks as they were",
        since: (6, 19),
        change: "mm/khugepaged: unify SCAN_PMD_NONE and SCAN_PMD_NULL into SCAN_NO_PTE_TABLE (Wei Yang, 2025; \
                 the release is not verified here: 6.18 has the old behaviour, the 7.3.4 guest the new)",
        // Only pagemap shows it: anonymous pages the model collapsed into
        // a THP where the host left 4 KiB pages or nothing. (`hmm diff`
        // already calls a model THP the host lacks inconclusive, as THP
        // allocation may fail; the entry names the reason.)
        explains: |op, model, host| match (op, model, host) {
            (Op::Pagemap { .. }, Outcome::Pages(m), Outcome::Pages(h)) => {
                m.len() == h.len()
                    && m != h
                    && m.iter()
                        .zip(h)
                        .all(|(m, h)| m == h || (m.present && m.huge && !m.file && !h.huge && !h.file && !h.swapped))
            }
            _ => false,
        },
    },
    VersionDifference {
        behaviour: "the mseal(2) system call exists; older kernels answer ENOSYS",
        since: (6, 10),
        change: "mseal: wire up mseal syscall (Jeff Xu, 2024)",
        explains: |op, model, host| {
            matches!(op, Op::Mseal { .. }) && matches!(host, Outcome::Errno(38)) && model != host
        },
    },
];

/// The entry explaining this difference on a host running `host`, if any.
pub fn explain(
    host: (u32, u32),
    op: &Op,
    model: &Outcome,
    host_outcome: &Outcome,
) -> Option<&'static VersionDifference> {
    TABLE.iter().find(|d| host < d.since && d.since <= MODEL_VERSION && (d.explains)(op, model, host_outcome))
}

/// `major.minor` of the running kernel (`uname -r`), from
/// /proc/sys/kernel/osrelease.
pub fn host_version() -> Option<(u32, u32)> {
    parse_release(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

/// `6.18.44-fc` → (6, 18).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1252\n"), Some((6, 18)));
        assert_eq!(parse_release("7.3"), Some((7, 3)));
        assert_eq!(parse_release("x"), None);
    }

    #[test]
    fn collapse_of_a_range_inside_one_block_is_a_version_difference_only_for_short_lengths() {
        let op = |len: u64| Op::Madvise { addr: Expr::at("p", 0x1000), len: Expr::num(len), advice: 25 };
        let (ok, einval) = (Outcome::Ok, Outcome::Errno(22));
        assert!(explain((6, 18), &op(0x1000), &ok, &einval).is_some());
        assert!(explain((6, 18), &op(0x200000), &ok, &einval).is_none(), "a whole block's length is not it");
        assert!(explain((6, 18), &op(0x1000), &einval, &ok).is_none(), "the other way round is a divergence");
        assert!(explain((6, 19), &op(0x1000), &ok, &einval).is_none(), "6.19 already answers 0");
    }

    #[test]
    fn collapse_past_a_block_without_a_table_explains_only_anonymous_thps_the_host_lacks() {
        let op = Op::Pagemap { addr: Expr::at("b", 0x200000), len: Expr::num(0x2000) };
        let thp = PageView { present: true, huge: true, exclusive: true, ..PageView::default() };
        let small = PageView { present: true, exclusive: true, ..PageView::default() };
        let none = PageView::default();
        let (model, host) = (Outcome::Pages(vec![thp, thp]), Outcome::Pages(vec![small, none]));
        assert!(explain((6, 18), &op, &model, &host).is_some());
        let file_thp = PageView { file: true, ..thp };
        let file_host = Outcome::Pages(vec![PageView { file: true, ..small }, none]);
        assert!(explain((6, 18), &op, &Outcome::Pages(vec![file_thp, file_thp]), &file_host).is_none());
        assert!(explain((6, 18), &op, &host, &model).is_none(), "a host THP the model lacks is a divergence");
    }

    #[test]
    fn an_entry_applies_only_to_older_hosts() {
        let op = Op::Mremap {
            old: Expr::num(0x1000),
            old_len: Expr::num(0x4000),
            new_len: Expr::num(0x4000),
            flags: 3,
            new_addr: Some(Expr::num(0x10000)),
        };
        let (model, host) = (Outcome::Addr(0x10000), Outcome::Errno(14));
        assert!(explain((6, 12), &op, &model, &host).is_some());
        assert!(explain((6, 18), &op, &model, &host).is_none(), "6.18 already has the change");
        assert!(explain((6, 12), &op, &model, &Outcome::Errno(22)).is_none(), "another errno is a divergence");
    }

    #[test]
    fn guard_and_mseal_entries_apply_to_the_hosts_without_them() {
        let madvise = |advice| Op::Madvise { addr: Expr::num(0x1000), len: Expr::num(0x1000), advice };
        let einval = Outcome::Errno(22);
        assert!(explain((6, 12), &madvise(103), &Outcome::Ok, &einval).is_some());
        assert!(explain((6, 14), &madvise(102), &Outcome::Ok, &einval).is_some(), "file-backed guards");
        assert!(explain((6, 14), &madvise(103), &Outcome::Ok, &einval).is_none(), "remove existed");
        assert!(explain((6, 18), &madvise(102), &Outcome::Ok, &einval).is_none());
        let pagemap = Op::Pagemap { addr: Expr::num(0x1000), len: Expr::num(0x2000) };
        let guard = PageView { swapped: true, guard: true, ..PageView::default() };
        let old = PageView { swapped: true, ..PageView::default() };
        let (model, host) = (Outcome::Pages(vec![guard, old]), Outcome::Pages(vec![old, old]));
        assert!(explain((6, 14), &pagemap, &model, &host).is_some());
        assert!(explain((6, 18), &pagemap, &model, &host).is_none());
        let other = Outcome::Pages(vec![PageView::default(), old]);
        assert!(explain((6, 14), &pagemap, &model, &other).is_none(), "not only the guard bit");
        let mseal = Op::Mseal { addr: Expr::num(0x1000), len: Expr::num(0x1000) };
        assert!(explain((6, 9), &mseal, &Outcome::Ok, &Outcome::Errno(38)).is_some());
        assert!(explain((6, 18), &mseal, &Outcome::Ok, &Outcome::Errno(38)).is_none());
    }

    #[test]
    fn userfaultfd_entries_apply_to_hosts_before_the_rwp_series() {
        let api = Op::Userfaultfd { features: 0 };
        let (model, host) = (Outcome::Value(0x8000_0000_0000_0403), Outcome::Value(0x8000_0000_0000_0003));
        assert!(explain((6, 18), &api, &model, &host).is_some());
        assert!(explain((7, 3), &api, &model, &host).is_none(), "7.3 itself has SET_MODE");
        let other = Outcome::Value(0x8000_0000_0000_0001);
        assert!(explain((6, 18), &api, &model, &other).is_none(), "not only the SET_MODE bit");
        let register = |mode| {
            Op::Uffd(UffdOp::Register { uffd: "u".into(), addr: Expr::num(0x1000), len: Expr::num(0x1000), mode })
        };
        let (busy, ioctls) = (Outcome::Errno(16), Outcome::Value(0x13c));
        assert!(explain((6, 18), &register(1), &busy, &ioctls).is_some());
        assert!(explain((6, 18), &register(3), &busy, &ioctls).is_none(), "the mode keeps WP");
        assert!(explain((6, 18), &register(1), &busy, &Outcome::Errno(22)).is_none());
    }

    #[test]
    fn the_huge_zero_page_loses_pm_file_after_6_18() {
        let pagemap = Op::Pagemap { addr: Expr::num(0x1000), len: Expr::num(0x2000) };
        let zero = PageView { present: true, huge: true, zero: true, ..PageView::default() };
        let old = PageView { file: true, ..zero };
        let (model, host) = (Outcome::Pages(vec![zero, zero]), Outcome::Pages(vec![old, old]));
        assert!(explain((6, 18), &pagemap, &model, &host).is_some());
        assert!(explain((7, 3), &pagemap, &model, &host).is_none(), "7.3 itself has no PM_FILE there");
        let thp = PageView { zero: false, ..zero };
        let thp_file = PageView { file: true, ..thp };
        let (model, host) = (Outcome::Pages(vec![thp]), Outcome::Pages(vec![thp_file]));
        assert!(explain((6, 18), &pagemap, &model, &host).is_none(), "only the huge zero page");
    }
}
