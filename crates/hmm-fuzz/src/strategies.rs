//! The proptest strategies that generate [`Op`]s: weighted toward a small
//! window (so state builds up and operations collide) and toward the
//! extremes every entry point must refuse cleanly.

use proptest::prelude::*;

use hmm_types::{MadviseAdvice, PAGE_SIZE, PMD_SIZE};

use crate::ops::*;

fn window_page() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0..WINDOW_PAGES, 1 => proptest::sample::select(&EDGES[..])]
}

fn extreme_addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        Just(Addr::Zero),
        Just(Addr::One),
        Just(Addr::PageMinusOne),
        Just(Addr::Half),
        Just(Addr::TaskSize),
        (1u16..40).prop_map(Addr::NearTop),
        (0u16..4).prop_map(Addr::Kernel),
        (window_page(), 1u16..4096).prop_map(|(n, off)| Addr::WinUnaligned(n, off)),
    ]
}

/// An address: mostly a page of the window.
pub fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![12 => window_page().prop_map(Addr::Win), 1 => extreme_addr()]
}

fn extreme_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        Just(Len::Zero),
        Just(Len::Half),
        (1u16..4096).prop_map(Len::Bytes),
        (0u16..40, 0u16..4096).prop_map(|(n, e)| Len::NearMax(n, e)),
        (30u8..=44).prop_map(Len::HugePages),
    ]
}

/// A length: mostly a few pages, sometimes a PMD or two.
pub fn len() -> impl Strategy<Value = Len> {
    let pmd = (PMD_SIZE / PAGE_SIZE) as u16;
    prop_oneof![
        10 => (1u16..64).prop_map(Len::Pages),
        3 => prop_oneof![Just(pmd), Just(2 * pmd), Just(pmd + 1), Just(pmd - 1)].prop_map(Len::Pages),
        2 => extreme_len(),
    ]
}

/// A page count: mostly small.
pub fn count() -> impl Strategy<Value = Count> {
    prop_oneof![
        12 => (1u16..64).prop_map(Count::Small),
        1 => Just(Count::Zero),
        1 => (30u8..=44).prop_map(Count::Huge),
        1 => prop_oneof![Just(Count::Half), Just(Count::Max)],
    ]
}

fn prot() -> impl Strategy<Value = u32> {
    prop_oneof![6 => Just(3u32), 3 => Just(1u32), 2 => Just(0u32), 1 => Just(7u32), 1 => Just(2u32), 1 => Just(8u32)]
}

fn map_kind() -> impl Strategy<Value = MapKind> {
    let pgoff = prop_oneof![8 => (0u16..600).prop_map(Count::Small), 1 => count()];
    prop_oneof![
        8 => Just(MapKind::AnonPrivate),
        3 => Just(MapKind::AnonShared),
        4 => (0u8..MAX_TARGETS, any::<bool>(), pgoff).prop_map(|(file, shared, pgoff)| MapKind::File { file, shared, pgoff }),
        2 => any::<bool>().prop_map(|shared| MapKind::Hugetlb { shared }),
        1 => prop_oneof![Just(MapKind::Hugetlb1G), any::<bool>().prop_map(|validate| MapKind::BadType { validate })],
    ]
}

fn placement() -> impl Strategy<Value = Placement> {
    prop_oneof![3 => Just(Placement::Fixed), 2 => Just(Placement::Hint), 1 => Just(Placement::NoReplace)]
}

fn advice() -> impl Strategy<Value = MadviseAdvice> {
    proptest::sample::select(&MadviseAdvice::ALL[..])
}

fn mremap_flags() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(1u32), 3 => Just(3u32), 2 => Just(0u32), 1 => Just(7u32), 1 => Just(5u32), 1 => proptest::sample::select(vec![2u32, 4, 8, 0x10, u32::MAX])]
}

fn dm_cmd() -> impl Strategy<Value = DmCmd> {
    use DmCmd::*;
    prop_oneof![
        4 => proptest::sample::select(vec![Read, Write, Snapshot, MigrateToDev]),
        3 => proptest::sample::select(vec![MigrateToSys, Exclusive, CheckExclusive]),
        1 => proptest::sample::select(vec![Release, FailAlloc, Unknown]),
    ]
}

