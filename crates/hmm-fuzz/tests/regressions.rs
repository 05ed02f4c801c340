//! What the API fuzzer found, shrunk and replayed as plain deterministic
//! tests: each runs the sequence in a fresh world with every invariant
//! checked (`hmm_fuzz::replay`).

use hmm_fuzz::{replay, Addr, Count, DmCmd, Len, MapKind, Op, Placement};

fn anon(addr: Addr, len: Len) -> Op {
    Op::Mmap { addr, len, prot: 3, kind: MapKind::AnonPrivate, place: Placement::Fixed, populate: false }
}

// ---------------------------------------------------------------------------
// Found and fixed on this branch.

/// A closed dmirror file kept its mirror, and the mirror the address
/// space: one frame (the page-table root) never came back.
#[test]
fn closing_a_device_file_returns_every_frame() {
    replay(&[Op::DmOpen(0)]);
}

/// fallocate(PUNCH_HOLE) with a negative loff_t offset or length
/// succeeded; Linux says EINVAL.
#[test]
fn punching_with_a_negative_offset_or_length_is_einval() {
    replay(&[Op::Punch { file: 0, offset: Len::Pages(1), len: Len::Half }]);
    replay(&[Op::Punch { file: 0, offset: Len::Half, len: Len::Pages(1) }]);
}

/// CHECK_EXCLUSIVE stepped through every page of a huge range (a hang).
#[test]
fn check_exclusive_of_a_huge_range_returns() {
    replay(&[
        Op::DmOpen(2),
        Op::Dm { file: 0, cmd: DmCmd::CheckExclusive, addr: Addr::Half, npages: Count::Huge(35), ptr: Addr::Buf(0) },
        Op::Dm { file: 0, cmd: DmCmd::CheckExclusive, addr: Addr::Zero, npages: Count::Huge(35), ptr: Addr::Buf(0) },
    ]);
}

/// GUP of 2^32 pages reserved its result vector up front: the process
/// aborted on the allocation instead of failing with EFAULT.
#[test]
fn gup_of_a_huge_count_fails_cleanly() {
    replay(&[
        anon(Addr::Win(0), Len::Pages(4)),
        Op::Gup { addr: Addr::Win(0), npages: Count::Huge(32), write: false },
        Op::Pin { addr: Addr::Win(0), npages: Count::Huge(32), write: true, longterm: false },
    ]);
}

/// A length within a page of 2^64 is ENOMEM in Linux before the sharing
/// type or the protection is looked at; the model said EINVAL.
#[test]
fn mmap_of_a_length_near_2_pow_64_is_enomem_first() {
    let near_max = |prot, kind| Op::Mmap {
        addr: Addr::Win(0),
        len: Len::NearMax(1, 1),
        prot,
        kind,
        place: Placement::Fixed,
        populate: false,
    };
    replay(&[near_max(3, MapKind::BadType { validate: false })]);
    replay(&[near_max(8, MapKind::AnonPrivate)]);
}

// ---------------------------------------------------------------------------
// Known bugs, fixed on other branches.

#[test]
fn pfn_map_of_an_impossible_frame_then_read() {
    replay(&[Op::PfnMap { pfn: 4503599627370495, npages: 1 }]);
}

#[test]
fn mremap_with_unknown_flags_is_einval() {
    replay(&[
        anon(Addr::Win(0), Len::Pages(1)),
        Op::Mremap {
            addr: Addr::Win(0),
            old_len: Len::Pages(1),
            new_len: Len::Pages(1),
            flags: 8,
            new_addr: Addr::Win(0),
        },
    ]);
}

#[test]
fn mmap_file_past_the_largest_offset_fails() {
    replay(&[Op::Mmap {
        addr: Addr::Win(0),
        len: Len::Pages(1),
        prot: 3,
        kind: MapKind::File { file: 0, shared: false, pgoff: Count::Max },
        place: Placement::Fixed,
        populate: false,
    }]);
}

#[test]
fn ftruncate_to_a_negative_size_is_einval() {
    replay(&[Op::Truncate { file: 0, size: Len::Half }]);
}

#[test]
fn dmirror_read_near_the_top_of_the_address_space() {
    replay(&[
        Op::DmOpen(0),
        Op::Dm { file: 0, cmd: DmCmd::Read, addr: Addr::NearTop(18), npages: Count::Small(1), ptr: Addr::Buf(0) },
    ]);
}

#[test]
fn mremap_to_a_length_near_2_pow_64() {
    replay(&[
        anon(Addr::Win(3), Len::Pages(512)),
        Op::Mremap {
            addr: Addr::Win(3),
            old_len: Len::Pages(1),
            new_len: Len::NearMax(2, 0),
            flags: 1,
            new_addr: Addr::Win(0),
        },
    ]);
}

