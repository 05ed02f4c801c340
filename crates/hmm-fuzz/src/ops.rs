//! The operations the fuzzer calls, as plain data, and the proptest
//! strategies that generate them.
//!
//! An [`Op`] names its targets by small indices (process, open device file,
//! pin, tmpfs file) that the executor takes modulo what exists, so a
//! sequence stays meaningful when proptest's shrinking removes steps.
//! Addresses, lengths and counts are symbolic ([`Addr`], [`Len`],
//! [`Count`]): most aim at a small window so that state builds up and
//! operations collide, the rest are the extremes every entry point must
//! refuse cleanly (0, 1, page - 1, 2^63, 2^64 - page, unaligned, the kernel
//! half, counts of 2^30 to 2^44 pages). [`to_rust`] prints a sequence as
//! Rust, so a shrunk failure pastes into a regression test as printed.

use proptest::prelude::*;

use hmm_types::{MadviseAdvice, PAGE_SIZE, PMD_SIZE, TASK_SIZE};

/// First address of the window most operations aim at (1 GiB aligned, so
/// the window holds whole PMDs).
pub const WINDOW: u64 = 0x4000_0000;
/// Pages of the window: two PMDs and a little more.
pub const WINDOW_PAGES: u16 = 1100;
/// The user buffer dmirror commands copy to and from: mapped read-write
/// in the first process (and so in every child), away from the window.
pub const BUFFER: u64 = 0x8000_0000;
/// Pages of the user buffer.
pub const BUFFER_PAGES: u16 = 256;
/// Page indices of the window worth hitting exactly (PMD edges).
const EDGES: [u16; 8] = [0, 1, 255, 511, 512, 513, 1023, 1024];

/// A symbolic address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Addr {
    /// Page `n` of the window.
    Win(u16),
    /// Page `n` of the user buffer.
    Buf(u16),
    /// Byte `off` (1..4095) into page `n` of the window.
    WinUnaligned(u16, u16),
    /// 0.
    Zero,
    /// 1.
    One,
    /// `PAGE_SIZE - 1`.
    PageMinusOne,
    /// 2^63.
    Half,
    /// `TASK_SIZE` (the first address past user space).
    TaskSize,
    /// `2^64 - n * PAGE_SIZE` (n = 1 is the last page of the address space).
    NearTop(u16),
    /// The start of the kernel half plus `n` pages.
    Kernel(u16),
}

/// A symbolic length in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Len {
    /// `n` pages.
    Pages(u16),
    /// `n` bytes (usually unaligned).
    Bytes(u16),
    /// 0.
    Zero,
    /// 2^63.
    Half,
    /// `2^64 - n * PAGE_SIZE + extra`: near the top, where rounding wraps.
    NearMax(u16, u16),
    /// 2^k pages, k in 30..=44.
    HugePages(u8),
}

/// A symbolic page count (dmirror commands, GUP, `range_fault`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Count {
    /// `n` pages.
    Small(u16),
    /// 0.
    Zero,
    /// 2^k, k in 30..=44.
    Huge(u8),
    /// 2^63.
    Half,
    /// `u64::MAX`.
    Max,
}

/// The placement flags of an mmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Placement {
    /// `addr` is a hint.
    Hint,
    /// `MAP_FIXED`.
    Fixed,
    /// `MAP_FIXED_NOREPLACE`.
    NoReplace,
}

/// What an mmap maps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MapKind {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    AnonPrivate,
    /// `MAP_SHARED | MAP_ANONYMOUS`.
    AnonShared,
    /// A tmpfs file (index), private or shared, from page offset `pgoff`.
    File { file: u8, shared: bool, pgoff: Count },
    /// `MAP_HUGETLB` (2 MiB pages), private or shared.
    Hugetlb { shared: bool },
    /// `MAP_HUGETLB | MAP_HUGE_1GB` (the machine has no 1 GiB pool).
    Hugetlb1G,
    /// No sharing type at all, or unknown bits with `MAP_SHARED_VALIDATE`.
    BadType { validate: bool },
}

/// A dmirror command.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DmCmd {
    /// `HMM_DMIRROR_READ`.
    Read,
    /// `HMM_DMIRROR_WRITE`.
    Write,
    /// `HMM_DMIRROR_MIGRATE_TO_DEV`.
    MigrateToDev,
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`.
    MigrateToSys,
    /// `HMM_DMIRROR_SNAPSHOT`.
    Snapshot,
    /// `HMM_DMIRROR_EXCLUSIVE`.
    Exclusive,
    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`.
    CheckExclusive,
    /// `HMM_DMIRROR_RELEASE`.
    Release,
    /// `HMM_DMIRROR_FLAGS` with `HMM_DMIRROR_FLAG_FAIL_ALLOC`.
    FailAlloc,
    /// An unknown request number.
    Unknown,
}