fn hmm_flags() -> impl Strategy<Value = u64> {
    use hmm::pfn::{HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE};
    prop_oneof![
        3 => Just(0u64),
        3 => Just(HMM_PFN_REQ_FAULT),
        2 => Just(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE),
        1 => any::<u64>(),
    ]
}

fn target() -> impl Strategy<Value = u8> {
    0..MAX_TARGETS
}

/// One operation, with weights that keep the window busy.
pub fn op() -> impl Strategy<Value = Op> {
    let mm_ops = prop_oneof![
        6 => (addr(), len(), prot(), map_kind(), placement(), proptest::bool::weighted(0.15)).prop_map(
            |(addr, len, prot, kind, place, populate)| Op::Mmap { addr, len, prot, kind, place, populate }
        ),
        2 => (addr(), len()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
        2 => (addr(), len(), prot()).prop_map(|(addr, len, prot)| Op::Mprotect { addr, len, prot }),
        3 => (addr(), len(), advice()).prop_map(|(addr, len, advice)| Op::Madvise { addr, len, advice }),
        2 => (addr(), len(), len(), mremap_flags(), addr())
            .prop_map(|(addr, old_len, new_len, flags, new_addr)| Op::Mremap { addr, old_len, new_len, flags, new_addr }),
    ];
    let process_ops = prop_oneof![
        2 => Just(Op::Fork),
        1 => target().prop_map(Op::Exit),
        2 => target().prop_map(Op::Switch),
    ];
    let cpu_ops = prop_oneof![
        3 => (addr(), 1u16..9000).prop_map(|(addr, len)| Op::Read { addr, len }),
        4 => (addr(), 1u16..9000, any::<u8>()).prop_map(|(addr, len, byte)| Op::Write { addr, len, byte }),
        2 => (addr(), any::<bool>()).prop_map(|(addr, cas)| Op::Atomic { addr, cas }),
    ];
    let gup_ops = prop_oneof![
        1 => (addr(), count(), any::<bool>()).prop_map(|(addr, npages, write)| Op::Gup { addr, npages, write }),
        2 => (addr(), count(), any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(addr, npages, write, longterm)| Op::Pin { addr, npages, write, longterm }),
        2 => target().prop_map(Op::Unpin),
        2 => (addr(), count(), hmm_flags(), hmm_flags(), hmm_flags(), 0u8..5).prop_map(
            |(addr, npages, default_flags, mask, input, owner)| Op::RangeFault { addr, npages, default_flags, mask, input, owner }
        ),
    ];
    let dm_ops = prop_oneof![
        2 => (0u8..4).prop_map(Op::DmOpen),
        1 => target().prop_map(Op::DmClose),
        10 => (target(), dm_cmd(), addr(), count(), prop_oneof![6 => (0u16..BUFFER_PAGES / 2).prop_map(Addr::Buf), 1 => addr()])
            .prop_map(|(file, cmd, addr, npages, ptr)| Op::Dm { file, cmd, addr, npages, ptr }),
        1 => (target(), count(), any::<bool>()).prop_map(|(file, npages, shared)| Op::DmMmap { file, npages, shared }),
    ];
    let file_ops = prop_oneof![
        1 => (prop_oneof![Just(0u64), Just(1 << 40), Just(u64::MAX >> 12), any::<u64>()], 1u16..8)
            .prop_map(|(pfn, npages)| Op::PfnMap { pfn, npages }),
        2 => (target(), len()).prop_map(|(file, size)| Op::Truncate { file, size }),
        2 => (target(), len(), len()).prop_map(|(file, offset, len)| Op::Punch { file, offset, len }),
        2 => (target(), 0u16..600, any::<u8>()).prop_map(|(file, page, byte)| Op::FileWrite { file, page, byte }),
    ];
    prop_oneof![15 => mm_ops, 4 => process_ops, 9 => cpu_ops, 5 => gup_ops, 10 => dm_ops, 3 => file_ops]
}

/// A sequence of `1..=max_len` operations.
pub fn sequence(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=max_len)
}
