//! The typed form of a scenario: one [`Step`] per line, each an [`Op`].
//!
//! Numbers stay raw (`u32` protection, flag and advice bits) so a scenario
//! can say exactly what a program would pass, invalid bits included; the
//! printer names the known bits. A new operation is a new [`Op`] variant,
//! a parse arm (`parse.rs`), a print arm (`print.rs`) and a [`crate::exec::Call`].

/// A name bound by `name = ...`: an address, a process or a file.
pub type Name = String;

/// An address or size: an optional name plus a signed offset (`a+0x1000`,
/// `w-4p`, `0x2000`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    /// The named base, if any.
    pub base: Option<Name>,
    /// Added to the base (wrapping, as a C program's pointer arithmetic).
    pub offset: i128,
}

impl Expr {
    /// A plain number.
    pub fn num(value: u64) -> Self {
        Self { base: None, offset: value as i128 }
    }
    /// `name+offset`.
    pub fn at(name: &str, offset: i128) -> Self {
        Self { base: Some(name.to_string()), offset }
    }
}

/// `fallocate` modes the language knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocMode {
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
    /// `FALLOC_FL_KEEP_SIZE`: allocate without changing the size.
    KeepSize,
}

/// One operation. `bind` in [`Step`] names its result where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `window BASE LEN`: the address range the scenario works in (the host
    /// runner uses MAP_FIXED only there). Must come first if present.
    Window { base: Expr, len: Expr },
    /// `mmap ADDR LEN PROT FLAGS [fd FILE OFFSET]`.
    Mmap { addr: Expr, len: Expr, prot: u32, flags: u32, file: Option<(Name, Expr)> },
    /// `munmap ADDR LEN`.
    Munmap { addr: Expr, len: Expr },
    /// `mprotect ADDR LEN PROT`.
    Mprotect { addr: Expr, len: Expr, prot: u32 },
    /// `madvise ADDR LEN ADVICE`.
    Madvise { addr: Expr, len: Expr, advice: u32 },
    /// `mseal ADDR LEN`: mseal(2) with flags 0.
    Mseal { addr: Expr, len: Expr },
    /// `mremap OLD OLD_LEN NEW_LEN FLAGS [NEW]`.
    Mremap { old: Expr, old_len: Expr, new_len: Expr, flags: u32, new_addr: Option<Expr> },
    /// `read ADDR`: a 64-bit load. Bound (`t = read ADDR`), it is an access
    /// `wait` can join (one that waits for a userfaultfd handler shows
    /// `blocked`).
    Read { addr: Expr },
    /// `write ADDR VALUE`: a 64-bit store.
    Write { addr: Expr, value: u64 },
    /// `atomic_add ADDR VALUE`: fetch-and-add, returns the old value.
    AtomicAdd { addr: Expr, value: u64 },
    /// `cmpxchg ADDR OLD NEW`: returns the value found.
    Cmpxchg { addr: Expr, old: u64, new: u64 },
    /// `fork`: binds the child process.
    Fork,
    /// `proc NAME`: later operations act in that process (`main` is the first).
    Proc { name: Name },
    /// `exit`: the acting process exits.
    Exit,
    /// `memfd NAME`: creates a tmpfs file (memfd), binds its descriptor.
    Memfd { name: String },
    /// `fwrite FILE OFFSET VALUE`: pwrite of 8 bytes.
    Fwrite { file: Name, offset: Expr, value: u64 },
    /// `pread FILE OFFSET`: pread of 8 bytes (short reads give the bytes read).
    Pread { file: Name, offset: Expr },
    /// `ftruncate FILE SIZE`.
    Ftruncate { file: Name, size: Expr },
    /// `fallocate FILE OFFSET LEN MODE`.
    Fallocate { file: Name, offset: Expr, len: Expr, mode: FallocMode },
    /// `close FILE`.
    Close { file: Name },
    /// `maps ADDR LEN`: the VMAs overlapping the range, as /proc/PID/maps.
    Maps { addr: Expr, len: Expr },
    /// `pagemap ADDR LEN`: per-page facts, as pagemap and PAGEMAP_SCAN.
    Pagemap { addr: Expr, len: Expr },
    /// `same ADDR PROC ADDR`: do the two pages map the same frame?
    Same { addr: Expr, other: Name, other_addr: Expr },
    /// `expect TEXT`: the previous operation's result prints as TEXT.
    Expect { text: String },
    // --- userfaultfd (lang/uffd.rs) ---
    /// `u = userfaultfd FEATURES`: a non-blocking userfaultfd and its
    /// `UFFDIO_API` handshake; shows the file's ioctls.
    Userfaultfd { features: u32 },
    /// `uffd_* u ...`: an operation on a userfaultfd.
    Uffd(super::uffd::UffdOp),
    /// `wait t`: the result of the access bound to `t` (`t = read ADDR`),
    /// which may have been waiting for a userfaultfd handler.
    Wait { access: Name },
    /// A test-device or DAX operation (`device.rs`).
    Device(super::device::DeviceOp),
    /// A `gup_test` pin operation (`pin.rs`).
    Pin(super::pin::PinOp),
    /// `smaps ADDR`: the statistics of the VMA containing ADDR, as
    /// /proc/PID/smaps shows them.
    Smaps { addr: Expr },
}