/// One call.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// `mmap` in the current process.
    Mmap { addr: Addr, len: Len, prot: u32, kind: MapKind, place: Placement, populate: bool },
    /// `munmap`.
    Munmap { addr: Addr, len: Len },
    /// `mprotect` (`prot` may hold unknown bits).
    Mprotect { addr: Addr, len: Len, prot: u32 },
    /// `madvise`.
    Madvise { addr: Addr, len: Len, advice: MadviseAdvice },
    /// `mremap` (`flags` may hold unknown bits).
    Mremap { addr: Addr, old_len: Len, new_len: Len, flags: u32, new_addr: Addr },
    /// `fork` of the current process; the child becomes current.
    Fork,
    /// Process `n` exits (if it still lives).
    Exit(u8),
    /// Process `n` becomes current.
    Switch(u8),
    /// A CPU read of `len` bytes.
    Read { addr: Addr, len: u16 },
    /// A CPU write of `len` bytes of `byte`.
    Write { addr: Addr, len: u16, byte: u8 },
    /// A CPU atomic (fetch-add, or compare-exchange).
    Atomic { addr: Addr, cas: bool },
    /// `get_user_pages`, references dropped at once.
    Gup { addr: Addr, npages: Count, write: bool },
    /// `pin_user_pages`, kept until [`Op::Unpin`].
    Pin { addr: Addr, npages: Count, write: bool, longterm: bool },
    /// Drops pin set `n`.
    Unpin(u8),
    /// `hmm::range_fault` through the retry loop with the given flags.
    RangeFault { addr: Addr, npages: Count, default_flags: u64, mask: u64, input: u64, owner: u8 },
    /// Opens dmirror device `minor` (0..3) from the current process.
    DmOpen(u8),
    /// Closes open file `n`.
    DmClose(u8),
    /// A command on open file `n`; `ptr` is the user buffer.
    Dm { file: u8, cmd: DmCmd, addr: Addr, npages: Count, ptr: Addr },
    /// mmap of the device file (`npages` zeroed pages, `vm_insert_page`).
    DmMmap { file: u8, npages: Count, shared: bool },
    /// `remap_pfn_range` of `npages` frames from `pfn`, then a read.
    PfnMap { pfn: u64, npages: u16 },
    /// `ftruncate` of tmpfs file `n` to `size` bytes.
    Truncate { file: u8, size: Len },
    /// Punches `len` bytes at `offset` of tmpfs file `n`.
    Punch { file: u8, offset: Len, len: Len },
    /// `pwrite` of a page of `byte` at page `page` of tmpfs file `n`.
    FileWrite { file: u8, page: u16, byte: u8 },
}

/// Processes, files, pins the indices of an [`Op`] choose among at most.
pub const MAX_TARGETS: u8 = 4;

impl Addr {
    /// The address.
    pub fn resolve(self) -> u64 {
        match self {
            Self::Win(n) => WINDOW + u64::from(n) * PAGE_SIZE,
            Self::Buf(n) => BUFFER + u64::from(n) * PAGE_SIZE,
            Self::WinUnaligned(n, off) => WINDOW + u64::from(n) * PAGE_SIZE + u64::from(off % 4095 + 1),
            Self::Zero => 0,
            Self::One => 1,
            Self::PageMinusOne => PAGE_SIZE - 1,
            Self::Half => 1 << 63,
            Self::TaskSize => TASK_SIZE,
            Self::NearTop(n) => 0u64.wrapping_sub(u64::from(n.max(1)) * PAGE_SIZE),
            Self::Kernel(n) => 0xffff_8000_0000_0000 + u64::from(n) * PAGE_SIZE,
        }
    }
}

impl Len {
    /// The length in bytes.
    pub fn resolve(self) -> u64 {
        match self {
            Self::Pages(n) => u64::from(n) * PAGE_SIZE,
            Self::Bytes(n) => u64::from(n),
            Self::Zero => 0,
            Self::Half => 1 << 63,
            Self::NearMax(n, extra) => 0u64.wrapping_sub(u64::from(n) * PAGE_SIZE).wrapping_add(u64::from(extra)),
            Self::HugePages(k) => (1u64 << k.clamp(30, 44)) * PAGE_SIZE,
        }
    }
}

impl Count {
    /// The count.
    pub fn resolve(self) -> u64 {
        match self {
            Self::Small(n) => u64::from(n),
            Self::Zero => 0,
            Self::Huge(k) => 1u64 << k.clamp(30, 44),
            Self::Half => 1 << 63,
            Self::Max => u64::MAX,
        }
    }
}

/// The sequence as a Rust expression with qualified variant names
/// (`Op::Mmap { addr: Addr::Win(3), … }`): `Debug` with each variant
/// prefixed by its type, found from the field it fills.
pub fn to_rust(ops: &[Op]) -> String {
    let text = format!("{ops:?}");
    let mut out = String::with_capacity(text.len() * 2);
    let mut field: Option<String> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if !(c.is_ascii_alphabetic() || c == '_') {
            if c != ':' && c != ' ' {
                field = None;
            }
            out.push(c);
            continue;
        }
        let mut end = at + c.len_utf8();
        while let Some(&(next, d)) = chars.peek() {
            if !(d.is_ascii_alphanumeric() || d == '_') {
                break;
            }
            end = next + d.len_utf8();
            chars.next();
        }
        let ident = &text[at..end];
        if ident.starts_with(|c: char| c.is_ascii_uppercase()) {
            let prefix = match field.take().as_deref() {
                None => "Op",
                Some("addr" | "ptr" | "new_addr") => "Addr",
                Some("len" | "old_len" | "new_len" | "size" | "offset") => "Len",
                Some("npages" | "pgoff") => "Count",
                Some("kind") => "MapKind",
                Some("place") => "Placement",
                Some("cmd") => "DmCmd",
                Some("advice") => "MadviseAdvice",
                Some(_) => "",
            };
            if !prefix.is_empty() {
                out.push_str(prefix);
                out.push_str("::");
            }
        } else if chars.peek().is_some_and(|&(_, d)| d == ':') {
            field = Some(ident.to_owned());
        }
        out.push_str(ident);
    }
    out
}

// ---------------------------------------------------------------------------
// Strategies.

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
    use MadviseAdvice::*;
    proptest::sample::select(vec![
        DontNeed,
        Free,
        DontFork,
        DoFork,
        WipeOnFork,
        KeepOnFork,
        HugePage,
        NoHugePage,
        PageOut,
        PopulateRead,
        PopulateWrite,
        Collapse,
    ])
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