#[test]
fn dmirror_read_of_a_huge_count() {
    replay(&[
        Op::DmOpen(0),
        Op::Dm { file: 0, cmd: DmCmd::Read, addr: Addr::Win(0), npages: Count::Huge(32), ptr: Addr::Buf(0) },
    ]);
}

#[test]
fn dmirror_mmap_of_u64_max_pages() {
    replay(&[Op::DmOpen(0), Op::DmMmap { file: 0, npages: Count::Max, shared: true }]);
}

#[test]
fn closing_a_device_file_with_a_huge_mapping() {
    replay(&[anon(Addr::Win(511), Len::HugePages(30)), Op::Fork, Op::DmOpen(3), Op::DmClose(0)]);
}

#[test]
fn device_close_after_fork_and_a_thp_cow_break() {
    replay(&[
        Op::Mmap {
            addr: Addr::Win(0),
            len: Len::Pages(1024),
            prot: 3,
            kind: MapKind::AnonPrivate,
            place: Placement::Fixed,
            populate: true,
        },
        Op::DmOpen(0),
        Op::Fork,
        Op::Switch(0),
        Op::Gup { addr: Addr::Win(511), npages: Count::Small(1), write: true },
        Op::DmClose(0),
    ]);
}

#[test]
fn exclusive_on_untouched_memory() {
    replay(&[
        Op::DmOpen(0),
        Op::Mmap {
            addr: Addr::Win(512),
            len: Len::Pages(1024),
            prot: 3,
            kind: MapKind::AnonPrivate,
            place: Placement::Fixed,
            populate: false,
        },
        Op::Mmap {
            addr: Addr::Win(0),
            len: Len::Pages(1),
            prot: 3,
            kind: MapKind::AnonPrivate,
            place: Placement::Fixed,
            populate: false,
        },
        Op::Dm { file: 0, cmd: DmCmd::Exclusive, addr: Addr::Win(972), npages: Count::Small(54), ptr: Addr::Buf(0) },
    ]);
}

/// Needs both forks and the write pin (each removed, the sequence passes):
/// process 1 breaks COW on two pages of a THP shared with process 0 by a
/// write pin, process 0 forks again, then process 1 migrates a range
/// across the PMD edge to the device.
#[test]
fn migrate_to_device_after_fork_and_pin() {
    replay(&[
        Op::Mmap {
            addr: Addr::Win(512),
            len: Len::Pages(1024),
            prot: 3,
            kind: MapKind::AnonPrivate,
            place: Placement::Fixed,
            populate: true,
        },
        Op::Fork,
        Op::DmOpen(0),
        Op::Pin { addr: Addr::Win(1024), npages: Count::Small(2), write: true, longterm: false },
        Op::Switch(0),
        Op::Fork,
        Op::Dm { file: 0, cmd: DmCmd::MigrateToDev, addr: Addr::Win(971), npages: Count::Small(56), ptr: Addr::Buf(0) },
    ]);
}

#[test]
fn mremap_of_a_hugetlb_mapping_then_read() {
    replay(&[
        Op::Mmap {
            addr: Addr::Win(512),
            len: Len::Pages(1),
            prot: 3,
            kind: MapKind::Hugetlb { shared: false },
            place: Placement::Fixed,
            populate: false,
        },
        Op::Mremap {
            addr: Addr::Win(512),
            old_len: Len::Pages(1),
            new_len: Len::Pages(2),
            flags: 1,
            new_addr: Addr::Win(0),
        },
        Op::Read { addr: Addr::Win(513), len: 1 },
    ]);
}

/// Found after the merges (seed 1): MREMAP_FIXED from an address past the
/// address space overflowed in the overlap check; Linux's unsigned sum
/// wraps, and the call is EFAULT (nothing mapped there).
#[test]
fn mremap_fixed_from_near_the_top() {
    replay(&[Op::Mremap {
        addr: Addr::NearTop(1),
        old_len: Len::Pages(1),
        new_len: Len::Pages(1),
        flags: 3,
        new_addr: Addr::Win(0),
    }]);
}

/// Found after the merges (seed 1): PROT_SEM (0x8) is a valid protection
/// on x86 (probed on 6.18: mprotect with 0x8 succeeds, the VMA becomes
/// `---p`).
#[test]
fn mprotect_with_prot_sem() {
    replay(&[anon(Addr::Win(0), Len::Pages(1)), Op::Mprotect { addr: Addr::Win(0), len: Len::Pages(1), prot: 8 }]);
}

/// Found after the reverse map merged (seeds 2-4, nothing excluded): the
/// device page of a one-page MIGRATE_TO_DEV was not freed by the close that
/// evicted it.
#[test]
fn close_frees_the_device_page_of_a_single_page_migration() {
    replay(&[
        Op::DmOpen(0),
        anon(Addr::Win(0), Len::Pages(512)),
        Op::Dm { file: 0, cmd: DmCmd::MigrateToDev, addr: Addr::Win(0), npages: Count::Small(1), ptr: Addr::Buf(0) },
        Op::DmClose(0),
    ]);
}