impl Op {
    /// The keyword that starts the line (used by the fuzzer's op mix too).
    pub fn keyword(&self) -> &'static str {
        match self {
            Op::Window { .. } => "window",
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Mprotect { .. } => "mprotect",
            Op::Madvise { .. } => "madvise",
            Op::Mseal { .. } => "mseal",
            Op::Mremap { .. } => "mremap",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::AtomicAdd { .. } => "atomic_add",
            Op::Cmpxchg { .. } => "cmpxchg",
            Op::Fork => "fork",
            Op::Proc { .. } => "proc",
            Op::Exit => "exit",
            Op::Memfd { .. } => "memfd",
            Op::Fwrite { .. } => "fwrite",
            Op::Pread { .. } => "pread",
            Op::Ftruncate { .. } => "ftruncate",
            Op::Fallocate { .. } => "fallocate",
            Op::Close { .. } => "close",
            Op::Maps { .. } => "maps",
            Op::Pagemap { .. } => "pagemap",
            Op::Same { .. } => "same",
            Op::Expect { .. } => "expect",
            Op::Userfaultfd { .. } => "userfaultfd",
            Op::Uffd(op) => op.keyword(),
            Op::Wait { .. } => "wait",
            Op::Device(d) => d.keyword(),
            Op::Pin(p) => p.keyword(),
            Op::Smaps { .. } => "smaps",
        }
    }
}

/// One line: an optional binding and the operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based source line (0 for generated steps).
    pub line: usize,
    /// `name =` in front of the operation.
    pub bind: Option<Name>,
    /// The operation.
    pub op: Op,
}

impl Op {
    /// Whether `name = ` may precede this operation.
    pub fn has_result(&self) -> bool {
        matches!(
            self,
            Op::Mmap { .. }
                | Op::Mremap { .. }
                | Op::Fork
                | Op::Memfd { .. }
                | Op::Userfaultfd { .. }
                | Op::Read { .. }
                | Op::Write { .. }
                | Op::Uffd(crate::lang::uffd::UffdOp::Read { .. })
        ) || matches!(self, Op::Device(d) if d.binds())
            || matches!(self, Op::Pin(p) if p.binds())
    }
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scenario {
    /// The steps in order.
    pub steps: Vec<Step>,
}

/// The window used when a scenario names none: 1 GiB at 16 TiB, far from
/// where Linux places anything by default on x86-64.
pub const DEFAULT_WINDOW: (u64, u64) = (0x1000_0000_0000, 1 << 30);
/// The name bound to the window's base.
pub const WINDOW_NAME: &str = "w";
/// The name of the first process.
pub const MAIN_PROC: &str = "main";

/// Known `PROT_*` bits and their letters, in maps order.
pub const PROT_BITS: [(u32, char); 3] = [(1, 'r'), (2, 'w'), (4, 'x')];

/// Known `MAP_*` bits and their names.
pub const MAP_BITS: [(u32, &str); 11] = [
    (0x01, "shared"),
    (0x02, "private"),
    (0x10, "fixed"),
    (0x20, "anon"),
    (0x4000, "noreserve"),
    (0x8000, "populate"),
    (0x40000, "hugetlb"),
    (0x80000, "sync"),
    (0x100000, "fixed_noreplace"),
    (21 << 26, "huge_2mb"),
    (30 << 26, "huge_1gb"),
];

/// Known `MREMAP_*` bits and their names.
pub const MREMAP_BITS: [(u32, &str); 3] = [(1, "maymove"), (2, "fixed"), (4, "dontunmap")];

/// `MADV_*` advice the model knows, with Linux's numbers.
pub const ADVICE: [(u32, &str); 15] = [
    (4, "dontneed"),
    (8, "free"),
    (9, "remove"),
    (10, "dontfork"),
    (11, "dofork"),
    (14, "hugepage"),
    (15, "nohugepage"),
    (18, "wipeonfork"),
    (19, "keeponfork"),
    (21, "pageout"),
    (22, "populate_read"),
    (23, "populate_write"),
    (25, "collapse"),
    (102, "guard_install"),
    (103, "guard_remove"),
];
