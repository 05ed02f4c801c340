//! The operations the fuzzer calls, as plain data (their proptest
//! strategies are in `strategies.rs`).
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

use hmm_types::{MadviseAdvice, PAGE_SIZE, TASK_SIZE};

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
pub(crate) const EDGES: [u16; 8] = [0, 1, 255, 511, 512, 513, 1023, 1024];

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
